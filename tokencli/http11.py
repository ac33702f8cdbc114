"""HTTP/1.1 message framing for `serve`: find a whole request in a byte buffer, parse it,
and build responses. No sockets here, so the parser can be tested on any bytes.

The server reads without blocking and calls `take_request` on what each connection has
sent so far; a request is handed on only once it is complete, so a client that stalls
half-way through never holds a worker. Limits are enforced while bytes arrive: a request
line over 8 KiB (414), a header block over 64 KiB (431), a body over 64 KiB (413).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_NAME = _METHOD
_TARGET = re.compile(r"/[\x21-\x7e\x80-\xff]*")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")


class HttpError(Exception):
    """A request that gets an error answer: its status, detail, and extra headers."""

    def __init__(
        self, status: HTTPStatus, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass
class Request:
    """One parsed request. Header names are lower case; values are latin-1 text."""

    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after this answer."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def _parse_head(head: bytes) -> Request:
    text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed method")
    if version not in _VERSIONS:
        if version.startswith("HTTP/"):
            raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version[:16]} unsupported")
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    if not _TARGET.fullmatch(target):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise HttpError(HTTPStatus.BAD_REQUEST, "folded header lines are not accepted")
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise HttpError(HTTPStatus.BAD_REQUEST, "conflicting Content-Length headers")
            headers[key] = f"{headers[key]}, {value}" if key != "content-length" else value
        else:
            headers[key] = value
    return Request(method, target, version, headers)


def _body_length(request: Request) -> int:
    if "transfer-encoding" in request.headers:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
    declared = request.headers.get("content-length")
    if declared is None:
        return 0
    if not declared.isdigit() or not declared.isascii():
        raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"body is {length} bytes; the limit is {MAX_BODY_BYTES}",
        )
    return length


@dataclass
class Pending:
    """A request whose head has arrived and whose body is still coming."""

    request: Request
    head_length: int
    body_length: int


def take_request(buffer: bytearray) -> Request | Pending | None:
    """Remove and return the first whole request in `buffer`.

    Returns None when more bytes are needed, a `Pending` when the head is complete
    but the body is not (so the caller can answer `Expect: 100-continue`), and raises
    HttpError for a request that breaks a limit or the grammar; after that the
    connection must be closed, since its framing can no longer be trusted.
    """
    match = _HEAD_END.search(buffer, 0, MAX_REQUEST_LINE + MAX_HEADER_BYTES + 4)
    first_line_end = buffer.find(b"\n", 0, MAX_REQUEST_LINE + 1)
    if first_line_end < 0 and len(buffer) > MAX_REQUEST_LINE:
        raise HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line over 8 KiB")
    if match is None:
        if len(buffer) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
            raise HttpError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers over 64 KiB"
            )
        return None
    if first_line_end > MAX_REQUEST_LINE:
        raise HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line over 8 KiB")
    if match.end() - first_line_end > MAX_HEADER_BYTES:
        raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers over 64 KiB")
    head_length = match.end()
    request = _parse_head(bytes(buffer[: match.start()]))
    body_length = _body_length(request)
    if len(buffer) < head_length + body_length:
        return Pending(request, head_length, body_length)
    request.body = bytes(buffer[head_length : head_length + body_length])
    del buffer[: head_length + body_length]
    return request


def response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    close: bool,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A whole response, ready for one `send`."""
    lines = [
        f"HTTP/1.1 {int(status)} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
