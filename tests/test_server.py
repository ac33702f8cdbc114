"""The real HTTP server on 127.0.0.1 with an ephemeral port, spoken to with http.client."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from typer.testing import CliRunner

from tokencli.cli import app
from tokencli.server import ROUTES, TokenHTTPServer, make_server, redact_path
from tokencli.service import TokenService
from tokencli.store import Store

from support import Clock

ADMIN_KEY = "correct horse battery staple"


class Served:
    """A running server and what a test needs to talk to it."""

    def __init__(self, server: TokenHTTPServer, log: io.StringIO) -> None:
        self.server = server
        self.log = log
        self.port = server.server_address[1]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        connection = HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
            content_type = response.getheader("Content-Type", "")
            payload = json.loads(raw) if content_type.startswith("application/json") else raw
            return response.status, dict(response.getheaders()), payload
        finally:
            connection.close()


def start(
    db_path: Path,
    *,
    admin_key: str | None = None,
    clock: Clock | None = None,
    workers: int = 0,
) -> Served:
    lock = threading.Lock()
    log = io.StringIO()

    def open_service() -> TokenService:
        store = Store.open(db_path, create=True, write_lock=lock)
        return TokenService(store, clock) if clock is not None else TokenService(store)

    server = make_server(
        open_service, "127.0.0.1", 0, admin_key=admin_key, access_log=log, workers=workers
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return Served(server, log)


@pytest.fixture(params=[0, 2], ids=["inline", "pool"])
def served(db_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """The server answering on its event loop, and with a pool of two workers."""
    running = start(db_path, workers=request.param)
    yield running
    running.server.stop()


@pytest.fixture
def guarded(db_path: Path) -> Iterator[Served]:
    running = start(db_path, admin_key=ADMIN_KEY)
    yield running
    running.server.stop()


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
    assert served.request("GET", f"/app/valid/{token}")[2] == {"status_code": 200, "status": True}
    assert served.request("POST", f"/app/valid/{token}")[2] == {"status_code": 200, "status": True}
    status, _, payload = served.request("DELETE", "/app/clear/all/tokens")
    assert (status, payload) == (200, {"status_code": 200, "status": True, "purged": 0})


def test_invalid_tokens_answer_false(served: Served) -> None:
    for path in ("/app/valid/garbage", "/app/valid/", "/app/valid/%00%ff", "/app/valid/a:b"):
        status, _, payload = served.request("GET", path)
        assert (status, payload) == (200, {"status_code": 200, "status": False}), path


def test_issue_body_sets_ttl_label_and_uses(served: Served, db_path: Path) -> None:
    token = issue_over_http(served, json.dumps({"ttl": "15m", "label": "web", "uses": 1}))
    record = Store.open(db_path, create=False).get(token.split(":")[0])
    assert record is not None
    assert record.label == "web" and record.uses_left == 1
    assert record.expires_at - record.created_at == 900
    assert served.request("GET", f"/app/valid/{token}")[2]["status"] is True
    assert served.request("GET", f"/app/valid/{token}")[2]["status"] is False
    seconds = issue_over_http(served, json.dumps({"ttl": 90}))
    record = Store.open(db_path, create=False).get(seconds.split(":")[0])
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
    assert Store.open(db_path, create=False).list_tokens(0, include_ended=True) == []


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
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    answered = {(route.template, method) for route in ROUTES for method in route.methods}
    assert documented == answered
    for template, method in answered:
        path = template.replace("{token}", "x")
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


def test_purge_over_http_matches_cli_purge(db_path: Path) -> None:
    clock = Clock()
    running = start(db_path, clock=clock)
    try:
        live = issue_over_http(running, json.dumps({"ttl": "1h"}))
        for _ in range(3):
            issue_over_http(running, json.dumps({"ttl": "10s"}))
        clock.advance(10)
        payload = running.request("DELETE", "/app/clear/all/tokens")[2]
        assert payload == {"status_code": 200, "status": True, "purged": 3}
        assert running.request("GET", f"/app/valid/{live}")[2]["status"] is True
    finally:
        running.server.stop()


def test_access_log_redacts_secrets(served: Served) -> None:
    token = issue_over_http(served)
    token_id, secret = token.split(":")
    served.request("GET", f"/app/valid/{token}?again={secret}")
    served.request("GET", f"/app/valid/{secret}")
    log = served.log.getvalue()
    assert secret not in log
    assert f'"GET /app/valid/{token_id}:***?***" 200' in log
    assert '"GET /app/valid/***" 200' in log
    assert all(line.endswith("ms") for line in log.splitlines())
    assert len(log.splitlines()) == 3


def test_redaction_of_odd_paths() -> None:
    assert redact_path("/app/valid/abcdefgh2345%3Asecret") == "/app/valid/abcdefgh2345:***"
    assert redact_path("/health\x1b[2J") == "/health\\x1b[2J"
    assert redact_path("/app/valid/sneaky") == "/app/valid/***"


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


def test_stop_lets_a_request_in_flight_finish(db_path: Path) -> None:
    running = start(db_path)
    connection = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    idle = socket.create_connection(("127.0.0.1", running.port), timeout=30)
    try:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # accepted, now idle
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # not finished yet
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
@pytest.mark.skipif(shutil.which("tokencli") is None, reason="tokencli is not installed")
def test_real_serve_subprocess_stops_cleanly_on_sigterm(db_path: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY)
    os.chmod(key_file, 0o600)
    command = [
        str(shutil.which("tokencli")),
        "serve",
        "--port",
        "0",
        "--admin-key-file",
        str(key_file),
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("listening on http://127.0.0.1:")
        port = int(first.strip().rsplit(":", 1)[1])
        running = Served.__new__(Served)
        running.port = port
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


def test_unusable_database_answers_503_in_json(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not a database" * 100)
    before = foreign.read_bytes()
    running = start(foreign)
    try:
        for method, path in (("GET", "/health"), ("GET", "/app/valid/x"), ("POST", "/app/token")):
            status, _, payload = running.request(method, path)
            assert (status, payload["status_code"]) == (503, 503)
            assert "not a SQLite database" in payload["detail"]
        assert running.request("GET", "/openapi.json")[0] == 200  # needs no database
        assert running.request("GET", "/nowhere")[0] == 404
    finally:
        running.server.stop()
    assert foreign.read_bytes() == before
