"""An embedded SMTP sink (aiosmtpd) that keeps every message as an .eml file: the demo's
mail server, and a way to look at real output without sending anything anywhere."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class EmlHandler:
    """Writes each accepted message to ``folder``; refuses recipients listed in ``refuse``."""

    def __init__(self, folder: Path, refuse: Mapping[str, str] | None = None) -> None:
        self.folder = folder
        self.refuse = {k.lower(): v for k, v in (refuse or {}).items()}
        self.count = 0
        self._numbers = itertools.count(1)
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if (reply := self.refuse.get(address.lower())) is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        number = next(self._numbers)
        safe = re.sub(r"[^A-Za-z0-9@._-]", "_", envelope.rcpt_tos[0])[:80]
        data = envelope.original_content or b""
        (self.folder / f"{number:05d}-{safe}.eml").write_bytes(data)
        self.count += 1
        return "250 Message accepted"


async def start_sink(handler: EmlHandler, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Serve ``handler`` on host:port (0 = any free port); returns the asyncio Server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, hostname=host, data_size_limit=25 * 1024 * 1024), host, port
    )


def bound_port(server: Any) -> int:
    return int(server.sockets[0].getsockname()[1])
