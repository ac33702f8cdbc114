"""stats: counts by condition, the next expiry, the audit trail, where the data is."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.location import Location
from tokencli.service.service import TokenService
from tokencli.store.factory import shown

from databases import RawDatabase
from support import Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")


def test_stats_counts(
    service: TokenService, clock: Clock, location: Location, raw: RawDatabase
) -> None:
    empty_size = service.stats().size_bytes
    live = service.issue(ttl_seconds=600)
    service.issue(ttl_seconds=900)
    service.issue(ttl_seconds=5)
    used = service.issue(uses=1)
    service.check(used.token)
    service.revoke(service.issue().info.id)
    clock.advance(5)
    report = service.stats()
    counts = report.counts
    assert (counts.live, counts.expired, counts.used_up, counts.revoked) == (2, 1, 1, 1)
    assert counts.next_expiry == live.info.expires_at
    assert (counts.audit_events, counts.oldest_event) == (7, live.info.created_at)
    # Where the data is, as it may be printed: the file, or the URL (password as ***).
    assert report.database == shown(location)
    assert report.size_bytes is not None and empty_size is not None
    assert report.size_bytes >= empty_size > 0
    if location.path is not None:
        assert report.size_bytes >= location.path.stat().st_size


def test_stats_command(runner: CliRunner, location: Location) -> None:
    runner.invoke(app, ["issue", "--count", "3"])
    body = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert body["live"] == 3 and body["database"] == shown(location)
    assert body["next_expiry"].endswith("Z")
    assert body["size_bytes"] > 0
    assert body["audit_events"] == 3 and body["oldest_event"].endswith("Z")
    assert list(body) == [
        "live",
        "expired",
        "used_up",
        "revoked",
        "next_expiry",
        "audit_events",
        "oldest_event",
        "database",
        "size_bytes",
    ]
    plain = runner.invoke(app, ["stats"]).stdout
    assert "audit_events\t3" in plain.splitlines()
    assert plain.splitlines()[0] == "live\t3"
    assert f"database\t{shown(location)}" in plain.splitlines()
    assert "\x1b" not in plain


def test_stats_on_a_missing_database_creates_nothing(runner: CliRunner, raw: RawDatabase) -> None:
    body = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert (body["live"], body["database"], body["size_bytes"]) == (0, None, 0)
    assert runner.invoke(app, ["audit"]).exit_code == 0
    assert not raw.exists()


def test_piped_stats_with_nothing_stored_shows_no_python_none(
    runner: CliRunner, raw: RawDatabase
) -> None:
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 0
    lines = dict(line.split("\t") for line in result.stdout.splitlines())
    assert (lines["next_expiry"], lines["oldest_event"]) == ("-", "-")
    assert lines["database"] == "(none yet)"
    assert "None" not in result.stdout
    body = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert (body["next_expiry"], body["oldest_event"]) == (None, None)  # JSON keeps null
