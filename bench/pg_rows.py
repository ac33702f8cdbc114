"""The PostgreSQL rows: `tokencli serve` on a PostgreSQL store against the SQLite one.

A throwaway PostgreSQL cluster, started as tests/pg_cluster.py starts its own (initdb and
postgres as the `postgres` user through runuser when we are root, in a folder under /tmp
owned by it, a Unix socket only, no TCP) but with a database's durability left as
PostgreSQL ships it: fsync, synchronous_commit and full_page_writes on. Unlike the tests,
postgres runs as a child of this process (not daemonised by pg_ctl), so its CPU time is
the benchmark's own for common.CpuWatch, and it is pinned with taskset.

Pinning on two cores: wrk needs a core of its own, or it measures its own starvation. So
wrk gets CPU 1, and the system under test gets CPU 0: the replica(s) and PostgreSQL
together, as the SQLite server (which does its database work in-process) gets CPU 0 alone.
Each store then has one core for all of its work, HTTP and database. A comparison run
puts PostgreSQL on CPU 1 beside wrk (two cores for the system under test, but one shared
with the load generator): it shows how much the shared core costs, not a fair ratio.

Rows:
- validation at 64 connections, one replica, --workers 0 and --workers 2, against the
  SQLite server in the same run (three turns each, median); the verdict takes the better.
- CPU time per validation, one replica against two: utime + stime from /proc/PID/stat of
  the replicas and of every PostgreSQL process (client backends counted apart), over a
  wrk run, divided by the validations answered.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import (
    HOST,
    NOW,
    Background,
    WrkResult,
    build_database,
    children,
    cpu_seconds,
    free_port,
    fresh,
    note,
    record,
    serve_command,
    validate_script,
    wrk,
)

from tokencli.domain import tokens

SERVICE_USER = "postgres"  # the OS user Debian's package creates, and our superuser role
# What differs from PostgreSQL's defaults (durability settings stay as shipped).
SETTINGS = {
    "listen_addresses": "''",  # no TCP: the Unix socket only
    "max_connections": "100",
    "shared_buffers": "128MB",
}
LIVE = 100_000
KNOWN = 1_000


def find_bindir() -> Path | None:
    """The PostgreSQL server binaries (as tests/pg_cluster.py finds them), or None."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(os.path.realpath(on_path)).parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda path: [int(part) for part in re.findall(r"\d+", path)])
    return Path(newest).parent


class Cluster:
    """A throwaway PostgreSQL cluster on a Unix socket, as a child process."""

    def __init__(self, bindir: Path, cpus: str) -> None:
        self.bindir = bindir
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
            if runuser is None:
                raise RuntimeError("running as root needs runuser (util-linux) for PostgreSQL")
            self.as_user = [runuser, "-u", SERVICE_USER, "--"]
        # Under /tmp: the service user must reach it, and a socket path must stay short.
        self.folder = Path(tempfile.mkdtemp(prefix="tokencli-bench-pg-", dir="/tmp"))
        if self.as_user:
            shutil.chown(self.folder, user=SERVICE_USER)
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.cpus = cpus
        self.version = ""

    @property
    def url(self) -> str:
        """tokencli's --db for this cluster: the socket folder in libpq's `host`."""
        return f"postgresql://{SERVICE_USER}@/postgres?host={self.folder}"

    def start(self) -> None:
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SERVICE_USER]
        initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"]
        completed = subprocess.run([*self.as_user, *initdb], capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"initdb failed: {completed.stdout}{completed.stderr}")
        settings = {**SETTINGS, "unix_socket_directories": f"'{self.folder}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._log = open(self.log, "wb")
        self.process = subprocess.Popen(
            ["taskset", "-c", self.cpus, *self.as_user, str(self.bindir / "postgres")]
            + ["-D", str(self.data)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as connection:
                    row = connection.execute("SHOW server_version").fetchone()
                    self.version = str(row[0]) if row else "?"
                    checked = connection.execute(
                        "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                        (["fsync", "synchronous_commit", "full_page_writes", "wal_level"],),
                    ).fetchall()
                    self.durability = {str(name): str(value) for name, value in checked}
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not start:\n{self.log.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.1)

    def postmaster_pid(self) -> int:
        """The postmaster's PID (runuser may stand between us and it)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def processes(self) -> dict[int, str]:
        """Every PostgreSQL process, PID to its title ("postgres: walwriter", ...)."""
        postmaster = self.postmaster_pid()
        found = {postmaster: "postmaster"}
        for pid in children(postmaster):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found[pid] = title.strip()
        return found

    def pin(self, cpus: set[int]) -> None:
        """Move the postmaster and every process it has (new backends inherit it)."""
        for pid in self.processes():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                continue

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), wait for it, remove the folder."""
        try:
            if self.process is not None and self.process.poll() is None:
                try:
                    os.kill(self.postmaster_pid(), signal.SIGINT)
                except (OSError, ValueError):
                    self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(self.postmaster_pid(), signal.SIGQUIT)
                    self.process.wait(timeout=10)
        finally:
            if self.process is not None:
                self._log.close()
            shutil.rmtree(self.folder, ignore_errors=True)


def fill(cluster: Cluster, tokencli: str) -> list[str]:
    """tokencli makes its schema; then LIVE live tokens and KNOWN known ones by COPY."""
    subprocess.run(
        [tokencli, "--db", cluster.url, "issue", "--label", "schema"],
        check=True,
        capture_output=True,
    )
    import psycopg

    plaintexts: list[str] = []
    with psycopg.connect(cluster.url) as connection:
        with connection.cursor() as cursor:
            copy = (
                "COPY tokencli.tokens (id, secret_hash, label, created_at, expires_at,"
                " uses_left, ends_at, scopes) FROM STDIN"
            )
            with cursor.copy(copy) as rows:
                for _ in range(KNOWN):
                    new = tokens.generate()
                    plaintexts.append(new.plaintext)
                    rows.write_row(
                        (new.id, new.secret_hash, "bench", NOW, NOW + 86_400, None)
                        + (NOW + 86_400, [])
                    )
                for index in range(LIVE):
                    created = NOW - 7_200 + index % 7_200
                    rows.write_row(
                        (tokens.new_id(), os.urandom(32), None, created, NOW + 86_400, None)
                        + (NOW + 86_400, [])
                    )
        connection.commit()
    with psycopg.connect(cluster.url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE tokencli.tokens")
        connection.execute("CHECKPOINT")
    return plaintexts


# -- CPU time and batches ----------------------------------------------------------------


def batches(url: str) -> tuple[float, float]:
    """(transactions, requests answered in them) so far, from the server's /metrics
    (the tokencli_batch_size histogram: one observation per group commit)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    count = re.search(r"^tokencli_batch_size_count (\S+)", text, re.MULTILINE)
    total = re.search(r"^tokencli_batch_size_sum (\S+)", text, re.MULTILINE)
    if count is None or total is None:
        raise RuntimeError(f"{url}/metrics has no tokencli_batch_size")
    return float(count.group(1)), float(total.group(1))


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Requests per transaction between two readings of `batches`."""
    return (after[1] - before[1]) / max(after[0] - before[0], 1.0)


def snapshot(cluster: Cluster, replicas: list[Background]) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each replica, each client backend and each other PG process."""
    taken: dict[str, dict[int, float]] = {"replicas": {}, "backends": {}, "pg_other": {}}
    for replica in replicas:
        seconds = cpu_seconds(replica.pid)
        if seconds is not None:
            taken["replicas"][replica.pid] = seconds
    for pid, title in cluster.processes().items():
        # The postmaster's reaped children (autovacuum workers that came and went) count.
        seconds = cpu_seconds(pid, waited_children=title == "postmaster")
        if seconds is not None:
            taken["backends" if "[local]" in title else "pg_other"][pid] = seconds
    return taken


def spent(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds each kind of process spent between two snapshots (a process that
    started between them counts from zero; one that ended is lost, and none should)."""
    return {
        kind: sum(seconds - before[kind].get(pid, 0.0) for pid, seconds in after[kind].items())
        for kind in after
    }


def loaded_run(
    cluster: Cluster, replicas: list[Background], urls: list[str], script: Path
) -> tuple[list[WrkResult], dict[str, float], float]:
    """One wrk per replica at once (64 connections shared out): what wrk saw, the CPU
    time spent, and the transactions the replicas committed meanwhile."""
    each = 64 // len(urls)
    counted = [batches(url) for url in urls]
    before = snapshot(cluster, replicas)
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(lambda url: wrk(url, connections=each, script=script), urls))
    after = snapshot(cluster, replicas)
    transactions = sum(batches(url)[0] - old[0] for url, old in zip(urls, counted, strict=True))
    return results, spent(before, after), transactions


# -- the rows ------------------------------------------------------------------------------


def bench_postgres(tokencli: str, python: str, work: Path) -> None:
    """PostgreSQL validation against SQLite, and CPU per validation for 1 and 2 replicas."""
    bindir = find_bindir()
    if bindir is None:
        record(
            "PostgreSQL rows",
            "skipped: no PostgreSQL server binaries (apt-get install postgresql)",
            "-",
            None,
            "(needs PostgreSQL)",
            False,
        )
        return
    os.environ.pop("TOKENCLI_PG_SCHEMA", None)  # tokencli's default schema, `tokencli`
    sqlite_db = work / "pg-sqlite.db"
    known = build_database(sqlite_db, live=LIVE, expired=0, known=KNOWN)
    cluster = Cluster(bindir, cpus="0")
    replicas: list[Background] = []
    try:
        cluster.start()
        note(f"PostgreSQL {cluster.version}, {cluster.durability}, on CPU 0 with the replica")
        pg_known = fill(cluster, tokencli)
        # One token list for wrk: the SQLite file's tokens and PostgreSQL's differ, so each
        # gets its own script.
        sqlite_script = validate_script(work, known)
        pg_folder = work / "pg"
        pg_folder.mkdir(exist_ok=True)
        pg_script = validate_script(pg_folder, pg_known)

        servers: dict[str, Background] = {}
        urls: dict[str, str] = {}
        for name, db, extra in (
            ("sqlite", str(sqlite_db), []),
            ("pg-workers-0", cluster.url, ["--workers", "0"]),
            ("pg-workers-2", cluster.url, ["--workers", "2"]),
        ):
            port = free_port()
            servers[name] = Background(serve_command(tokencli, db, port, *extra), port)
            replicas.append(servers[name])
            urls[name] = f"http://{HOST}:{port}"
        results: dict[str, list[WrkResult]] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        batch: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(3):
            for name, url in urls.items():
                script = sqlite_script if name == "sqlite" else pg_script
                counted = batches(url)
                before = cpu_seconds(servers[name].pid) or 0.0
                results[name].append(wrk(url, connections=64, script=script))
                cpu[name].append((cpu_seconds(servers[name].pid) or 0.0) - before)
                batch[name].append(round(mean_batch(counted, batches(url)), 1))
        for name in servers:
            note(
                f"postgres group, {name}: "
                + ", ".join(
                    f"{run.rps:,.0f}/s p99 {run.p99_ms:.1f} ms, {size:.1f} requests/commit"
                    for run, size in zip(results[name], batch[name], strict=True)
                )
            )
        rps = {name: statistics.median(run.rps for run in runs) for name, runs in results.items()}
        p99 = {
            name: statistics.median(run.p99_ms for run in runs) for name, runs in results.items()
        }
        failures = {
            name: sum(run.non_2xx + run.socket_errors for run in runs)
            for name, runs in results.items()
        }
        best = max(("pg-workers-0", "pg-workers-2"), key=lambda name: rps[name])
        for name in ("pg-workers-0", "pg-workers-2"):
            ratio = rps[name] / rps["sqlite"]
            workers = name.rsplit("-", 1)[1]
            verdict_row = name == best
            record(
                f"PostgreSQL HTTP validate, 64 conns, --workers {workers}"
                + (" (the better: verdict)" if verdict_row else " (comparison)"),
                f"{rps[name]:,.0f}/s, p99 {p99[name]:.1f} ms",
                f"{rps['sqlite']:,.0f}/s, p99 {p99['sqlite']:.1f} ms (SQLite server)",
                ratio,
                ">= 0.5x, p99 < 20 ms" if verdict_row else "(comparison only)",
                (
                    ratio >= 0.5
                    and p99[name] < 20
                    and failures[name] == 0
                    and failures["sqlite"] == 0
                )
                if verdict_row
                else True,
                {
                    "rps": [run.rps for run in results[name]],
                    "p99_ms": [run.p99_ms for run in results[name]],
                    "sqlite_rps": [run.rps for run in results["sqlite"]],
                    "replica_cpu_seconds": cpu[name],
                    "requests_per_commit": batch[name],
                    "sqlite_requests_per_commit": batch["sqlite"],
                    "failures": failures[name],
                    "postgres": cluster.version,
                    "durability": cluster.durability,
                },
            )
        # Comparison only: PostgreSQL moved to CPU 1, beside wrk.
        cluster.pin({1})
        shared = wrk(urls[best], connections=64, script=pg_script)
        cluster.pin({0})
        record(
            f"PostgreSQL on CPU 1 beside wrk, --workers {best.rsplit('-', 1)[1]}",
            f"{shared.rps:,.0f}/s, p99 {shared.p99_ms:.1f} ms",
            f"{rps['sqlite']:,.0f}/s (SQLite server)",
            shared.rps / rps["sqlite"],
            "(comparison only: 2 cores for the store)",
            True,
        )
        for server in servers.values():
            server.stop()
        replicas = []
        bench_replicas(tokencli, cluster, pg_script, best)
    finally:
        for replica in replicas:
            replica.stop()
        cluster.stop()
        fresh(sqlite_db)


def bench_replicas(tokencli: str, cluster: Cluster, script: Path, best: str) -> None:
    """CPU time per validation with one replica at 64 connections, and with two at 32
    each, the same total load; replicas and PostgreSQL on CPU 0, wrk on CPU 1."""
    workers = best.rsplit("-", 1)[1]
    figures: dict[int, dict[str, Any]] = {}
    for count in (1, 2):
        replicas: list[Background] = []
        try:
            urls = []
            for _ in range(count):
                port = free_port()
                replicas.append(
                    Background(
                        serve_command(tokencli, cluster.url, port, "--workers", workers), port
                    )
                )
                urls.append(f"http://{HOST}:{port}")
            # A short run first, so every replica has opened its connections.
            for url in urls:
                wrk(url, connections=8, script=script, seconds=2)
            results, seconds, transactions = loaded_run(cluster, replicas, urls, script)
        finally:
            for replica in replicas:
                replica.stop()
        answered = sum(run.requests - run.non_2xx for run in results)
        failures = sum(run.non_2xx + run.socket_errors for run in results)
        per = {kind: value / max(answered, 1) * 1e6 for kind, value in seconds.items()}
        figures[count] = {
            "validations": answered,
            "transactions": transactions,
            "requests_per_commit": round(answered / max(transactions, 1.0), 1),
            "rps": sum(run.rps for run in results),
            "p99_ms": max(run.p99_ms for run in results),
            "cpu_seconds": {kind: round(value, 2) for kind, value in seconds.items()},
            "us_per_validation": {kind: round(value, 1) for kind, value in per.items()},
            "failures": failures,
        }
        total = sum(per.values())
        record(
            f"PostgreSQL CPU per validation, {count} replica{'s' if count > 1 else ''}"
            f" (--workers {workers})",
            f"{total:.0f} µs: replicas {per['replicas']:.0f} + backends {per['backends']:.0f}"
            f" + other PG {per['pg_other']:.0f}",
            f"{figures[count]['rps']:,.0f}/s, p99 {figures[count]['p99_ms']:.1f} ms,"
            f" {figures[count]['requests_per_commit']:.1f} validations/commit",
            None,
            "(reported; see docs)",
            failures == 0,
            figures[count],
        )
    # The database's CPU per validation as a fixed part per validation and a part per
    # transaction shared by the validations it commits: cost = a + b / batch. Two runs
    # with different batch sizes give a and b (docs/benchmarks.md uses them).
    database = {
        count: figures[count]["us_per_validation"]["backends"]
        + figures[count]["us_per_validation"]["pg_other"]
        for count in figures
    }
    size = {count: figures[count]["requests_per_commit"] for count in figures}
    if abs(1 / size[2] - 1 / size[1]) > 1e-9:
        per_commit = (database[2] - database[1]) / (1 / size[2] - 1 / size[1])
        per_validation = database[1] - per_commit / size[1]
        note(
            f"PostgreSQL database-side CPU: {database[1]:.1f} µs/validation at"
            f" {size[1]:.1f} per commit (1 replica), {database[2]:.1f} µs at {size[2]:.1f}"
            f" (2 replicas): about {per_validation:.1f} µs per validation"
            f" + {per_commit:.0f} µs per commit"
        )
        figures[2]["model_us"] = {
            "per_validation": round(per_validation, 2),
            "per_commit": round(per_commit, 1),
        }
