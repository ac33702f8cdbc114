"""The real HTTP server on 127.0.0.1 with an ephemeral port, spoken to with http.client."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.errors import StorageError
from tokencli.domain.model import EVERY_TOKEN, TokenRecord
from tokencli.http.routes import ROUTES
from tokencli.server.accesslog import redact_target
from tokencli.store.sqlite.queries import SQLiteStore

from support import ADMIN_KEY, Clock, Served, needs_executable, serve_process


@pytest.fixture
def guarded(serve: Callable[..., Served]) -> Served:
    return serve(admin_key=ADMIN_KEY)


def issue_over_http(served: Served, body: str | None = None) -> str:
    status, _, payload = served.request(
        "POST", "/app/token", body=body, headers={"Content-Type": "application/json"}
    )
    assert status == 200, payload
    assert list(payload) == ["status_code", "token"]
    assert payload["status_code"] == 200
    return str(payload["token"])


def test_original_curl_examples_work(served: Served) -> None:
    token = issue_over_http(served)  # POST with Content-Type: application/json and no body
    for method in ("GET", "POST"):
        payload = served.request(method, f"/app/valid/{token}")[2]
        # The original keys first and unchanged; the verdict and public fields after them.
        assert list(payload)[:3] == ["status_code", "status", "state"]
        assert (payload["status_code"], payload["status"], payload["state"]) == (200, True, "valid")
        assert payload["id"] == token.split(":")[0] and payload["scopes"] == []
    status, _, payload = served.request("DELETE", "/app/clear/all/tokens")
    assert (status, payload) == (200, {"status_code": 200, "status": True, "purged": 0})


def test_invalid_tokens_answer_false(served: Served) -> None:
    for path in ("/app/valid/garbage", "/app/valid/", "/app/valid/%00%ff", "/app/valid/a:b"):
        status, _, payload = served.request("GET", path)
        expected = {"status_code": 200, "status": False, "state": "malformed"}
        assert (status, payload) == (200, expected), path


def stored(db_path: Path, token_id: str) -> TokenRecord | None:
    """The token as stored, read on a connection of its own (closed again)."""
    with contextlib.closing(SQLiteStore.open(db_path, create=False)) as store:
        return store.get(token_id)


def test_issue_body_sets_ttl_label_and_uses(served: Served, db_path: Path) -> None:
    token = issue_over_http(served, json.dumps({"ttl": "15m", "label": "web", "uses": 1}))
    record = stored(db_path, token.split(":")[0])
    assert record is not None
    assert record.label == "web" and record.uses_left == 1
    assert record.expires_at - record.created_at == 900
    assert served.request("GET", f"/app/valid/{token}")[2]["status"] is True
    assert served.request("GET", f"/app/valid/{token}")[2]["status"] is False
    seconds = issue_over_http(served, json.dumps({"ttl": 90}))
    record = stored(db_path, seconds.split(":")[0])
    assert record is not None and record.expires_at - record.created_at == 90


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"ttl": "0"}', "TTL must be positive"),
        ('{"ttl": "15mm"}', "not a duration"),
        ('{"ttl": -5}', "TTL must be positive"),
        ('{"ttl": "3651d"}', "too large"),
        ('{"ttl": true}', "ttl must be"),
        ('{"ttl": [1]}', "ttl must be"),
        ('{"uses": 0}', "uses must be a positive"),
        ('{"uses": "1"}', "uses must be a whole number"),
        ('{"label": 5}', "label must be a string"),
        ('{"label": "a\\u001bb"}', "control character"),
        ('{"colour": "red"}', "unknown field(s): colour"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_issue_bodies_are_400(
    served: Served, db_path: Path, body: str | bytes, fragment: str
) -> None:
    status, _, payload = served.request("POST", "/app/token", body=body)
    assert status == 400
    assert payload["status_code"] == 400
    assert fragment in payload["detail"]
    with contextlib.closing(SQLiteStore.open(db_path, create=False)) as store:
        assert list(store.iter_tokens(EVERY_TOKEN, 0)) == []


def test_unknown_path_404_and_wrong_method_405_with_allow(served: Served) -> None:
    status, _, payload = served.request("GET", "/nowhere")
    assert (status, payload["status_code"]) == (404, 404)
    status, headers, payload = served.request("GET", "/app/token")
    assert (status, payload["status_code"], headers["Allow"]) == (405, 405, "POST")
    status, headers, _ = served.request("PUT", "/app/valid/x")
    assert (status, headers["Allow"]) == (405, "GET, POST")
    status, headers, _ = served.request("POST", "/app/clear/all/tokens")
    assert (status, headers["Allow"]) == (405, "DELETE")


def test_body_over_64_kib_is_413(served: Served) -> None:
    body = json.dumps({"label": "x" * (70 * 1024)})
    status, _, payload = served.request("POST", "/app/token", body=body)
    assert (status, payload["status_code"]) == (413, 413)


def test_request_line_over_8_kib_is_414(served: Served) -> None:
    status, _, payload = served.request("GET", "/app/valid/" + "a" * 9000)
    assert (status, payload["status_code"]) == (414, 414)


def test_headers_over_64_kib_are_431(served: Served) -> None:
    headers = {f"X-Filler-{index}": "y" * 1000 for index in range(70)}
    status, _, payload = served.request("GET", "/health", headers=headers)
    assert (status, payload["status_code"]) == (431, 431)


def test_health_openapi_and_pages(served: Served) -> None:
    assert served.request("GET", "/health")[:3:2] == (200, {"status_code": 200, "status": "ok"})
    status, _, document = served.request("GET", "/openapi.json")
    assert status == 200
    validate(document)
    for page in ("/docs", "/redoc"):
        status, headers, html = served.request("GET", page)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"/openapi.json" in html


def test_openapi_lists_exactly_the_routes_served(served: Served) -> None:
    document = served.request("GET", "/openapi.json")[2]
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    answered = {(route.template, route.method) for route in ROUTES}
    assert documented == answered
    token_id = issue_over_http(served).split(":")[0]
    for template, method in sorted(answered, key=lambda pair: pair[1] == "DELETE"):
        path = template.replace("{token}", "x").replace("{id}", token_id)
        status = served.request(method, path, headers={"Content-Type": "application/json"})[0]
        assert status not in (404, 405), (method, path)


def test_admin_key_guards_issue_and_purge(guarded: Served) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_KEY}):
        status, response_headers, payload = guarded.request("POST", "/app/token", headers=headers)
        assert (status, payload["status_code"]) == (401, 401)
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
        assert guarded.request("DELETE", "/app/clear/all/tokens", headers=headers)[0] == 401
    good = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, payload = guarded.request("POST", "/app/token", headers=good)
    assert status == 200
    # validating needs no key: clients of the original service validate freely
    assert guarded.request("GET", f"/app/valid/{payload['token']}")[2]["status"] is True
    assert guarded.request("DELETE", "/app/clear/all/tokens", headers=good)[0] == 200


def test_no_admin_key_means_open_issue(served: Served) -> None:
    assert served.request("POST", "/app/token", headers={"Authorization": "Bearer x"})[0] == 200


def test_cli_and_http_share_tokens(served: Served, runner: CliRunner) -> None:
    from_cli = runner.invoke(app, ["issue"]).stdout.strip()
    assert served.request("GET", f"/app/valid/{from_cli}")[2]["status"] is True
    from_http = issue_over_http(served)
    assert runner.invoke(app, ["check", from_http]).exit_code == 0


def test_purge_over_http_matches_cli_purge(serve: Callable[..., Served]) -> None:
    clock = Clock()
    running = serve(clock=clock)
    live = issue_over_http(running, json.dumps({"ttl": "1h"}))
    for _ in range(3):
        issue_over_http(running, json.dumps({"ttl": "10s"}))
    clock.advance(10)
    payload = running.request("DELETE", "/app/clear/all/tokens")[2]
    assert payload == {"status_code": 200, "status": True, "purged": 3}
    assert running.request("GET", f"/app/valid/{live}")[2]["status"] is True


def test_access_log_redacts_secrets(served: Served) -> None:
    token = issue_over_http(served)
    token_id, secret = token.split(":")
    # An unknown query parameter is refused (400), and logged without the secret.
    assert served.request("GET", f"/app/valid/{token}?again={secret}")[0] == 400
    served.request("GET", f"/app/valid/{secret}")
    log = served.log.getvalue()
    assert secret not in log
    assert f'"GET /app/valid/{token_id}:***?again=***" 400' in log
    assert '"GET /app/valid/***" 200' in log
    assert all(
        re.search(r" [0-9.]+ms( [a-z_]+)? id=[0-9a-f-]+$", line) for line in log.splitlines()
    )
    assert len(log.splitlines()) == 3


def test_redaction_of_odd_paths() -> None:
    assert redact_target("/app/valid/abcdefgh2345%3Asecret") == "/app/valid/abcdefgh2345:***"
    assert redact_target("/health\x1b[2J") == "/health\\x1b[2J"
    assert redact_target("/app/valid/sneaky") == "/app/valid/***"


def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    token = issue_over_http(served)
    connection = HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        first_socket = None
        for _ in range(20):
            connection.request("GET", f"/app/valid/{token}")
            response = connection.getresponse()
            assert json.loads(response.read())["status"] is True
            first_socket = first_socket or connection.sock
            assert connection.sock is first_socket
    finally:
        connection.close()


def test_two_hundred_concurrent_clients_all_answered(served: Served) -> None:
    tokens = [issue_over_http(served) for _ in range(20)]
    cases = [(tokens[i % 20], True) if i % 2 else (f"bogus{i}", False) for i in range(200)]
    barrier = threading.Barrier(200, timeout=60)

    def validate_one(case: tuple[str, bool]) -> bool:
        token, expected = case
        barrier.wait()  # all 200 start at once
        status, _, payload = served.request("GET", f"/app/valid/{token}")
        return status == 200 and payload["status"] is expected

    with ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(validate_one, cases))
    assert answers == [True] * 200


def test_stop_lets_a_request_in_flight_finish(serve: Callable[..., Served]) -> None:
    running = serve()
    connection = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    idle = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    try:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # accepted, now idle
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # not finished yet
        # Stop once the server holds the half request (before, it is still the kernel's).
        deadline = time.monotonic() + 10
        while not any(c.parser.buffer for c in running.server.connections()):
            assert time.monotonic() < deadline, "the half request never arrived"
            time.sleep(0.01)
        stopper = threading.Thread(target=running.server.stop)
        stopper.start()
        connection.sendall(b"\r\n")
        answer = connection.recv(65536)
        stopper.join(timeout=30)
        assert not stopper.is_alive()
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"Connection: close" in answer
        assert idle.recv(1) == b""  # idle keep-alive connection closed, not hung
    finally:
        connection.close()
        idle.close()


def test_non_loopback_without_key_is_refused(runner: CliRunner) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr


def test_bad_admin_key_file_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n")
    result = runner.invoke(app, ["serve", "--admin-key-file", str(empty)])
    assert result.exit_code == 2 and "is empty" in result.stderr
    missing = runner.invoke(app, ["serve", "--admin-key-file", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "cannot read admin key file" in missing.stderr


@pytest.mark.slow
@needs_executable
def test_real_serve_subprocess_stops_cleanly_on_sigterm(db_path: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY)
    os.chmod(key_file, 0o600)
    with serve_process("--admin-key-file", str(key_file)) as (process, running):
        status, _, payload = running.request(
            "POST", "/app/token", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert status == 200
        assert running.request("GET", f"/app/valid/{payload['token']}")[2]["status"] is True
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in rest
    assert payload["token"].split(":")[1] not in rest


def test_serving_a_file_that_is_not_ours_fails_at_start_and_leaves_it(
    tmp_path: Path, serve: Callable[..., Served]
) -> None:
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not a database" * 100)
    before = foreign.read_bytes()
    with pytest.raises(StorageError, match="not a tokencli database|not a SQLite database"):
        serve(foreign)
    assert foreign.read_bytes() == before
