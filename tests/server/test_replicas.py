"""Several `tokencli serve` replicas over one PostgreSQL database, end to end.

Real processes of the installed executable against the session's throwaway cluster (the
outage test makes a cluster of its own, so stopping it disturbs no other test), HTTP on
127.0.0.1 only. Each test is bounded: a fixed amount of work, every wait polled against a
deadline, every process killed at the end if still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from replicas import (
    Replica,
    audit_json,
    check_json,
    exchange,
    no_traceback,
    race_single_use_tokens,
    wait_for,
)

from tokencli.domain.location import Location
from tokencli.service.service import TokenService
from tokencli.store.factory import open_store
from tokencli.store.postgres.schema import ADVISORY_LOCK_KEY, SCHEMA_VERSION
from tokencli.store.sqlite.queries import SQLiteStore

from databases import PostgresSchema
from pg_cluster import PASSWORD, PASSWORD_ROLE, PgCluster
from support import EXECUTABLE, Clock, needs_executable, tokencli

pytestmark = [needs_executable, pytest.mark.slow]


@pytest.fixture
def pg(postgres_cluster: PgCluster, postgres_url: str, postgres_schema: str) -> PostgresSchema:
    """The test's PostgreSQL schema seen from outside tokencli."""
    return PostgresSchema(postgres_cluster, postgres_url, postgres_schema)


# -- races and crashes ----------------------------------------------------------------------


def test_two_replicas_grant_each_single_use_token_exactly_once(
    postgres_url: str, replicas: Callable[..., Replica]
) -> None:
    first = replicas(postgres_url, "--quiet")
    second = replicas(postgres_url, "--quiet")
    race_single_use_tokens(postgres_url, first, second, 2000)
    assert EXECUTABLE is not None
    used_up = subprocess.run(
        f"{shlex.quote(EXECUTABLE)} --db {shlex.quote(postgres_url)}"
        " list --state used_up --jsonl | wc -l",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert used_up.stdout.strip() == "2000", used_up.stderr
    assert (first.stop(), second.stop()) == (0, 0)


def test_a_replica_killed_under_load_loses_no_answered_use_and_no_issued_token(
    postgres_url: str, pg: PostgresSchema, replicas: Callable[..., Replica]
) -> None:
    issued = tokencli("--db", postgres_url, "issue", "--count", "100", "--uses", "100000")
    assert issued.returncode == 0, issued.stderr
    shared = issued.stdout.split()
    doomed = replicas(postgres_url, "--quiet")
    survivor = replicas(postgres_url, "--quiet")
    ports = [doomed.port] * 3 + [survivor.port] * 3
    lock = threading.Lock()
    answered: Counter[int] = Counter()
    valid_answers: Counter[str] = Counter()
    received: list[str] = []  # tokens a client got from POST /app/token
    failures: list[BaseException] = []
    stop = threading.Event()
    killed = threading.Event()

    def load(client: int) -> None:
        port = ports[client]
        rng = random.Random(client)
        connection = HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while not stop.is_set():
                if rng.random() < 0.3:
                    status, body = exchange(
                        connection, "POST", "/app/token", b'{"ttl": "1h", "uses": 5}'
                    )
                    assert status == 200, body
                    with lock:
                        received.append(body["token"])
                else:
                    status, body = exchange(connection, "GET", f"/app/valid/{rng.choice(shared)}")
                    assert status == 200, body
                    if body["status"] is True:
                        with lock:
                            valid_answers[body["id"]] += 1
                with lock:
                    answered[port] += 1
        except (OSError, HTTPException) as error:
            if port != doomed.port or not killed.is_set():
                failures.append(error)  # only the killed replica may drop a connection
        except BaseException as error:  # reported below: a thread must not die silently
            failures.append(error)
        finally:
            connection.close()

    def both_busy() -> bool:
        return bool(failures) or min(answered[doomed.port], answered[survivor.port]) >= 300

    threads = [threading.Thread(target=load, args=(n,)) for n in range(len(ports))]
    for thread in threads:
        thread.start()
    try:
        wait_for(both_busy, 60, "load on both replicas")
        assert not failures, failures
        killed.set()
        doomed.process.kill()  # SIGKILL: no chance to finish anything
        doomed.process.wait(timeout=30)
        after_kill = answered[survivor.port]
        wait_for(lambda: failures or answered[survivor.port] >= after_kill + 300, 60, "survivor")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures
    assert doomed.process.returncode == -signal.SIGKILL
    assert survivor.process.poll() is None

    # Every valid answer a client got was a use taken and recorded, by either replica.
    left = dict(pg.rows("SELECT id, uses_left FROM tokens WHERE uses_limit = 100000"))
    recorded = dict(
        pg.rows(
            "SELECT token_id, count(*) FROM audit WHERE action = 'check' AND outcome = 'valid'"
            " GROUP BY token_id"
        )
    )
    assert sum(valid_answers.values()) > 0
    for token in shared:
        token_id = token.split(":")[0]
        taken = 100_000 - left[token_id]
        assert recorded.get(token_id, 0) == taken  # the use and its event, together
        assert valid_answers[token_id] <= taken
    # Every token a client received exists, whole (its secret matches), and is live.
    assert len(received) > 0
    with TokenService.open(Location(url=postgres_url)) as service:
        for token in received:
            shown = service.show(token)
            assert (shown.state, shown.uses_left) == ("valid", 5)
    assert survivor.stop() == 0


def test_what_one_replica_writes_the_other_reads_at_once(
    postgres_url: str, replicas: Callable[..., Replica]
) -> None:
    # No replica keeps anything of its own: each request reads the database, so an ID
    # issued on A validates on B at once, and a revoke on A is seen by B's next request.
    a, b = replicas(postgres_url, "--quiet"), replicas(postgres_url, "--quiet")
    on_a = HTTPConnection("127.0.0.1", a.port, timeout=60)
    on_b = HTTPConnection("127.0.0.1", b.port, timeout=60)
    try:
        for round_number in range(50):
            status, issued = exchange(on_a, "POST", "/app/token", b'{"ttl": "1h", "uses": 3}')
            assert status == 200, issued
            token, token_id = issued["token"], issued["token"].split(":")[0]
            status, verdict = exchange(on_b, "GET", f"/app/valid/{token}")
            assert (status, verdict["status"]) == (200, True), (round_number, verdict)
            status, _ = exchange(on_a, "DELETE", f"/app/tokens/{token_id}")
            assert status == 200
            status, verdict = exchange(on_b, "GET", f"/app/valid/{token}")
            assert (status, verdict["status"]) == (200, False), (round_number, verdict)
            status, shown = exchange(on_b, "GET", f"/app/tokens/{token_id}")
            assert (status, shown["uses_left"]) == (200, 2), shown  # B's check took one use
    finally:
        on_a.close()
        on_b.close()
    assert (a.stop(), b.stop()) == (0, 0)


# -- migrations ----------------------------------------------------------------------------


def test_four_processes_opening_an_empty_database_make_one_schema(
    postgres_url: str, pg: PostgresSchema
) -> None:
    assert EXECUTABLE is not None
    assert not pg.exists()
    # Line them up: the test holds the migration lock until all four wait for it.
    with psycopg.connect(postgres_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        processes = [
            subprocess.Popen(
                [EXECUTABLE, "--db", postgres_url, "issue", "--label", f"p{n}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(4)
        ]
        try:

            def waiting() -> bool:
                row = holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                return row is not None and row[0] == 4

            wait_for(waiting, 60, "four processes waiting to migrate")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
            outcomes = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, outcomes, strict=True):
        assert (process.returncode, err) == (0, "")
        assert check_json(postgres_url, out.strip())["state"] == "valid"
    assert pg.rows("SELECT application, version FROM schema_version") == [
        ("tokencli", SCHEMA_VERSION)
    ]
    assert sorted(label for (label,) in pg.rows("SELECT label FROM tokens")) == [
        "p0",
        "p1",
        "p2",
        "p3",
    ]


# -- an outage -----------------------------------------------------------------------------


def test_a_replica_rides_out_a_database_outage(
    own_postgres_cluster: PgCluster, replicas: Callable[..., Replica]
) -> None:
    cluster = own_postgres_cluster
    url = cluster.url()
    token = tokencli("--db", url, "issue", "--uses", "1000").stdout.strip()
    replica = replicas(url)  # with its access log: nothing else may reach stderr
    client = replica.client
    valid = 0

    def validate() -> int:
        nonlocal valid
        status, _, body = client.request("GET", f"/app/valid/{token}")
        valid += status == 200 and body["status"] is True
        return status

    assert validate() == 200
    cluster.stop_fast()
    down = time.monotonic()
    refused = 0
    # Over a second down: the replica keeps trying to reopen its store (every 0.5 s).
    while time.monotonic() - down < 1.2:
        for method, path in (
            ("GET", f"/app/valid/{token}"),
            ("POST", "/app/token"),
            ("GET", "/health"),
        ):
            status, headers, body = client.request(method, path)
            assert status == 503, (method, path, status, body)
            assert headers["Content-Type"].startswith("application/json")
            assert body["status_code"] == 503 and body["detail"]
            assert "Traceback" not in body["detail"]
            refused += 1
        status, _, spec = client.request("GET", "/openapi.json")
        assert status == 200 and "/app/token" in spec["paths"]
    assert refused >= 6
    assert replica.process.poll() is None
    cluster.start_again()
    back = time.monotonic()
    wait_for(lambda: validate() == 200, 10, "answers after PostgreSQL came back")
    assert time.monotonic() - back < 5
    status, _, body = client.request("POST", "/app/token")
    assert status == 200
    assert check_json(url, body["token"])["state"] == "valid"
    # Exactly the uses that were answered valid were taken, outage or not.
    assert check_json(url, token)["uses_left"] == 1000 - valid - 1
    assert replica.stop() == 0
    # Its stderr holds its start and stop lines and the access log, nothing else: no
    # traceback, no driver's own messages.
    log = replica.log()
    no_traceback(log)
    expected = re.compile(
        r'(listening on |database: |stopping: |127\.0\.0\.1 "(GET|POST) /\S*" \d{3} '
        r"|tokencli serve: database (unavailable: |available again$)).*"
    )
    assert [line for line in log.splitlines() if not expected.fullmatch(line)] == []
    assert re.search(r'"GET /app/valid/\w+:\*\*\*" 503 ', log), log
    assert re.search(r'"GET /openapi\.json" 200 ', log), log
    # The outage is logged when it starts and when it ends, not on every retry.
    assert 1 <= log.count("database unavailable: ") <= 3, log
    assert log.count("database available again") == 1, log


# -- secrets and passwords ------------------------------------------------------------------


def test_no_plaintext_token_in_a_dump_or_in_the_server_logs(
    postgres_url: str, pg: PostgresSchema, replicas: Callable[..., Replica]
) -> None:
    cli = tokencli("--db", postgres_url, "issue", "--count", "5", "--uses", "9", "--scope", "app")
    assert cli.returncode == 0, cli.stderr
    tokens = cli.stdout.split()
    replica = replicas(postgres_url)  # with its access log
    client = replica.client
    for _ in range(5):
        status, _, body = client.request(
            "POST", "/app/token", body='{"label": "http", "uses": 9, "scopes": ["app"]}'
        )
        assert status == 200
        tokens.append(body["token"])
    for token in tokens:  # every way a token reaches the server
        assert client.request("GET", f"/app/valid/{token}")[2]["status"] is True
        assert client.request("GET", f"/app/valid/{token}?scope=app")[2]["status"] is True
        presented = json.dumps({"token": token, "scopes": ["app"]})
        assert client.request("POST", "/app/valid", body=presented)[2]["status"] is True
        assert client.request("POST", f"/app/valid/{token}", body=presented)[0] == 200
        assert client.request("GET", f"/app/valid/{token}x")[2]["status"] is False
    for token in tokens[::3]:  # and the commands that take one
        assert tokencli("--db", postgres_url, "check", token).returncode == 0
        rotated = tokencli("--db", postgres_url, "rotate", token)
        assert rotated.returncode == 0, rotated.stderr
        assert tokencli("--db", postgres_url, "revoke", token).returncode == 0
        tokens.append(rotated.stdout.strip())
    assert replica.stop() == 0
    dump = pg.dump().decode()
    log = replica.log()
    assert "COPY" in dump and "audit" in dump  # a real dump, with the rows
    for token in tokens:
        token_id, secret = token.split(":")
        assert token_id in dump  # the rows are there...
        for text in (dump, log):
            assert secret not in text  # ...never a secret, nor a good part of one
            assert secret[:12] not in text
            assert secret[-12:] not in text
    assert tokens[0].split(":")[0] + ":***" in log  # the log does name the tokens


def test_a_password_in_the_url_is_never_shown(
    postgres_cluster: PgCluster,
    postgres_schema: str,
    replicas: Callable[..., Replica],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    right = postgres_cluster.url(user=PASSWORD_ROLE, password=PASSWORD)
    wrong = postgres_cluster.url(user=PASSWORD_ROLE, password="s3cret")
    shown = postgres_cluster.url(user=PASSWORD_ROLE, password="***")
    for args in (["issue"], ["check", "nope"], ["list"], ["stats"], ["audit"], ["purge"]):
        result = tokencli("--db", wrong, *args)
        assert result.returncode == 3, (args, result.stderr)
        assert "password authentication failed" in result.stderr
        assert f"{PASSWORD_ROLE}:***@" in result.stderr
        assert "s3cret" not in result.stdout + result.stderr
        assert result.stderr.count("\n") == 1
        no_traceback(result.stderr)
    assert EXECUTABLE is not None
    refused = subprocess.run(
        [EXECUTABLE, "--db", wrong, "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 3 and "***" in refused.stderr
    assert "s3cret" not in refused.stdout + refused.stderr

    assert tokencli("--db", right, "issue", "--count", "2").returncode == 0
    stats = tokencli("--db", right, "stats", "--json")
    assert json.loads(stats.stdout)["database"] == shown
    monkeypatch.setenv("TOKENCLI_DB", right)  # from the environment, as a service would
    plain = tokencli("stats")
    assert f"database\t{shown}" in plain.stdout.splitlines()
    for output in (stats, plain):
        assert PASSWORD not in output.stdout + output.stderr
    replica = replicas(right)
    assert replica.client.request("GET", "/health")[0] == 200
    assert replica.stop() == 0
    log = replica.log()
    assert f"database: {shown}" in log.splitlines()
    assert PASSWORD not in log


def test_a_role_that_may_only_read_can_run_the_read_only_commands(
    postgres_cluster: PgCluster, postgres_url: str, postgres_schema: str
) -> None:
    token = tokencli("--db", postgres_url, "issue", "--label", "kept").stdout.strip()
    token_id = token.split(":")[0]
    role = f"ro_{postgres_schema}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            for grant in (
                "GRANT USAGE ON SCHEMA {} TO {}",
                "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
            ):
                admin.execute(
                    sql.SQL(grant).format(sql.Identifier(postgres_schema), sql.Identifier(role))
                )
            reader = postgres_cluster.url(user=role)
            for args in (
                ["list", "--json"],
                ["stats", "--json"],
                ["audit", "--json"],
                ["show", token_id],
                ["purge", "--dry-run"],
                ["export", "--audit"],
            ):
                result = tokencli("--db", reader, *args)
                assert (result.returncode, result.stderr) == (0, ""), args
                assert token_id in result.stdout or args[0] in ("stats", "purge"), args
            for args in (["issue"], ["check", token], ["revoke", token_id], ["purge"]):
                result = tokencli("--db", reader, *args)
                assert result.returncode == 3, (args, result.stderr)
                assert "permission denied" in result.stderr
                assert result.stderr.count("\n") == 1
                no_traceback(result.stderr)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert check_json(postgres_url, token)["state"] == "valid"  # nothing was changed


def test_without_psycopg_a_url_exits_3_saying_what_to_install(
    postgres_url: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "no-psycopg"
    blocker.mkdir()
    # Python imports sitecustomize from PYTHONPATH at start: psycopg is then "missing".
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['psycopg'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    assert EXECUTABLE is not None
    for args in (["issue"], ["stats"], ["check", "nope"], ["serve", "--port", "0"]):
        result = subprocess.run(
            [EXECUTABLE, "--db", postgres_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 3, (args, result.stderr)
        assert "pip install '.[postgres]'" in result.stderr
        assert result.stderr.count("\n") == 1
        no_traceback(result.stderr)
    # The rest of tokencli works without it.
    sqlite = tokencli("--db", str(tmp_path / "t.db"), "issue", env=env)
    assert sqlite.returncode == 0, sqlite.stderr


# -- moving from SQLite to PostgreSQL --------------------------------------------------------


def test_export_from_sqlite_and_import_into_postgres_keeps_every_verdict(
    postgres_url: str, tmp_path: Path
) -> None:
    source = str(tmp_path / "source.db")

    def on(db: str, *args: str) -> subprocess.CompletedProcess[str]:
        return tokencli("--db", db, *args)

    def issue(*args: str) -> str:
        result = on(source, "issue", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    past = TokenService(SQLiteStore.open(Path(source), create=True), Clock(time.time() - 7200))
    expired = past.issue(ttl_seconds=3600, label="expired").token
    past.store.close()
    tokens = {
        "unlimited": issue("--label", "unlimited", "--scope", "deploy", "--scope", "read"),
        "three": issue("--uses", "3", "--label", "three"),
        "single": issue("--uses", "1", "--label", "single"),
        "revoked": issue("--label", "revoked"),
        "expired": expired,
    }
    bulk = issue("--count", "500", "--label", "bulk", "--ttl", "2h", "--uses", "9").split()
    tokens.update({f"bulk{n}": token for n, token in enumerate(bulk[:3])})
    assert on(source, "revoke", tokens["revoked"].split(":")[0]).returncode == 0
    before = {name: check_json(source, token) for name, token in tokens.items()}
    before["single"] = check_json(source, tokens["single"])  # now used up
    assert {name: body["state"] for name, body in before.items() if not body["valid"]} == {
        "single": "used_up",
        "revoked": "revoked",
        "expired": "expired",
    }
    listing = on(source, "list", "--all", "--json").stdout
    events = audit_json(source)

    assert EXECUTABLE is not None
    exe = shlex.quote(EXECUTABLE)
    moved = subprocess.run(
        f"{exe} --db {shlex.quote(source)} export --audit"
        f" | {exe} --db {shlex.quote(postgres_url)} import",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (moved.returncode, moved.stderr) == (0, "")
    assert moved.stdout == f"imported 505 tokens and {len(events)} audit events\n"
    # The same tokens, fields and states; the same trail, then the import.
    assert on(postgres_url, "list", "--all", "--json").stdout == listing
    imported = audit_json(postgres_url)
    assert imported[:-1] == events
    assert (imported[-1]["action"], imported[-1]["outcome"]) == ("import", "imported")
    for name, token in tokens.items():
        after = check_json(postgres_url, token)
        if before[name]["valid"]:
            assert after["valid"] is True, name
            if before[name]["uses_left"] is not None:
                assert after["uses_left"] == before[name]["uses_left"] - 1, name
        else:
            assert after["state"] == before[name]["state"], name
    again = subprocess.run(
        f"{exe} --db {shlex.quote(source)} export | {exe} --db {shlex.quote(postgres_url)} import",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and "already stored" in again.stderr
    with contextlib.closing(open_store(Location(url=postgres_url), create=False)) as store:
        assert store.counts(int(time.time())).audit_events == len(imported) + len(tokens)
