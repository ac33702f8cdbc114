"""Reliability under load, crashes, hostile files and bad input (issue: reliability).

Subprocess tests run the installed `tokencli`; traffic goes to 127.0.0.1 only, and every
loop is bounded in count and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_server import Served, start
from typer.testing import CliRunner

from tokencli import server as server_module
from tokencli.cli import app
from tokencli.errors import ExitStatus
from tokencli.service import TokenService
from tokencli.store import Store

from support import check_reading_stdin, other_application_database, truncated_database

EXECUTABLE = shutil.which("tokencli")
needs_executable = pytest.mark.skipif(EXECUTABLE is None, reason="tokencli is not installed")


def tokencli(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    assert EXECUTABLE is not None
    return subprocess.run(
        [EXECUTABLE, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def served(db_path: Path) -> Iterator[Served]:
    running = start(db_path)
    yield running
    running.server.stop()


# -- concurrency -----------------------------------------------------------------------


@pytest.mark.slow
@needs_executable
def test_many_processes_and_the_server_share_one_file(db_path: Path, served: Served) -> None:
    assert EXECUTABLE is not None
    seed = TokenService(Store.open(db_path, create=True))
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
    verifier = TokenService(Store.open(db_path, create=False))
    assert all(verifier.check(token).valid for token in issued)


@pytest.mark.slow
@needs_executable
def test_single_use_token_checked_by_twenty_processes_succeeds_once(db_path: Path) -> None:
    assert EXECUTABLE is not None
    token = TokenService(Store.open(db_path, create=True)).issue(uses=1).token
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
    token = TokenService(Store.open(db_path, create=True)).issue(uses=1).token
    barrier = threading.Barrier(20)

    def race(_: int) -> bool:
        barrier.wait(timeout=60)
        return bool(served.request("GET", f"/app/valid/{token}")[2]["status"])

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(race, range(20)))
    assert answers.count(True) == 1


# -- crash safety ----------------------------------------------------------------------


@pytest.mark.slow
@needs_executable
def test_sigkill_mid_issue_leaves_whole_transactions_only(db_path: Path) -> None:
    assert EXECUTABLE is not None
    with subprocess.Popen(
        [EXECUTABLE, "issue", "--count", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(10)]  # the first batch is committed
        process.send_signal(signal.SIGKILL)
        rest = process.stdout.read()
        process.wait(timeout=60)
    printed_tokens = [line.decode().strip() for line in printed] + rest.decode().split()
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = connection.execute("SELECT count(*) FROM tokens").fetchone()[0]
    events = connection.execute("SELECT count(*) FROM audit WHERE action = 'issue'").fetchone()[0]
    connection.close()
    assert stored in (50_000, 100_000)  # whole batches of 50,000, never a part of one
    assert events == stored  # each token and its audit event committed together
    verifier = TokenService(Store.open(db_path, create=False))
    assert all(verifier.check(token).valid for token in printed_tokens[::500] if ":" in token)
    after = tokencli("issue")
    assert after.returncode == 0 and after.stderr == ""


# -- hostile and broken files ----------------------------------------------------------


HOSTILE = {
    "random bytes": lambda path: path.write_bytes(os.urandom(8192)),
    "empty file": lambda path: path.write_bytes(b""),
    "other sqlite": other_application_database,
    "truncated tokencli": truncated_database,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize(
    "command", [["issue"], ["check", "x"], ["list"], ["purge"], ["stats"], ["revoke", "a" * 12]]
)
def test_hostile_files_exit_3_and_stay_unchanged(
    runner: CliRunner, tmp_path: Path, kind: str, command: list[str]
) -> None:
    path = tmp_path / "hostile.db"
    HOSTILE[kind](path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = runner.invoke(app, ["--db", str(path), *command])
    assert result.exit_code == ExitStatus.STORAGE, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_directory_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--db", str(tmp_path), "issue"])
    assert result.exit_code == ExitStatus.STORAGE
    assert "is a folder" in result.stderr


def test_unwritable_folder_as_an_unprivileged_user(runner: CliRunner) -> None:
    """Root ignores folder permissions, so as root the check runs in a child that drops to
    nobody; as any other user it runs as that user."""
    base = Path(tempfile.mkdtemp(prefix="tokencli-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "tokens.db"
        if os.geteuid() != 0:
            result = runner.invoke(app, ["--db", str(target), "issue"])
            code, message = result.exit_code, result.stderr
        else:
            code, message = _run_as_nobody(runner, ["--db", str(target), "issue"])
        assert code == ExitStatus.STORAGE
        assert "ermission denied" in message
        assert not target.exists()
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base)


def _run_as_nobody(runner: CliRunner, args: list[str]) -> tuple[int, str]:
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            result = runner.invoke(app, args)
            os.write(writer, json.dumps([result.exit_code, result.stderr]).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(child, 0)
    code, message = json.loads(payload)
    return int(code), str(message)


# -- the server under load and against slow clients ------------------------------------


def test_a_thousand_clients_connecting_at_once(db_path: Path, served: Served) -> None:
    token = TokenService(Store.open(db_path, create=True)).issue().token
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
        answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'"status": true}')
        for answer in answers.values()
    )


def test_a_stalled_client_times_out_without_blocking_others(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_SECONDS", 1.0)
    running = start(db_path)
    try:
        stalled = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        stalled.sendall(b"POST /app/token HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        started = time.monotonic()
        for _ in range(20):
            assert running.request("GET", "/health")[0] == 200
        assert time.monotonic() - started < 5
        stalled.settimeout(10)
        assert stalled.recv(1) == b""  # dropped after the timeout, no answer invented
        assert time.monotonic() - started < 8
        stalled.close()
    finally:
        running.server.stop()


# -- secrets ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_executable
def test_no_plaintext_secret_in_file_log_audit_or_ps(db_path: Path, tmp_path: Path) -> None:
    assert EXECUTABLE is not None
    issued = tokencli("issue", "--count", "5", "--uses", "3")
    tokens = issued.stdout.split()
    secrets_only = [token.split(":")[1] for token in tokens]
    with check_reading_stdin(EXECUTABLE) as checker:
        time.sleep(0.5)
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        out, _ = checker.communicate(tokens[0] + "\n", timeout=60)
    assert out == "valid\n"
    log = tmp_path / "access.log"
    with subprocess.Popen(
        [EXECUTABLE, "serve", "--port", "0"], stderr=subprocess.PIPE, text=True
    ) as server:
        assert server.stderr is not None
        port = int(server.stderr.readline().strip().rsplit(":", 1)[1])
        for token in tokens:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                request = f"GET /app/valid/{token} HTTP/1.1\r\nConnection: close\r\n\r\n"
                client.sendall(request.encode())
                while client.recv(65536):
                    pass
        server.send_signal(signal.SIGTERM)
        log.write_text(server.stderr.read())
        server.wait(timeout=30)
    Store.open(db_path, create=False).close()
    stored = b"".join(
        Path(f"{db_path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{db_path}{suffix}").exists()
    )
    dumper = sqlite3.connect(db_path)
    audit_dump = "\n".join(dumper.iterdump())
    dumper.close()
    access_log = log.read_text()
    assert access_log.count("/app/valid/") == 5
    for secret in secrets_only:
        assert secret not in listing
        assert secret.encode() not in stored
        assert secret not in audit_dump
        assert secret not in access_log
