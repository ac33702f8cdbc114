"""Hostile clients against the real server: none can stall it, kill it or grow it.

One test per finding of the hostile review (issue "No client can stall or kill serve").
Timeouts are shortened through `Limits` so each test takes seconds; every test is
bounded in time and count and talks to 127.0.0.1 only. Tests assert on events (what was
answered, closed, or still waiting); where a duration is checked it is a generous bound
(several times what the server needs), telling a stall from a slow machine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tokencli.http import http11
from tokencli.server.config import Limits
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import Served, raw_exchange, status_of

# Timeouts of seconds instead of tens, so a test of one takes seconds.
SHORT_TIMEOUTS = Limits(request_timeout=1.0, idle_timeout=30.0, drain_seconds=0.5)


def read_all(client: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes (or the deadline passes)."""
    chunks = []
    client.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = client.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def health_is_quick(served: Served, times: int = 10, within: float = 5.0) -> bool:
    """Whether /health answers `times` times, each within `within` seconds: a generous
    bound (an unstalled server answers in milliseconds; a stalled one not for 10 s)."""
    for _ in range(times):
        started = time.monotonic()
        if served.request("GET", "/health")[0] != 200 or time.monotonic() - started > within:
            return False
    return True


def issue_token(db_path: Path, **options: object) -> str:
    service = TokenService(SQLiteStore.open(db_path, create=True))
    try:
        return service.issue(**options).token  # type: ignore[arg-type]
    finally:
        service.store.close()


# -- 1. one header killed the loop ------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "status"),
    [("0" * 4301, 200), ("9" * 5000, 413), ("1" + "0" * 4300, 413)],
    ids=["4301-zeros", "5000-nines", "4301-digits"],
)
def test_a_content_length_of_thousands_of_digits_is_answered_and_the_loop_lives(
    serve: Callable[..., Served], declared: str, status: int
) -> None:
    served = serve()
    request = f"POST /app/token HTTP/1.1\r\nContent-Length: {declared}\r\n\r\n".encode()
    assert status_of(raw_exchange(served.port, request)) == status
    assert health_is_quick(served, times=3)
    assert served.thread is not None and served.thread.is_alive()


# -- 2. one bad body failed its whole batch ---------------------------------------------


def test_a_body_nested_twenty_thousand_deep_is_400_and_its_batch_neighbours_are_fine(
    serve: Callable[..., Served], db_path: Path
) -> None:
    served = serve()
    token = issue_token(db_path)
    nested = b"[" * 20_000
    validate = f"GET /app/valid/{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    bomb = b"POST /app/token HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(nested), nested)
    last = f"GET /app/valid/{token} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    # Pipelined in one write: the three are framed together and answered in one batch.
    answer = raw_exchange(served.port, validate + bomb + last)
    statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200, 400, 200]
    assert answer.count(b'"status": true') == 2
    assert b"nests deeper" in answer
    assert " 500 " not in served.log.getvalue()


def test_a_bad_body_among_concurrent_validations_fails_none_of_them(
    serve: Callable[..., Served], db_path: Path
) -> None:
    served = serve()
    token = issue_token(db_path)
    results: list[bool] = []
    stop = threading.Event()

    def validate() -> None:
        while not stop.is_set():
            status, _, payload = served.request("GET", f"/app/valid/{token}")
            results.append(status == 200 and payload["status"] is True)

    threads = [threading.Thread(target=validate) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            status = served.request("POST", "/app/token", body=b"[" * 20_000)[0]
            assert status == 400
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert results and all(results)


# -- 3. the stall limit was per read -----------------------------------------------------


def test_a_request_trickled_a_byte_at_a_time_is_cut_off_at_the_request_timeout(
    serve: Callable[..., Served],
) -> None:
    served = serve(limits=SHORT_TIMEOUTS)
    # 20 bytes a second for 25 s: every read is "recent", the request never complete.
    trickle = b"GET /health HTTP/1.1\r\n" + b"X-Slow: " + b"y" * 500
    sent = 0
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as client:
        client.setblocking(False)
        answer = b""
        for byte in trickle:
            try:
                client.sendall(bytes([byte]))
                sent += 1
                answer += client.recv(65536)
            except BlockingIOError:
                pass  # nothing to read yet
            except OSError:
                break  # the server closed the connection
            if answer:
                break  # its 408 arrived
            time.sleep(0.05)
        client.setblocking(True)
        answer += read_all(client, time.monotonic() + 5)
    # Cut off at 1 s from the first byte: long before the trickle could have ended.
    assert sent < len(trickle)
    assert answer == b"" or status_of(answer) == 408
    assert health_is_quick(served, times=3)


def test_a_stalled_client_times_out_without_blocking_others(serve: Callable[..., Served]) -> None:
    running = serve(limits=SHORT_TIMEOUTS._replace(request_timeout=5.0))
    stalled = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    stalled.sendall(b"POST /app/token HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
    for _ in range(20):
        assert running.request("GET", "/health")[0] == 200
    # The twenty were answered while the stalled request still waited for its body:
    # nobody waited for it to time out.
    stalled.setblocking(False)
    with pytest.raises(BlockingIOError):
        stalled.recv(1)
    stalled.setblocking(True)
    answer = read_all(stalled, time.monotonic() + 30)
    assert answer == b"" or status_of(answer) == 408  # then dropped after its timeout
    stalled.close()


# -- 4. a client that does not read froze everyone ---------------------------------------


def test_clients_that_never_read_do_not_slow_anyone_and_are_dropped(
    serve: Callable[..., Served],
) -> None:
    served = serve(limits=SHORT_TIMEOUTS._replace(output_high_water=16 * 1024))
    request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"  # a large answer
    hogs = []
    for _ in range(5):
        hog = socket.socket()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        hog.connect(("127.0.0.1", served.port))
        hog.setblocking(False)
        hogs.append(hog)
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # pipeline as fast as the server lets us
            for hog in hogs:
                try:
                    hog.send(request * 20)
                except (BlockingIOError, OSError):
                    pass
            time.sleep(0.01)
        assert health_is_quick(served, times=20, within=0.5)
        time.sleep(SHORT_TIMEOUTS.request_timeout + 1.5)  # their output could not drain in time
        assert served.server.open_connections == 0
    finally:
        for hog in hogs:
            hog.close()


# -- 5. pipelining grew memory without bound ---------------------------------------------


def test_pipelining_faster_than_answers_leave_holds_bounded_memory(
    serve: Callable[..., Served],
) -> None:
    served = serve(limits=SHORT_TIMEOUTS._replace(request_timeout=5.0))
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    flood = socket.socket()
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood.connect(("127.0.0.1", served.port))
    flood.setblocking(False)
    sent = 0
    peak = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                sent += flood.send(request * 500)
            except (BlockingIOError, OSError):
                time.sleep(0.005)
            held = sum(
                len(connection.parser.buffer) + connection.pending_output
                for connection in served.server.connections()
            )
            peak = max(peak, held)
    finally:
        flood.close()
    bound = (
        http11.MAX_REQUEST_BYTES
        + SHORT_TIMEOUTS.recv_bytes
        + SHORT_TIMEOUTS.output_high_water
        + 65536
    )
    assert sent > 0 and peak <= bound, (sent, peak, bound)


# -- 7. near-miss paths logged the secret -----------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "//app/valid/{token}",
        "/APP/valid/{token}",
        "/app/token/{token}",
        "/app/valid/x/{token}",
        "/health?token={token}",
        "/app/valid/{encoded}",
        "/{secret}",
    ],
)
def test_near_miss_paths_never_log_the_secret(
    serve: Callable[..., Served], db_path: Path, template: str
) -> None:
    served = serve()
    token = issue_token(db_path)
    token_id, secret = token.split(":")
    encoded = "".join(f"%{byte:02X}" for byte in token.encode())
    path = template.format(token=token, secret=secret, encoded=encoded)
    served.request("GET", path)
    log = served.log.getvalue()
    assert secret not in log and secret[:20] not in log
    assert log.count("\n") == 1


# -- 12. the database file replaced under the server -------------------------------------


def test_replacing_the_database_file_under_the_server_fails_loudly(
    serve: Callable[..., Served], db_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    served = serve()
    assert served.request("POST", "/app/token")[0] == 200
    replacement = db_path.with_name("other.db")
    SQLiteStore.open(replacement, create=True).close()
    replacement.replace(db_path)  # an operator's `mv` over the live file
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and served.request("GET", "/health")[0] == 200:
        time.sleep(0.1)
    status, _, payload = served.request("GET", "/health")
    # The client learns it is unavailable; the file's path and the reason are the log's.
    assert status == 503 and str(db_path) not in payload["detail"]
    assert served.request("POST", "/app/token")[0] == 503
    assert served.request("GET", "/openapi.json")[0] == 200
    assert "was replaced or removed" in capfd.readouterr().err


# -- 13. the connection cap -------------------------------------------------------------


def test_past_the_connection_cap_new_clients_wait_and_are_answered(
    serve: Callable[..., Served],
) -> None:
    served = serve(limits=SHORT_TIMEOUTS._replace(max_connections=4, idle_under_pressure=0.5))
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(4)]
    slow = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    try:
        slow.sendall(b"GET /health HTTP/1.1\r\n")  # half a request: holds its slot 1 s
        started = time.monotonic()
        status, _, _ = served.request("GET", "/health")
        assert status == 200 and time.monotonic() - started < 5
        assert served.server.open_connections <= 4
    finally:
        for client in [*idle, slow]:
            client.close()


def test_idle_connections_make_room_under_pressure(serve: Callable[..., Served]) -> None:
    served = serve(limits=SHORT_TIMEOUTS._replace(max_connections=3, idle_under_pressure=0.5))
    clients = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(3)]
    try:
        for client in clients:
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert served.request("GET", "/health")[0] == 200
        assert time.monotonic() - started < 4
        assert all(read_all(client, time.monotonic() + 3) == b"" for client in clients)
    finally:
        for client in clients:
            client.close()


def test_garbage_then_a_good_client_on_the_same_server(serve: Callable[..., Served]) -> None:
    served = serve()
    for garbage in (
        b"\x16\x03\x01\x02\x00" + b"\x00" * 500,
        b"GET / HTTP/1.1\r\n" + b"A" * 100_000,
    ):
        answer = raw_exchange(served.port, garbage)
        assert answer == b"" or 400 <= status_of(answer) < 500
    assert served.request("GET", "/health")[0] == 200
