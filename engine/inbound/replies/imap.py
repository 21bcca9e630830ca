"""The reply mailbox over IMAP (aioimaplib): log in, select, find new UIDs, read emails in
batches with bounded memory, flag or move them, and wait for news with IDLE.

Every network wait has a time limit and also ends the moment the connection drops (aioimaplib
would otherwise leave a command waiting forever on a dead socket): the caller gets a
``MailboxError`` and reconnects. An IDLE is renewed every ``idle_timeout_seconds``; the
server must answer the DONE within ``timeout``, which is the watchdog for a connection that
went silent without closing.

Memory: an email is read as its header plus the first ``body_bytes`` of its body. One larger
than that is read part by part from its BODYSTRUCTURE: every MIME header, the first
``body_bytes`` of each text, delivery-status and feedback-report part and the header of a
returned email, never an attachment's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any, TypeVar

from aioimaplib.aioimaplib import IMAP4, AioImapException, Command

from engine.base.errors import EngineError
from engine.program.settings import ImapSettings

log = logging.getLogger("engine.replies")
T = TypeVar("T")

HEADER_BYTES = 256 * 1024  # a header block longer than this is cut (spam, loops)
MAX_PARTS = 64  # parts of one large email considered; the rest are left out
TRANSFER_PATIENCE = 10  # a FETCH may take this many times ``timeout`` in all
READ_BYTES = 32 * 1024  # socket reads handed to aioimaplib (see Mailbox._read_in_small_chunks)
# Parts whose first bytes classification reads in a large email.
_READ_PARTS = frozenset(
    {
        ("text", "plain"),
        ("text", "html"),
        ("text", "rfc822-headers"),
        ("message", "delivery-status"),
        ("message", "global-delivery-status"),
        ("message", "feedback-report"),
    }
)
_RETURNED_EMAILS = frozenset({("message", "rfc822"), ("message", "global")})
_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}\s*$|([^\s()"{}]+))', re.S)
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.I)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class MailboxError(EngineError, ConnectionError):
    """The IMAP server cannot be reached, refused us, or stopped answering."""


@dataclass(frozen=True)
class Fetched:
    """One email as first read: its header and the first bytes of its body."""

    uid: int
    size: int  # RFC822.SIZE: the whole email
    header: bytes
    body: bytes

    @property
    def complete(self) -> bool:
        """Whether header and body are the whole email."""
        return len(self.header) + len(self.body) >= self.size

    @property
    def multipart(self) -> bool:
        parsed = BytesHeaderParser(policy=compat32).parsebytes(self.header)
        return parsed.get_content_maintype() == "multipart"


# -- responses -------------------------------------------------------------------------------


def parse_fetch(lines: Sequence[bytes | bytearray]) -> dict[int, dict[str, Any]]:
    """FETCH responses as aioimaplib hands them over (lines, literals as bytearrays, the
    tagged status last) -> {uid: {ITEM NAME: value}}. Values: int, bytes (strings and
    literals), None (NIL), str (other atoms) or lists of these. Unbalanced input is tolerated.
    """
    top: list[Any] = []
    stack: list[list[Any]] = [top]
    for item in lines[:-1]:
        if isinstance(item, bytearray):
            stack[-1].append(bytes(item))
            continue
        for m in _TOKEN.finditer(item):
            if m[1]:
                child: list[Any] = []
                stack[-1].append(child)
                stack.append(child)
            elif m[2]:
                if len(stack) > 1:
                    stack.pop()
            elif m[3] is not None:
                stack[-1].append(re.sub(rb"\\(.)", rb"\1", m[3]))
            elif m[5]:
                atom = m[5].decode("latin-1")
                stack[-1].append(None if atom == "NIL" else int(atom) if atom.isdigit() else atom)
    found: dict[int, dict[str, Any]] = {}
    for index, token in enumerate(top[:-1]):
        following = top[index + 1]
        if isinstance(token, str) and token.upper() == "FETCH" and isinstance(following, list):
            items = {
                str(k).upper(): v for k, v in zip(following[::2], following[1::2], strict=False)
            }
            if isinstance(items.get("UID"), int):  # several responses for one email add up
                found.setdefault(items["UID"], {}).update(items)
    return found


def _item(items: dict[str, Any], prefix: str) -> bytes:
    """The value of the first item whose name starts with ``prefix`` (``BODY[TEXT]<0>``)."""
    for name, value in items.items():
        if name.startswith(prefix):
            return value if isinstance(value, bytes) else b""
    return b""


def uid_set(uids: Sequence[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"``."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    start = prev = ordered[0]
    for uid in [*ordered[1:], None]:
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        if uid is not None:
            start = prev = uid
    return ",".join(parts)


def _text(value: Any) -> str:
    return value.decode("latin-1").lower() if isinstance(value, bytes) else str(value).lower()


def _cut(data: bytes, limit: int) -> bytes:
    """A part's first bytes, ending on a whole line when it was truncated (half a base64 or
    quoted-printable line would decode into garbage)."""
    if len(data) < limit:
        return data
    end = data.rfind(b"\n")
    return data[: end + 1] if end > 0 else data


def _boundary(header: bytes) -> bytes | None:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
    value = parsed.get_param("boundary")
    return str(value).encode("latin-1", "replace") if isinstance(value, str) and value else None


@dataclass(frozen=True)
class _Part:
    path: str  # "1", "2.1" ...
    kind: str  # multipart | read | returned | skip
    children: tuple[_Part, ...] = ()


def _parts(node: Any, path: str, budget: list[int]) -> _Part:
    """The tree of a BODYSTRUCTURE, each part marked with what to fetch of it."""
    if isinstance(node, list) and node and isinstance(node[0], list):
        children = []
        # The parts come first, then the subtype and extension data (lists too).
        for index, child in enumerate(itertools.takewhile(_is_list, node), start=1):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            children.append(_parts(child, f"{path}.{index}" if path else str(index), budget))
        return _Part(path, "multipart", tuple(children))
    if isinstance(node, list) and len(node) >= 2:
        kind = (_text(node[0]), _text(node[1]))
        if kind in _READ_PARTS:
            return _Part(path, "read")
        if kind in _RETURNED_EMAILS:
            return _Part(path, "returned")
    return _Part(path, "skip")


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _walk(part: _Part) -> Iterator[_Part]:
    for child in part.children:
        yield child
        yield from _walk(child)


# -- the connection --------------------------------------------------------------------------


class Mailbox:
    """One logged-in IMAP connection with the configured mailbox selected."""

    def __init__(self, settings: ImapSettings, client: IMAP4, lost: asyncio.Event) -> None:
        self.settings = settings
        self.client = client
        self.lost = lost
        self.uidvalidity = 0
        self.where = f"{settings.host}:{settings.port}"

    @classmethod
    async def open(cls, settings: ImapSettings, *, base_dir: Path = Path(".")) -> Mailbox:
        """Connect, secure, log in and select ``settings.mailbox``; MailboxError otherwise."""
        context = None
        if settings.security != "none":
            cafile = str(base_dir / settings.ca_file) if settings.ca_file else None
            context = ssl.create_default_context(cafile=cafile)
        lost = asyncio.Event()
        client = IMAP4(
            settings.host,
            settings.port,
            timeout=settings.timeout,
            conn_lost_cb=lambda _exc: lost.set(),
            ssl_context=context if settings.security == "tls" else None,
        )
        box = cls(settings, client, lost)
        try:
            await box._call(client.wait_hello_from_server(), "connect")
            box._read_in_small_chunks()
            if settings.security == "starttls":
                assert context is not None
                await box._starttls(context)
            response = await box._call(client.login(settings.username, settings.password), "LOGIN")
            if response.result != "OK":
                raise MailboxError(
                    f"IMAP login to {box.where} as {settings.username!r} refused: "
                    f"{_said(response.lines)}"
                )
            await box._select()
            if settings.processed == "move":
                # Created once; "already exists" is the usual answer and fine.
                await box._call(client.create(_quoted(settings.processed_folder)), "CREATE")
        except BaseException:
            await box.close()
            raise
        log.info("imap_connected host=%s mailbox=%s", box.where, settings.mailbox)
        return box

    def _read_in_small_chunks(self) -> None:
        """Have the socket hand aioimaplib at most READ_BYTES at a time. Its parser recurses
        once per line of a chunk, each level holding a copy of the rest of the chunk, so its
        memory grows with the square of the chunk: 256 kB reads (asyncio's default) peak
        near 100 MB on a batch of small emails, 32 kB reads at a few MB, for the same speed.
        (A TLS transport has no such knob; its reads stay at the default.)"""
        transport = self.client.protocol.transport
        if transport is not None and isinstance(getattr(transport, "max_size", None), int):
            transport.max_size = READ_BYTES

    @property
    def can_idle(self) -> bool:
        return self.settings.idle and self.client.has_capability("IDLE")

    async def _call(self, work: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """Await ``work`` unless the connection drops or ``timeout`` passes first."""
        task = asyncio.ensure_future(work)
        if self.lost.is_set():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise MailboxError(f"IMAP connection to {self.where} lost before {what}")
        watcher = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, watcher},
                timeout=self.settings.timeout if timeout is None else timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watcher.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            why = "connection lost" if self.lost.is_set() else "no answer in time"
            raise MailboxError(f"IMAP {what} on {self.where}: {why}")
        try:
            return task.result()
        except (OSError, TimeoutError, AioImapException, ssl.SSLError) as exc:
            raise MailboxError(
                f"IMAP {what} on {self.where} failed: {exc or type(exc).__name__}"
            ) from exc

    async def _starttls(self, context: ssl.SSLContext) -> None:
        protocol = self.client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise MailboxError(f"IMAP server {self.where} does not offer STARTTLS")
        response = await self._call(
            protocol.execute(Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)),
            "STARTTLS",
        )
        if response.result != "OK":
            raise MailboxError(f"IMAP STARTTLS on {self.where} refused: {_said(response.lines)}")
        loop = asyncio.get_running_loop()
        transport = await self._call(
            loop.start_tls(
                protocol.transport, protocol, context, server_hostname=self.settings.host
            ),
            "TLS handshake",
        )
        protocol.transport = transport
        await self._call(protocol.capability(), "CAPABILITY")  # what it says now counts

    async def _select(self) -> None:
        mailbox = self.settings.mailbox
        response = await self._call(self.client.select(_quoted(mailbox)), "SELECT")
        if response.result != "OK":
            raise MailboxError(
                f"IMAP mailbox {mailbox!r} on {self.where} cannot be opened: "
                f"{_said(response.lines)}"
            )
        for line in response.lines:
            if (found := _UIDVALIDITY.search(bytes(line))) is not None:
                self.uidvalidity = int(found[1])
        if not self.uidvalidity:
            raise MailboxError(f"IMAP server {self.where} gave no UIDVALIDITY for {mailbox!r}")

    async def _command(self, work: Awaitable[Any], what: str, *, transfer: bool = False) -> Any:
        # A FETCH may take longer than ``timeout`` in all on a slow link: aioimaplib fails it
        # when no data came for ``timeout``, this only caps the whole transfer.
        limit = self.settings.timeout * (TRANSFER_PATIENCE if transfer else 1)
        response = await self._call(work, what, timeout=limit)
        if response.result != "OK":
            raise MailboxError(f"IMAP {what} on {self.where} refused: {_said(response.lines)}")
        return response

    async def uids_after(self, last_uid: int, *, since: date | None = None) -> list[int]:
        """UIDs above ``last_uid`` (of emails received on or after ``since``), ascending."""
        criteria = ["UID", f"{last_uid + 1}:*"]
        if since is not None:
            month = _MONTHS[since.month - 1]  # IMAP dates are English whatever the locale
            criteria += ["SINCE", f"{since.day}-{month}-{since.year}"]
        response = await self._command(
            self.client.protocol.search(*criteria, by_uid=True, charset=None), "UID SEARCH"
        )
        found = {int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()}
        # "N:*" always matches the highest UID, even one below N.
        return sorted(uid for uid in found if uid > last_uid)

    async def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """Headers and first body bytes of ``uids``, in UID order (gone ones left out)."""
        spec = (
            f"(UID RFC822.SIZE BODY.PEEK[HEADER]<0.{HEADER_BYTES}> "
            f"BODY.PEEK[TEXT]<0.{self.settings.body_bytes}>)"
        )
        response = await self._command(
            self.client.uid("fetch", uid_set(uids), spec), "UID FETCH", transfer=True
        )
        wanted = set(uids)
        return [
            Fetched(uid, size, _item(items, "BODY[HEADER]"), _item(items, "BODY[TEXT]"))
            for uid, items in sorted(parse_fetch(response.lines).items())
            if uid in wanted and isinstance(size := items.get("RFC822.SIZE"), int)
        ]

    async def read_large(self, fetched: Fetched) -> bytes:
        """A large multipart email rebuilt with only what classification reads: its MIME
        structure and headers, the first ``body_bytes`` of text and delivery-status parts, the
        header of a returned email; every other part (attachments) left empty."""
        uid = str(fetched.uid)
        response = await self._command(
            self.client.uid("fetch", uid, "(UID BODYSTRUCTURE)"), "UID FETCH BODYSTRUCTURE"
        )
        structure = parse_fetch(response.lines).get(fetched.uid, {}).get("BODYSTRUCTURE")
        root = _parts(structure, "", [MAX_PARTS])
        limit = self.settings.body_bytes
        sections = []
        for part in _walk(root):
            sections.append(f"BODY.PEEK[{part.path}.MIME]")
            if part.kind == "read":
                sections.append(f"BODY.PEEK[{part.path}]<0.{limit}>")
            elif part.kind == "returned":
                sections.append(f"BODY.PEEK[{part.path}.HEADER]")
        if not sections:
            return fetched.header + _cut(fetched.body, limit)
        response = await self._command(
            self.client.uid("fetch", uid, f"(UID {' '.join(sections)})"),
            "UID FETCH parts",
            transfer=True,
        )
        items = parse_fetch(response.lines).get(fetched.uid, {})
        return fetched.header + _skeleton(root, _boundary(fetched.header), items, limit)

    async def flag(self, uids: Sequence[int], flag: str) -> None:
        """Add ``flag`` to ``uids``."""
        if uids:
            await self._command(
                self.client.uid("store", uid_set(uids), "+FLAGS.SILENT", f"({flag})"), "UID STORE"
            )

    async def move(self, uids: Sequence[int], folder: str) -> None:
        """Move ``uids`` to ``folder`` (MOVE, else COPY and delete)."""
        if not uids:
            return
        where, target = uid_set(uids), _quoted(folder)
        if self.client.has_capability("MOVE"):
            await self._command(self.client.uid("move", where, target), "UID MOVE")
            return
        await self._command(self.client.uid("copy", where, target), "UID COPY")
        await self.flag(uids, "\\Deleted")
        if self.client.has_capability("UIDPLUS"):
            await self._command(self.client.uid("expunge", where), "UID EXPUNGE")

    async def wait_for_news(self, stop: asyncio.Event) -> None:
        """Return when the server reports a change (IDLE), when ``idle_timeout_seconds`` (IDLE)
        or ``poll_seconds`` (no IDLE) passed, or when ``stop`` is set. MailboxError when the
        connection drops or the server does not end the IDLE in time."""
        if not self.can_idle:
            await self._sleep(stop, self.settings.poll_seconds)
            return
        queue = self.client.protocol.idle_queue
        while not queue.empty():  # pushes that arrived after the last IDLE ended
            queue.get_nowait()
        seconds = self.settings.idle_timeout_seconds
        idle = await self._call(self.client.idle_start(timeout=seconds), "IDLE")
        try:
            await self._call(
                _first(self.client.wait_server_push(timeout=seconds + 1), stop.wait()),
                "IDLE",
                timeout=seconds + self.settings.timeout,
            )
        except BaseException:
            idle.cancel()
            raise
        finally:
            if not self.lost.is_set() and not idle.done():
                self.client.idle_done()
        await self._call(idle, "IDLE DONE")

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(stop.wait(), self.lost.wait()), timeout=seconds)
        if self.lost.is_set():
            raise MailboxError(f"IMAP connection to {self.where} lost")

    async def close(self) -> None:
        """Log out (briefly) and drop the connection; never raises."""
        protocol = self.client.protocol
        if self.client.has_pending_idle():  # ended by an error: stop its renewal timer too
            with contextlib.suppress(Exception):
                self.client.idle_done()
        if not self.lost.is_set() and protocol.state in ("AUTH", "SELECTED"):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.logout(), timeout=2)
        transport = protocol.transport
        if transport is not None:
            transport.close()
        pending = [t for t in (*self.client.tasks, *protocol.tasks) if not t.done()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task


async def _first(*works: Awaitable[Any]) -> None:
    """Wait until the first of ``works`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        if (
            not task.cancelled()
            and (exc := task.exception()) is not None
            and not isinstance(exc, TimeoutError)
        ):
            raise exc


def _skeleton(root: _Part, boundary: bytes | None, items: dict[str, Any], limit: int) -> bytes:
    """The body of a multipart email with only the fetched sections filled in."""
    if boundary is None:
        return b"\r\n"
    out: list[bytes] = []
    for child in root.children:
        mime = _item(items, f"BODY[{child.path}.MIME]") or b"\r\n"
        out += [b"--", boundary, b"\r\n", mime]
        if child.kind == "multipart":
            out.append(_skeleton(child, _boundary(mime), items, limit))
        elif child.kind == "read":
            out.append(_cut(_item(items, f"BODY[{child.path}]"), limit))
        elif child.kind == "returned":
            out.append(_item(items, f"BODY[{child.path}.HEADER]"))
        out.append(b"\r\n")
    out += [b"--", boundary, b"--\r\n"]
    return b"".join(out)


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _said(lines: Sequence[bytes | bytearray]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines)[:300]
