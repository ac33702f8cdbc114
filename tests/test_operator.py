"""Audit trail, renew, rotate, stats: service rules and their commands."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli import app
from tokencli.errors import ExitStatus, NotFoundError, StorageError
from tokencli.service import TokenService, TokenState
from tokencli.store import Store

from support import START, Clock


def audit_rows(db_path: Path) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(db_path)
    try:
        return connection.execute(
            "SELECT action, token_id, outcome, source, detail FROM audit ORDER BY id"
        ).fetchall()
    finally:
        connection.close()


def test_every_action_writes_exactly_one_event(
    service: TokenService, db_path: Path, clock: Clock
) -> None:
    issued = service.issue(uses=1)
    token_id = issued.info.id
    assert audit_rows(db_path) == [("issue", token_id, "issued", "cli", None)]
    service.check(issued.token)
    service.check(issued.token)
    service.check("garbage")
    assert audit_rows(db_path)[1:] == [
        ("check", token_id, "valid", "cli", None),
        ("check", token_id, "used_up", "cli", None),
        ("check", None, "malformed", "cli", None),
    ]
    other = service.issue()
    service.renew(other.info.id, 600)
    service.revoke(other.info.id)
    with pytest.raises(NotFoundError):
        service.revoke("aaaaaaaaaaaa")
    clock.advance(1)
    service.purge()
    assert audit_rows(db_path)[4:] == [
        ("issue", other.info.id, "issued", "cli", None),
        ("renew", other.info.id, "renewed", "cli", "ttl 600s"),
        ("revoke", other.info.id, "revoked", "cli", None),
        ("revoke", "aaaaaaaaaaaa", "not_found", "cli", None),
        ("purge", None, "purged", "cli", "2 tokens"),
    ]


def test_count_writes_one_event_per_token(service: TokenService, db_path: Path) -> None:
    issued = [token for batch in service.issue_batches(count=300) for token in batch]
    rows = audit_rows(db_path)
    assert len(rows) == 300
    assert {row[1] for row in rows} == {token.info.id for token in issued}


def test_no_secret_anywhere_in_the_audit_table(service: TokenService, db_path: Path) -> None:
    issued = [service.issue(uses=2) for _ in range(5)]
    for token in issued:
        service.check(token.token)
        service.check(token.token + "x")
        service.revoke(token.token)
    rotated = service.rotate(service.issue().info.id)
    dump = "\n".join(sqlite3.connect(db_path).iterdump())
    for token in [*issued, rotated]:
        assert token.token.split(":")[1] not in dump
        assert token.token.split(":")[1][:10] not in dump


def test_a_failing_audit_write_rolls_back_the_change(service: TokenService, db_path: Path) -> None:
    issued = service.issue(uses=1)
    connection = sqlite3.connect(db_path)
    connection.execute(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'nope'); END"
    )
    connection.commit()
    connection.close()
    with pytest.raises(StorageError):
        service.revoke(issued.info.id)
    with pytest.raises(StorageError):
        service.check(issued.token)
    with pytest.raises(StorageError):
        service.issue()
    record = service.store.get(issued.info.id)
    assert record is not None
    assert record.revoked_at is None and record.uses_left == 1
    assert len(service.list_tokens(include_ended=True)) == 1


def test_http_source_is_recorded(db_path: Path) -> None:
    TokenService(Store.open(db_path, create=True), source="http").issue()
    assert audit_rows(db_path)[0][3] == "http"


def test_audit_filters(service: TokenService, clock: Clock) -> None:
    first = service.issue()
    clock.advance(3600)
    second = service.issue()
    service.check(second.token)
    assert [e.action for e in service.audit(since_seconds=60)] == ["issue", "check"]
    assert [e.token_id for e in service.audit(token_id=first.info.id)] == [first.info.id]
    assert [e.action for e in service.audit(limit=1)] == ["check"]


def test_purge_drops_old_audit_events_with_retention(service: TokenService, clock: Clock) -> None:
    service.issue()
    clock.advance(100 * 86_400)
    service.issue()
    result = service.purge(audit_retention_seconds=90 * 86_400)
    assert result.audit_events_dropped == 1
    assert [e.action for e in service.audit()] == ["issue", "purge"]


def test_renew_extends_a_live_token(service: TokenService, clock: Clock) -> None:
    issued = service.issue(ttl_seconds=60)
    clock.advance(50)
    info = service.renew(issued.info.id, 3600)
    assert info.expires_at == START + 50 + 3600
    clock.advance(3000)
    assert service.check(issued.token).valid


@pytest.mark.parametrize("condition", ["expired", "revoked", "used_up", "unknown"])
def test_renew_refuses_tokens_that_are_not_live(
    service: TokenService, clock: Clock, condition: str
) -> None:
    issued = service.issue(ttl_seconds=60, uses=1)
    token_id = issued.info.id
    if condition == "expired":
        clock.advance(60)
    elif condition == "revoked":
        service.revoke(token_id)
    elif condition == "used_up":
        service.check(issued.token)
    else:
        token_id = "aaaaaaaaaaaa"
    with pytest.raises(NotFoundError):
        service.renew(token_id, 600)
    assert service.audit()[-1].outcome.startswith("refused")


def test_rotate_keeps_label_and_limit_and_honours_grace(
    service: TokenService, clock: Clock
) -> None:
    old = service.issue(ttl_seconds=3600, label="deploy", uses=5)
    service.check(old.token)
    new = service.rotate(old.info.id, grace_seconds=600)
    assert new.info.label == "deploy"
    assert new.info.uses_left == 5  # the limit it was issued with, not what was left
    assert new.info.expires_at - new.info.created_at == 3600
    clock.advance(599)
    assert service.check(old.token).valid  # inside the grace period
    assert service.check(new.token).valid
    clock.advance(1)
    assert service.check(old.token).state is TokenState.EXPIRED
    assert service.check(new.token).valid
    assert [e.action for e in service.audit(token_id=old.info.id)][:3] == [
        "issue",
        "check",
        "rotate",
    ]


def test_rotate_without_grace_ends_the_old_token_now(service: TokenService) -> None:
    old = service.issue()
    new = service.rotate(old.token, ttl_seconds=120)
    assert service.check(old.token).state is TokenState.EXPIRED
    assert new.info.expires_at - new.info.created_at == 120


def test_rotate_refuses_dead_or_unknown(service: TokenService) -> None:
    old = service.issue()
    service.revoke(old.info.id)
    with pytest.raises(NotFoundError, match="revoked"):
        service.rotate(old.info.id)
    with pytest.raises(NotFoundError, match="no token"):
        service.rotate("aaaaaaaaaaaa")
    assert len(service.list_tokens(include_ended=True)) == 1


def test_stats_counts(service: TokenService, clock: Clock, db_path: Path) -> None:
    live = service.issue(ttl_seconds=600)
    service.issue(ttl_seconds=900)
    service.issue(ttl_seconds=5)
    used = service.issue(uses=1)
    service.check(used.token)
    service.revoke(service.issue().info.id)
    clock.advance(5)
    report = service.stats()
    assert (report.live, report.expired, report.used_up, report.revoked) == (2, 1, 1, 1)
    assert report.next_expiry == live.info.expires_at
    assert report.database == str(db_path)
    assert report.size_bytes >= db_path.stat().st_size > 0


# -- the commands ------------------------------------------------------------------------


def test_renew_and_rotate_commands(runner: CliRunner) -> None:
    token = runner.invoke(app, ["issue", "--label", "x"]).stdout.strip()
    token_id = token.split(":")[0]
    renewed = runner.invoke(app, ["renew", token_id, "--ttl", "2h", "--json"])
    assert renewed.exit_code == 0
    assert json.loads(renewed.stdout)["id"] == token_id
    rotated = runner.invoke(app, ["rotate", token_id, "--grace", "10m"])
    assert rotated.exit_code == 0
    new_token = rotated.stdout.strip()
    assert new_token != token and new_token.count(":") == 1
    assert runner.invoke(app, ["check", "-q", token]).exit_code == 0  # grace
    assert runner.invoke(app, ["check", "-q", new_token]).exit_code == 0
    missing = runner.invoke(app, ["renew", "aaaaaaaaaaaa", "--ttl", "1h"])
    assert missing.exit_code == ExitStatus.NOT_VALID and "no token" in missing.stderr
    assert runner.invoke(app, ["rotate", "aaaaaaaaaaaa"]).exit_code == ExitStatus.NOT_VALID
    assert runner.invoke(app, ["renew", token_id, "--ttl", "0"]).exit_code == ExitStatus.USAGE
    assert runner.invoke(app, ["rotate", token_id, "--grace", "-1m"]).exit_code == 2


def test_stats_command(runner: CliRunner, db_path: Path) -> None:
    runner.invoke(app, ["issue", "--count", "3"])
    body = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert body["live"] == 3 and body["database"] == str(db_path)
    assert body["next_expiry"].endswith("Z")
    plain = runner.invoke(app, ["stats"]).stdout
    assert plain.splitlines()[0] == "live\t3"
    assert "\x1b" not in plain


def test_stats_on_a_missing_file_creates_nothing(runner: CliRunner, db_path: Path) -> None:
    body = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert (body["live"], body["database"], body["size_bytes"]) == (0, None, 0)
    assert runner.invoke(app, ["audit"]).exit_code == 0
    assert not db_path.exists()


def test_audit_command(runner: CliRunner) -> None:
    token = runner.invoke(app, ["issue"]).stdout.strip()
    runner.invoke(app, ["check", token])
    runner.invoke(app, ["check", "nope"])
    events = json.loads(runner.invoke(app, ["audit", "--json"]).stdout)
    assert [(e["action"], e["outcome"], e["source"]) for e in events] == [
        ("issue", "issued", "cli"),
        ("check", "valid", "cli"),
        ("check", "malformed", "cli"),
    ]
    assert list(events[0]) == ["at", "action", "token_id", "outcome", "source", "detail"]
    token_id = token.split(":")[0]
    only = json.loads(runner.invoke(app, ["audit", "--token", token_id, "--json"]).stdout)
    assert len(only) == 2
    plain = runner.invoke(app, ["audit", "--limit", "1", "--since", "1h"])
    assert plain.stdout.splitlines()[0].split("\t")[:2] == ["TIME", "ACTION"]
    assert len(plain.stdout.splitlines()) == 2
    assert token.split(":")[1] not in runner.invoke(app, ["audit"]).stdout
    assert runner.invoke(app, ["audit", "--limit", "0"]).exit_code == ExitStatus.USAGE


def test_purge_audit_retention_option(runner: CliRunner) -> None:
    runner.invoke(app, ["issue"])
    result = runner.invoke(app, ["purge", "--audit-retention", "90d", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"purged": 0, "dry_run": False}
    assert runner.invoke(app, ["purge", "--audit-retention", "0"]).exit_code == ExitStatus.USAGE
