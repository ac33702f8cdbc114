"""`tokencli serve` and the CLI behind PgBouncer in transaction pooling mode.

A real PgBouncer (Debian's package) in front of the session's cluster, with a pool of two
server connections for every client: consecutive transactions of one client land on
whichever server connection is free, so anything tokencli kept in a session (a prepared
statement, a setting, a savepoint outside a transaction) would break here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg
import pytest
from replicas import Replica, race_single_use_tokens

from tokencli.store.postgres.backend import open_postgres

from pg_cluster import PgBouncer, PgCluster
from support import needs_executable, tokencli

pytestmark = [needs_executable, pytest.mark.slow, pytest.mark.interop]


def pools(bouncer: PgBouncer) -> list[dict[str, str]]:
    """PgBouncer's SHOW POOLS (its admin console speaks the simple protocol only)."""
    with psycopg.connect(bouncer.url(dbname="pgbouncer"), autocommit=True) as admin:
        result = admin.pgconn.exec_(b"SHOW POOLS")
        names = [result.fname(column).decode() for column in range(result.nfields)]
        return [
            {
                name: (result.get_value(row, column) or b"").decode()
                for column, name in enumerate(names)
            }
            for row in range(result.ntuples)
        ]


def test_two_replicas_behind_pgbouncer_grant_each_single_use_token_once(
    pgbouncer: PgBouncer, postgres_schema: str, replicas: Callable[..., Replica]
) -> None:
    url = pgbouncer.url()
    first = replicas(url, "--quiet")
    second = replicas(url, "--quiet")
    race_single_use_tokens(url, first, second, 600)
    # More clients than server connections: they really took turns on two.
    pool = next(row for row in pools(pgbouncer) if row["database"] == "postgres")
    assert pool["pool_mode"] == "transaction"
    assert int(pool["cl_active"]) + int(pool["cl_waiting"]) >= 2
    assert int(pool["sv_active"]) + int(pool["sv_idle"]) + int(pool["sv_used"]) <= 2
    # Idle, with the CLI taking the pool's connections in between: /health stays 200.
    token = tokencli("--db", url, "issue", "--uses", "100").stdout.strip()
    for round_number in range(20):
        for replica in (first, second):
            status, _, body = replica.client.request("GET", "/health")
            assert status == 200, (round_number, body)
            status, _, body = replica.client.request("GET", f"/app/valid/{token}")
            assert (status, body["status"]) == (200, True), (round_number, body)
        if round_number % 5 == 0:
            assert tokencli("--db", url, "check", token).returncode == 0
        time.sleep(0.05)
    shown = tokencli("--db", url, "show", token, "--json")
    assert json.loads(shown.stdout)["uses_left"] == 100 - 40 - 4
    assert (first.stop(), second.stop()) == (0, 0)
    assert "error" not in first.log().lower() + second.log().lower()


def test_a_pooler_is_noticed_and_nothing_is_prepared_behind_it(
    pgbouncer: PgBouncer, postgres_cluster: PgCluster, postgres_schema: str
) -> None:
    pooled = open_postgres(pgbouncer.url(), create=True)
    direct = open_postgres(postgres_cluster.url(), create=True)
    assert pooled is not None and direct is not None
    try:
        assert pooled._connection.pooled and pooled._connection.prepare_threshold is None
        assert not direct._connection.pooled and direct._connection.prepare_threshold == 5
        for _ in range(10):  # past the threshold: a direct connection prepares, no other
            pooled.get("nope"), direct.get("nope")
        prepared = "SELECT count(*) FROM pg_catalog.pg_prepared_statements"
        assert direct._connection.execute(prepared).fetchone() != (0,)
        # Through the pooler this asks whichever server connection is free: none of them
        # holds one (the pool has two, and this store is the only client).
        for _ in range(4):
            assert pooled._connection.execute(prepared).fetchone() == (0,)
    finally:
        pooled.close()
        direct.close()


def test_the_cli_behind_pgbouncer(pgbouncer: PgBouncer, postgres_schema: str) -> None:
    url = pgbouncer.url()

    def run(*args: str, stdin: str | None = None) -> str:
        result = tokencli("--db", url, *args, stdin=stdin)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    tokens = run("issue", "--count", "50", "--scope", "deploy", "--label", "ci").split()
    assert json.loads(run("check", "--json", "--scope", "deploy", tokens[0]))["valid"] is True
    assert len(json.loads(run("list", "--json", "--scope", "deploy"))) == 50
    exported = run("export", "--audit")
    assert exported.count("\n") == 50 + 51  # tokens, then 50 issue events and the check
    assert run("revoke", "--label", "ci").count("\n") == 50
    assert json.loads(run("stats", "--json"))["revoked"] == 50
    assert run("purge", "--dry-run") == "would purge 50 tokens\n"
    assert run("purge", "--quiet") == ""
    assert json.loads(run("stats", "--json"))["revoked"] == 0
