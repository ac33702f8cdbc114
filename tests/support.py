"""What the tests share: a clock moved by hand, files that are not ours, the installed
executable, and the real HTTP server on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any

import pytest

from tokencli.domain.location import Location
from tokencli.domain.model import AuditEvent, TokenRecord
from tokencli.http.answers import Answer, ApiConfig
from tokencli.http.api import answer_requests
from tokencli.http.http11 import Request
from tokencli.http.keys import ADMIN_KEY_ENV, VALIDATE_KEY_ENV
from tokencli.server.accesslog import AccessLogFormat
from tokencli.server.config import Limits
from tokencli.server.server import TokenHTTPServer
from tokencli.server.serving import ServeOptions, build_server
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

START = 1_790_000_000  # a fixed UTC instant (2026-09-21), so tests never read the wall clock
ADMIN_KEY = "correct horse battery staple"
VALIDATE_KEY = "validate-only-key"

EXECUTABLE = shutil.which("tokencli")
# Under CI a missing executable is a failure (the install is part of what is tested);
# on a developer's machine the subprocess tests skip.
needs_executable = pytest.mark.skipif(
    EXECUTABLE is None and os.environ.get("CI") != "true", reason="tokencli is not installed"
)


def component(name: str, *, package: str) -> str:
    """The path of an outside program a test plugs tokencli into (a shell, PgBouncer, nginx,
    promtool, openssl...). Missing: the test skips on a developer's machine and fails under
    CI=true, where .ci/run installs Debian's `package`."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is missing; .ci/run installs Debian's {package}")
    pytest.skip(f"{name} is not installed (Debian's {package})")


class Clock:
    """A clock the test moves by hand: pass it where the service takes `clock`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def token(
    token_id: str,
    *,
    created: int = START - 100,
    expires: int = START + 3600,
    uses: int | None = None,
    label: str | None = None,
    scopes: tuple[str, ...] = (),
    revoked: int | None = None,
) -> TokenRecord:
    """A stored token as a store takes it (`insert_tokens`): its hash made from its ID."""
    return TokenRecord(
        id=token_id,
        label=label,
        created_at=created,
        expires_at=expires,
        uses_left=uses,
        revoked_at=revoked,
        secret_hash=hashlib.sha256(token_id.encode()).digest(),
        uses_limit=uses,
        scopes=scopes,
    )


def event(at: int, action: str = "check", token_id: str | None = None) -> AuditEvent:
    """An audit event as a store records it."""
    return AuditEvent(at, action, token_id, "valid", "cli", None)


def tokencli(
    *args: str, stdin: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed executable."""
    assert EXECUTABLE is not None, "tokencli is not installed"
    return subprocess.run(
        [EXECUTABLE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def truncated_database(path: Path) -> None:
    """A real tokencli database with its second half cut off."""
    service = TokenService(SQLiteStore.open(path, create=True))
    list(service.issue_batches(count=3000))
    service.store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def other_application_database(path: Path) -> None:
    """A healthy SQLite file that belongs to someone else."""
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (body TEXT)")
    connection.execute("INSERT INTO notes VALUES ('keep me')")
    connection.commit()
    connection.close()


def check_reading_stdin(executable: str) -> subprocess.Popen[str]:
    """`tokencli check` started with no argument, once it waits for the token on stdin."""
    process = subprocess.Popen(
        [executable, "check"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_reading_stdin(process.pid)
    return process


def wait_until_reading_stdin(pid: int, timeout: float = 60) -> None:
    """Return once the process sleeps in a read of its stdin pipe (Linux: what the
    kernel reports in /proc); no guess at how long starting takes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            waiting_in = Path(f"/proc/{pid}/wchan").read_text()
            syscall = Path(f"/proc/{pid}/syscall").read_text().split()
        except OSError:
            return  # gone already: the caller's own assertions say what happened
        if "pipe_read" in waiting_in and syscall[:2] in (["0", "0x0"], ["63", "0x0"]):
            return  # read(0, ...): 0 on x86-64, 63 on arm64
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never waited on its stdin")


class Client:
    """Requests to a server on 127.0.0.1 (over TLS when given a trusting context)."""

    def __init__(self, port: int, *, tls_trust: Any = None) -> None:
        self.port = port
        self.tls_trust = tls_trust  # an ssl.SSLContext trusting the server's certificate

    def connection(self, timeout: float = 30) -> HTTPConnection:
        """A fresh client connection."""
        if self.tls_trust is not None:
            return HTTPSConnection("localhost", self.port, timeout=timeout, context=self.tls_trust)
        return HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One request on a new connection: status, headers, JSON (or raw) body."""
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
            content_type = response.getheader("Content-Type", "")
            payload = json.loads(raw) if content_type.startswith("application/json") else raw
            return response.status, dict(response.getheaders()), payload
        finally:
            connection.close()


class Served(Client):
    """A running server and what a test needs to talk to it."""

    def __init__(
        self,
        server: TokenHTTPServer,
        log: io.StringIO,
        thread: threading.Thread | None = None,
        *,
        tls_trust: Any = None,
    ) -> None:
        super().__init__(server.server_address[1], tls_trust=tls_trust)
        self.server = server
        self.log = log
        self.thread = thread

    def stop(self) -> None:
        """Stop the server and wait for its loop to end."""
        self.server.stop()
        if self.thread is not None:
            self.thread.join(timeout=30)


def start_server(
    location: Location | Path,
    *,
    admin_key: str | None = None,
    validate_key: str | None = None,
    clock: Clock | None = None,
    limits: Limits | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_trust: Any = None,
    log_format: str = "text",
    metrics: bool = True,
) -> Served:
    """The real server on 127.0.0.1, any free port, its loop on a thread: built by
    `build_server`, as `tokencli serve` builds it, with the access log in a buffer."""
    if isinstance(location, Path):
        location = Location(path=location)
    log = io.StringIO()
    environ = {}
    if admin_key is not None:
        environ[ADMIN_KEY_ENV] = admin_key
    if validate_key is not None:
        environ[VALIDATE_KEY_ENV] = validate_key
    options = ServeOptions(
        location=location,
        port=0,
        environ=environ,
        tls_cert=tls_cert,
        tls_key=tls_key,
        access_log=AccessLogFormat(log_format),
        log_stream=log,
        metrics=metrics,
        limits=limits or Limits(),
        clock=clock or time.time,
    )
    server = build_server(options)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return Served(server, log, thread, tls_trust=tls_trust)


def answer_all(
    service: TokenService | None, *requests: Request, config: ApiConfig | None = None
) -> list[Answer]:
    """The HTTP application's answers to requests that arrived together, in one store
    batch as the server answers them (no sockets)."""
    config = config or ApiConfig()
    if service is None:
        return answer_requests(None, list(requests), config)
    with service.store.batch():
        answers = answer_requests(service, list(requests), config)
    assert len(answers) == len(requests)
    return answers


def answer_one(
    service: TokenService | None, request: Request, config: ApiConfig | None = None
) -> Answer:
    """The HTTP application's answer to one request (a batch of one)."""
    return answer_all(service, request, config=config)[0]


def api_call(
    service: TokenService,
    method: str,
    target: str,
    body: bytes | dict[str, Any] | None = None,
    config: ApiConfig | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request to the HTTP application: its status, headers and JSON body."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    answer = answer_one(service, Request(method, target, "HTTP/1.1", {}, raw), config)
    return int(answer.status), answer.headers or {}, json.loads(answer.body)


def raw_exchange(port: int, request: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, half-close, and read everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


@contextlib.contextmanager
def serve_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], Client]]:
    """`tokencli serve --port 0 ARGS` in a subprocess, and a client of it; killed at the
    end if still running, so a failing test never hangs on it."""
    assert EXECUTABLE is not None, "tokencli is not installed"
    process = subprocess.Popen(
        [EXECUTABLE, "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("listening on http"), first
        port = int(first.strip().rsplit(":", 1)[1])
        yield process, Client(port)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
