"""A real Dovecot IMAP server on 127.0.0.1 for tests and benchmarks (TESTING.md's recipe).

``Dovecot`` writes a private configuration into a temporary folder (chmod 0755, mail owned by
nobody:nogroup), starts ``dovecot -F`` on free ports (plain IMAP with STARTTLS, and implicit
TLS with a throw-away certificate), and hands out fresh mail users, so tests sharing one server
never see each other's mail. ``append`` puts emails in a mailbox with the stdlib IMAP client;
``fill`` writes them straight into the maildir (10,000 in a second, for the benchmark).
``SilentProxy`` relays connections to it and can make them hang without closing, as a dead
network path does.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.program.settings import ImapSettings

USERS = 400  # fresh mailboxes handed out per server (passwd-file is read once, at start)
PASSWORD = "secret-imap-password"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_dovecot() -> str | None:
    return shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None
    )


@dataclass(frozen=True)
class MailUser:
    name: str  # the login, an email address
    home: Path


class Dovecot:
    """A private Dovecot; ``start`` / ``stop`` / ``restart`` keep its ports."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="engine-dovecot-"))
        os.chmod(self.dir, 0o755)  # 0700 makes every login a "temporary authentication failure"
        self.port = free_port()
        self.tls_port = free_port()
        self.cert_file = self.dir / "cert.pem"
        self.mail = self.dir / "mail"
        self.process: subprocess.Popen[bytes] | None = None
        self._next_user = 0
        self._write_config()

    # -- setup -------------------------------------------------------------------------------

    def _write_config(self) -> None:
        key = self.dir / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
                *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(self.cert_file)),
            ],
            check=True,
            capture_output=True,
        )
        self.mail.mkdir()
        uid, gid = os.getuid(), os.getgid()
        if os.geteuid() == 0:  # mail belongs to an unprivileged user: nobody:nogroup
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            os.chown(self.mail, uid, gid)  # Dovecot creates each user's home in here
        (self.dir / "users").write_text(
            "".join(
                f"user{n}@example.com:{{PLAIN}}{PASSWORD}:{uid}:{gid}::"
                f"{self.mail / f'user{n}@example.com'}::\n"
                for n in range(USERS)
            )
        )
        d = self.dir
        extra = ""
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.getuid()).pw_name
            extra = f"""
default_internal_user = {me}
default_internal_group = {me}
default_login_user = {me}
first_valid_uid = {os.getuid()}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    user = {me}
  }}
  unix_listener stats-writer {{
    user = {me}
  }}
}}
"""
        (d / "dovecot.conf").write_text(
            f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{key}
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
{extra}"""
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Dovecot:
        """Start and wait until the IMAP port answers with a greeting."""
        self.process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: stop() ends the sessions too
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"dovecot exited at start: {err} {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(100).startswith(b"* OK"):
                    return self
            time.sleep(0.02)
        raise TimeoutError(f"dovecot did not start: {self.log()}")

    def stop(self) -> None:
        """SIGTERM and wait; every client connection drops."""
        if self.process is None:
            return
        # The whole group: an imap process in IDLE outlives its master by minutes otherwise.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    # -- users and mail ----------------------------------------------------------------------

    def new_user(self) -> MailUser:
        """A mail user nobody else got: an empty INBOX."""
        if self._next_user >= USERS:
            raise RuntimeError(f"all {USERS} test mail users are taken")
        n = self._next_user
        self._next_user += 1
        name = f"user{n}@example.com"
        return MailUser(name, self.mail / name)

    def settings(self, user: MailUser, **overrides: Any) -> ImapSettings:
        """ImapSettings for ``user`` on this server (plain IMAP; quick timeouts for tests)."""
        base = ImapSettings(
            host="127.0.0.1",
            port=self.port,
            username=user.name,
            password=PASSWORD,
            timeout=5.0,
            reconnect_max_seconds=0.5,
        )
        return replace(base, **overrides)

    def toml(self, user: MailUser, **values: Any) -> str:
        """An ``[imap]`` section for a project's settings.toml; ``values`` override."""
        imap = self.settings(user)
        chosen = {
            "host": imap.host,
            "port": imap.port,
            "username": imap.username,
            "password": imap.password,
            "timeout": imap.timeout,
            "reconnect_max_seconds": imap.reconnect_max_seconds,
            **values,
        }
        return "[imap]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in chosen.items())

    @contextlib.contextmanager
    def client(self, user: MailUser, mailbox: str = "INBOX") -> Iterator[imaplib.IMAP4]:
        """The stdlib IMAP client, logged in with ``mailbox`` selected."""
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            imap.login(user.name, PASSWORD)
            imap.select(mailbox)
            yield imap
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()

    def append(
        self,
        user: MailUser,
        *messages: bytes,
        mailbox: str = "INBOX",
        received: datetime | None = None,
    ) -> None:
        """APPEND ``messages`` to ``mailbox`` (created when missing), received now or at
        ``received`` (their INTERNALDATE)."""
        when = imaplib.Time2Internaldate(received) if received is not None else None
        with self.client(user) as imap:
            imap.create(mailbox)
            for data in messages:
                status, answer = imap.append(mailbox, None, when, data)
                assert status == "OK", answer

    def flags(self, user: MailUser, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """{uid: flags} of every email in ``mailbox``."""
        with self.client(user, mailbox) as imap:
            _, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
        found: dict[int, set[str]] = {}
        for line in data:
            match = re.search(
                rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line or b""
            )
            if match:
                uid = int(match[1] or match[4])
                found[uid] = set((match[2] or match[3] or b"").decode().split())
        return found

    def count(self, user: MailUser, mailbox: str = "INBOX") -> int:
        with self.client(user) as imap:
            _, data = imap.status(f'"{mailbox}"', "(MESSAGES)")
        return int(data[0].decode().split("MESSAGES ")[1].rstrip(")"))

    def set_uidvalidity(self, user: MailUser, value: int, mailbox: str = "INBOX") -> None:
        """Give ``mailbox`` a new UIDVALIDITY, as a rebuilt mailbox has (doveadm)."""
        subprocess.run(
            [
                *("doveadm", "-c", str(self.dir / "dovecot.conf"), "mailbox", "update"),
                *("-u", user.name, "--uid-validity", str(value), mailbox),
            ],
            check=True,
            capture_output=True,
        )

    def fill(self, user: MailUser, messages: Iterable[bytes]) -> int:
        """Write ``messages`` into the user's INBOX maildir directly; Dovecot assigns UIDs on
        its next look. Returns how many were written."""
        new = user.home / "Maildir" / "new"
        for sub in ("new", "cur", "tmp"):
            (user.home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
        count = 0
        for count, data in enumerate(messages, start=1):
            (new / f"{int(time.time())}.M{count}P{os.getpid()}.bench").write_bytes(data)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [user.home, *user.home.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        return count


class SilentProxy:
    """A TCP relay to ``port`` on 127.0.0.1. ``silence()`` makes the connections open now go
    quiet for good (bytes are swallowed both ways, nothing is closed): a hung IDLE. Later
    connections are relayed normally."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> SilentProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def silence(self) -> None:
        self._generation += 1

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        generation = self._generation
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if generation == self._generation:
                        dst.write(data)
                        await dst.drain()
            if generation == self._generation:
                dst.close()

        for task in (
            asyncio.create_task(pump(reader, up_writer)),
            asyncio.create_task(pump(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


# Named apart from their functions (as tests.support.smtp_server does): a test module imports
# dovecot_fixture and mail_user_fixture and takes parameters named dovecot and mail_user.
@pytest.fixture(name="dovecot", scope="session")
def dovecot_fixture() -> Iterator[Dovecot]:
    """One Dovecot for the whole test session; each test takes its own ``new_user()``."""
    binary = find_dovecot()
    if binary is None:
        if os.environ.get("ENGINE_REQUIRE_DOVECOT"):
            pytest.fail("Dovecot is required (ENGINE_REQUIRE_DOVECOT) but is not installed")
        pytest.skip("Dovecot not installed (make test installs dovecot-imapd)")
    server = Dovecot(binary).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(name="mail_user")
def mail_user_fixture(dovecot: Dovecot) -> MailUser:
    """A fresh mailbox on the shared server (started again if a test left it stopped)."""
    if dovecot.process is None:
        dovecot.start()
    return dovecot.new_user()


def _toml(value: str | bool | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
