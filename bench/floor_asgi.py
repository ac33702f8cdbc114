"""The harder HTTP floor: a constant-answer ASGI app on uvicorn, uvloop and httptools.

The same answer as floor_server.py (the bytes of tokencli's answer to a valid token,
a constant) from the fastest Python HTTP stack we know of: one worker, uvloop's
event loop, the httptools (llhttp) parser, keep-alive, no access log. uvicorn's own
`server` and `date` headers are off, so it sends no more header bytes than it must.

Installed in bench/.venv only (bench/floor-requirements.txt); never a dependency of
tokencli. Usage: python floor_asgi.py PORT
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

# floor_server.py's answer: the bytes of tokencli's answer to a valid token.
BODY = (
    b'{"status_code": 200, "status": true, "state": "valid", "id": "aaaaaaaaaaaa",'
    b' "expires_at": "2026-01-01T00:00:00Z", "uses_left": null, "scopes": []}'
)
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-request-id", b"00000000-100000"),
    ],
}
ANSWER = {"type": "http.response.body", "body": BODY}

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer every HTTP request with the constant, after reading its body."""
    if scope["type"] != "http":  # lifespan: nothing to start or stop
        return
    # Read the body as floor_server.py does, so a POST costs both floors the same.
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send(START)
    await send(ANSWER)


def main() -> None:
    """Serve the constant on 127.0.0.1:PORT until SIGINT or SIGTERM."""
    port = int(sys.argv[1])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        workers=1,
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=1024,  # tokencli's listen backlog, so the 1000-connection runs compare
    )


if __name__ == "__main__":
    main()
