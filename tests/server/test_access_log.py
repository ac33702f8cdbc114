"""The access log: text or JSON lines, a request ID followed from client to log, and never
a secret, whatever path a client sends (Hypothesis)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokencli.domain import tokens
from tokencli.server.accesslog import MAX_REQUEST_ID, redact_target

from support import Served, needs_executable, serve_process, start_server

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
