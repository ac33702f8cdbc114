"""/docs and /redoc through the real server: the pages' security headers, every file they
load served from tokencli with the pinned content (so they work with no internet), and
clients that fetch those files without reading them hold a bounded amount of memory."""

from __future__ import annotations

import gzip
import hashlib
import socket
import time
from collections.abc import Callable

from tokencli.http import viewers
from tokencli.http.viewers import ASSETS

from support import Served

BUNDLE = "/docs/swagger-ui-bundle.js"


def test_pages_carry_a_strict_policy(serve: Callable[..., Served]) -> None:
    served = serve()
    for page, policy in (("/docs", viewers.DOCS_POLICY), ("/redoc", viewers.REDOC_POLICY)):
        status, headers, html = served.request("GET", page)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert headers["Content-Security-Policy"] == policy
        assert "default-src 'none'" in policy and "script-src 'self';" in policy
        assert "cdn" not in policy and "https:" not in policy
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert b"/openapi.json" in html and b"https://" not in html


def test_every_file_the_pages_load_is_served_with_its_pinned_content(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    for asset in ASSETS:
        for accept in ("gzip, deflate", None):
            headers = {"Accept-Encoding": accept} if accept else {}
            connection = served.connection()
            try:
                connection.putrequest("GET", asset.path, skip_accept_encoding=True)
                for name, value in headers.items():
                    connection.putheader(name, value)
                connection.endheaders()
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200, asset.path
                assert response.getheader("Content-Type") == asset.content_type
                encoding = response.getheader("Content-Encoding")
            finally:
                connection.close()
            if encoding == "gzip":
                assert accept is not None
                body = gzip.decompress(body)
            else:
                assert encoding is None
            if asset.sha256 is not None:
                assert hashlib.sha256(body).hexdigest() == asset.sha256, asset.path


def test_clients_fetching_the_files_without_reading_hold_bounded_memory(
    serve: Callable[..., Served],
) -> None:
    """50 clients each pipeline four requests for the 1.7 MB bundle (uncompressed) and
    never read: without a budget the server held all 200 answers (346 MB). With it, what
    it holds is at most what the budget let out."""
    served = serve()
    request = f"GET {BUNDLE} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 4
    clients = []
    started = time.monotonic()
    try:
        for _ in range(50):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", served.port))
            client.sendall(request)
            clients.append(client)
        counters = served.server.counters
        assert counters is not None
        deadline = time.monotonic() + 60  # a bound on a hang, not a timing
        while time.monotonic() < deadline:
            answered = {
                status: count
                for (route, _, status), count in counters.requests.copy().items()
                if route == BUNDLE
            }
            if sum(answered.values()) == 200:
                break
            time.sleep(0.05)
        held = sum(connection.pending_output for connection in served.server.connections())
        elapsed = time.monotonic() - started
        assert sum(answered.values()) == 200 and answered.get(503, 0) > 0, answered
        size = len(viewers.decompressed("swagger-ui-bundle.js.gz"))
        budget = 8 * 1024 * 1024 + 4 * 1024 * 1024 * elapsed  # burst + refill meanwhile
        assert answered.get(200, 0) * size <= budget + size
        assert held <= budget + 64 * 1024 * 200  # and a response head each, at most
        assert served.request("GET", "/health")[0] == 200
    finally:
        for client in clients:
            client.close()
