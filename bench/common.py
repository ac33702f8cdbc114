"""What every benchmark group shares: the results table, the database builder, wrk,
hyperfine, the pinned background server, a throwaway TLS certificate, CPU time from /proc
and the load average.

Every load run is bounded in time (`wrk -d`) and sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokencli.domain import tokens
from tokencli.store.sqlite.queries import SQLiteStore

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
    load: str = ""  # /proc/loadavg's 1, 5 and 15 minute figures when the group started


ROWS: list[Row] = []
# The group whose rows `record` is adding, and the load average when it started; the
# driver sets both before running each group.
current_group = ""
current_load = ""
# Per group, in the order run: its name, the load average when it started, and what
# CpuWatch saw while it ran.
GROUP_LOADS: list[dict[str, Any]] = []
# Cores busy with work that is not the benchmark's (on average over a group) past which
# its figures are not to be trusted: a tenth of the machine.
FOREIGN_LIMIT = 0.2


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_fields() -> dict[str, int]:
    """Clock ticks of all CPUs since boot by kind, from /proc/stat's first line."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    words = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    return dict(zip(names, (int(word) for word in words), strict=False))


def _processes() -> dict[int, tuple[int, int, int]]:
    """Every process: PID -> (parent PID, start time, ticks of CPU used by it and by
    the children it has waited for: utime + stime + cutime + cstime)."""
    found: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        ticks = sum(int(value) for value in fields[11:15])
        found[int(entry.name)] = (int(fields[1]), int(fields[19]), ticks)
    return found


def _others(processes: dict[int, tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    """(PID, start time) -> CPU ticks of each process that is not the benchmark's own
    (this process and its descendants) nor a kernel thread (PID 2 and its children)."""
    kids: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        kids.setdefault(parent, []).append(pid)
    excluded = {os.getpid(), 2}
    stack = list(excluded)
    while stack:
        for child in kids.get(stack.pop(), []):
            if child not in excluded:
                excluded.add(child)
                stack.append(child)
    return {
        (pid, started): ticks
        for pid, (_, started, ticks) in processes.items()
        if pid not in excluded
    }


class CpuWatch:
    """How busy the machine was with other people's work while a group ran.

    The load average cannot tell: it counts the benchmark's own server and wrk (about 2
    on this 2-core machine while a load run lasts) and decays over minutes, so a group
    that follows another starts with a high figure of its own making. Instead, from
    /proc/PID/stat: the CPU time (utime + stime, and that of the children each has waited
    for) of every process that is neither the benchmark's (this process and its
    descendants, PostgreSQL included) nor a kernel thread, at the start and at the end;
    the difference over the group's wall time, in cores. A process that started and
    ended within the group counts through its parent. Steal (time the hypervisor gave to
    other guests) is counted apart, from /proc/stat.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.fields = _cpu_fields()
        self.others = _others(_processes())

    def stop(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self.started, 1e-6)
        fields = _cpu_fields()
        others = _others(_processes())
        ticks = sum(value - self.others.get(key, 0) for key, value in others.items())
        per_second = os.sysconf("SC_CLK_TCK") * seconds
        return {
            "seconds": round(seconds, 1),
            "foreign_cores": round(max(ticks, 0) / per_second, 3),
            "steal_cores": round((fields["steal"] - self.fields["steal"]) / per_second, 3),
            "busy_cores": round(
                sum(fields[k] - self.fields[k] for k in fields if k not in ("idle", "iowait"))
                / per_second,
                3,
            ),
        }


def busy_now(seconds: float = 3.0) -> float:
    """Cores other work (and steal) takes over the next `seconds`."""
    watch = CpuWatch()
    time.sleep(seconds)
    seen = watch.stop()
    return seen["foreign_cores"] + seen["steal_cores"]


def wait_for_quiet(limit: float) -> tuple[float, float]:
    """Wait (up to `limit` seconds) until other work takes less than FOREIGN_LIMIT cores;
    returns (seconds waited, cores busy at the last look). Other engineers' test suites
    share this machine: a group measured beside one is not worth its time."""
    started = time.monotonic()
    busy = busy_now()
    while busy > FOREIGN_LIMIT and time.monotonic() - started < limit:
        note(f"waiting for the machine to quiet down: {busy:.2f} cores busy with other work")
        time.sleep(7.0)
        busy = busy_now()
    return time.monotonic() - started, busy


def quiet_enough(watch: dict[str, float]) -> bool:
    """False when other work took more than FOREIGN_LIMIT cores while a group ran."""
    return watch["foreign_cores"] + watch["steal_cores"] <= FOREIGN_LIMIT


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
    ROWS.append(
        Row(current_group, name, ours, floor, ratio, target, met, details or {}, current_load)
    )
    shown = "-" if ratio is None else f"{ratio:.2f}"
    verdict = "met" if met else "NOT MET"
    note(f"{name}: ours {ours}, floor {floor}, ratio {shown}, target {target}: {verdict}")


# -- timing ----------------------------------------------------------------------------


def hyperfine(
    commands: list[str],
    *,
    runs: int,
    warmup: int = 2,
    prepare: str | None = None,
    shell: bool = False,
) -> list[float]:
    """Median wall seconds of each command, measured interleaved by hyperfine.

    Without `prepare` or `shell`, no shell runs between hyperfine and the command;
    with `shell`, the commands may redirect (bash's start-up, about 1 ms, is then in
    every figure alike)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        arguments = ["hyperfine", "--runs", str(runs), "--warmup", str(warmup)]
        arguments += ["--export-json", out.name, "--style", "none"]
        if prepare is None and not shell:
            arguments.append("-N")  # no shell between hyperfine and the command
        else:
            arguments += ["--shell", "bash"]
            if prepare is not None:
                arguments += ["--prepare", prepare]
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


def build_database(
    path: Path,
    *,
    live: int,
    expired: int,
    known: int = 0,
    label: str | None = None,
    scopes: str = "",
) -> list[str]:
    """A tokencli database with `live` + `expired` tokens; returns `known` valid tokens.

    tokencli makes the schema (so it is the current one); the rows go in with raw SQL,
    the filler ones with `label` and `scopes` (space-separated, sorted names)."""
    fresh(path)
    SQLiteStore.open(path, create=True).close()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("BEGIN")
    plaintexts: list[str] = []
    rows: list[tuple[object, ...]] = []
    for _ in range(known):
        new = tokens.generate()
        plaintexts.append(new.plaintext)
        rows.append((new.id, new.secret_hash, "bench", NOW, NOW + 86_400, None, NOW + 86_400, ""))
    for index in range(live + expired):
        expires = NOW + 86_400 if index < live else NOW - 3_600
        token_id = tokens.new_id()
        # Creation times spread over the last 2 hours, so ORDER BY created_at sorts.
        created = NOW - 7_200 + index % 7_200
        rows.append((token_id, os.urandom(32), label, created, expires, None, expires, scopes))
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
        " ends_at, scopes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
    cpus: str = "1",
) -> WrkResult:
    """Run wrk (one thread) on CPU 1 against a server on CPU 0; bounded by `seconds`.

    http:// or https:// (wrk does not check the certificate). A server that answers
    nothing still gives a result (0 requests/s), since the hostile-client runs measure
    exactly that.
    """
    if not url.startswith((f"http://{HOST}:", f"https://{HOST}:")):
        raise ValueError(f"benchmarks only send to {HOST}: {url}")
    arguments = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
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
        # Anchored: "99%" also ends "+/- Stdev" figures such as "96.99%" in the line above.
        p50_ms=_ms(_number(r"(?m)^\s*50%\s+(\S+)", output, "0us")),
        p99_ms=_ms(_number(r"(?m)^\s*99%\s+(\S+)", output, "0us")),
        socket_errors=sum(counts),
        non_2xx=int(_number(r"Non-2xx or 3xx responses: (\d+)", output)),
        requests=int(_number(r"(\d+) requests in", output)),
        timeouts=counts[3],
        connect_errors=counts[0],
    )


class Background:
    """A server process pinned to CPU 0 (or `cpus`), stopped with SIGTERM.

    `taskset` execs the server, so `pid` is the server's own process (its /proc entry
    shows the server's memory, not taskset's).
    """

    def __init__(
        self,
        arguments: list[str],
        port: int,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cpus: str = "0",
    ) -> None:
        self._log = open(log, "wb") if log is not None else None
        self.process = subprocess.Popen(
            ["taskset", "-c", cpus, *arguments],
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


def serve_command(tokencli: str, db: str | Path, port: int, *extra: str) -> list[str]:
    """`tokencli --db DB serve --quiet --port PORT ...`: no access log, as every row uses."""
    return [tokencli, "--db", str(db), "serve", "--quiet", "--port", str(port), *extra]


# -- TLS and CPU time --------------------------------------------------------------------


def make_certificate(work: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and its key (PEM files in `work`):
    the `openssl` command if present, else trustme (the test extra) if importable."""
    cert, key = work / "tls-cert.pem", work / "tls-key.pem"
    if cert.exists() and key.exists():
        return cert, key
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
            + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
    else:
        try:
            import trustme
        except ImportError:
            raise RuntimeError("TLS rows need the openssl command or trustme") from None
        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1")
        issued.private_key_pem.write_to_path(str(key))
        issued.cert_chain_pems[0].write_to_path(str(cert))
    key.chmod(0o600)
    return cert, key


def tls_arguments(work: Path) -> list[str]:
    """`--tls-cert CERT --tls-key KEY` of a throwaway certificate."""
    cert, key = make_certificate(work)
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float | None:
    """utime + stime of one process (all its threads) from /proc/PID/stat, and with
    `waited_children` the cutime + cstime of the children it has reaped; None once gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process (from /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(word) for word in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


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
    if GROUP_LOADS:
        print(
            "\n| group | load average at its start (1, 5, 15 min) | seconds"
            " | other work, cores (mean) | steal, cores | verdict |"
        )
        print("|---|---|---|---|---|---|")
        for entry in GROUP_LOADS:
            watch = entry["watch"]
            verdict = "quiet" if quiet_enough(watch) else "SHARED: re-run this group"
            print(
                f"| {entry['group']} | {entry['load_at_start']} | {watch['seconds']:.0f}"
                f" | {watch['foreign_cores']:.2f} | {watch['steal_cores']:.2f} | {verdict} |"
            )


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
                "group_loads": GROUP_LOADS,
                "rows": kept + fresh_rows,
            },
            indent=2,
        )
        + "\n"
    )
    return path
