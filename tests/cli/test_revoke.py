"""`revoke` by ID and by selector (--label, --scope, --all), --dry-run, the question on a
terminal, and DELETE /app/tokens/{id} (docs/design.md, "Command
line" and "HTTP (tokencli serve)")."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.model import EVERY_TOKEN, TokenState
from tokencli.http.answers import ApiConfig, Keys
from tokencli.http.http11 import Request
from tokencli.service.service import TokenService

from support import ADMIN_KEY, EXECUTABLE, VALIDATE_KEY, Clock, answer_one, needs_executable


def revoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["revoke", *args])


def states(service: TokenService) -> dict[str, str]:
    return {info.id: info.state.value for info in service.list_tokens(EVERY_TOKEN)}


def revoke_events(db_path: Path) -> list[str]:
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT token_id FROM audit WHERE action = 'revoke' ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    return [row[0] for row in rows]


def oldest_first(service: TokenService, ids: list[str]) -> list[str]:
    """IDs in the order list and revoke give: by creation time, then by ID."""

    def created(token_id: str) -> tuple[int, str]:
        record = service.store.get(token_id)
        assert record is not None
        return record.created_at, token_id

    return sorted(ids, key=created)


def printed_ids(stdout: str, verb: str = "revoked") -> list[str]:
    lines = stdout.splitlines()
    assert all(line.startswith(f"{verb} ") for line in lines), lines
    return [line.removeprefix(f"{verb} ") for line in lines]


# -- selectors --------------------------------------------------------------------------


def test_label_is_an_exact_match(runner: CliRunner, on_file: TokenService) -> None:
    ci = [on_file.issue(label="ci").info.id for _ in range(3)]
    others = [on_file.issue(label=label).info.id for label in ("ci-2", "CI", "c", " ci", None)]
    result = revoke(runner, "--label", "ci")
    assert result.exit_code == 0, result.output
    assert printed_ids(result.stdout) == oldest_first(on_file, ci)
    assert result.stderr == ""
    now = states(on_file)
    assert all(now[token_id] == "revoked" for token_id in ci)
    assert all(now[token_id] == "valid" for token_id in others)


def test_scopes_select_tokens_holding_all_of_them(runner: CliRunner, on_file: TokenService) -> None:
    only_a = on_file.issue(scopes=["a"]).info.id
    both = on_file.issue(scopes=["a", "b"]).info.id
    both_and_more = on_file.issue(scopes=["a", "b", "c"]).info.id
    only_b = on_file.issue(scopes=["b"]).info.id
    prefix = on_file.issue(scopes=["ab", "bb"]).info.id
    result = revoke(runner, "--scope", "a", "--scope", "b")
    assert printed_ids(result.stdout) == oldest_first(on_file, [both, both_and_more])
    now = states(on_file)
    assert [now[token_id] for token_id in (only_a, only_b, prefix)] == ["valid"] * 3


def test_selectors_combine_with_and(runner: CliRunner, on_file: TokenService) -> None:
    target = on_file.issue(label="ci", scopes=["deploy"]).info.id
    on_file.issue(label="ci", scopes=["read"])
    on_file.issue(label="web", scopes=["deploy"])
    result = revoke(runner, "--label", "ci", "--scope", "deploy")
    assert printed_ids(result.stdout) == [target]
    result = revoke(runner, "--all", "--yes", "--label", "web")
    assert len(printed_ids(result.stdout)) == 1
    assert sorted(states(on_file).values()) == ["revoked", "revoked", "valid"]


def test_all_revokes_live_tokens_only(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    expired = TokenService(on_file.store, Clock(1_000_000_000)).issue(ttl_seconds=60).info.id
    used = on_file.issue(uses=1)
    assert on_file.check(used.token).valid
    earlier = on_file.issue().info.id
    on_file.revoke(earlier)
    revoked_at = on_file.store.get(earlier)
    live = [on_file.issue().info.id for _ in range(3)]
    events_before = revoke_events(db_path)
    result = revoke(runner, "--all", "--yes")
    assert result.exit_code == 0, result.output
    assert printed_ids(result.stdout) == oldest_first(on_file, live)
    now = states(on_file)
    assert (now[expired], now[used.info.id]) == ("expired", "used_up")
    assert on_file.store.get(earlier) == revoked_at  # untouched
    # One audit event per token revoked, none for the rest.
    assert revoke_events(db_path) == [*events_before, *oldest_first(on_file, live)]


def test_selector_matching_nothing_is_exit_0_and_silent(
    runner: CliRunner, on_file: TokenService
) -> None:
    on_file.issue(label="ci", scopes=["a"])
    for args in (
        ["--label", "nobody"],
        ["--label", ""],
        ["--label", "\x1b[31m"],
        ["--scope", "zzz"],
        ["--label", "ci", "--scope", "b"],
        ["--label", "x" * 10_000],
    ):
        result = revoke(runner, *args)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", ""), args
    assert list(states(on_file).values()) == ["valid"]


def test_all_on_an_empty_database_is_exit_0_and_silent(runner: CliRunner) -> None:
    result = revoke(runner, "--all", "--yes")
    assert (result.exit_code, result.stdout) == (0, "")


def test_no_ids_and_no_selector_is_a_usage_error(runner: CliRunner) -> None:
    for args in ([], ["--yes"], ["--dry-run"]):
        result = revoke(runner, *args)
        assert result.exit_code == 2, args
        assert result.stdout == ""


def test_a_bad_scope_selector_revokes_nothing(runner: CliRunner, on_file: TokenService) -> None:
    on_file.issue(scopes=["a"])
    result = revoke(runner, "--scope", "a", "--scope", "A")
    assert result.exit_code == 2 and result.stdout == ""
    assert list(states(on_file).values()) == ["valid"]


def test_ids_and_selectors_together(runner: CliRunner, on_file: TokenService) -> None:
    named = on_file.issue(label="web").info.id
    selected = on_file.issue(label="ci").info.id
    result = revoke(runner, named, "--label", "ci")
    assert result.exit_code == 0, result.output
    assert sorted(printed_ids(result.stdout)) == sorted([named, selected])


def test_a_missing_id_beside_a_selector_is_exit_1_and_the_rest_revoked(
    runner: CliRunner, on_file: TokenService
) -> None:
    selected = on_file.issue(label="ci").info.id
    result = revoke(runner, "aaaaaaaaaaaa", "--label", "ci")
    assert result.exit_code == 1
    assert printed_ids(result.stdout) == [selected]
    assert "aaaaaaaaaaaa" in result.stderr


def test_dry_run_prints_and_changes_nothing(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    ci = [on_file.issue(label="ci").info.id for _ in range(2)]
    other = on_file.issue().info.id
    before = states(on_file)
    events = revoke_events(db_path)
    data = db_path.read_bytes()
    for args, expected in (
        (["--label", "ci"], oldest_first(on_file, ci)),
        (["--all"], oldest_first(on_file, [*ci, other])),  # no question on a dry run
        ([other], [other]),
        (["--label", "nobody"], []),
    ):
        result = revoke(runner, "--dry-run", *args)
        assert result.exit_code == 0, result.output
        assert printed_ids(result.stdout, "would revoke") == expected
    assert states(on_file) == before
    assert revoke_events(db_path) == events
    assert db_path.read_bytes() == data


def test_a_selector_revoke_is_one_transaction(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    """A failure part-way (here a trigger refusing the third row) revokes none."""
    ids = [on_file.issue(label="ci").info.id for _ in range(5)]
    connection = sqlite3.connect(db_path)
    connection.execute(
        "CREATE TRIGGER refuse_third BEFORE UPDATE OF revoked_at ON tokens"
        f" WHEN NEW.id = '{ids[2]}' BEGIN SELECT RAISE(ABORT, 'refused by a test'); END"
    )
    connection.commit()
    connection.close()
    result = revoke(runner, "--label", "ci")
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert set(states(on_file).values()) == {"valid"}
    assert revoke_events(db_path) == []


def test_many_tokens_at_once(runner: CliRunner, on_file: TokenService, db_path: Path) -> None:
    ids = [issued.info.id for batch in on_file.issue_batches(count=3000) for issued in batch]
    result = revoke(runner, "--all", "--yes")
    assert sorted(printed_ids(result.stdout)) == sorted(ids)
    assert set(states(on_file).values()) == {"revoked"}
    assert sorted(revoke_events(db_path)) == sorted(ids)


def test_service_revoke_by_selector_on_the_hand_clock(service: TokenService, clock: Clock) -> None:
    early = service.issue(ttl_seconds=60, label="x").info.id
    late = service.issue(ttl_seconds=3600, label="x").info.id
    clock.advance(60)  # `early` has just expired: not live, so not revoked
    selector = EVERY_TOKEN._replace(label="x")
    assert service.would_revoke((), selector) == ([late], [])
    assert service.revoke_many((), selector, dry_run=True) == ([late], [])
    assert service.revoke_many((), selector) == ([late], [])
    assert service.show(early).state is TokenState.EXPIRED
    record = service.store.get(late)
    assert record is not None and record.revoked_at == int(clock.now)
    assert service.revoke_many((), selector) == ([], [])


# -- the question on a terminal ---------------------------------------------------------


def on_a_terminal(args: list[str], db_path: Path, answer: bytes | None) -> tuple[int, str]:
    """Run tokencli with a pseudo-terminal for stdin, stdout and stderr; when it asks,
    type `answer` (None: press Ctrl-C). Return the exit code and what it printed."""
    assert EXECUTABLE is not None
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "TOKENCLI_DB": str(db_path), "COLUMNS": "120"}
    process = subprocess.Popen(
        [EXECUTABLE, *args], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    shown = b""
    answered = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the other side closed: the process ended
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
            if not answered and b"?" in shown:
                answered = True
                if answer is None:
                    process.send_signal(signal.SIGINT)
                else:
                    os.write(leader, answer)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return code, shown.decode(errors="replace")


@needs_executable
def test_all_on_a_terminal_asks_and_no_revokes_nothing(
    on_file: TokenService, db_path: Path
) -> None:
    on_file.issue()
    code, shown = on_a_terminal(["revoke", "--all"], db_path, b"n\r")
    assert code == 0, shown
    assert "Revoke every live token?" in shown and "revoked" not in shown.lower().replace(
        "revoke every", ""
    )
    assert list(states(on_file).values()) == ["valid"]
    code, shown = on_a_terminal(["revoke", "--all"], db_path, b"\r")  # default: no
    assert list(states(on_file).values()) == ["valid"]


@needs_executable
def test_all_on_a_terminal_yes_revokes(on_file: TokenService, db_path: Path) -> None:
    issued = on_file.issue().info.id
    code, shown = on_a_terminal(["revoke", "--all"], db_path, b"y\r")
    assert code == 0, shown
    assert f"revoked {issued}" in shown
    assert list(states(on_file).values()) == ["revoked"]


@needs_executable
def test_all_yes_on_a_terminal_does_not_ask(on_file: TokenService, db_path: Path) -> None:
    issued = on_file.issue().info.id
    code, shown = on_a_terminal(["revoke", "--all", "--yes"], db_path, b"n\r")
    assert code == 0 and "?" not in shown
    assert f"revoked {issued}" in shown


# -- DELETE /app/tokens/{id} ------------------------------------------------------------


def delete(
    service: TokenService, token_id: str, config: ApiConfig | None = None, key: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    request = Request("DELETE", f"/app/tokens/{token_id}", "HTTP/1.1", headers)
    answer = answer_one(service, request, config or ApiConfig())
    return int(answer.status), answer.headers or {}, json.loads(answer.body)


def test_http_delete_revokes_and_again_is_200(service: TokenService) -> None:
    http_service = TokenService(service.store, source="http")
    issued = service.issue(uses=1)
    status, _, payload = delete(http_service, issued.info.id)
    assert (status, payload) == (200, {"status_code": 200, "status": True, "id": issued.info.id})
    assert service.check(issued.token).state is TokenState.REVOKED
    first = service.store.get(issued.info.id)
    assert delete(http_service, issued.info.id)[:1] == (200,)
    assert service.store.get(issued.info.id) == first  # the first revocation's time stays
    events = [
        (event.action, event.outcome, event.source)
        for event in service.audit(token_id=issued.info.id)
        if event.action == "revoke"
    ]
    assert events == [("revoke", "revoked", "http"), ("revoke", "revoked", "http")]


@pytest.mark.parametrize(
    "token_id", ["aaaaaaaaaaaa", "", "AAAAAAAAAAAA", "not-an-id", "a" * 13, "%00"]
)
def test_http_delete_of_an_unknown_id_is_404(service: TokenService, token_id: str) -> None:
    service.issue()
    status, _, payload = delete(service, token_id)
    assert (status, payload["status_code"]) == (404, 404)
    assert [info.state for info in service.list_tokens()] == [TokenState.VALID]


def test_http_delete_by_a_whole_token_is_404_and_revokes_nothing(service: TokenService) -> None:
    issued = service.issue()
    assert delete(service, issued.token)[0] == 404
    assert service.show(issued.info.id).state is TokenState.VALID


def test_http_delete_needs_the_admin_key_when_set(service: TokenService) -> None:
    issued = service.issue()
    config = ApiConfig(Keys(admin=ADMIN_KEY, validate=VALIDATE_KEY))
    for key in (None, VALIDATE_KEY, ADMIN_KEY + "x", ADMIN_KEY[:-1]):
        status, headers, _ = delete(service, issued.info.id, config, key)
        assert (status, headers.get("WWW-Authenticate")) == (401, 'Bearer realm="tokencli"')
    assert service.show(issued.info.id).state is TokenState.VALID
    assert delete(service, issued.info.id, config, ADMIN_KEY)[0] == 200
    assert service.show(issued.info.id).state is TokenState.REVOKED


def test_ids_and_selectors_print_each_token_once_dry_run_or_not(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    both = on_file.issue(label="ci").info.id  # named and selected
    selected = on_file.issue(label="ci").info.id
    args = [both, both, "--label", "ci"]
    dry = revoke(runner, "--dry-run", *args)
    assert dry.exit_code == 0, dry.output
    assert sorted(printed_ids(dry.stdout, "would revoke")) == sorted([both, selected])
    real = revoke(runner, *args)
    assert real.exit_code == 0, real.output
    assert printed_ids(real.stdout) == printed_ids(dry.stdout, "would revoke")
    assert sorted(revoke_events(db_path)) == sorted([both, selected])  # one event each


def test_ids_and_selectors_are_one_transaction(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    """A named token and the selected ones are revoked together or not at all."""
    named = on_file.issue(label="web").info.id
    selected = [on_file.issue(label="ci").info.id for _ in range(3)]
    connection = sqlite3.connect(db_path)
    connection.execute(
        "CREATE TRIGGER refuse_last BEFORE UPDATE OF revoked_at ON tokens"
        f" WHEN NEW.id = '{selected[-1]}' BEGIN SELECT RAISE(ABORT, 'refused by a test'); END"
    )
    connection.commit()
    connection.close()
    result = revoke(runner, named, "--label", "ci")
    assert result.exit_code == 3, result.output
    assert set(states(on_file).values()) == {"valid"}
    assert revoke_events(db_path) == []
    assert "revoked" not in result.stdout


def test_dry_run_of_a_missing_id_says_so_as_the_real_run(
    runner: CliRunner, on_file: TokenService
) -> None:
    kept = on_file.issue().info.id
    for args in (["--dry-run"], []):
        result = revoke(runner, *args, "aaaaaaaaaaaa", kept)
        assert result.exit_code == 1
        assert "aaaaaaaaaaaa" in result.stderr
        assert result.stdout.split()[-1] == kept


@needs_executable
def test_ctrl_c_at_the_question_exits_130_and_revokes_nothing(
    on_file: TokenService, db_path: Path
) -> None:
    on_file.issue()
    code, shown = on_a_terminal(["revoke", "--all"], db_path, None)
    assert code == 130, shown
    assert "interrupted" in shown and "Traceback" not in shown
    assert list(states(on_file).values()) == ["valid"]


@needs_executable
def test_end_of_input_at_the_question_is_no(on_file: TokenService, db_path: Path) -> None:
    on_file.issue()
    code, shown = on_a_terminal(["revoke", "--all"], db_path, b"\x04")
    assert code == 0, shown
    assert "Aborted" not in shown and "Traceback" not in shown
    assert list(states(on_file).values()) == ["valid"]
