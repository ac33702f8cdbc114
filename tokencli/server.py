"""`tokencli serve`: the original token service's HTTP API over the same TokenService.

Built on the standard library's `http.server`, as a thin adapter: it parses requests,
calls the service, and writes JSON. Choices that matter for speed and safety:

- One thread per connection (HTTP/1.1 keep-alive), each with its own SQLite connection;
  writes from all threads go through one in-process lock (see `Store`).
- Every response leaves in a single `write` with Nagle's algorithm off: a header write
  followed by a body write stalls ~40 ms on delayed ACKs.
- Limits on the request line (8 KiB, 414), the header block (64 KiB, 431) and the body
  (64 KiB, 413), and a socket timeout so a stalled client only holds its own thread.
- Every answer is JSON, errors included; the access log never shows a token's secret.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import unquote

from tokencli import openapi
from tokencli.durations import DurationError, parse_duration
from tokencli.errors import InvalidRequestError, StorageError, TokencliError
from tokencli.output import literal
from tokencli.service import DEFAULT_TTL_SECONDS, TokenService

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = openapi.MAX_BODY_BYTES
LISTEN_BACKLOG = 1024
# Long enough for any honest client between keep-alive requests, short enough that
# half-sent requests do not pile up threads.
SOCKET_TIMEOUT_SECONDS = 10.0

_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


class HttpError(Exception):
    """An error answer: its status and the detail for the JSON body."""

    def __init__(
        self, status: HTTPStatus, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    """A path pattern and the handler method name for each HTTP method it answers."""

    template: str
    pattern: re.Pattern[str]
    methods: dict[str, str]


ROUTES: tuple[Route, ...] = (
    Route("/app/token", re.compile(r"/app/token"), {"POST": "issue"}),
    Route(
        "/app/valid/{token}",
        re.compile(r"/app/valid/(?P<token>[^/]*)"),
        {"GET": "validate", "POST": "validate"},
    ),
    Route("/app/clear/all/tokens", re.compile(r"/app/clear/all/tokens"), {"DELETE": "purge"}),
    Route("/health", re.compile(r"/health"), {"GET": "health"}),
    Route("/openapi.json", re.compile(r"/openapi\.json"), {"GET": "openapi"}),
    Route("/docs", re.compile(r"/docs"), {"GET": "docs"}),
    Route("/redoc", re.compile(r"/redoc"), {"GET": "redoc"}),
)
_VALID_PREFIX = "/app/valid/"


def redact_path(path: str) -> str:
    """The request target as the access log may show it: no secret, no query, no escapes."""
    bare = path.split("?", 1)[0]
    if bare.startswith(_VALID_PREFIX):
        token = bare[len(_VALID_PREFIX) :]
        token_id, colon, _ = unquote(token).partition(":")
        shown = f"{token_id}:***" if colon and re.fullmatch(r"[a-z2-7]{12}", token_id) else "***"
        bare = _VALID_PREFIX + shown
    if "?" in path:
        bare += "?***"
    return literal(bare[:200])


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its service factory, admin key and log."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        open_service: Callable[[], TokenService],
        *,
        admin_key: str | None,
        access_log: TextIO | None,
    ) -> None:
        self.open_service = open_service
        self.admin_key = admin_key
        self.access_log = access_log
        self._log_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._handlers_done = threading.Condition(self._connections_lock)
        self.stopping = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, TokenRequestHandler)

    @property
    def url(self) -> str:
        """http://HOST:PORT of the bound socket (the real port when asked for port 0)."""
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def log_access(self, line: str) -> None:
        """Write one access-log line; whole lines only, even from many threads."""
        if self.access_log is None:
            return
        with self._log_lock:
            self.access_log.write(line + "\n")
            self.access_log.flush()

    def track(self, connection: socket.socket, *, active: bool) -> None:
        """Remember open connections, so `stop` can end idle keep-alive ones."""
        with self._connections_lock:
            if active:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)
                self._handlers_done.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish, close idle connections."""
        self.stopping = True
        self.shutdown()
        with self._connections_lock:
            for connection in self._connections:
                # SHUT_RD ends a wait for the next request; a response still being
                # written goes out whole.
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            self._handlers_done.wait_for(lambda: not self._connections, timeout)
        self.server_close()


class TokenRequestHandler(BaseHTTPRequestHandler):
    """One connection: parses each request, routes it, and answers in JSON."""

    server: TokenHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "tokencli"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = SOCKET_TIMEOUT_SECONDS

    _service: TokenService | None = None
    _started = 0.0
    _status = 0

    # -- connection life ---------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, active=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._service is not None:
                self._service.store.close()
            self.server.track(self.connection, active=False)

    def service(self) -> TokenService:
        """This connection's service, with its own SQLite connection, opened on first use."""
        if self._service is None:
            self._service = self.server.open_service()
        return self._service

    # -- request parsing ---------------------------------------------------------------

    def handle_one_request(self) -> None:
        """Read one request within the size limits, dispatch it, answer it."""
        self.command = ""
        self.request_version = ""
        self.requestline = ""
        self.path = ""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            self._started = time.perf_counter()
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.close_connection = True
                self._error(HTTPStatus.REQUEST_URI_TOO_LONG, "request line over 8 KiB")
                return
            head = self._read_head()
            if head is None:
                return
            socket_reader = self.rfile
            self.rfile = io.BytesIO(head)  # parse_request reads the headers from rfile
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = socket_reader
            if not parsed:
                return
            self._dispatch()
            if self.server.stopping:
                self.close_connection = True
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _read_head(self) -> bytes | None:
        """The header block, at most 64 KiB; None (after answering 431) if longer."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(MAX_HEADER_BYTES + 1)
            size += len(line)
            if size > MAX_HEADER_BYTES:
                self.close_connection = True
                self._error(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers over 64 KiB"
                )
                return None
            lines.append(line)
            if line in (b"\r\n", b"\n", b""):
                return b"".join(lines)

    def _read_body(self) -> bytes:
        """The request body, at most 64 KiB; raises HttpError for anything else."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        declared = self.headers.get("Content-Length")
        if declared is None:
            return b""
        if not declared.strip().isdigit():
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body is {length} bytes; the limit is {MAX_BODY_BYTES}",
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        return body

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            path = self.path.split("?", 1)[0]
            for route in ROUTES:
                match = route.pattern.fullmatch(path)
                if match is None:
                    continue
                handler_name = route.methods.get(self.command)
                body = self._read_body()  # read it whatever happens, to keep the stream in step
                if handler_name is None:
                    allowed = ", ".join(route.methods)
                    raise HttpError(
                        HTTPStatus.METHOD_NOT_ALLOWED,
                        f"{self.command} is not allowed here; use {allowed}",
                        {"Allow": allowed},
                    )
                getattr(self, f"_handle_{handler_name}")(body=body, **match.groupdict())
                return
            self._read_body()
            raise HttpError(HTTPStatus.NOT_FOUND, "no such endpoint; see /openapi.json")
        except HttpError as error:
            self._error(error.status, error.detail, error.headers)
        except InvalidRequestError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
        except StorageError as error:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
        except TokencliError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))

    def _require_admin(self) -> None:
        key = self.server.admin_key
        if key is None:
            return
        scheme, _, presented = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("utf-8", "surrogateescape"), key.encode("utf-8")
        ):
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong admin key; send Authorization: Bearer KEY",
                {"WWW-Authenticate": 'Bearer realm="tokencli"'},
            )

    # -- endpoints ---------------------------------------------------------------------

    def _handle_issue(self, body: bytes) -> None:
        self._require_admin()
        options = _issue_options(body)
        issued = self.service().issue(**options)
        self._send_json(HTTPStatus.OK, {"status_code": 200, "token": issued.token})

    def _handle_validate(self, body: bytes, token: str) -> None:
        result = self.service().check(unquote(token, errors="replace"))
        self._send_json(HTTPStatus.OK, {"status_code": 200, "status": result.valid})

    def _handle_purge(self, body: bytes) -> None:
        self._require_admin()
        result = self.service().purge()
        self._send_json(
            HTTPStatus.OK, {"status_code": 200, "status": True, "purged": result.purged}
        )

    def _handle_health(self, body: bytes) -> None:
        self.service().purge(dry_run=True)  # proves the database answers
        self._send_json(HTTPStatus.OK, {"status_code": 200, "status": "ok"})

    def _handle_openapi(self, body: bytes) -> None:
        self._send_json(HTTPStatus.OK, openapi.document())

    def _handle_docs(self, body: bytes) -> None:
        self._send(HTTPStatus.OK, openapi.SWAGGER_PAGE.encode(), _HTML)

    def _handle_redoc(self, body: bytes) -> None:
        self._send(HTTPStatus.OK, openapi.REDOC_PAGE.encode(), _HTML)

    # -- responses ---------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by http.server's own parsing, answered as JSON like the rest."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._error(status, message or status.phrase)

    def _error(
        self, status: HTTPStatus, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(status, {"status_code": int(status), "detail": detail}, headers)

    def _send_json(
        self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(payload).encode(), _JSON, headers)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Write status line, headers and body in one write."""
        self._status = int(status)
        lines = [
            f"HTTP/1.1 {int(status)} {status.phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
        ]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        if self.close_connection or self.server.stopping:
            self.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Logged before the write, so a client that has its answer finds the line there.
        self._log_request()
        try:
            self.wfile.write(head + body)
        except OSError:
            self.close_connection = True

    def _log_request(self) -> None:
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        method = literal(self.command[:16]) or "-"
        self.server.log_access(
            f'{self.client_address[0]} "{method} {redact_path(self.path)}" '
            f"{self._status} {elapsed_ms:.1f}ms"
        )

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence http.server's own log lines: ours are written by `_log_request`."""


def _issue_options(body: bytes) -> dict[str, Any]:
    """The options of POST /app/token from its optional JSON body."""
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    unknown = set(payload) - {"ttl", "label", "uses"}
    if unknown:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {', '.join(sorted(unknown))}")
    options: dict[str, Any] = {"ttl_seconds": _ttl_seconds(payload.get("ttl"))}
    label = payload.get("label")
    if label is not None and not isinstance(label, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, "label must be a string")
    options["label"] = label
    uses = payload.get("uses")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)):
        raise HttpError(HTTPStatus.BAD_REQUEST, "uses must be a whole number")
    options["uses"] = uses
    return options


def _ttl_seconds(ttl: object) -> int:
    if ttl is None:
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl, bool):
        raise HttpError(HTTPStatus.BAD_REQUEST, "ttl must be a duration such as 15m")
    if isinstance(ttl, int):
        return ttl
    if isinstance(ttl, str):
        try:
            return parse_duration(ttl)
        except DurationError as error:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(error)) from None
    raise HttpError(HTTPStatus.BAD_REQUEST, "ttl must be a duration such as 15m")


def make_server(
    open_service: Callable[[], TokenService],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    admin_key: str | None = None,
    access_log: TextIO | None = sys.stderr,
) -> TokenHTTPServer:
    """Bind a server (port 0: any free port); call `serve_forever`, then `stop`."""
    return TokenHTTPServer((host, port), open_service, admin_key=admin_key, access_log=access_log)
