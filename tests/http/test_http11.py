"""The HTTP/1.1 framing parser on arbitrary bytes, fed whole or in pieces."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencli.http import http11
from tokencli.http.http11 import HttpError, Request, RequestParser


def parse(raw: bytes) -> Request | None:
    """The first request of `raw`, fed in one piece."""
    parser = RequestParser()
    parser.feed(raw)
    return parser.next_request()


def test_whole_request_is_taken_and_removed() -> None:
    parser = RequestParser()
    parser.feed(b"POST /app/token HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET")
    request = parser.next_request()
    assert isinstance(request, Request)
    assert (request.method, request.path, request.body) == ("POST", "/app/token", b"{}")
    assert request.headers["host"] == "x"
    assert request.keep_alive
    assert parser.buffer == bytearray(b"GET")
    assert parser.next_request() is None


def test_pipelined_requests_come_out_in_order() -> None:
    parser = RequestParser()
    parser.feed(b"GET /a HTTP/1.1\r\n\r\nGET /b?x=1&x=2&y HTTP/1.1\r\n\r\n")
    first, second = parser.next_request(), parser.next_request()
    assert isinstance(first, Request) and isinstance(second, Request)
    assert (first.path, second.path, second.target) == ("/a", "/b", "/b?x=1&x=2&y")
    assert second.query == {"x": ["1", "2"], "y": [""]}
    assert first.query == {}
    assert parser.buffer == bytearray()


def test_body_still_coming_waits_and_the_head_is_parsed_once() -> None:
    parser = RequestParser()
    parser.feed(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n12")
    assert parser.next_request() is None
    waiting = parser.waiting_for_body
    assert waiting is not None and waiting.expects_continue
    for byte in b"3456789":
        parser.feed(bytes([byte]))
        assert parser.next_request() is None
        assert parser.waiting_for_body is waiting  # not parsed again for each byte
    parser.feed(b"0")
    request = parser.next_request()
    assert request is waiting and request.body == b"1234567890"
    assert parser.waiting_for_body is None


def test_bare_newlines_are_accepted() -> None:
    request = parse(b"GET /health HTTP/1.0\nConnection: keep-alive\n\n")
    assert isinstance(request, Request)
    assert request.keep_alive
    assert not Request("GET", "/", "HTTP/1.0").keep_alive
    assert not Request("GET", "/", "HTTP/1.1", {"connection": "close"}).keep_alive


def test_a_head_end_split_across_reads_is_found() -> None:
    parser = RequestParser()
    for piece in (b"GET / HTTP/1.1\r\nA: b\r", b"\n", b"\r", b"\nGET /2 HTTP/1.1\r\n\r\n"):
        parser.feed(piece)
    first = parser.next_request()
    second = parser.next_request()
    assert first is not None and second is not None and second.path == "/2"


@pytest.mark.parametrize(
    ("declared", "length"),
    [("0", 0), ("0" * 4301, 0), ("00012", 12), ("65536", 65536)],
)
def test_content_length_of_zeros_and_leading_zeros(declared: str, length: int) -> None:
    head = f"POST / HTTP/1.1\r\nContent-Length: {declared}\r\n\r\n".encode()
    parser = RequestParser()
    parser.feed(head + b"x" * length)
    request = parser.next_request()
    assert request is not None and len(request.body) == length


@pytest.mark.parametrize(
    "declared",
    ["65537", "9" * 5000, "1" + "0" * 4300, "0" * 4000 + "70000", "99999999999999999999"],
    ids=["just-over", "5000-nines", "4301-digits", "zeros-then-big", "20-digits"],
)
def test_content_length_of_any_size_is_413_never_an_exception(declared: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse(f"POST / HTTP/1.1\r\nContent-Length: {declared}\r\n\r\n".encode())
    assert caught.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert len(caught.value.detail) < 100  # never echoes the 5,000 digits


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", HTTPStatus.REQUEST_URI_TOO_LONG),
        (b"GET /" + b"a" * 9000, HTTPStatus.REQUEST_URI_TOO_LONG),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 13_000, 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: \xd9\xa1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, bytes) else str(value),
)
def test_broken_requests_are_refused_with_their_status(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        parse(raw)
    assert caught.value.status == status


def test_response_is_one_block_with_length() -> None:
    data = http11.response(HTTPStatus.OK, b"{}", "application/json", close=True, headers={"A": "b"})
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 2" in head and b"Connection: close" in head and b"A: b" in head
    assert body == b"{}"


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_request_nothing_yet_or_a_clean_error(raw: bytes) -> None:
    try:
        result = parse(raw)
    except HttpError as error:
        assert 400 <= error.status < 600 and error.detail
    else:
        assert result is None or isinstance(result, Request)


def _request_bytes(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    headers = {
        k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")
    }
    lines = [f"{method} /{path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


REQUEST_PARTS = {
    "method": st.sampled_from(["GET", "POST", "DELETE", "PUT", "BREW"]),
    "path": st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200),
    "body": st.binary(max_size=300),
    "headers": st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=50),
        max_size=5,
    ),
}


@settings(max_examples=200)
@given(**REQUEST_PARTS)
def test_well_formed_requests_round_trip(
    method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    request = parse(_request_bytes(method, path, body, headers))
    assert isinstance(request, Request)
    assert (request.method, request.target, request.body) == (method, f"/{path}", body)


@settings(max_examples=150)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12), **REQUEST_PARTS)
def test_any_split_into_reads_gives_the_same_requests(
    cuts: list[int], method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    raw = _request_bytes(method, path, body, headers) * 2  # two pipelined requests
    parser = RequestParser()
    taken: list[Request] = []
    edges = sorted({0, len(raw), *(cut for cut in cuts if cut < len(raw))})
    for start, end in zip(edges, edges[1:], strict=False):
        parser.feed(raw[start:end])
        while (request := parser.next_request()) is not None:
            taken.append(request)
    assert [(r.method, r.target, r.body) for r in taken] == [(method, f"/{path}", body)] * 2


@given(
    st.binary(max_size=64).map(lambda raw: bytes(b"\r\na:"[byte % 4] for byte in raw)),
    st.integers(min_value=0, max_value=70),
    st.integers(min_value=0, max_value=70),
)
def test_head_end_is_the_leftmost_blank_line_as_a_regex_finds_it(
    raw: bytes, start: int, limit: int
) -> None:
    # The parser finds the end of a head with plain searches; the rule is this regex.
    match = re.compile(rb"\r?\n\r?\n").search(raw, start, limit)
    expected = (match.start(), match.end()) if match else (-1, -1)
    assert http11._head_end(bytearray(raw), start, limit) == expected


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=40))
def test_request_targets_are_judged_as_the_target_rule_says(tail: str) -> None:
    target = "/" + tail
    raw = f"GET {target} HTTP/1.1\r\n\r\n".encode("utf-8", "surrogatepass")
    # The target as the server sees it: latin-1 text of the bytes between the spaces.
    seen = raw.decode("latin-1").split("\r\n")[0][4:-9]
    allowed = re.fullmatch(r"/[\x21-\x7e\x80-\xff]*", seen) is not None
    if allowed:
        request = parse(raw)
        assert request is not None and request.target == seen
    else:
        with pytest.raises(HttpError):
            parse(raw)


def test_header_names_that_skip_the_name_rule_keep_it() -> None:
    for name in http11._COMMON_HEADER_NAMES:
        assert http11._HEADER_NAME.fullmatch(name), name
