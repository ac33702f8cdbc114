"""stats: counts by condition, the next expiry, the audit trail, where the data is."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tokencli.cli import app
from tokencli.service import TokenService

from support import Clock


def test_stats_counts(service: TokenService, clock: Clock, db_path: Path) -> None:
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
    assert report.database == str(db_path)
    assert report.size_bytes >= db_path.stat().st_size > 0


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
