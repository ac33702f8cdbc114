"""The HTTP/1.1 framing parser on arbitrary bytes."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencli import http11
from tokencli.http11 import HttpError, Pending, Request, take_request


def test_whole_request_is_taken_and_removed() -> None:
    buffer = bytearray(b"POST /app/token HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET")
    request = take_request(buffer)
    assert isinstance(request, Request)
    assert (request.method, request.path, request.body) == ("POST", "/app/token", b"{}")
    assert request.headers["host"] == "x"
    assert request.keep_alive
    assert buffer == bytearray(b"GET")
    assert take_request(buffer) is None


def test_pipelined_requests_come_out_in_order() -> None:
    buffer = bytearray(b"GET /a HTTP/1.1\r\n\r\nGET /b?x=1 HTTP/1.1\r\n\r\n")
    first, second = take_request(buffer), take_request(buffer)
    assert isinstance(first, Request) and isinstance(second, Request)
    assert (first.path, second.path, second.target) == ("/a", "/b", "/b?x=1")
    assert buffer == bytearray()


def test_body_still_coming_is_pending() -> None:
    buffer = bytearray(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n12")
    pending = take_request(buffer)
    assert isinstance(pending, Pending)
    assert pending.body_length == 10
    buffer += b"34567890"
    request = take_request(buffer)
    assert isinstance(request, Request) and request.body == b"1234567890"


def test_bare_newlines_are_accepted() -> None:
    request = take_request(bytearray(b"GET /health HTTP/1.0\nConnection: keep-alive\n\n"))
    assert isinstance(request, Request)
    assert request.keep_alive
    assert not Request("GET", "/", "HTTP/1.0").keep_alive
    assert not Request("GET", "/", "HTTP/1.1", {"connection": "close"}).keep_alive


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", HTTPStatus.REQUEST_URI_TOO_LONG),
        (b"GET /" + b"a" * 9000, HTTPStatus.REQUEST_URI_TOO_LONG),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 13_000, 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
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
        take_request(bytearray(raw))
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
    buffer = bytearray(raw)
    try:
        result = take_request(buffer)
    except HttpError as error:
        assert 400 <= error.status < 600 and error.detail
    else:
        assert result is None or isinstance(result, Request | Pending)


@settings(max_examples=200)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "BREW"]),
    path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200),
    body=st.binary(max_size=300),
    headers=st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=50),
        max_size=5,
    ),
)
def test_well_formed_requests_round_trip(
    method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    headers = {
        k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")
    }
    lines = [f"{method} /{path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    request = take_request(bytearray(raw))
    assert isinstance(request, Request)
    assert (request.method, request.target, request.body) == (method, f"/{path}", body)
