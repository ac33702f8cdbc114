"""The access log: text or JSON lines, a request ID followed from client to log, and never
a secret, whatever path a client sends (Hypothesis)."""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Callable, Iterator
from typing import NamedTuple
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokencli.domain import tokens
from tokencli.domain.model import TokenState
from tokencli.server.accesslog import (
    MAX_REQUEST_ID,
    AccessLog,
    Entry,
    redact_target,
    redacted_target,
)
from tokencli.service.views import literal

from support import Served, needs_executable, raw_exchange, serve_process, start_server

JSON_KEYS = ["time", "client", "method", "path", "status", "duration_ms", "request_id", "verdict"]


def lines(served: Served) -> list[str]:
    return served.log.getvalue().splitlines()


def test_json_lines_hold_the_documented_fields(serve: Callable[..., Served]) -> None:
    served = serve(log_format="json")
    token = served.request("POST", "/app/token")[2]["token"]
    served.request("GET", f"/app/valid/{token}", headers={"X-Request-Id": "login-42"})
    issued, validated = (json.loads(line) for line in lines(served))
    assert list(validated) == JSON_KEYS
    assert validated["request_id"] == "login-42"
    assert validated["verdict"] == "valid" and issued["verdict"] is None
    assert validated["path"] == f"/app/valid/{token.split(':')[0]}:***"
    assert (validated["method"], validated["status"], validated["client"]) == (
        "GET",
        200,
        "127.0.0.1",
    )
    assert validated["time"].endswith("Z") and validated["duration_ms"] >= 0
    assert token.split(":")[1] not in served.log.getvalue()


def test_request_ids_are_echoed_cleaned_or_made(serve: Callable[..., Served]) -> None:
    served = serve()
    _, headers, _ = served.request("GET", "/health", headers={"X-Request-Id": "abc-123"})
    assert headers["X-Request-Id"] == "abc-123"
    hostile = 'x" y\\z<script>' + "a" * 300
    _, headers, _ = served.request("GET", "/health", headers={"X-Request-Id": hostile})
    echoed = headers["X-Request-Id"]
    assert len(echoed) == MAX_REQUEST_ID and echoed.startswith("xyzscript")
    _, first, _ = served.request("GET", "/health")
    _, second, _ = served.request("GET", "/health")
    assert first["X-Request-Id"] != second["X-Request-Id"]  # made fresh when none came
    assert all(line.rsplit(" id=", 1)[1] for line in lines(served))
    assert f"id={echoed}" in served.log.getvalue()


def test_framing_errors_are_logged_without_a_request(serve: Callable[..., Served]) -> None:
    served = serve(log_format="json")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as client:
        client.sendall(b"GET / HTTP/9.9\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 505")
    entry = json.loads(lines(served)[-1])
    assert (entry["status"], entry["method"], entry["path"]) == (505, None, None)


def test_redaction_keeps_ids_and_drops_secrets() -> None:
    token = tokens.generate().plaintext
    token_id, secret = token.split(":")
    assert redact_target(f"/app/valid/{token}") == f"/app/valid/{token_id}:***"
    assert redact_target(f"/app/valid/{quote(token, safe='')}?scope=a") == (
        f"/app/valid/{token_id}:***?scope=a"
    )
    assert redact_target(f"/app/tokens/{token_id}") == f"/app/tokens/{token_id}"
    assert secret not in redact_target(f"/x/{secret}")
    assert redact_target("/health\x1b[2J") == "/health\\x1b[2J"
    assert redact_target("/app/valid/sneaky") == "/app/valid/***"


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_server(tmp_path_factory.mktemp("log") / "tokens.db", log_format="json")
    yield served
    served.stop()


PATH_PIECES = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#%?"),
    max_size=20,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=PATH_PIECES,
    after=PATH_PIECES,
    encode=st.sampled_from(["plain", "percent", "twice", "secret-only"]),
    query=st.booleans(),
)
def test_no_path_puts_a_secret_in_the_json_log(
    json_server: Served, before: str, after: str, encode: str, query: bool
) -> None:
    token = tokens.generate().plaintext
    secret = token.split(":")[1]
    shown = {
        "plain": token,
        "percent": quote(token, safe=""),
        "twice": quote(quote(token, safe=""), safe=""),
        "secret-only": secret,
    }[encode]
    path = f"/{quote(before, safe='/')}{'?t=' if query else '/'}{shown}{quote(after, safe='/')}"
    json_server.log.truncate(0)
    json_server.log.seek(0)
    json_server.request("GET", path)
    logged = json_server.log.getvalue()
    entry = json.loads(logged.splitlines()[-1])
    assert secret not in logged and secret[:20] not in logged
    assert entry["status"] in (200, 400, 404, 405, 414)


@needs_executable
@pytest.mark.parametrize("option", [["--access-log", "off"], ["--quiet"]])
def test_access_log_off_writes_nothing(option: list[str]) -> None:
    with serve_process(*option) as (process, client):
        assert client.request("GET", "/health")[0] == 200
        process.terminate()
        _, rest = process.communicate(timeout=30)
    assert "/health" not in rest and process.returncode == 0


@needs_executable
def test_access_log_json_from_the_command_line() -> None:
    with serve_process("--access-log", "json") as (process, client):
        assert client.request("GET", "/health")[0] == 200
        process.terminate()
        _, rest = process.communicate(timeout=30)
    entries = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    assert [entry["path"] for entry in entries] == ["/health"]


# -- the text line, parsed back (a reader of the log written from its documented format) ---

_TEXT_LINE = re.compile(
    r'(?P<client>[^ ]+) "(?P<request>(?:[^"\\]|\\.)*)" (?P<status>[0-9]{3})'
    r" (?P<ms>[0-9]+\.[0-9])ms(?: (?P<verdict>[^ =]+))?(?: id=(?P<id>[^ ]+))?"
)
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


class TextFields(NamedTuple):
    client: str
    method: str | None
    target: str | None
    status: int
    verdict: str | None
    request_id: str | None


def unescape(text: str, *, quoted: bool) -> str:
    """A field's value from its escaped form; AssertionError if it is not well formed."""
    if not quoted and text == "-":
        return ""
    out, index = [], 0
    while index < len(text):
        character = text[index]
        assert character != '"', f"unescaped quote in {text!r}"
        assert quoted or character != " ", f"unescaped space in {text!r}"
        if character != "\\":
            out.append(character)
            index += 1
            continue
        kind = text[index + 1]
        if kind in '"\\':
            out.append(kind)
            index += 2
            continue
        width = _HEX_DIGITS[kind]
        digits = text[index + 2 : index + 2 + width]
        assert re.fullmatch(f"[0-9a-f]{{{width}}}", digits), f"bad escape in {text!r}"
        out.append(chr(int(digits, 16)))
        index += 2 + width
    return "".join(out)


def parse_text_line(line: str) -> TextFields:
    """The fields of one text access-log line."""
    match = _TEXT_LINE.fullmatch(line)
    assert match is not None, f"not a log line: {line!r}"
    request = match["request"]
    method = target = None
    if request != "-":
        escaped_method, space, escaped_target = request.partition(" ")
        assert space, f"no space in the request of {line!r}"
        method = unescape(escaped_method, quoted=False)
        target = unescape(escaped_target, quoted=True)
    return TextFields(
        unescape(match["client"], quoted=False),
        method,
        target,
        int(match["status"]),
        match["verdict"],
        None if match["id"] is None else unescape(match["id"], quoted=False),
    )


def logged_lines(entry: Entry, log_format: str) -> list[str]:
    stream = io.StringIO()
    log = AccessLog(stream, log_format)
    log.add(entry)
    log.flush()
    return stream.getvalue().splitlines()


# Raw request targets as they arrive: printable text with percent-escapes of anything.
RAW_TARGETS = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.text(max_size=6).map(lambda text: quote(text, safe="")),
        st.sampled_from(['"', "%22", "%0a", "%0d%0a", "%5c", "\\", " ", "%20", "%e2%80%ae"]),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    client=st.text(max_size=40),
    method=st.text(max_size=20),
    target=RAW_TARGETS,
    status=st.integers(100, 599),
    duration=st.floats(0, 1e6),
    verdict=st.none() | st.sampled_from([state.value for state in TokenState]),
    request_id=st.none() | st.text(max_size=40),
    framed=st.booleans(),
)
def test_every_text_line_parses_back_into_the_fields_logged(
    client: str,
    method: str,
    target: str,
    status: int,
    duration: float,
    verdict: str | None,
    request_id: str | None,
    framed: bool,
) -> None:
    entry = Entry(
        client,
        method if framed else None,
        target if framed else None,
        status,
        duration,
        request_id,
        verdict,
    )
    [line] = logged_lines(entry, "text")  # one line, whatever the fields hold
    assert line.isprintable()
    fields = parse_text_line(line)
    assert fields == TextFields(
        client,
        method[:16] if framed else None,
        redacted_target(target) if framed else None,
        status,
        verdict,
        request_id,
    )
    # The JSON line holds the same fields (there shown through `literal`).
    [json_line] = logged_lines(entry, "json")
    record = json.loads(json_line)
    assert record["path"] == (None if fields.target is None else literal(fields.target))
    assert (record["client"], record["status"], record["request_id"]) == (
        client,
        status,
        request_id,
    )


def test_a_quote_in_a_target_cannot_forge_a_status_or_an_id(serve: Callable[..., Served]) -> None:
    """Issue 18 item 10: `%22` decoded to a raw quote let a 404 read as `200 ... valid`."""
    served = serve()
    forged = "/nothing%22%20200%201.0ms%20valid%20id=forged%0a127.0.0.1%20%22GET%20/x%22%20200"
    answer = raw_exchange(served.port, f"GET {forged} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 404")
    [line] = lines(served)
    fields = parse_text_line(line)
    assert (fields.status, fields.verdict, fields.method) == (404, None, "GET")
    assert fields.request_id is not None and fields.request_id != "forged"
    assert fields.target == redacted_target(forged)
    assert fields.target.startswith('/nothing" 200 1.0ms valid id=forged\n')
    assert '\\" 200 1.0ms valid id=forged\\x0a' in line
