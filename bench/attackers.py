"""Hostile HTTP clients, one attack per process, for bench/hostile.py.

Usage: python attackers.py ATTACK PORT SECONDS [COUNT]

Each sends to 127.0.0.1 only (there is no host argument), stops after SECONDS or at
SIGTERM, closes every socket with a reset (no TIME_WAIT left behind), and prints two JSON
lines: {"ready": {...}} once at full strength, then {"done": {...}} with what it counted.
Attacks holding connections open one again whenever the server closes one, so they keep
their strength. Standard library only; plain sockets and threads, which cost the load
generator's core less than asyncio does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
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
POST = b"POST /app/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


class Run:
    """The attack's bounds (a deadline, and a stop flag SIGTERM raises) and its tallies."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        signal.signal(signal.SIGTERM, lambda *_: self.stopped.set())

    def going(self) -> bool:
        """Neither stopped nor past the deadline."""
        return not self.stopped.is_set() and time.monotonic() < self.deadline

    def sleep(self, seconds: float) -> None:
        """Sleep, waking at once on SIGTERM or at the deadline."""
        self.stopped.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def count(self, what: str, amount: int = 1) -> None:
        """Add to a tally (from any thread)."""
        with self.lock:
            self.counts[what] += amount

    def in_threads(self, clients: int, target: Callable[[], None]) -> None:
        """`clients` threads running `target`, waited for within the run's bounds."""
        emit("ready", {"clients": clients})
        threads = [threading.Thread(target=target, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 5.0)


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One JSON line for the harness."""
    print(json.dumps({kind: payload}), flush=True)


def connect(port: int, timeout: float, rcvbuf: int = 0) -> socket.socket:
    """A connection to the server (a small receive window from the start if `rcvbuf`)."""
    sock = socket.socket()
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(3.0)
        sock.connect((HOST, port))
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def close_hard(sock: socket.socket) -> None:
    """Close with a reset: tens of thousands of TIME_WAIT sockets would outlive the run."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_answer(sock: socket.socket, buffer: bytearray) -> tuple[str, bytes]:
    """One whole answer: its status code (or what went wrong instead) and its body."""
    try:
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            data = sock.recv(262144)
            if not data:
                return "closed" if not buffer else "truncated", b""
            buffer += data
        length = re.search(rb"(?im)^content-length:\s*(\d+)", buffer[:end])
        needed = end + 4 + (int(length[1]) if length else 0)
        while len(buffer) < needed:
            data = sock.recv(262144)
            if not data:
                return "truncated", b""
            buffer += data
        status, body = (
            bytes(buffer[9:12]).decode("ascii", "replace"),
            bytes(buffer[end + 4 : needed]),
        )
        del buffer[:needed]
        return status, body
    except OSError as error:  # TimeoutError included
        return type(error).__name__, b""


# -- the attacks -----------------------------------------------------------------------


def content_length(port: int, run: Run, count: int) -> None:
    """(a) POST /app/token whose Content-Length is 4,301 zeros, then one of 5,000 digits
    (int() refuses over 4,300), every half second, each on a new connection."""
    for turn in range(1_000_000):
        for name, value in (("zeros-4301", b"0" * 4301), ("digits-5000", b"9" * 5000)):
            try:
                sock = connect(port, 2.0)
            except OSError as error:
                run.count(f"{name} {type(error).__name__}")
                continue
            try:
                sock.sendall(POST + b"Content-Length: " + value + b"\r\n\r\n")
                run.count(f"{name} {read_answer(sock, bytearray())[0]}")
            except OSError as error:
                run.count(f"{name} {type(error).__name__}")
            finally:
                close_hard(sock)
        if turn == 0:
            emit("ready", dict(run.counts))
        run.sleep(0.5)
        if not run.going():
            return


def keep_asking(
    port: int, run: Run, clients: int, depth: int, first: bytes, then: Callable[[bytes], bytes]
) -> None:
    """`clients` keep-alive connections, each keeping `depth` requests in flight: `first`
    to begin with, and after each answer, `then(that answer's body)`."""

    def client() -> None:
        while run.going():
            try:
                sock = connect(port, 10.0)
                sock.sendall(first * depth)
            except OSError:
                run.count("connect_failed")
                run.sleep(0.2)
                continue
            buffer = bytearray()
            try:
                while run.going():
                    status, body = read_answer(sock, buffer)
                    run.count(status)
                    run.count("bytes_read", len(body))
                    if not status.isdigit():
                        break
                    sock.sendall(then(body))
            except OSError:
                run.count("send_failed")
            finally:
                close_hard(sock)

    run.in_threads(clients, client)


def deep_json(port: int, run: Run, count: int) -> None:
    """(b) POST /app/token with a body of 20,000 `[` (json.loads would recurse), `count`
    keep-alive clients (default 3) sending it again as soon as the answer arrives."""
    body = b"[" * 20_000
    request = POST + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    keep_asking(port, run, count or 3, 1, request, lambda _: request)


def admin_list(port: int, run: Run, count: int) -> None:
    """(j) `count` connections (default 8), each with 4 pipelined GET /app/tokens for the
    biggest page the server allows (100,000, or less if its OpenAPI says so); an answer's
    `next`, if any, is asked for next, and a walk that ends starts again."""
    sock = connect(port, 10.0)
    try:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        listing = json.loads(read_answer(sock, bytearray())[1])["paths"]["/app/tokens"]["get"]
        given = [p["schema"] for p in listing.get("parameters", []) if p.get("name") == "limit"]
        limit = min([100_000] + [int(schema.get("maximum", 100_000)) for schema in given])
    finally:
        close_hard(sock)
    run.counts["limit"] = limit
    first = f"GET /app/tokens?limit={limit} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def then(body: bytes) -> bytes:
        at = body.rfind(b'"next"')
        found = re.match(rb'"next":\s*"([^"]+)"', body[at:]) if at >= 0 else None
        if found is None:
            return first
        run.count("pages_followed")
        after = found[1].decode()
        path = after if after.startswith("/") else f"/app/tokens?limit={limit}&after={after}"
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    keep_asking(port, run, count or 8, 4, first, then)


def flood(port: int, run: Run, clients: int, rcvbuf: int, read_every: float) -> None:
    """`clients` connections pipelining GET /health as fast as the server takes them (up
    to 256 MiB each), reading the answers 64 KiB every `read_every` s, or never (0);
    reconnecting when the server hangs up."""
    chunk = HEALTH * (100 if rcvbuf else 1000)

    def read_slowly(sock: socket.socket, done: threading.Event) -> None:
        while run.going() and not done.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            run.count("bytes_read", len(data))
            run.sleep(read_every)

    def client() -> None:
        sent = 0
        while run.going():
            try:
                sock = connect(port, 0.5, rcvbuf)
            except OSError:
                run.count("connect_failed")
                run.sleep(0.2)
                continue
            run.count("connections")
            done = threading.Event()
            reader = threading.Thread(target=read_slowly, args=(sock, done), daemon=True)
            if read_every:
                reader.start()
            pending = memoryview(chunk)
            try:
                while run.going():
                    if sent >= 256 * 1024 * 1024:  # keep reading what is left to answer
                        run.sleep(0.1)
                        continue
                    with contextlib.suppress(TimeoutError):  # both buffers full
                        now = sock.send(pending)
                        sent += now
                        run.count("bytes_sent", now)
                        pending = pending[now:] or memoryview(chunk)
            except OSError:
                run.count("closed_by_server")
            finally:
                done.set()
                if read_every:
                    reader.join(timeout=2.0)
                close_hard(sock)

    run.in_threads(clients, client)


def no_read(port: int, run: Run, count: int) -> None:
    """(d) `count` clients (default 5) with a 1 KiB receive buffer pipeline GET /health as
    fast as they can and never read an answer."""
    flood(port, run, count or 5, 1024, 0.0)


def pipeline_flood(port: int, run: Run, count: int) -> None:
    """(e) `count` clients (default 2) pipeline far faster than the answers leave, reading
    64 KiB every 10 ms: slower than they send, fast enough that the server never waits to
    send (that is d). What a server reads ahead piles up in its memory."""
    flood(port, run, count or 2, 0, 0.01)


def cpu_amplification(port: int, run: Run, count: int) -> None:
    """(f) `count` connections (default 20) send 62 KB of headers, then a 60,000-byte body
    4 bytes every 2 ms: a parser that re-reads the head on each arrival does ~62 KB of
    work per 4 bytes."""
    filler = b"".join(b"X-Filler-%04d: " % index + b"a" * 46 + b"\r\n" for index in range(1000))
    head = POST + b"Content-Length: 60000\r\n" + filler + b"\r\n"
    body = b'{"label": "' + b"a" * (60_000 - 13) + b'"}'
    connections: list[tuple[socket.socket, list[int]]] = []
    try:
        for _ in range(count or 20):
            try:
                connections.append((connect(port, 5.0), [0]))
                connections[-1][0].sendall(head)
                connections[-1][0].setblocking(False)
            except OSError:
                run.count("connect_failed")
        emit("ready", {"connections": len(connections), "head_bytes": len(head)})
        while run.going() and connections:
            for sock, offset in connections:
                try:
                    if offset[0] < len(body):
                        offset[0] += sock.send(body[offset[0] : offset[0] + 4])
                        continue
                    with contextlib.suppress(BlockingIOError):  # whole: drop the answer
                        sock.recv(65536)
                    run.count("requests_completed")
                    sock.settimeout(5.0)
                    sock.sendall(head)
                    sock.setblocking(False)
                    offset[0] = 0
                except BlockingIOError:
                    run.count("send_blocked")
                except OSError:
                    run.count("send_failed")
            run.sleep(0.002)
    finally:
        for sock, _ in connections:
            close_hard(sock)


class Holder:
    """Holds `count` connections, opening one anew whenever the server closes one.

    Connects are non-blocking (at most 256 in flight), so a server that stops accepting
    slows the reopening without stalling the connections held. `on_open(sock, index)`
    sends what the attack sends first; a connection that turns readable was answered or
    closed by the server, and is reopened."""

    def __init__(
        self, port: int, run: Run, count: int, on_open: Callable[[socket.socket, int], None]
    ) -> None:
        self.port, self.run, self.count, self.on_open = port, run, count, on_open
        self.selector = selectors.DefaultSelector()
        self.sockets: dict[socket.socket, tuple[int, float]] = {}  # -> index, connect deadline
        self.to_open: deque[int] = deque(range(count))

    @property
    def held(self) -> int:
        """Connections open now (connect completed)."""
        return sum(1 for _, deadline in self.sockets.values() if not deadline)

    def _connect(self) -> None:
        connecting = len(self.sockets) - self.held
        while self.to_open and connecting < 256:
            index = self.to_open.popleft()
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex((HOST, self.port)) not in (0, errno.EINPROGRESS, errno.EAGAIN):
                sock.close()
                self.run.count("failed_connects")
                self.to_open.append(index)
                return  # out of ports or descriptors: try again on the next turn
            self.sockets[sock] = (index, time.monotonic() + 3.0)
            self.selector.register(sock, selectors.EVENT_WRITE)
            connecting += 1

    def _drop(self, sock: socket.socket, *, reopen: bool = True) -> None:
        index, _ = self.sockets.pop(sock)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        close_hard(sock)
        if reopen:
            self.to_open.append(index)

    def turn(self, timeout: float) -> None:
        """Start connects, then handle what the server did within `timeout`."""
        self._connect()
        for key, _ in self.selector.select(timeout=timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock not in self.sockets:
                continue
            index, deadline = self.sockets[sock]
            if not deadline:  # readable: the server answered (an error, an alert) or closed
                self.run.count("closed_by_server")
                self._drop(sock)
            elif sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.run.count("failed_connects")
                self._drop(sock)
            else:
                self.sockets[sock] = (index, 0.0)
                self.run.count("opened")
                self.selector.modify(sock, selectors.EVENT_READ)
                try:
                    self.on_open(sock, index)
                except OSError:
                    self.run.count("closed_by_server")
                    self._drop(sock)
        now = time.monotonic()
        for sock, (_, deadline) in list(self.sockets.items()):
            if deadline and now > deadline:
                self.run.count("failed_connects")
                self._drop(sock)

    def hold(self, tick: Callable[[], None] = lambda: None) -> None:
        """Open them all (20 s at most), say so, then keep them until the run ends."""
        ramp = time.monotonic() + 20.0
        while self.run.going() and time.monotonic() < ramp and self.held < self.count:
            self.turn(0.01)
        emit("ready", {"held": self.held, **self.run.counts})
        try:
            while self.run.going():
                self.turn(0.05)
                tick()
        finally:
            self.run.count("held_at_end", self.held)
            for sock in list(self.sockets):
                self._drop(sock, reopen=False)
            self.selector.close()


def slowloris(port: int, run: Run, count: int) -> None:
    """(c) `count` connections each sending a request one byte every 5 s, never ending
    it: every byte is activity, so a timeout restarted by each read would never fire."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    due: deque[tuple[float, socket.socket, int]] = deque()  # when, socket, next byte

    def on_open(sock: socket.socket, index: int) -> None:
        sock.send(request[:1])
        due.append((time.monotonic() + 5.0, sock, 1))

    def send_due() -> None:
        while due and due[0][0] <= time.monotonic():
            when, sock, position = due.popleft()
            if sock not in holder.sockets:
                continue  # closed and reopened meanwhile
            try:
                run.count("bytes", sock.send(request[position : position + 1]))
            except OSError:
                continue  # the holder sees the close and reopens
            due.append((when + 5.0, sock, min(position + 1, len(request) - 1)))

    holder = Holder(port, run, count, on_open)
    holder.hold(send_due)


def connection_flood(port: int, run: Run, count: int) -> None:
    """(g) Hold `count` connections idle, sending nothing."""
    Holder(port, run, count, lambda sock, index: None).hold()


def tls_stall(port: int, run: Run, count: int) -> None:
    """(h) `count` connections to an HTTPS server that never finish their handshake: every
    other one sends the first half of a real ClientHello, the rest nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=HOST).do_handshake()
    hello = outgoing.read()
    run.counts["hello_bytes"] = len(hello)

    def on_open(sock: socket.socket, index: int) -> None:
        if index % 2 == 0:
            sock.send(hello[: len(hello) // 2])

    Holder(port, run, count, on_open).hold()


ATTACKS: dict[str, Callable[[int, Run, int], None]] = {
    "content_length": content_length,
    "deep_json": deep_json,
    "slowloris": slowloris,
    "no_read": no_read,
    "pipeline_flood": pipeline_flood,
    "cpu_amplification": cpu_amplification,
    "connection_flood": connection_flood,
    "tls_stall": tls_stall,
    "admin_list": admin_list,
}


def main(argv: list[str]) -> int:
    """Run the attack named on the command line, bounded in time."""
    name, port, seconds = argv[0], int(argv[1]), float(argv[2])
    if not 0 < seconds <= 120:
        raise SystemExit("SECONDS must be in (0, 120]: every attack is bounded")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536 if hard < 0 else hard, hard))
    run = Run(seconds)
    started = time.monotonic()
    ATTACKS[name](port, run, int(argv[3]) if argv[3:] else 0)
    emit("done", {**run.counts, "seconds": round(time.monotonic() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
