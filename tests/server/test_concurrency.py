"""Many processes and the server on one database: nothing lost, a last use taken once.

Subprocess tests run the installed `tokencli`; traffic goes to 127.0.0.1 only, and every
loop is bounded in count and time."""

from __future__ import annotations

import json
import selectors
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import (
    EXECUTABLE,
    Served,
    needs_executable,
    tokencli,
)


@pytest.mark.slow
@needs_executable
def test_many_processes_and_the_server_share_one_file(db_path: Path, served: Served) -> None:
    assert EXECUTABLE is not None
    seed = TokenService(SQLiteStore.open(db_path, create=True))
    checked = [seed.issue(label="checked").token for _ in range(8)]
    served_token = seed.issue(label="served").token
    stop_http = threading.Event()
    http_answers: list[bool] = []

    def validate_over_http() -> None:
        deadline = time.monotonic() + 120
        while not stop_http.is_set() and time.monotonic() < deadline:
            http_answers.append(served.request("GET", f"/app/valid/{served_token}")[2]["status"])

    def check_loop(token: str) -> list[int]:
        return [tokencli("check", "-q", token).returncode for _ in range(6)]

    http_thread = threading.Thread(target=validate_over_http)
    http_thread.start()
    issuers = [
        subprocess.Popen(
            [EXECUTABLE, "issue", "--count", "200", "--label", "concurrent"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        check_codes = list(pool.map(check_loop, checked))
    outputs = [process.communicate(timeout=180) for process in issuers]
    stop_http.set()
    http_thread.join(timeout=60)

    assert all(process.returncode == 0 for process in issuers), [err for _, err in outputs]
    assert all(err == "" for _, err in outputs)
    assert check_codes == [[0] * 6] * 8
    assert http_answers and all(http_answers)
    issued = [line for out, _ in outputs for line in out.splitlines()]
    assert len(issued) == len(set(issued)) == 1600
    connection = sqlite3.connect(db_path)
    stored = connection.execute("SELECT count(*) FROM tokens WHERE label = 'concurrent'").fetchone()
    assert stored[0] == 1600
    verifier = TokenService(SQLiteStore.open(db_path, create=False))
    assert all(verifier.check(token).valid for token in issued)


@pytest.mark.slow
@needs_executable
def test_single_use_token_checked_by_twenty_processes_succeeds_once(db_path: Path) -> None:
    assert EXECUTABLE is not None
    token = TokenService(SQLiteStore.open(db_path, create=True)).issue(uses=1).token
    barrier = threading.Barrier(20)

    def race(_: int) -> int:
        barrier.wait(timeout=60)
        return tokencli("check", "-q", token).returncode

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(race, range(20)))
    assert sorted(codes) == [0] + [1] * 19


def test_single_use_token_checked_by_twenty_http_clients_succeeds_once(
    db_path: Path, served: Served
) -> None:
    token = TokenService(SQLiteStore.open(db_path, create=True)).issue(uses=1).token
    barrier = threading.Barrier(20)

    def race(_: int) -> bool:
        barrier.wait(timeout=60)
        return bool(served.request("GET", f"/app/valid/{token}")[2]["status"])

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(race, range(20)))
    assert answers.count(True) == 1


def test_a_thousand_clients_connecting_at_once(db_path: Path, served: Served) -> None:
    token = TokenService(SQLiteStore.open(db_path, create=True)).issue().token
    request = f"GET /app/valid/{token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    clients = []
    selector = selectors.DefaultSelector()
    for _ in range(1000):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", served.port))
        clients.append(client)
        selector.register(client, selectors.EVENT_WRITE, bytearray())
    answers: dict[int, bytes] = {}
    deadline = time.monotonic() + 60
    try:
        while len(answers) < 1000 and time.monotonic() < deadline:
            for key, events in selector.select(timeout=1):
                client = key.fileobj
                assert isinstance(client, socket.socket)
                if events & selectors.EVENT_WRITE:
                    client.sendall(request)
                    selector.modify(client, selectors.EVENT_READ, key.data)
                    continue
                chunk = client.recv(65536)  # a reset would raise here and fail the test
                if chunk:
                    key.data.extend(chunk)
                else:
                    answers[client.fileno()] = bytes(key.data)
                    selector.unregister(client)
    finally:
        for client in clients:
            client.close()
        selector.close()
    assert len(answers) == 1000
    assert all(
        answer.startswith(b"HTTP/1.1 200")
        and json.loads(answer.partition(b"\r\n\r\n")[2])["status"] is True
        for answer in answers.values()
    )


@pytest.mark.slow
@needs_executable
def test_opening_beside_a_busy_server_never_reads_a_torn_header(
    db_path: Path, serve: Callable[..., Served]
) -> None:
    """Regression: the identity probe once went through an immutable=1 connection, which
    read torn pages while the server checkpointed and called a healthy file damaged."""
    token = TokenService(SQLiteStore.open(db_path, create=True)).issue().token
    served = serve()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            served.request("POST", "/app/token")
            served.request("GET", f"/app/valid/{token}")

    assert EXECUTABLE is not None
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    # Bulk writers keep the WAL and so the checkpoints busy, page 1 included.
    writers = [
        subprocess.Popen(
            [EXECUTABLE, "issue", "--count", "3000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda _: tokencli("check", "-q", token), range(90)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        written = [writer.communicate(timeout=120) for writer in writers]
    failures = [result.stderr for result in results if result.returncode != 0]
    failures += [err for _, err in written if err]
    assert failures == []
