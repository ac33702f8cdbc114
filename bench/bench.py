"""tokencli's benchmarks, each against a floor measured in the same run.

Run through `bench/run`, which prepares the virtual environment. Every row is a ratio of
medians taken minutes apart on the same machine, so the noise of a shared host cancels
out as far as it can; absolute numbers are printed for orientation only.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tokencli import tokens
from tokencli.store import Store

HERE = Path(__file__).resolve().parent
WRK_SECONDS = 10
NOW = int(time.time())


@dataclass
class Row:
    """One line of the results table."""

    name: str
    ours: str
    floor: str
    ratio: float | None
    target: str
    met: bool


ROWS: list[Row] = []


def note(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def record(name: str, ours: str, floor: str, ratio: float | None, target: str, met: bool) -> None:
    ROWS.append(Row(name, ours, floor, ratio, target, met))
    shown = "-" if ratio is None else f"{ratio:.2f}"
    verdict = "met" if met else "NOT MET"
    note(f"{name}: ours {ours}, floor {floor}, ratio {shown}, target {target}: {verdict}")


# -- helpers ---------------------------------------------------------------------------


def hyperfine(
    commands: list[str], *, runs: int, warmup: int = 2, prepare: str | None = None
) -> list[float]:
    """Median wall seconds of each command, measured interleaved by hyperfine."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        arguments = ["hyperfine", "-N", "--runs", str(runs), "--warmup", str(warmup)]
        arguments += ["--export-json", out.name, "--style", "none"]
        if prepare is not None:
            arguments = [
                "hyperfine",
                "--runs",
                str(runs),
                "--warmup",
                str(warmup),
                "--prepare",
                prepare,
            ]
            arguments += ["--export-json", out.name, "--style", "none", "--shell", "bash"]
        subprocess.run([*arguments, *commands], check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    return [statistics.median(result["times"]) for result in results]


def interleaved(commands: list[str], *, rounds: int = 5, runs: int = 10) -> list[float]:
    """Median of per-round medians, the commands taking turns round by round, so a slow
    minute on a shared machine lands on all of them rather than on whichever ran then."""
    results = [hyperfine(commands, runs=runs, warmup=2) for _ in range(rounds)]
    return [statistics.median(column) for column in zip(*results, strict=True)]


def fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def build_database(path: Path, *, live: int, expired: int, known: int = 0) -> list[str]:
    """A tokencli database with `live` + `expired` tokens; returns `known` valid tokens."""
    fresh(path)
    Store.open(path, create=True).close()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("BEGIN")
    plaintexts: list[str] = []
    rows = []
    for _ in range(known):
        new = tokens.generate()
        plaintexts.append(new.plaintext)
        rows.append((new.id, new.secret_hash, "bench", NOW, NOW + 86_400, None, NOW + 86_400))
    for index in range(live + expired):
        expires = NOW + 86_400 if index < live else NOW - 3_600
        token_id = tokens.new_id()
        rows.append((token_id, os.urandom(32), None, NOW - 7_200, expires, None, expires))
        if len(rows) >= 100_000:
            insert_rows(connection, rows)
            rows = []
    insert_rows(connection, rows)
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return plaintexts


def insert_rows(connection: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    connection.executemany(
        "INSERT OR IGNORE INTO tokens (id, secret_hash, label, created_at, expires_at, uses_left,"
        " ends_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str, *, connections: int, script: Path | None = None, seconds: int = WRK_SECONDS
) -> WrkResult:
    """Run wrk on CPU 1 against a server on CPU 0; bounded by `seconds`."""
    arguments = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    arguments += ["--latency", "--timeout", "2s"]
    if script is not None:
        arguments += ["-s", str(script)]
    output = subprocess.run([*arguments, url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        rps, p50, p99, socket_errors, int(non_2xx_match.group(1)) if non_2xx_match else 0
    )


class Background:
    """A server process pinned to CPU 0, stopped with SIGTERM."""

    def __init__(self, arguments: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", *arguments],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_for_port(port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the benchmarks --------------------------------------------------------------------


def bench_startup(tokencli: str, python: str, work: Path) -> None:
    db = work / "startup.db"
    fresh(db)
    token = subprocess.run(
        [tokencli, "--db", str(db), "issue"], check=True, capture_output=True, text=True
    ).stdout.strip()
    commands = [
        f"{python} -c 'import typer'",
        f"{tokencli} --db {db} check {token}",
        f"{tokencli} --db {db} issue",
    ]
    floor, check, issue = interleaved(commands)
    for name, ours in (("start-up: check TOKEN", check), ("start-up: issue", issue)):
        ratio = ours / floor
        record(
            name,
            f"{ours * 1000:.1f} ms",
            f"{floor * 1000:.1f} ms (import typer)",
            ratio,
            "<= 1.5x",
            ratio <= 1.5,
        )


def bench_bulk_issue(tokencli: str, python: str, work: Path) -> None:
    db = work / "bulk.db"
    floor_db = work / "bulk-floor.db"
    count = 100_000
    ours, floor = hyperfine(
        [
            f"{tokencli} --db {db} issue --count {count} > /dev/null",
            f"{python} {HERE / 'floor_bulk.py'} {floor_db} {count}",
        ],
        runs=3,
        warmup=0,
        prepare=f"rm -f {db} {db}-wal {db}-shm {floor_db} {floor_db}-wal {floor_db}-shm",
    )
    ratio = floor / ours  # tokens per second, ours over floor
    record(
        "bulk issue --count 100000 (tokens/s)",
        f"{count / ours:,.0f}/s",
        f"{count / floor:,.0f}/s (executemany)",
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    )


def bench_purge(tokencli: str, python: str, work: Path) -> None:
    base = work / "purge-base.db"
    build_database(base, live=100_000, expired=900_000)
    ours_db, floor_db = work / "purge-ours.db", work / "purge-floor.db"
    copy_both = f"cp {base} {ours_db} && cp {base} {floor_db} && rm -f {ours_db}-wal {floor_db}-wal"
    raw_delete = (
        f"{python} -c \"import sqlite3,time; c=sqlite3.connect('{floor_db}', isolation_level=None);"
        f" c.execute('PRAGMA synchronous=NORMAL');"
        f" c.execute('DELETE FROM tokens WHERE ends_at <= ?', (int(time.time()),))\""
    )
    ours, floor = hyperfine(
        [f"{tokencli} --db {ours_db} purge --quiet", raw_delete],
        runs=3,
        warmup=0,
        prepare=copy_both,
    )
    ratio = ours / floor
    record(
        "purge 900k of 1M",
        f"{ours:.2f} s",
        f"{floor:.2f} s (one DELETE)",
        ratio,
        "<= 1.2x",
        ratio <= 1.2,
    )
    subprocess.run(f"cp {base} {ours_db} && rm -f {ours_db}-wal", shell=True, check=True)
    timed = subprocess.run(
        ["/usr/bin/time", "-f", "%M", tokencli, "--db", str(ours_db), "purge", "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    )
    peak_mb = int(timed.stderr.strip().splitlines()[-1]) / 1024
    record("purge peak memory", f"{peak_mb:.1f} MB", "-", None, "< 60 MB", peak_mb < 60)
    for path in (base, ours_db, floor_db):
        fresh(path)


def bench_check_at_scale(tokencli: str, work: Path) -> None:
    big, small = work / "check-1m.db", work / "check-10.db"
    big_token = build_database(big, live=999_999, expired=0, known=1)[0]
    small_token = build_database(small, live=9, expired=0, known=1)[0]
    at_scale, at_ten = hyperfine(
        [
            f"{tokencli} --db {big} check {big_token}",
            f"{tokencli} --db {small} check {small_token}",
        ],
        runs=40,
        warmup=5,
    )
    ratio = at_scale / at_ten
    record(
        "check on 1M tokens vs on 10",
        f"{at_scale * 1000:.1f} ms",
        f"{at_ten * 1000:.1f} ms",
        ratio,
        "<= 1.1x",
        ratio <= 1.1,
    )
    fresh(big)
    fresh(small)


def bench_http(tokencli: str, python: str, work: Path) -> None:
    db = work / "http.db"
    known = build_database(db, live=100_000, expired=0, known=1_000)
    token_list = work / "tokens.txt"
    token_list.write_text("\n".join(known) + "\n")
    validate_lua = work / "validate.lua"
    validate_lua.write_text(
        (HERE / "validate.lua").read_text().replace("TOKENS_FILE", str(token_list))
    )

    port = free_port()
    floor_server = Background([python, str(HERE / "floor_server.py"), str(port)], port)
    try:
        floor = wrk(f"http://127.0.0.1:{port}", connections=64, script=validate_lua)
    finally:
        floor_server.stop()

    results: dict[str, WrkResult] = {}
    for workers in (0, 2):
        port = free_port()
        server = Background(
            [
                tokencli,
                "--db",
                str(db),
                "serve",
                "--quiet",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            port,
        )
        try:
            results[f"validate-{workers}"] = wrk(
                f"http://127.0.0.1:{port}", connections=64, script=validate_lua
            )
            if workers == 0:
                results["issue"] = wrk(
                    f"http://127.0.0.1:{port}/app/token", connections=64, script=HERE / "issue.lua"
                )
                results["validate-1000"] = wrk(
                    f"http://127.0.0.1:{port}", connections=1000, script=validate_lua
                )
        finally:
            server.stop()

    ours = results["validate-0"]
    ratio = ours.rps / floor.rps
    record(
        "HTTP validate, 64 connections (req/s)",
        f"{ours.rps:,.0f}/s, p99 {ours.p99_ms:.1f} ms",
        f"{floor.rps:,.0f}/s, p99 {floor.p99_ms:.1f} ms (constant answer)",
        ratio,
        ">= 0.6x, p99 < 20 ms",
        ratio >= 0.6 and ours.p99_ms < 20 and ours.non_2xx == 0,
    )
    pooled = results["validate-2"]
    record(
        "HTTP validate, 64 conns, --workers 2",
        f"{pooled.rps:,.0f}/s, p99 {pooled.p99_ms:.1f} ms",
        f"{floor.rps:,.0f}/s",
        pooled.rps / floor.rps,
        "(comparison only)",
        True,
    )
    issue = results["issue"]
    record(
        "HTTP issue, 64 connections (req/s)",
        f"{issue.rps:,.0f}/s, p99 {issue.p99_ms:.1f} ms",
        "-",
        None,
        ">= 5000/s, p99 < 50 ms",
        issue.rps >= 5000 and issue.p99_ms < 50 and issue.non_2xx == 0,
    )
    crowd = results["validate-1000"]
    record(
        "HTTP validate, 1000 connections",
        f"{crowd.rps:,.0f}/s, p99 {crowd.p99_ms:.0f} ms, {crowd.socket_errors} socket errors",
        "-",
        None,
        "0 errors, p99 < 1 s",
        crowd.socket_errors == 0 and crowd.p99_ms < 1000 and crowd.non_2xx == 0,
    )
    bench_http_purge(tokencli, python, work)
    fresh(db)


def bench_http_purge(tokencli: str, python: str, work: Path) -> None:
    base = work / "http-purge-base.db"
    build_database(base, live=10_000, expired=100_000)
    timings_ours: list[float] = []
    timings_floor: list[float] = []
    for _ in range(3):
        ours_db, floor_db = work / "http-purge.db", work / "http-purge-floor.db"
        for target in (ours_db, floor_db):
            fresh(target)
            shutil.copy(base, target)
        port = free_port()
        server = Background(
            [tokencli, "--db", str(ours_db), "serve", "--quiet", "--port", str(port)], port
        )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            started = time.perf_counter()
            connection.request("DELETE", "/app/clear/all/tokens")
            body = json.loads(connection.getresponse().read())
            timings_ours.append(time.perf_counter() - started)
            connection.close()
            assert body["purged"] == 100_000, body
        finally:
            server.stop()
        raw = sqlite3.connect(floor_db, isolation_level=None)
        raw.execute("PRAGMA synchronous = NORMAL")
        started = time.perf_counter()
        raw.execute("DELETE FROM tokens WHERE ends_at <= ?", (int(time.time()),))
        timings_floor.append(time.perf_counter() - started)
        raw.close()
    ours, floor = statistics.median(timings_ours), statistics.median(timings_floor)
    ratio = ours / floor
    record(
        "HTTP purge of 100k expired",
        f"{ours * 1000:.0f} ms",
        f"{floor * 1000:.0f} ms (one DELETE)",
        ratio,
        "<= 1.2x",
        ratio <= 1.2,
    )


def main() -> int:
    venv = Path(sys.argv[1]).resolve()
    tokencli, python = str(venv / "bin" / "tokencli"), str(venv / "bin" / "python")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tokencli-bench-") as scratch:
        work = Path(scratch)
        note("start-up")
        bench_startup(tokencli, python, work)
        note("bulk issue")
        bench_bulk_issue(tokencli, python, work)
        note("purge")
        bench_purge(tokencli, python, work)
        note("check at scale")
        bench_check_at_scale(tokencli, work)
        note("HTTP")
        bench_http(tokencli, python, work)
    elapsed = time.monotonic() - started
    print_table(elapsed)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": (
                    f"{platform.machine()}, {os.cpu_count()} cores, "
                    f"Python {platform.python_version()}"
                ),
                "elapsed_seconds": round(elapsed),
                "rows": [asdict(row) for row in ROWS],
            },
            indent=2,
        )
    )
    return 0 if all(row.met for row in ROWS) else 1


def print_table(elapsed: float) -> None:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    print(f"\ntokencli benchmarks, {day}, {os.cpu_count()} cores, {elapsed:.0f} s\n")
    print("| benchmark | tokencli | floor | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for row in ROWS:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        met = "yes" if row.met else "NO"
        print(f"| {row.name} | {row.ours} | {row.floor} | {ratio} | {row.target} | {met} |")


if __name__ == "__main__":
    sys.exit(main())
