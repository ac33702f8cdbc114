"""The audit trail: one event per action, in the transaction of the change, never a secret."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.errors import ExitStatus, NotFoundError, StorageError
from tokencli.domain.model import EVERY_TOKEN
from tokencli.service.service import TokenService

from databases import RawDatabase
from support import Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")


def audit_rows(raw: RawDatabase) -> list[tuple[object, ...]]:
    """The audit table as stored, read beside tokencli."""
    return raw.rows("SELECT action, token_id, outcome, source, detail FROM audit ORDER BY id")


def test_every_action_writes_exactly_one_event(
    service: TokenService, raw: RawDatabase, clock: Clock
) -> None:
    issued = service.issue(uses=1)
    token_id = issued.info.id
    assert audit_rows(raw) == [("issue", token_id, "issued", "cli", None)]
    service.check(issued.token)
    service.check(issued.token)
    service.check("garbage")
    assert audit_rows(raw)[1:] == [
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
    assert audit_rows(raw)[4:] == [
        ("issue", other.info.id, "issued", "cli", None),
        ("renew", other.info.id, "renewed", "cli", "ttl 600s"),
        ("revoke", other.info.id, "revoked", "cli", None),
        ("revoke", "aaaaaaaaaaaa", "not_found", "cli", None),
        ("purge", None, "purged", "cli", "2 tokens"),
    ]


def test_count_writes_one_event_per_token(service: TokenService, raw: RawDatabase) -> None:
    issued = [token for batch in service.issue_batches(count=300) for token in batch]
    rows = audit_rows(raw)
    assert len(rows) == 300
    assert {row[1] for row in rows} == {token.info.id for token in issued}


def test_no_secret_anywhere_in_the_audit_table(service: TokenService, raw: RawDatabase) -> None:
    issued = [service.issue(uses=2) for _ in range(5)]
    for token in issued:
        service.check(token.token)
        service.check(token.token + "x")
        service.revoke(token.token)
    rotated = service.rotate(service.issue().info.id)
    dump = raw.dump()
    assert len(audit_rows(raw)) == 5 * 4 + 3  # issue, check, check, revoke; issue, rotate...
    for token in [*issued, rotated]:
        assert token.token.split(":")[1].encode() not in dump
        assert token.token.split(":")[1][:10].encode() not in dump


def test_a_failing_audit_write_rolls_back_the_change(
    service: TokenService, raw: RawDatabase
) -> None:
    issued = service.issue(uses=1)
    raw.refuse_audit_inserts()
    with pytest.raises(StorageError):
        service.revoke(issued.info.id)
    with pytest.raises(StorageError):
        service.check(issued.token)
    with pytest.raises(StorageError):
        service.issue()
    record = service.store.get(issued.info.id)
    assert record is not None
    assert record.revoked_at is None and record.uses_left == 1
    assert len(list(service.list_tokens(EVERY_TOKEN))) == 1


def test_http_source_is_recorded(
    make_service: Callable[..., TokenService], raw: RawDatabase
) -> None:
    make_service(source="http").issue()
    assert audit_rows(raw)[0][3] == "http"


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


def test_purge_keeps_ninety_days_of_audit_by_default(
    service: TokenService, clock: Clock, runner: CliRunner
) -> None:
    service.issue()  # an event now
    clock.advance(89 * 86_400)
    service.issue()  # an event 89 days later
    clock.advance(2 * 86_400)  # the first is now 91 days old, the second 2
    result = service.purge()
    assert result.audit_events_dropped == 1
    assert [event.action for event in service.audit()] == ["issue", "purge"]


def test_audit_retention_none_keeps_every_event(
    runner: CliRunner, make_service: Callable[..., TokenService]
) -> None:
    clock = Clock(time.time() - 400 * 86_400)
    make_service(clock).issue()  # an event 400 days ago (the token long expired)
    kept = runner.invoke(app, ["purge", "--audit-retention", "none", "--json"])
    assert kept.exit_code == 0 and json.loads(kept.stdout) == {"purged": 1, "dry_run": False}
    events = json.loads(runner.invoke(app, ["audit", "--json"]).stdout)
    assert [event["action"] for event in events] == ["issue", "purge"]
    dropped = runner.invoke(app, ["purge", "--json"])  # the default: 90 days
    assert json.loads(dropped.stdout)["audit_events_dropped"] == 1
