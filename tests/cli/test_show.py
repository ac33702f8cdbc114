"""`show` and GET /app/tokens/{id}: a token's public fields and state, looked at without
touching it: no use taken, nothing written, nothing deleted (docs/design.md,
"Command line" and "HTTP (tokencli serve)")."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.cli.output import TABLE_HEADERS
from tokencli.domain import tokens
from tokencli.http.answers import ApiConfig, Keys
from tokencli.http.http11 import Request
from tokencli.service.service import TokenService
from tokencli.service.views import iso_time
from tokencli.store.sqlite.queries import SQLiteStore

from support import ADMIN_KEY, VALIDATE_KEY, Clock, Served, answer_one, api_call

JSON_KEYS = ["id", "label", "created_at", "expires_at", "uses_left", "state", "scopes"]


def show(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["show", *args])


def audit_count(db_path: Path) -> int:
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(connection.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        connection.close()


def files_of(db_path: Path) -> dict[str, bytes]:
    """The database file and its WAL, byte for byte. (Not the -shm file: SQLite's
    shared-memory index, where every reader marks what it reads.)"""
    return {
        path.name: path.read_bytes()
        for path in db_path.parent.iterdir()
        if path.name.startswith(db_path.name) and not path.name.endswith("-shm")
    }


# -- the command ----------------------------------------------------------------------


def test_show_by_id_and_by_whole_token_piped_is_tab_separated(
    runner: CliRunner, on_file: TokenService
) -> None:
    first = on_file.issue(label="deploy", uses=3, scopes=["b", "a"])
    second = on_file.issue()
    result = show(runner, first.info.id, second.token)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == list(TABLE_HEADERS)
    assert lines[1].split("\t") == [
        first.info.id,
        "deploy",
        iso_time(first.info.created_at),
        iso_time(first.info.expires_at),
        "3",
        "valid",
        "a,b",
    ]
    assert lines[2].split("\t")[:2] == [second.info.id, ""]
    assert lines[2].split("\t")[4:] == ["unlimited", "valid", ""]
    assert len(lines) == 3
    assert second.token.split(":")[1] not in result.output  # never the secret


def test_show_json_is_one_object_per_line_as_help_says(
    runner: CliRunner, on_file: TokenService
) -> None:
    issued = [on_file.issue(label=f"n{n}", scopes=["s"]) for n in range(3)]
    result = show(runner, "--json", *(item.info.id for item in reversed(issued)))
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [item["id"] for item in objects] == [item.info.id for item in reversed(issued)]
    assert all(list(item) == JSON_KEYS for item in objects)
    assert objects[0]["scopes"] == ["s"] and objects[0]["label"] == "n2"
    help_text = runner.invoke(app, ["show", "--help"]).stdout
    assert "--json" in help_text and "one per line" in help_text.replace("\n", " ")


def test_show_takes_no_use_and_writes_nothing(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    single = on_file.issue(uses=1, scopes=["a"])
    before_files = files_of(db_path)
    before_events = audit_count(db_path)
    for args in ([single.info.id], [single.token], ["--json", single.token, single.info.id]):
        result = show(runner, *args)
        assert result.exit_code == 0, result.output
        assert "valid" in result.stdout
    assert files_of(db_path) == before_files
    assert audit_count(db_path) == before_events
    assert on_file.check(single.token).valid  # its one use is still there


def test_show_of_every_state(runner: CliRunner, on_file: TokenService, db_path: Path) -> None:
    past = TokenService(on_file.store, Clock(1_000_000_000))
    expired = past.issue(ttl_seconds=60)
    used_up = on_file.issue(uses=1)
    assert on_file.check(used_up.token).valid
    revoked = on_file.issue()
    on_file.revoke(revoked.info.id)
    live = on_file.issue()
    ids = [expired.info.id, used_up.info.id, revoked.info.id, live.info.id]
    result = show(runner, "--json", *ids)
    assert result.exit_code == 0, result.output
    states = [json.loads(line)["state"] for line in result.stdout.splitlines()]
    assert states == ["expired", "used_up", "revoked", "valid"]
    # Shown, not deleted: the expired token is still stored afterwards.
    assert on_file.store.get(expired.info.id) is not None
    assert json.loads(show(runner, "--json", expired.info.id).stdout)["uses_left"] is None


def test_a_missing_one_is_an_error_line_and_exit_1_and_the_rest_are_shown(
    runner: CliRunner, on_file: TokenService
) -> None:
    kept = [on_file.issue(label="one"), on_file.issue(label="two")]
    stranger = tokens.generate()
    result = show(
        runner,
        "--json",
        kept[0].info.id,
        "aaaaaaaaaaaa",
        stranger.plaintext,
        "not-a-token",
        kept[1].token,
    )
    assert result.exit_code == 1
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == ["one", "two"]
    errors = result.stderr.splitlines()
    assert len(errors) == 3 and all(line.startswith("Error: ") for line in errors)
    assert "aaaaaaaaaaaa" in errors[0] and stranger.id in errors[1]
    assert stranger.plaintext.split(":")[1] not in result.stderr  # no secret echoed


def test_a_whole_token_with_a_wrong_secret_is_not_shown(
    runner: CliRunner, on_file: TokenService
) -> None:
    issued = on_file.issue(label="private")
    body = issued.info.id + ":" + tokens.generate().plaintext.split(":")[1][:24]
    forged = body + tokens._checksum(body)
    result = show(runner, forged)
    assert result.exit_code == 1
    assert "private" not in result.output


def test_show_on_a_missing_database_creates_nothing(runner: CliRunner, db_path: Path) -> None:
    result = show(runner, "aaaaaaaaaaaa")
    assert result.exit_code == 1 and "aaaaaaaaaaaa" in result.stderr
    assert not db_path.exists()


def test_show_needs_an_argument(runner: CliRunner) -> None:
    assert show(runner).exit_code == 2


@pytest.mark.parametrize(
    "argument", ["", " ", "\x1b[31m", "\u202egnp.exe", "a" * 100_000, "\x00"], ids=repr
)
def test_hostile_arguments_are_a_clean_not_found(
    runner: CliRunner, on_file: TokenService, argument: str
) -> None:
    on_file.issue()
    result = show(runner, argument)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert len(result.stderr) < 200


def test_labels_are_shown_literally(
    runner: CliRunner, db_path: Path, on_file: TokenService
) -> None:
    issued = on_file.issue(label="plain")
    connection = sqlite3.connect(db_path)
    connection.execute("UPDATE tokens SET label = ? WHERE id = ?", ("\x1b[2J\tx\n", issued.info.id))
    connection.commit()
    connection.close()
    result = show(runner, issued.info.id)
    assert "\x1b" not in result.stdout and "\\x1b[2J\\x09x\\x0a" in result.stdout
    assert json.loads(show(runner, "--json", issued.info.id).stdout)["label"] == "\x1b[2J\tx\n"


def test_a_thousand_ids_at_once(runner: CliRunner, on_file: TokenService) -> None:
    ids = [issued.info.id for batch in on_file.issue_batches(count=1000) for issued in batch]
    result = show(runner, "--json", *ids)
    assert result.exit_code == 0
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ids


# -- GET /app/tokens/{id} ---------------------------------------------------------------


def test_http_show_is_like_show(service: TokenService, clock: Clock) -> None:
    issued = service.issue(label="web", uses=1, scopes=["z", "a"], ttl_seconds=60)
    events = len(service.audit(limit=1000))
    status, _, payload = api_call(service, "GET", f"/app/tokens/{issued.info.id}")
    assert status == 200
    assert payload == {
        "status_code": 200,
        "id": issued.info.id,
        "label": "web",
        "created_at": iso_time(issued.info.created_at),
        "expires_at": iso_time(issued.info.expires_at),
        "uses_left": 1,
        "state": "valid",
        "scopes": ["a", "z"],
    }
    assert len(service.audit(limit=1000)) == events  # no audit event
    assert service.check(issued.token).valid  # and no use taken
    clock.advance(60)
    assert api_call(service, "GET", f"/app/tokens/{issued.info.id}")[2]["state"] == "expired"


@pytest.mark.parametrize(
    "target",
    [
        "/app/tokens/aaaaaaaaaaaa",
        "/app/tokens/",
        "/app/tokens/AAAAAAAAAAAA",
        "/app/tokens/aaaaaaaaaaa",
        "/app/tokens/%61aaaaaaaaaaa",
        "/app/tokens/" + "a" * 5000,
    ],
)
def test_http_show_of_an_unknown_id_is_404(service: TokenService, target: str) -> None:
    service.issue()
    status, _, payload = api_call(service, "GET", target)
    assert (status, payload["status_code"]) == (404, 404)
    assert len(payload["detail"]) < 100


def test_http_show_by_a_whole_token_is_404(service: TokenService) -> None:
    """The path names an ID; a whole token there is not looked up (nor logged as one)."""
    issued = service.issue()
    assert api_call(service, "GET", f"/app/tokens/{issued.token}")[0] == 404


def test_http_show_needs_the_admin_key_when_one_is_set(service: TokenService) -> None:
    issued = service.issue()
    config = ApiConfig(Keys(admin=ADMIN_KEY, validate=VALIDATE_KEY))
    for headers in ({}, {"authorization": f"Bearer {VALIDATE_KEY}"}, {"authorization": "x"}):
        request = Request("GET", f"/app/tokens/{issued.info.id}", "HTTP/1.1", headers)
        answer = answer_one(service, request, config)
        assert int(answer.status) == 401
        assert answer.headers == {"WWW-Authenticate": 'Bearer realm="tokencli"'}
    request = Request(
        "GET", f"/app/tokens/{issued.info.id}", "HTTP/1.1", {"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert int(answer_one(service, request, config).status) == 200


def test_http_show_over_the_real_server(serve: Callable[..., Served], db_path: Path) -> None:
    served = serve(admin_key=ADMIN_KEY)
    store = SQLiteStore.open(db_path, create=True)
    try:
        issued = TokenService(store).issue(uses=1)
    finally:
        store.close()
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, payload = served.request("GET", f"/app/tokens/{issued.info.id}", headers=bearer)
    assert (status, payload["state"], payload["uses_left"]) == (200, "valid", 1)
    assert served.request("GET", f"/app/tokens/{issued.info.id}")[0] == 401
    assert served.request("GET", "/app/tokens/aaaaaaaaaaaa", headers=bearer)[0] == 404
    status, _, payload = served.request("GET", f"/app/valid/{issued.token}")
    assert payload["state"] == "valid"
