"""The PostgreSQL rows: `tokencli serve` on PostgreSQL (its store thread) against the
SQLite server, CPU time per validation with one replica and with two, and last the
failover rows (failover_rows.py), which crash the primary.

The cluster is the tests' (tests/pg_cluster.py), with durability as PostgreSQL ships it.
wrk gets CPU 1; the system under test gets CPU 0, replicas and PostgreSQL together, as
the SQLite server (whose database work is in-process) gets CPU 0 alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import statistics
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from failover_rows import failover
from harness import (
    NOW,
    Bench,
    Server,
    WrkResult,
    build_database,
    children,
    cpu_seconds,
    free_port,
    fresh,
    note,
    validate_script,
    wrk,
)

from tokencli.domain import tokens

from pg_cluster import PgCluster, find_bindir

# The tests' cluster turns these off: right for tests, wrong for a database's benchmark.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
SETTINGS = {**DURABLE, "shared_buffers": "128MB"}
LIVE, KNOWN = 100_000, 1_000


def postmaster(cluster: PgCluster) -> int:
    """The postmaster's PID."""
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def processes(cluster: PgCluster) -> dict[int, str]:
    """Every PostgreSQL process: PID -> its title ("postgres: walwriter", ...)."""
    found = {postmaster(cluster): "postmaster"}
    for pid in children(postmaster(cluster)):
        with contextlib.suppress(OSError):
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def pin(cluster: PgCluster, cpus: set[int]) -> None:
    """Move PostgreSQL to `cpus` (backends forked later inherit the postmaster's)."""
    for pid in processes(cluster):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def fill(bench: Bench, url: str) -> list[str]:
    """tokencli makes its schema; LIVE filler tokens and KNOWN known ones go in by COPY."""
    schema = [bench.tokencli, "--db", url, "issue", "--label", "schema"]
    subprocess.run(schema, check=True, capture_output=True)
    known: list[str] = []
    columns = "id, secret_hash, label, created_at, expires_at, uses_left, ends_at, scopes"
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY tokencli.tokens ({columns}) FROM STDIN") as copy:
            for index in range(KNOWN + LIVE):
                if index < KNOWN:
                    new = tokens.generate()
                    known.append(new.plaintext)
                    token_id, digest, label = new.id, new.secret_hash, "bench"
                else:
                    token_id, digest, label = tokens.new_id(), os.urandom(32), None
                created = NOW - 7_200 + index % 7_200
                copy.write_row(
                    (token_id, digest, label, created, NOW + 86_400, None, NOW + 86_400, [])
                )
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE tokencli.tokens")
        connection.execute("CHECKPOINT")
    return known


def batches(url: str) -> tuple[float, float]:
    """(transactions, requests answered in them) so far, from the server's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = dict(re.findall(r"(?m)^tokencli_batch_size_(count|sum) (\S+)", text))
    return float(found["count"]), float(found["sum"])


def snapshot(cluster: PgCluster, replicas: list[Server]) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each replica, each client backend and each other PG process
    (the postmaster with its reaped children: autovacuum workers that came and went)."""
    taken: dict[str, dict[int, float]] = {"replicas": {}, "backends": {}, "pg_other": {}}
    for replica in replicas:
        taken["replicas"][replica.pid] = cpu_seconds(replica.pid) or 0.0
    for pid, title in processes(cluster).items():
        seconds = cpu_seconds(pid, waited_children=title == "postmaster")
        if seconds is not None:
            taken["backends" if "[local]" in title else "pg_other"][pid] = seconds
    return taken


def postgres(bench: Bench) -> None:
    """PostgreSQL validation against SQLite, then CPU per validation for 1 and 2 replicas."""
    bindir = find_bindir()
    if bindir is None:
        bench.table.record("PostgreSQL rows", "no PostgreSQL server binaries", "-", None, "", False)
        return
    sqlite_db = bench.work / "pg-sqlite.db"
    known = build_database(sqlite_db, live=LIVE, known=KNOWN)
    cluster = PgCluster(bindir, settings=SETTINGS)
    adopted = 0
    try:
        cluster.start()
        adopted = postmaster(cluster)
        pin(cluster, {0})
        with psycopg.connect(cluster.url(), autocommit=True) as connection:
            shown = connection.execute("SHOW server_version").fetchone()
            version = str(shown[0]) if shown else "?"
            rows = connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(DURABLE),)
            )
            durability = {str(name): str(value) for name, value in rows.fetchall()}
        note(f"PostgreSQL {version}, {durability}, on CPU 0 with the replicas")
        (bench.work / "pg").mkdir(exist_ok=True)
        pg_script = validate_script(bench.work / "pg", fill(bench, cluster.url()))
        against_sqlite(bench, cluster, sqlite_db, validate_script(bench.work, known), pg_script)
        replicas(bench, cluster, pg_script)
        failover(bench, cluster, pg_script, lambda standby: pin(standby, {0}))
    finally:
        cluster.stop()
        if adopted:  # this process adopted it as a subreaper: collect it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(adopted, 0)
        fresh(sqlite_db)


def against_sqlite(
    bench: Bench, cluster: PgCluster, sqlite_db: Path, sqlite_script: Path, pg_script: Path
) -> None:
    """A SQLite server and a PostgreSQL one taking turns under wrk, three runs each; then
    one run with PostgreSQL moved to CPU 1 beside wrk (a comparison only)."""
    servers: dict[str, Server] = {}
    try:
        for name, db in (("sqlite", str(sqlite_db)), ("postgres", cluster.url())):
            port = free_port()
            servers[name] = Server(bench.serve(db, port), port)
        runs: dict[str, list[WrkResult]] = {name: [] for name in servers}
        sizes: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(3):
            for name, server in servers.items():
                script = sqlite_script if name == "sqlite" else pg_script
                before = batches(server.url())
                runs[name].append(
                    wrk(server.url(), connections=64, script=script, seconds=bench.wrk_seconds)
                )
                after = batches(server.url())
                sizes[name].append(round((after[1] - before[1]) / max(after[0] - before[0], 1), 1))
        pin(cluster, {1})
        shared = wrk(
            servers["postgres"].url(), connections=64, script=pg_script, seconds=bench.wrk_seconds
        )
        pin(cluster, {0})
    finally:
        for server in servers.values():
            server.stop()
    rps = {name: statistics.median(run.rps for run in each) for name, each in runs.items()}
    p99 = {name: statistics.median(run.p99_ms for run in each) for name, each in runs.items()}
    failed = sum(run.failures for each in runs.values() for run in each)
    ratio = rps["postgres"] / rps["sqlite"]
    bench.table.record(
        "PostgreSQL HTTP validate, 64 connections (store thread)",
        f"{rps['postgres']:,.0f}/s, p99 {p99['postgres']:.1f} ms",
        f"{rps['sqlite']:,.0f}/s, p99 {p99['sqlite']:.1f} ms (SQLite server, by turns)",
        ratio,
        ">= 0.5x, p99 < 20 ms",
        ratio >= 0.5 and p99["postgres"] < 20 and failed == 0,
        {
            "rps": {n: [r.rps for r in each] for n, each in runs.items()},
            "requests_per_commit": sizes,
        },
    )
    bench.table.record(
        "PostgreSQL on CPU 1 beside wrk",
        f"{shared.rps:,.0f}/s, p99 {shared.p99_ms:.1f} ms",
        f"{rps['sqlite']:,.0f}/s (SQLite server)",
        shared.rps / rps["sqlite"],
        "(comparison: 2 cores for the store)",
        None,
    )


def replicas(bench: Bench, cluster: PgCluster, script: Path) -> None:
    """CPU time per validation: one replica at 64 connections, then two at 32 each (two
    wrk at once, the same total load), over the validations answered."""
    figures: dict[int, dict[str, Any]] = {}
    for count in (1, 2):
        servers: list[Server] = []
        try:
            for _ in range(count):
                port = free_port()
                servers.append(Server(bench.serve(cluster.url(), port), port))
            for server in servers:  # a short run first: every replica opens its connection
                wrk(server.url(), connections=8, script=script, seconds=2)
            counted = [batches(server.url()) for server in servers]
            before = snapshot(cluster, servers)
            load = functools.partial(
                wrk, connections=64 // count, script=script, seconds=bench.wrk_seconds
            )
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                results = list(pool.map(load, [server.url() for server in servers]))
            after = snapshot(cluster, servers)
            commits = sum(
                batches(s.url())[0] - old[0] for s, old in zip(servers, counted, strict=True)
            )
        finally:
            for server in servers:
                server.stop()
        answered = sum(run.requests - run.non_2xx for run in results)
        spent = {
            kind: sum(seconds - before[kind].get(pid, 0.0) for pid, seconds in after[kind].items())
            for kind in after
        }
        per = {kind: round(seconds / max(answered, 1) * 1e6, 1) for kind, seconds in spent.items()}
        batch = answered / max(commits, 1.0)
        rps, p99 = sum(run.rps for run in results), max(run.p99_ms for run in results)
        figures[count] = {
            "us_per_validation": per,
            "requests_per_commit": round(batch, 1),
            "rps": rps,
        }
        bench.table.record(
            f"PostgreSQL CPU per validation, {count} replica{'s' if count > 1 else ''}",
            f"{sum(per.values()):.0f} µs: replicas {per['replicas']:.0f} + backends"
            f" {per['backends']:.0f} + other PG {per['pg_other']:.0f}",
            f"{rps:,.0f}/s, p99 {p99:.1f} ms, {batch:.1f} validations/commit",
            None,
            "(reported) 0 failed",
            sum(run.failures for run in results) == 0,
            figures[count],
        )
    # Database CPU per validation = a + b / batch: the two runs' batch sizes give a and b.
    database = {
        n: f["us_per_validation"]["backends"] + f["us_per_validation"]["pg_other"]
        for n, f in figures.items()
    }
    size = {n: f["requests_per_commit"] for n, f in figures.items()}
    if abs(1 / size[2] - 1 / size[1]) > 1e-9:
        per_commit = (database[2] - database[1]) / (1 / size[2] - 1 / size[1])
        per_validation = database[1] - per_commit / size[1]
        note(
            f"PostgreSQL database CPU: {database[1]:.1f} µs/validation at {size[1]:.1f} per"
            f" commit, {database[2]:.1f} at {size[2]:.1f}: about {per_validation:.1f} µs per"
            f" validation + {per_commit:.0f} µs per commit"
        )
