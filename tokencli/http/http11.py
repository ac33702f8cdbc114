"""HTTP/1.1 message framing for `serve`: bytes in, whole requests out; responses built.
No sockets here, so the parser can be tested on any bytes (as h11 is).

`RequestParser` is fed what a connection receives and hands out whole requests. Its
cost is linear in the bytes received: the end of the head is searched for only in new
bytes, the head is parsed once, and a body is then only counted until it is complete
(a client trickling a body behind 64 KiB of headers costs no re-parsing). Limits are
enforced while bytes arrive: a request line over 8 KiB (414), a header block over
64 KiB (431), a body over 64 KiB (413). A Content-Length of any length is judged by its
digits, never converted whole (a header of 5,000 digits is a 413, not an exception).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from urllib.parse import parse_qs

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
# The longest a whole request can be: what a connection may buffer before its next
# request must be answered.
MAX_REQUEST_BYTES = MAX_REQUEST_LINE + MAX_HEADER_BYTES + MAX_BODY_BYTES + 8

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_NAME = _METHOD
_TARGET = re.compile(r"/[\x21-\x7e\x80-\xff]*")
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")
_COMMON_METHODS = frozenset({"GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS"})
# Header names valid as they stand: the usual ones skip the name regex.
_COMMON_HEADER_NAMES = frozenset(
    {
        "Host",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "Authorization",
        "Connection",
        "Content-Length",
        "Content-Type",
        "X-Request-Id",
        "host",
        "user-agent",
        "accept",
        "accept-encoding",
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "x-request-id",
    }
)
_MAX_BODY_DIGITS = len(str(MAX_BODY_BYTES))


class HttpError(Exception):
    """A request that gets an error answer: its status, detail, and extra headers."""

    def __init__(
        self, status: HTTPStatus, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class Request:
    """One parsed request. Header names are lower case; values are latin-1 text."""

    __slots__ = ("method", "target", "version", "headers", "body", "_query")

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers if headers is not None else {}
        self.body = body
        self._query: dict[str, list[str]] | None = None

    def __repr__(self) -> str:  # never the target: it may hold a token
        return f"Request({self.method}, {len(self.body)} body bytes)"

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string's parameters (values percent-decoded), parsed on first use."""
        if self._query is None:
            _, mark, text = self.target.partition("?")
            self._query = parse_qs(text, keep_blank_values=True) if mark else {}
        return self._query

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after this answer."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def expects_continue(self) -> bool:
        """True if the client waits for `100 Continue` before sending the body."""
        return "100-continue" in self.headers.get("expect", "").lower()


def _parse_head(head: bytes) -> Request:
    text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if method not in _COMMON_METHODS and not _METHOD.fullmatch(method):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed method")
    if version not in _VERSIONS:
        if version.startswith("HTTP/"):
            raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version[:16]} unsupported")
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    # The usual target is printable ASCII (no space: the line was split on spaces),
    # tested without the regex, which is the slower.
    plain = target.isascii() and target.isprintable() and target.startswith("/")
    if not plain and not _TARGET.fullmatch(target):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise HttpError(HTTPStatus.BAD_REQUEST, "folded header lines are not accepted")
        name, colon, value = line.partition(":")
        if not colon or (name not in _COMMON_HEADER_NAMES and not _HEADER_NAME.fullmatch(name)):
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


def body_length(request: Request) -> int:
    """The body length the head declares, refused past the limit without converting a
    number of unbounded length."""
    if "transfer-encoding" in request.headers:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
    declared = request.headers.get("content-length")
    if declared is None:
        return 0
    if not _DIGITS.fullmatch(declared):
        raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
    significant = declared.lstrip("0")
    if len(significant) > _MAX_BODY_DIGITS or (significant and int(significant) > MAX_BODY_BYTES):
        shown = significant if len(significant) <= 20 else f"a {len(significant)}-digit number of"
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"body is {shown} bytes; the limit is {MAX_BODY_BYTES}",
        )
    return int(significant) if significant else 0


class RequestParser:
    """Whole requests out of the bytes one connection sends, in order.

    After an HttpError the connection's framing can no longer be trusted: answer it and
    close the connection.
    """

    __slots__ = ("buffer", "_scanned", "_head", "_head_length", "_body_length")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._scanned = 0  # bytes already searched for the end of the head
        self._head: Request | None = None
        self._head_length = 0
        self._body_length = 0

    def feed(self, data: bytes) -> None:
        """Append bytes the client sent."""
        self.buffer += data

    @property
    def waiting_for_body(self) -> Request | None:
        """The request whose head has arrived and whose body has not, if any."""
        return self._head

    def next_request(self) -> Request | None:
        """The next whole request, or None until more bytes arrive; HttpError if broken."""
        if self._head is None and not self._find_head():
            return None
        request = self._head
        assert request is not None
        end = self._head_length + self._body_length
        if len(self.buffer) < end:
            return None
        if self._body_length:
            request.body = bytes(self.buffer[self._head_length : end])
        if end == len(self.buffer):
            self.buffer.clear()  # the usual case: nothing pipelined behind it
        else:
            del self.buffer[:end]
        self._head = None
        self._scanned = 0
        return request

    def _find_head(self) -> bool:
        buffer = self.buffer
        if not buffer:
            return False
        # A line ending split across two reads: look back three bytes.
        start = max(0, self._scanned - 3)
        limit = MAX_REQUEST_LINE + MAX_HEADER_BYTES + 4
        head_end, body_start = _head_end(buffer, start, limit)
        first_line_end = buffer.find(b"\n", 0, MAX_REQUEST_LINE + 1)
        if first_line_end < 0 and len(buffer) > MAX_REQUEST_LINE:
            raise HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line over 8 KiB")
        if head_end < 0:
            self._scanned = min(len(buffer), limit)
            if len(buffer) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
                raise HttpError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers over 64 KiB"
                )
            return False
        if first_line_end > MAX_REQUEST_LINE:
            raise HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line over 8 KiB")
        if body_start - first_line_end > MAX_HEADER_BYTES:
            raise HttpError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers over 64 KiB"
            )
        request = _parse_head(bytes(buffer[:head_end]))
        self._body_length = body_length(request)
        self._head_length = body_start
        self._head = request
        return True


def _head_end(buffer: bytearray, start: int, limit: int) -> tuple[int, int]:
    """Where the first blank line (CRLF or bare LF endings) begins and ends, or (-1, -1).

    That is the leftmost match of `\\r?\\n\\r?\\n`, found with two plain searches: the
    earliest line feed followed by a line feed, with or without a carriage return between.
    """
    crlf = buffer.find(b"\n\r\n", start, limit)
    lf = buffer.find(b"\n\n", start, crlf + 2 if crlf >= 0 else limit)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        feed, end = lf, lf + 2
    elif crlf >= 0:
        feed, end = crlf, crlf + 3
    else:
        return -1, -1
    begin = feed - 1 if feed > start and buffer[feed - 1] == 0x0D else feed
    return begin, end


def response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    close: bool,
    headers: dict[str, str] | None = None,
    extra: str = "",
) -> bytes:
    """A whole response, ready to be sent; `extra` is header lines already formatted."""
    head = _STATUS_LINES.get(status) or f"HTTP/1.1 {int(status)} {status.phrase}\r\n"
    if headers:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + extra
    ending = _CLOSE if close else "\r\n"
    return (
        f"{head}Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{_FIXED_HEADERS}{extra}{ending}"
    ).encode("latin-1") + body


_FIXED_HEADERS = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
_CLOSE = "Connection: close\r\n\r\n"
_STATUS_LINES = {status: f"HTTP/1.1 {int(status)} {status.phrase}\r\n" for status in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
