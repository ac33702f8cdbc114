"""What every benchmark group shares: the settings and the results table, timing
(hyperfine, wrk), servers pinned to a CPU, test databases, CPU time from /proc, and
waiting for a quiet machine. Every load run is bounded in time and sends to 127.0.0.1 only.
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
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokencli.domain import tokens
from tokencli.store.sqlite.queries import SQLiteStore

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # the only address any benchmark sends to
NOW = int(time.time())
TICKS = os.sysconf("SC_CLK_TCK")
# Cores of other people's work (mean over a group) past which its figures are suspect.
FOREIGN_LIMIT = 0.2


def note(message: str) -> None:
    """A progress line on stderr, so stdout keeps only the table."""
    print(f"# {message}", file=sys.stderr, flush=True)


# -- settings and results ----------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; `met` is None for a row reported without a target."""

    group: str
    name: str
    ours: str
    floor: str
    ratio: float | None
    target: str
    met: bool | None
    details: dict[str, Any] = field(default_factory=dict)
    load: str = ""


def verdict(met: bool | None) -> str:
    """MET, NOT MET, or - for a row without a target."""
    return "-" if met is None else "MET" if met else "NOT MET"


@dataclass
class Table:
    """The rows of this run, and how busy the machine was while each group ran."""

    rows: list[Row] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""
    load: str = ""

    def record(
        self,
        name: str,
        ours: str,
        floor: str,
        ratio: float | None,
        target: str,
        met: bool | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Add a row and say at once whether it met its target."""
        self.rows.append(
            Row(self.group, name, ours, floor, ratio, target, met, details or {}, self.load)
        )
        shown = "-" if ratio is None else f"{ratio:.2f}"
        note(f"{name}: ours {ours}; floor {floor}; ratio {shown}; {target}: {verdict(met)}")

    def failed(self, name: str, error: Exception) -> None:
        """A row whose measurement itself broke (the other rows still run)."""
        self.record(name, f"harness error: {type(error).__name__}: {error}", "-", None, "", False)

    def print(self, elapsed: float) -> None:
        """This run's rows, then the machine's state per group, as Markdown on stdout."""
        day = time.strftime("%Y-%m-%d", time.gmtime())
        print(f"\ntokencli benchmarks, {day}, {machine()}, {elapsed:.0f} s\n")
        print("| benchmark | tokencli | floor | ratio | target | met |\n|---|---|---|---|---|---|")
        for row in self.rows:
            ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
            cells = [row.name, row.ours, row.floor, ratio, row.target, verdict(row.met)]
            print("| " + " | ".join(cells) + " |")
        print("\n| group | load average at start | seconds | other work, cores | steal | verdict |")
        print("|---|---|---|---|---|---|")
        for entry in self.groups:
            seen = entry["watch"]
            figures = [f"{seen[kind]:.2f}" for kind in ("foreign_cores", "steal_cores")]
            cells = [entry["group"], entry["load"], f"{seen['seconds']:.0f}", *figures]
            print("| " + " | ".join([*cells, quietness(seen)]) + " |")

    def save(self, replaced_groups: list[str], elapsed: float) -> Path:
        """Write bench/results/latest.json: this run's rows, each dated, and the rows of
        earlier runs that this one neither measured again nor replaced by a whole group."""
        path = HERE / "results" / "latest.json"
        path.parent.mkdir(exist_ok=True)
        try:
            previous = list(json.loads(path.read_text())["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            previous = []
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        names = {row.name for row in self.rows}
        kept = [
            row
            for row in previous
            if isinstance(row, dict)
            and row.get("group") not in replaced_groups
            and row.get("name") not in names
        ]
        rows = kept + [{**asdict(row), "date": date, "machine": machine()} for row in self.rows]
        summary = {"date": date, "machine": machine(), "elapsed_seconds": round(elapsed)}
        path.write_text(json.dumps({**summary, "groups": self.groups, "rows": rows}, indent=2))
        return path


@dataclass(frozen=True)
class Bench:
    """What a group is given: the programs under test, a scratch folder, the table to add
    rows to, the option after the group's colon (`hostile:ab`), and wrk's run length."""

    tokencli: str
    python: str
    work: Path
    table: Table
    option: str = ""
    wrk_seconds: int = 10

    def serve(self, db: str | Path, port: int, *extra: str) -> list[str]:
        """`tokencli --db DB serve --quiet --port PORT ...` (no access log, as every row)."""
        return [self.tokencli, "--db", str(db), "serve", "--quiet", "--port", str(port), *extra]


def machine() -> str:
    """The machine in one phrase."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


# -- how busy the machine is -------------------------------------------------------------


def load_average() -> str:
    """The 1, 5 and 15 minute load averages from /proc/loadavg."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces and
    parentheses), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float | None:
    """utime + stime of a process (all its threads), with `waited_children` also those
    of the children it has reaped; None once it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return sum(int(value) for value in fields[11 : 15 if waited_children else 13]) / TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(word) for word in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _foreign_ticks() -> dict[tuple[int, int], int]:
    """(PID, start time) -> CPU ticks (its own and its reaped children's) of every process
    that is neither this benchmark (this process and its descendants) nor a kernel thread."""
    processes: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        fields = stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None:
            ticks = sum(int(value) for value in fields[11:15])
            processes[int(entry.name)] = (int(fields[1]), int(fields[19]), ticks)
    excluded, stack = {os.getpid(), 2}, [os.getpid(), 2]
    kids: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        kids.setdefault(parent, []).append(pid)
    while stack:
        for child in kids.get(stack.pop(), []):
            if child not in excluded:
                excluded.add(child)
                stack.append(child)
    return {
        (pid, start): ticks for pid, (_, start, ticks) in processes.items() if pid not in excluded
    }


def _cpu_totals() -> dict[str, int]:
    """Ticks of all CPUs by kind since boot, from /proc/stat."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    words = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    return dict(zip(names, map(int, words), strict=False))


class CpuWatch:
    """How many cores other people's work took while a group ran: the CPU time of every
    process outside this benchmark's tree (PostgreSQL is inside: the driver adopts it as a
    subreaper), over the wall time; steal apart. The load average cannot tell: it counts
    our own server and wrk, and decays over minutes."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.totals = _cpu_totals()
        self.others = _foreign_ticks()

    def stop(self) -> dict[str, float]:
        """Seconds, foreign_cores, steal_cores and busy_cores since the start."""
        seconds = max(time.monotonic() - self.started, 1e-6)
        totals, others = _cpu_totals(), _foreign_ticks()
        foreign = sum(ticks - self.others.get(key, 0) for key, ticks in others.items())
        per_second = TICKS * seconds
        busy = sum(totals[k] - self.totals[k] for k in totals if k not in ("idle", "iowait"))
        return {
            "seconds": round(seconds, 1),
            # A process reaping a child adds all of its time at once: at most what was busy.
            "foreign_cores": round(min(max(foreign, 0), busy) / per_second, 3),
            "steal_cores": round((totals["steal"] - self.totals["steal"]) / per_second, 3),
            "busy_cores": round(busy / per_second, 3),
        }


def quietness(seen: dict[str, float]) -> str:
    """Whether other work left a group's figures alone."""
    if seen["foreign_cores"] + seen["steal_cores"] <= FOREIGN_LIMIT:
        return "quiet"
    return "SHARED: re-run this group"


def wait_for_quiet(limit: float) -> float:
    """Wait (at most `limit` seconds) until other work takes under FOREIGN_LIMIT cores
    over 3 s; returns the cores it took at the last look."""
    deadline = time.monotonic() + limit
    while True:
        watch = CpuWatch()
        time.sleep(3.0)
        seen = watch.stop()
        busy = seen["foreign_cores"] + seen["steal_cores"]
        if busy <= FOREIGN_LIMIT or time.monotonic() > deadline:
            return busy
        note(f"waiting for the machine to quiet down: other work takes {busy:.2f} cores")
        time.sleep(5.0)


# -- timing -----------------------------------------------------------------------------


def hyperfine(
    commands: list[str], *, runs: int, warmup: int = 2, prepare: str = "", shell: bool = False
) -> list[float]:
    """Median wall seconds of each command, hyperfine running them in turn. Without
    `prepare` or `shell` no shell stands between hyperfine and the command."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        arguments = ["hyperfine", "--runs", str(runs), "--warmup", str(warmup)]
        arguments += ["--export-json", out.name, "--style", "none"]
        if prepare or shell:
            arguments += ["--shell", "bash"] + (["--prepare", prepare] if prepare else [])
        else:
            arguments.append("-N")
        subprocess.run([*arguments, *commands], check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    return [statistics.median(result["times"]) for result in results]


def interleaved(commands: list[str], *, rounds: int = 5, runs: int = 10, **kw: Any) -> list[float]:
    """Median of round medians, the commands taking turns round by round: a slow minute on
    a shared machine lands on all of them, not on whichever ran then."""
    results = [hyperfine(commands, runs=runs, **kw) for _ in range(rounds)]
    return [statistics.median(column) for column in zip(*results, strict=True)]


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
    refused: bool = False  # wrk could not connect at all, so it sent nothing

    @property
    def good_rps(self) -> float:
        """Answers per second that were 2xx."""
        share = (self.requests - self.non_2xx) / self.requests if self.requests else 0.0
        return self.rps * share

    @property
    def failures(self) -> int:
        """Requests answered with an error, or whose connection broke."""
        return self.non_2xx + self.socket_errors


def _figure(pattern: str, output: str, default: str = "0") -> str:
    match = re.search(pattern, output)
    return match.group(1) if match else default


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return 0.0
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[match[2]]


def wrk(
    url: str,
    *,
    connections: int,
    script: Path | None = None,
    seconds: int = 10,
    cpus: str = "1",
) -> WrkResult:
    """wrk (one thread, pinned to `cpus`) against `url` on 127.0.0.1 for `seconds`; a
    server that answers nothing still gives a result, as the hostile rows need."""
    if not url.startswith((f"http://{HOST}:", f"https://{HOST}:")):
        raise ValueError(f"benchmarks only send to {HOST}: {url}")
    arguments = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    arguments += ["--latency", "--timeout", "2s"] + (["-s", str(script)] if script else [])
    done = subprocess.run([*arguments, url], capture_output=True, text=True, timeout=seconds + 30)
    output = done.stdout
    if "unable to connect" in done.stderr + output:  # wrk gives up if its first try fails
        return WrkResult(0.0, 0.0, 0.0, connections, 0, refused=True)
    if "Requests/sec" not in output:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or output.strip()}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    return WrkResult(
        rps=float(_figure(r"Requests/sec:\s+([\d.]+)", output)),
        # Anchored: "99%" also ends "+/- Stdev" figures such as "96.99%".
        p50_ms=_ms(_figure(r"(?m)^\s*50%\s+(\S+)", output, "0us")),
        p99_ms=_ms(_figure(r"(?m)^\s*99%\s+(\S+)", output, "0us")),
        socket_errors=sum(counts),
        non_2xx=int(_figure(r"Non-2xx or 3xx responses: (\d+)", output)),
        requests=int(_figure(r"(\d+) requests in", output)),
        timeouts=counts[3],
    )


def take_turns(
    urls: dict[str, str], script: Path, seconds: int, rounds: int = 3
) -> dict[str, list[WrkResult]]:
    """wrk at 64 connections against each server in turn, `rounds` times over."""
    results: dict[str, list[WrkResult]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            results[name].append(wrk(url, connections=64, script=script, seconds=seconds))
    return results


def median_rps(runs: list[WrkResult]) -> float:
    """The median of the runs' requests per second."""
    return statistics.median(run.rps for run in runs)


def median_p99(runs: list[WrkResult]) -> float:
    """The median of the runs' p99 in ms."""
    return statistics.median(run.p99_ms for run in runs)


# -- servers ----------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Server:
    """A server process pinned to `cpus` (taskset execs it, so `pid` is the server's own)
    and listening on `port`; stopped with SIGTERM."""

    def __init__(
        self,
        command: list[str],
        port: int,
        *,
        log: Path | None = None,
        cpus: str = "0",
    ) -> None:
        self.port = port
        self.log = log
        with open(log or os.devnull, "wb") as stderr:
            self.process = subprocess.Popen(
                ["taskset", "-c", cpus, *command], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{command[0]} did not listen on {port}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The server's process ID."""
        return self.process.pid

    def url(self, scheme: str = "http") -> str:
        """Where it answers."""
        return f"{scheme}://{HOST}:{self.port}"

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait; its exit code, or None if it had to be killed."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


def client(port: int, *, tls: bool = False, timeout: float = 10.0) -> http.client.HTTPConnection:
    """An HTTP(S) connection to a server under test (taking the throwaway certificate)."""
    if not tls:
        return http.client.HTTPConnection(HOST, port, timeout=timeout)
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection(HOST, port, timeout=timeout, context=unverified)


def get(port: int, path: str, *, tls: bool = False, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a new connection: the status and the body."""
    connection = client(port, tls=tls, timeout=timeout)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def tls_arguments(work: Path) -> list[str]:
    """`--tls-cert CERT --tls-key KEY` of a throwaway P-256 certificate for 127.0.0.1."""
    cert, key = work / "tls-cert.pem", work / "tls-key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
            + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


# -- databases ----------------------------------------------------------------------------


def fresh(*paths: Path) -> None:
    """Remove database files and their WAL companions."""
    for path in paths:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def copy_database(source: Path, target: Path) -> Path:
    """A fresh copy of a database file (checkpointed, so the file is all of it)."""
    fresh(target)
    shutil.copyfile(source, target)
    return target


def build_database(
    path: Path,
    *,
    live: int,
    expired: int = 0,
    known: int = 0,
    label: str | None = None,
    scopes: str = "",
) -> list[str]:
    """A tokencli database (tokencli makes the schema; the rows go in by raw SQL, with no
    audit trail) with `live` + `expired` filler tokens carrying `label` and `scopes`, and
    `known` valid ones whose plaintexts are returned."""
    fresh(path)
    SQLiteStore.open(path, create=True).close()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("BEGIN")
    insert = (
        "INSERT OR IGNORE INTO tokens (id, secret_hash, label, created_at, expires_at,"
        " uses_left, ends_at, scopes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    plaintexts: list[str] = []
    rows: list[tuple[object, ...]] = []
    for _ in range(known):
        new = tokens.generate()
        plaintexts.append(new.plaintext)
        rows.append((new.id, new.secret_hash, "bench", NOW, NOW + 86_400, None, NOW + 86_400, ""))
    for index in range(live + expired):
        ends = NOW + 86_400 if index < live else NOW - 3_600
        # Creation times spread over two hours, so ORDER BY created_at sorts.
        created = NOW - 7_200 + index % 7_200
        rows.append((tokens.new_id(), os.urandom(32), label, created, ends, None, ends, scopes))
        if len(rows) >= 100_000:
            connection.executemany(insert, rows)
            rows = []
    connection.executemany(insert, rows)
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return plaintexts


def validate_script(folder: Path, known: list[str]) -> Path:
    """bench/validate.lua with its token list filled in: wrk cycles through `known`."""
    listing = folder / "tokens.txt"
    listing.write_text("\n".join(known) + "\n")
    script = folder / "validate.lua"
    script.write_text((HERE / "validate.lua").read_text().replace("TOKENS_FILE", str(listing)))
    return script


Group = Callable[[Bench], None]
