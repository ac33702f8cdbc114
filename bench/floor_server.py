"""The HTTP floor: a standard-library server that answers every request with a constant.

The stack `tokencli serve` was first built on (ThreadingHTTPServer, HTTP/1.1 keep-alive,
Nagle off, one write per response) but no database and no routing, so the ratio against it
measures what tokencli's own work costs. Usage: python floor_server.py PORT
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The same bytes as tokencli's answer to a valid token (headers and a body of the same
# shape and length), so both send as much per request.
BODY = (
    b'{"status_code": 200, "status": true, "state": "valid", "id": "aaaaaaaaaaaa",'
    b' "expires_at": "2026-01-01T00:00:00Z", "uses_left": null, "scopes": []}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff"
    + b"\r\nX-Request-Id: 00000000-100000\r\n\r\n"
    + BODY
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.wfile.write(RESPONSE)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    sys.stderr.write(f"listening on http://127.0.0.1:{server.server_address[1]}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
