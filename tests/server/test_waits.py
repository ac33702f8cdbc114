"""No wait of `serve` is unbounded: another process holding SQLite's write lock (a long
`tokencli import`) never freezes the event loop, a SIGTERM delivers every answer already
committed, and a stopped PostgreSQL backend holds up only what needs it. (Closed
connections leaving the TLS handshake queue: tests/server/test_tls.py.)

Another writer is a real second process (`LockHolder`), holding the lock exactly as long
as the test says, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tokencli.domain.location import Location
from tokencli.server.config import Limits
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import Served, needs_executable, serve_process

HOLD_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
print("released", flush=True)
"""


class LockHolder:
    """Another process holding the database's write lock until `release()`."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "released\n"
        self.process.communicate(timeout=30)  # waits, and closes the pipes

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


@pytest.fixture
def lock_holder(db_path: Path) -> Iterator[Callable[[], LockHolder]]:
    holders: list[LockHolder] = []

    def hold() -> LockHolder:
        holders.append(LockHolder(db_path))
        return holders[-1]

    yield hold
    for holder in holders:
        holder.kill()


def issue_tokens(db_path: Path, count: int, **options: object) -> list[str]:
    service = TokenService(SQLiteStore.open(db_path, create=True))
    try:
        return [service.issue(**options).token for _ in range(count)]  # type: ignore[arg-type]
    finally:
        service.store.close()


def read_answers(client: socket.socket, count: int) -> list[tuple[int, dict[str, object]]]:
    """`count` HTTP answers from a socket: status and JSON body of each."""
    answers = []
    with client.makefile("rb") as stream:
        for _ in range(count):
            status_line = stream.readline()
            assert status_line.startswith(b"HTTP/1.1 "), status_line
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            answers.append((int(status_line[9:12]), json.loads(stream.read(length))))
    return answers


def test_reads_and_health_answer_while_another_process_holds_the_write_lock(
    serve: Callable[..., Served], db_path: Path, lock_holder: Callable[[], LockHolder]
) -> None:
    served = serve()
    token = issue_tokens(db_path, 1, uses=5)[0]
    holder = lock_holder()
    # A validation writes (a use, an audit event): it waits for the lock on its own
    # connection while everything that only reads is answered meanwhile.
    waiting = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    try:
        waiting.sendall(f"GET /app/valid/{token} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        for method, path in (
            ("GET", "/health"),
            ("GET", "/app/tokens"),
            ("GET", "/openapi.json"),
            ("GET", "/metrics"),
        ):
            status, _, _ = served.request(method, path)
            assert status == 200, path
        waiting.settimeout(0.3)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # no answer while the lock is held: nothing was stored yet
        holder.release()
        waiting.settimeout(30)
        [(status, body)] = read_answers(waiting, 1)
    finally:
        waiting.close()
    assert status == 200 and body["state"] == "valid" and body["uses_left"] == 4


def test_a_write_that_waits_past_the_bound_is_503_and_takes_nothing(
    serve: Callable[..., Served], db_path: Path, lock_holder: Callable[[], LockHolder]
) -> None:
    served = serve(limits=Limits(store_wait=0.5))
    token = issue_tokens(db_path, 1, uses=1)[0]
    holder = lock_holder()
    status, _, body = served.request("GET", f"/app/valid/{token}")
    assert status == 503 and "busy" in str(body["detail"])
    status, _, _ = served.request("POST", "/app/token")
    assert status == 503
    assert served.request("GET", "/health")[0] == 200
    holder.release()
    # The refused check took nothing: the single use is still there.
    status, _, body = served.request("GET", f"/app/valid/{token}")
    assert (status, body["state"], body["uses_left"]) == (200, "valid", 0)


@needs_executable
def test_sigterm_delivers_every_answer_already_committed(
    db_path: Path, lock_holder: Callable[[], LockHolder]
) -> None:
    tokens = issue_tokens(db_path, 3, uses=1)
    with serve_process("--quiet") as (process, client):
        holder = lock_holder()
        pipelined = socket.create_connection(("127.0.0.1", client.port), timeout=30)
        try:
            pipelined.sendall(
                "".join(f"GET /app/valid/{t} HTTP/1.1\r\nHost: t\r\n\r\n" for t in tokens).encode()
            )
            time.sleep(0.2)  # let the server frame them; they wait for the lock
            process.send_signal(signal.SIGTERM)
            holder.release()  # the batch commits after the signal: three uses spent
            answers = read_answers(pipelined, 3)
            assert pipelined.recv(1) == b""  # then the server closes the connection
        finally:
            pipelined.close()
        _, rest = process.communicate(timeout=30)
    assert [(status, body["state"]) for status, body in answers] == [(200, "valid")] * 3
    assert process.returncode == 0 and "Traceback" not in rest


@pytest.mark.stores("postgres", reason="a backend process to stop")
def test_a_stopped_postgres_backend_holds_up_only_what_needs_it(
    serve: Callable[..., Served], postgres_url: str
) -> None:
    name = f"tokencli-wait-{uuid.uuid4().hex[:8]}"
    served = serve(Location(url=f"{postgres_url}&application_name={name}"))
    assert served.request("POST", "/app/token")[0] == 200  # the store's connection is open
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    assert row is not None
    backend = int(row[0])
    os.kill(backend, signal.SIGSTOP)
    stuck: list[int] = []
    try:
        waiting = threading.Thread(
            target=lambda: stuck.append(served.request("POST", "/app/token")[0])
        )
        waiting.start()
        time.sleep(0.2)  # the issue is now waiting on the stopped backend
        # The loop answers everything that needs no database meanwhile.
        for path in ("/openapi.json", "/metrics", "/docs"):
            connection = served.connection(timeout=5)
            try:
                connection.request("GET", path)
                assert connection.getresponse().status == 200, path
            finally:
                connection.close()
        status, _, _ = served.request("GET", "/nowhere")
        assert status == 404
    finally:
        os.kill(backend, signal.SIGCONT)
    waiting.join(timeout=60)
    assert stuck and stuck[0] in (200, 503)  # answered once the backend moves again
