"""`tokencli serve` replicas in subprocesses, and the race every deployment must win.

Shared by the replica, PgBouncer and failover tests (tests/server/). Real processes of
the installed executable, HTTP on 127.0.0.1 only; every wait polled against a deadline,
every process killed at the end if still running.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from support import EXECUTABLE, Client, tokencli

START_SECONDS = 30  # for a replica to say where it listens


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll `condition` until it returns something true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.01)


class Replica:
    """`tokencli --db DB serve --port 0 ARGS` in a subprocess; its stderr goes to a file (a
    pipe nobody reads would fill up and stall the server)."""

    def __init__(self, log: Path, db: str, *args: str, env: dict[str, str] | None = None) -> None:
        assert EXECUTABLE is not None, "tokencli is not installed"
        self.log_path = log
        with log.open("w") as sink:
            self.process = subprocess.Popen(
                [EXECUTABLE, "--db", db, "serve", "--port", "0", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env=env,
            )
        try:
            found = wait_for(self._listening, START_SECONDS, f"{log.name}: listening on")
        except BaseException:
            self.process.kill()
            self.process.wait(timeout=30)
            raise
        self.port = int(found.group(1))
        self.client = Client(self.port)

    def _listening(self) -> re.Match[str] | None:
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited {self.process.returncode}:\n{self.log()}")
        return re.search(r"^listening on http://127\.0\.0\.1:(\d+)$", self.log(), re.MULTILINE)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, as a supervisor stops it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start replicas; any still running when the test ends is killed."""
    started: list[Replica] = []

    def start(db: str, *args: str, env: dict[str, str] | None = None) -> Replica:
        replica = Replica(tmp_path / f"serve-{len(started)}.log", db, *args, env=env)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.kill()


def exchange(
    connection: HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    """One request on a kept-alive connection: status and JSON body."""
    connection.request(method, path, body=body)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def check_json(url: str, token: str) -> dict[str, Any]:
    result = tokencli("--db", url, "check", "--json", token)
    assert result.returncode in (0, 1), result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def audit_json(url: str) -> list[dict[str, Any]]:
    result = tokencli("--db", url, "audit", "--json", "--limit", "1000000")
    assert result.returncode == 0, result.stderr
    events: list[dict[str, Any]] = json.loads(result.stdout)
    return events


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def race_single_use_tokens(url: str, first: Replica, second: Replica, count: int) -> None:
    """Issue `count` single-use tokens (CLI on `url`), then present each four times at
    once, twice on each replica: every answer is 200, and each token is valid exactly once.

    Eight keep-alive clients, four on each replica. Token i goes to the four clients of
    its parity, two on each replica; all walk the tokens in the same order, so the four
    presentations of a token arrive together, on both replicas.
    """
    issued = tokencli("--db", url, "issue", "--count", str(count), "--uses", "1")
    assert issued.returncode == 0, issued.stderr
    tokens = issued.stdout.split()
    assert len(tokens) == count
    ports = [first.port] * 4 + [second.port] * 4
    answers: list[list[tuple[str, int, Any]]] = [[] for _ in ports]
    failures: list[BaseException] = []
    go = threading.Barrier(len(ports), timeout=120)

    def present(client: int) -> None:
        connection = HTTPConnection("127.0.0.1", ports[client], timeout=60)
        try:
            for position, token in enumerate(tokens[client % 2 :: 2]):
                if position % 50 == 0:
                    go.wait()  # every 50 tokens the eight start again together: the
                    # clients of a loaded replica never fall behind for the rest of the run
                status, body = exchange(connection, "GET", f"/app/valid/{token}")
                answers[client].append((token, status, body.get("status", body)))
        except BaseException as error:  # reported below: a thread must not die silently
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=present, args=(n,)) for n in range(len(ports))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    flat = [answer for per_client in answers for answer in per_client]
    assert len(flat) == 4 * count
    errors = [answer for answer in flat if answer[1] != 200]
    assert errors == [], f"{len(errors)} errors, e.g. {errors[:3]}"
    granted = Counter(token for token, _, verdict in flat if verdict is True)
    assert sum(granted.values()) == count
    assert set(granted) == set(tokens)  # each token once: none twice, none never
    assert sum(1 for _, _, verdict in flat if verdict is False) == 3 * count
    # Both replicas granted some: the race was real.
    per_replica = Counter(
        ports[client] for client, per_client in enumerate(answers) for a in per_client if a[2]
    )
    assert per_replica[first.port] > 0 and per_replica[second.port] > 0
    outcomes = Counter(
        (event["outcome"], event["source"])
        for event in audit_json(url)
        if event["action"] == "check"
    )
    assert outcomes == {("valid", "http"): count, ("used_up", "http"): 3 * count}
