"""What every benchmark group shares: the results table, the database builder, wrk,
hyperfine and the pinned background server.

Every load run is bounded in time (`wrk -d`) and sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokencli import tokens
from tokencli.store import Store

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # the only address any benchmark sends to
WRK_SECONDS = 10
NOW = int(time.time())


@dataclass
class Row:
    """One line of the results table; `details` keeps the raw figures for latest.json."""

    group: str
    name: str
    ours: str
    floor: str
    ratio: float | None
    target: str
    met: bool
    details: dict[str, Any] = field(default_factory=dict)


ROWS: list[Row] = []
# The group whose rows `record` is adding; the driver sets it before running each group.
current_group = ""


def note(message: str) -> None:
    """A progress line on stderr, so stdout keeps only the table."""
    print(f"# {message}", file=sys.stderr, flush=True)


def record(
    name: str,
    ours: str,
    floor: str,
    ratio: float | None,
    target: str,
    met: bool,
    details: dict[str, Any] | None = None,
) -> None:
    """Add a row to the table and say at once whether it met its target."""
    ROWS.append(Row(current_group, name, ours, floor, ratio, target, met, details or {}))
    shown = "-" if ratio is None else f"{ratio:.2f}"
    verdict = "met" if met else "NOT MET"
    note(f"{name}: ours {ours}, floor {floor}, ratio {shown}, target {target}: {verdict}")


# -- timing ----------------------------------------------------------------------------


def hyperfine(
    commands: list[str], *, runs: int, warmup: int = 2, prepare: str | None = None
) -> list[float]:
    """Median wall seconds of each command, measured interleaved by hyperfine."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        arguments = ["hyperfine", "--runs", str(runs), "--warmup", str(warmup)]
        arguments += ["--export-json", out.name, "--style", "none"]
        if prepare is None:
            arguments.append("-N")  # no shell between hyperfine and the command
        else:
            arguments += ["--prepare", prepare, "--shell", "bash"]
        subprocess.run([*arguments, *commands], check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    return [statistics.median(result["times"]) for result in results]


def interleaved(commands: list[str], *, rounds: int = 5, runs: int = 10) -> list[float]:
    """Median of per-round medians, the commands taking turns round by round, so a slow
    minute on a shared machine lands on all of them rather than on whichever ran then."""
    results = [hyperfine(commands, runs=runs, warmup=2) for _ in range(rounds)]
    return [statistics.median(column) for column in zip(*results, strict=True)]


# -- databases -------------------------------------------------------------------------


def fresh(path: Path) -> None:
    """Remove a database file and its WAL companions."""
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
    rows: list[tuple[object, ...]] = []
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
    """Insert raw token rows, bypassing the service (no audit trail: this is set-up)."""
    connection.executemany(
        "INSERT OR IGNORE INTO tokens (id, secret_hash, label, created_at, expires_at, uses_left,"
        " ends_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def validate_script(work: Path, known: list[str]) -> Path:
    """bench/validate.lua with its token list filled in: wrk cycles through `known`."""
    token_list = work / "tokens.txt"
    token_list.write_text("\n".join(known) + "\n")
    script = work / "validate.lua"
    script.write_text((HERE / "validate.lua").read_text().replace("TOKENS_FILE", str(token_list)))
    return script


# -- servers and load ------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once something accepts on `port`; fail early if `process` has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class WrkResult:
    """What one wrk run saw; latencies cover only the requests that got an answer."""

    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    requests: int = 0
    timeouts: int = 0
    connect_errors: int = 0
    refused: bool = False  # wrk could not connect at all, so it sent nothing


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return 0.0
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _number(pattern: str, output: str, default: str = "0") -> str:
    match = re.search(pattern, output)
    return match.group(1) if match else default


def wrk(
    url: str,
    *,
    connections: int,
    script: Path | None = None,
    seconds: int = WRK_SECONDS,
    timeout: str = "2s",
) -> WrkResult:
    """Run wrk on CPU 1 against a server on CPU 0; bounded by `seconds`.

    A server that answers nothing still gives a result (0 requests/s), since the
    hostile-client runs measure exactly that.
    """
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"benchmarks only send to {HOST}: {url}")
    arguments = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    arguments += ["--latency", "--timeout", timeout]
    if script is not None:
        arguments += ["-s", str(script)]
    completed = subprocess.run(
        [*arguments, url], capture_output=True, text=True, timeout=seconds + 30
    )
    output = completed.stdout
    if "unable to connect" in completed.stderr + output:
        # wrk tries one connection before it starts and gives up if that fails.
        return WrkResult(0.0, 0.0, 0.0, connections, 0, connect_errors=connections, refused=True)
    if "Requests/sec" not in output:
        raise RuntimeError(f"wrk failed: {completed.stderr.strip() or output.strip()}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    return WrkResult(
        rps=float(_number(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=_ms(_number(r"50%\s+(\S+)", output, "0us")),
        p99_ms=_ms(_number(r"99%\s+(\S+)", output, "0us")),
        socket_errors=sum(counts),
        non_2xx=int(_number(r"Non-2xx or 3xx responses: (\d+)", output)),
        requests=int(_number(r"(\d+) requests in", output)),
        timeouts=counts[3],
        connect_errors=counts[0],
    )


class Background:
    """A server process pinned to CPU 0, stopped with SIGTERM.

    `taskset` execs the server, so `pid` is the server's own process (its /proc entry
    shows the server's memory, not taskset's).
    """

    def __init__(
        self,
        arguments: list[str],
        port: int,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self._log = open(log, "wb") if log is not None else None
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", *arguments],
            stdout=subprocess.DEVNULL,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            env=env,
        )
        try:
            wait_for_port(port, process=self.process)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait; returns the exit code, or None if it had to be killed."""
        code: int | None
        try:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                code = None
        finally:
            if self._log is not None:
                self._log.close()
        return code


# -- the table -------------------------------------------------------------------------


def machine() -> str:
    """The machine in one phrase, for the results file."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def print_table(elapsed: float) -> None:
    """The rows of this run as a Markdown table on stdout."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    print(f"\ntokencli benchmarks, {day}, {os.cpu_count()} cores, {elapsed:.0f} s\n")
    print("| benchmark | tokencli | floor | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for row in ROWS:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        met = "yes" if row.met else "NO"
        print(f"| {row.name} | {row.ours} | {row.floor} | {ratio} | {row.target} | {met} |")


def write_results(replaced_groups: list[str], elapsed: float) -> Path:
    """Write this run's rows into bench/results/latest.json, each with its date.

    Rows from the previous file are kept unless this run measured them again or ran their
    whole group, so `bench/run hostile:a` does not erase the other figures.
    """
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / "latest.json"
    previous: list[dict[str, Any]] = []
    if path.exists():
        try:
            previous = list(json.loads(path.read_text()).get("rows", []))
        except (ValueError, AttributeError):
            previous = []
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    names = {row.name for row in ROWS}
    kept = [
        row
        for row in previous
        if isinstance(row, dict)
        and row.get("group") not in replaced_groups
        and row.get("name") not in names
    ]
    fresh_rows = [{**asdict(row), "date": date, "machine": machine()} for row in ROWS]
    path.write_text(
        json.dumps(
            {
                "date": date,
                "machine": machine(),
                "elapsed_seconds": round(elapsed),
                "rows": kept + fresh_rows,
            },
            indent=2,
        )
        + "\n"
    )
    return path
