"""The floors tokencli is measured against, each doing the least its row's work needs.

    python floors.py http PORT    the standard library's ThreadingHTTPServer (keep-alive,
                                  Nagle off, one write per answer), no database, no routing
    python floors.py asgi PORT    an ASGI app on uvicorn with uvloop and httptools, the fastest
                                  Python HTTP stack we know (bench/.venv only, never tokencli's)
    python floors.py bulk DB N    N tokens made as tokencli makes them (ID, secret, CRC32,
                                  SHA-256) and inserted by one executemany: no CLI, no audit

Both HTTP floors answer every request with the bytes of tokencli's answer to a valid token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BODY = (
    b'{"status_code": 200, "status": true, "state": "valid", "id": "aaaaaaaaaaaa",'
    b' "expires_at": "2026-01-01T00:00:00Z", "uses_left": null, "scopes": []}'
)
HEADERS = [
    (b"Content-Type", b"application/json"),
    (b"Content-Length", str(len(BODY)).encode()),
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Request-Id", b"00000000-100000"),
]
RESPONSE = b"HTTP/1.1 200 OK\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in HEADERS)
RESPONSE += b"\r\n" + BODY
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(k.lower(), v) for k, v in HEADERS],
}
ANSWER = {"type": "http.response.body", "body": BODY}


class Handler(BaseHTTPRequestHandler):
    """Reads a request's body, answers the constant."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def answer(self) -> None:
        """The constant, after the body (so a POST costs what it costs tokencli)."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.wfile.write(RESPONSE)

    do_GET = do_POST = do_DELETE = answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """No access log."""


class Floor(ThreadingHTTPServer):
    """A thread per connection, tokencli's listen backlog."""

    request_queue_size = 1024
    daemon_threads = True


def serve_http(port: int) -> None:
    """The standard library floor, until SIGTERM."""
    Floor(("127.0.0.1", port), Handler).serve_forever()


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """The constant for every HTTP request, after reading its body."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(START)
    await send(ANSWER)


def serve_asgi(port: int) -> None:
    """The uvicorn floor (one worker, no server or date header), until SIGTERM."""
    import uvicorn  # type: ignore[import-not-found,unused-ignore]

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=1024,
    )


def rows(count: int, now: int) -> Iterator[tuple[object, ...]]:
    """`count` new tokens' rows, made as tokencli makes them."""
    for _ in range(count):
        token_id = base64.b32encode(secrets.token_bytes(8)).decode()[:12].lower()
        prefix = f"{token_id}:{secrets.token_urlsafe(18)}"
        checksum = base64.urlsafe_b64encode(zlib.crc32(prefix.encode()).to_bytes(4, "big"))[:6]
        digest = hashlib.sha256((prefix + checksum.decode()).encode()).digest()
        yield (token_id, digest, None, now, now + 3600, None, now + 3600)


def bulk(path: str, count: int) -> None:
    """Insert `count` tokens into a new table like tokencli's, in one transaction."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY NOT NULL,"
        " secret_hash BLOB NOT NULL, label TEXT, created_at INTEGER NOT NULL,"
        " expires_at INTEGER NOT NULL, uses_left INTEGER,"
        " revoked_at INTEGER, ends_at INTEGER NOT NULL) STRICT, WITHOUT ROWID"
    )
    connection.execute("CREATE INDEX IF NOT EXISTS tokens_ends_at ON tokens (ends_at)")
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(
        "INSERT INTO tokens (id, secret_hash, label, created_at, expires_at, uses_left, ends_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows(count, int(time.time())),
    )
    connection.execute("COMMIT")
    connection.close()


if __name__ == "__main__":
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "bulk":
        bulk(where, int(sys.argv[3]))
    else:
        {"http": serve_http, "asgi": serve_asgi}[kind](int(where))
