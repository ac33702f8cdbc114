"""Hostile clients: does `tokencli serve` keep serving well-behaved clients under attack?

Attacks a-i are the security review's (i was found building d); j, k and l are issue
18's shapes 5, 6 and 7, each with that issue's target. For each: a fresh server on CPU 0
on its own copy of a database, the attack and the measuring clients on CPU 1, the server's
memory (and for k its WAL) sampled every 100 ms, and afterwards: is it alive, does /health
answer a new client, what does SIGTERM make it exit with. docs/benchmarks.md has the method.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import resource
import select
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    Bench,
    Server,
    WrkResult,
    build_database,
    client,
    copy_database,
    free_port,
    fresh,
    get,
    note,
    tls_arguments,
    validate_script,
    wrk,
)

CONNECTIONS = 20  # the well-behaved client's wrk connections
FLOOD = 20_000  # connections of c, g and h, as the descriptor limit allows
MAX_RSS_MB = 150
MB = 1024 * 1024


@dataclass(frozen=True)
class Attack:
    """One row run by `attack`: bench/attackers.py processes started one after another."""

    key: str
    name: str
    clients: tuple[tuple[str, int], ...]  # (attack, connections or clients; 0: its default)
    ramp_seconds: float = 10.0  # how long they may take to reach full strength
    tls: bool = False  # against an HTTPS server, measured over HTTPS
    health_ms: float = 0.0  # issue 18's target (/health p99 under this), else the review's


def attacks() -> list[Attack]:
    """The review's attacks a-i, and issue 18's admin listing (j)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = max(100, (65536 if hard < 0 else hard) - 100)
    processes = min(4, math.ceil(FLOOD / per_process))
    each = min(per_process, math.ceil(FLOOD / processes))
    total = f"{processes * each:,}"
    return [
        Attack("a", "Content-Length of 4,301 zeros / 5,000 digits", (("content_length", 0),)),
        Attack("b", "20,000 nested [ in POST /app/token, 3 clients", (("deep_json", 3),)),
        Attack(
            "c",
            f"slowloris, {total} connections, 1 byte / 5 s",
            (("slowloris", each),) * processes,
            40,
        ),
        Attack("d", "5 clients pipelining, never reading (SO_RCVBUF 1 KiB)", (("no_read", 5),)),
        Attack(
            "e", "2 clients pipelining /health, reading 64 KiB / 10 ms", (("pipeline_flood", 2),)
        ),
        Attack(
            "f", "20 conns: 62 KB of headers, body 4 bytes at a time", (("cpu_amplification", 20),)
        ),
        Attack("g", f"{total} idle connections", (("connection_flood", each),) * processes, 40),
        Attack(
            "h",
            f"stalled TLS handshakes, {total} connections (half a ClientHello or nothing)",
            (("tls_stall", each),) * processes,
            40,
            tls=True,
        ),
        Attack(
            "i",
            "1,100 idle connections, then 1 client never reading",
            (("connection_flood", 1_100), ("no_read", 1)),
        ),
        Attack(
            "j",
            "admin list of 200k tokens, 8 conns x 4 pipelined, biggest page (issue 18.5)",
            (("admin_list", 8),),
            health_ms=100,
        ),
    ]


# -- watching the server and its clients -------------------------------------------------


class Sampler:
    """The server's VmRSS (and a WAL file's size) every 100 ms, in a thread."""

    def __init__(self, pid: int, wal: Path | None = None) -> None:
        self.pid, self.wal = pid, wal
        self.peak_kb = 0
        self.wal_sizes: list[tuple[float, int]] = []  # (monotonic time, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def status_kb(self, field: str) -> int:
        """A `kB` field of /proc/PID/status (0 once the process is gone)."""
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{self.pid}/status").read_text()
            match = re.search(rf"(?m)^{field}:\s+(\d+) kB", text)
            return int(match[1]) if match else 0
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, self.status_kb("VmRSS"))
            if self.wal is not None:
                size = self.wal.stat().st_size if self.wal.exists() else 0
                self.wal_sizes.append((time.monotonic(), size))

    def stop(self) -> float:
        """Stop sampling; the peak RSS in MB (the larger of the samples and VmHWM)."""
        peak = max(self.peak_kb, self.status_kb("VmHWM"))
        self._stop.set()
        self._thread.join(timeout=2)
        return peak / 1024


class Probe:
    """GET `paths` in turn, one every 100 ms on one keep-alive connection, from a thread
    on CPU 1. wrk never counts a request still waiting when its run ends, and times from
    sending; here each request counts from when it was due, and those due while one waited
    count as waiting until it ended (no coordinated omission). After `timeout` without an
    answer a request counts as failed and the connection is opened anew."""

    def __init__(
        self, port: int, paths: list[str], *, tls: bool = False, timeout: float = 5.0
    ) -> None:
        self.port, self.paths, self.tls, self.timeout = port, paths, tls, timeout
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {1})  # this thread only: CPU 0 is the server's
        connection = None
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            if connection is None:
                connection = client(self.port, tls=self.tls, timeout=self.timeout)
            try:
                connection.request("GET", self.paths[len(self.latencies) % len(self.paths)])
                answer = connection.getresponse()
                answer.read()
                status = str(answer.status)
            except Exception as error:  # OSError, HTTPException: a failed request
                status = type(error).__name__
                connection.close()
                connection = None
            finished = time.monotonic()
            self.statuses[status] += 1
            while due <= finished:  # this request and those due while it waited
                self.latencies.append(finished - due)
                due += 0.1
        if connection is not None:
            connection.close()

    def stop(self) -> dict[str, Any]:
        """Stop; the requests, p99 and worst latency in ms, and the answers by status."""
        self._stop.set()
        self._thread.join(timeout=self.timeout + 2)
        ordered = sorted(self.latencies) or [math.inf]
        p99 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]
        return {
            "requests": sum(self.statuses.values()),
            "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1),
            "statuses": dict(self.statuses),
            "failed": sum(n for status, n in self.statuses.items() if not status.startswith("2")),
        }


class Attackers:
    """bench/attackers.py processes on CPU 1, each in its own session (stopping one takes
    all of it); a context manager, so they end even if the harness fails."""

    def __init__(self, python: str, port: int, seconds: float) -> None:
        self.command = ["taskset", "-c", "1", python, str(HERE / "attackers.py")]
        self.port, self.seconds = port, seconds
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, attack: str, count: int, deadline: float) -> bool:
        """Start one; whether it said it is at full strength before `deadline`."""
        arguments = [attack, str(self.port), f"{self.seconds:.0f}", str(count)]
        process = subprocess.Popen(
            [*self.command, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        waited = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        return '"ready"' in (process.stdout.readline() if waited[0] else "")

    def stop(self) -> list[Any]:
        """SIGTERM each (SIGKILL after 15 s); what each said it did."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        said: list[Any] = []
        for process in self.processes:
            try:
                lines = process.communicate(timeout=15)[0].splitlines()
            except subprocess.TimeoutExpired:
                self.__exit__()
                lines = process.communicate()[0].splitlines()
            said.append(
                json.loads(lines[-1])["done"] if lines and '"done"' in lines[-1] else "lost"
            )
        return said

    def __enter__(self) -> Attackers:
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@dataclass
class Watched:
    """A server under attack, sampled; `finish` says how it came out of it."""

    server: Server
    sampler: Sampler
    tls: bool = False

    def finish(self) -> dict[str, Any]:
        """After the attack: alive? /health from a new client, SIGTERM's exit code, the
        peak RSS and the exception its tracebacks ended with, if any."""
        time.sleep(1.0)  # let the server see the attackers' resets
        alive = self.server.process.poll() is None
        after = "exited"
        if alive:
            try:
                after = str(get(self.server.port, "/health", tls=self.tls, timeout=5.0)[0])
            except Exception as error:  # OSError, HTTPException: it did not answer
                after = type(error).__name__
        peak = self.sampler.stop()
        code = self.server.stop()
        log = self.server.log.read_text(errors="replace") if self.server.log else ""
        raised = re.findall(r"(?m)^[A-Z]\w*(?:Error|Exception)\b.*", log.partition("Traceback")[2])
        shown = f"/health {after}, SIGTERM exit {'killed' if code is None else code}"
        return {
            "healthy": alive and after == "200" and code == 0,
            "afterwards": shown if alive else f"exited by itself ({code})",
            "peak_mb": round(peak, 1),
            "server_exception": raised[-1][:160] if raised else "",
        }


def watch(bench: Bench, key: str, base: Path, *, tls: bool = False, wal: bool = False) -> Watched:
    """A fresh server on a copy of `base`, its stderr kept, its memory (and WAL) sampled."""
    db = copy_database(base, bench.work / f"hostile-{key}.db")
    port = free_port()
    extra = tls_arguments(bench.work) if tls else []
    server = Server(bench.serve(db, port, *extra), port, log=bench.work / f"hostile-{key}.log")
    return Watched(server, Sampler(server.pid, Path(f"{db}-wal") if wal else None), tls)


def well_behaved(
    bench: Bench, port: int, script: Path, tls: bool
) -> tuple[dict[str, WrkResult], dict[str, Any]]:
    """wrk on /health, then on validations, with the probe on /health beside both."""
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    probe = Probe(port, ["/health"], tls=tls)
    try:
        health = wrk(f"{url}/health", connections=CONNECTIONS, seconds=bench.wrk_seconds)
        validate = wrk(url, connections=CONNECTIONS, script=script, seconds=bench.wrk_seconds)
    finally:
        probed = probe.stop()
    return {"health": health, "validate": validate}, probed


def tail_ms(result: WrkResult) -> float:
    """wrk's p99, or infinity when over 1 % of requests timed out (wrk leaves those out)."""
    attempted = result.requests + result.timeouts
    return math.inf if attempted == 0 or result.timeouts > attempted / 100 else result.p99_ms


def shown_ms(milliseconds: float, probe: dict[str, Any]) -> str:
    """A p99 for the table: a probe that gave up says the stall was at least its timeout."""
    if any(not status.isdigit() for status in probe["statuses"]):
        return f">= {probe['max_ms'] / 1000:.0f} s (probe failed)"
    return "> 2 s (wrk timeouts)" if math.isinf(milliseconds) else f"{milliseconds:,.0f} ms"


# -- the rows ------------------------------------------------------------------------------


def attack(bench: Bench, plan: Attack, base: Path, script: Path) -> None:
    """One attack of bench/attackers.py, start to finish, and its row."""
    watched = watch(bench, plan.key, base, tls=plan.tls)
    port = watched.server.port
    try:
        before, _ = well_behaved(bench, port, script, plan.tls)
        with Attackers(
            bench.python, port, plan.ramp_seconds + 2 * bench.wrk_seconds + 20
        ) as attackers:
            ramp_ends = time.monotonic() + plan.ramp_seconds
            ready = [attackers.start(name, count, ramp_ends) for name, count in plan.clients]
            during, probe = well_behaved(bench, port, script, plan.tls)
            summaries = attackers.stop()
    finally:
        outcome = watched.finish()
    ratios = {name: during[name].good_rps / max(before[name].good_rps, 1e-9) for name in before}
    failed = sum(run.failures - run.timeouts for run in during.values()) + probe["failed"]
    peak = outcome["peak_mb"]
    if plan.health_ms:  # issue 18's: the /health tail and memory
        tail = max(tail_ms(during["health"]), probe["p99_ms"])
        target = f"/health p99 < {plan.health_ms:.0f} ms, < {MAX_RSS_MB} MB, alive, exit 0"
        met = tail < plan.health_ms and peak < MAX_RSS_MB and outcome["healthy"]
    else:
        tail = max([tail_ms(run) for run in during.values()] + [probe["p99_ms"]])
        target = f">= 0.5x, p99 < 1 s, 0 failed, < {MAX_RSS_MB} MB, alive, exit 0"
        bounded = tail < 1000 and failed == 0 and peak < MAX_RSS_MB
        met = min(ratios.values()) >= 0.5 and bounded and outcome["healthy"]
    rates = {
        when: " + ".join(f"{run.good_rps:,.0f}" for run in runs.values())
        for when, runs in (("before", before), ("during", during))
    }
    bench.table.record(
        f"hostile {plan.key}: {plan.name}",
        f"{rates['during']}/s, p99 {shown_ms(tail, probe)}, {failed:,} failed, {peak:.0f} MB;"
        f" {outcome['afterwards']}",
        f"{rates['before']}/s unloaded (/health + validations)",
        min(ratios.values()),
        target,
        met and all(ready),
        {
            "unloaded": {name: asdict(run) for name, run in before.items()},
            "loaded": {name: asdict(run) for name, run in during.items()},
            "probe": probe,
            "ready": ready,
            "attackers": summaries,
            **outcome,
        },
    )


def slow_reader(bench: Bench, base: Path, script: Path) -> None:
    """(k) `tokencli list` (200k tokens) into a reader taking 1 KB every 10 ms, while
    wrk validates; then the reader exits and validations go on for 5 s more."""
    watched = watch(bench, "k", base, wal=True)
    server = watched.server
    db = bench.work / "hostile-k.db"
    listing = subprocess.Popen(
        ["taskset", "-c", "1", bench.tokencli, "--db", str(db), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    pipe = listing.stdout
    assert pipe is not None
    reading = threading.Event()
    received = [0]

    def read_slowly() -> None:
        while not reading.is_set() and (chunk := os.read(pipe.fileno(), 1024)):
            received[0] += len(chunk)
            time.sleep(0.01)

    reader = threading.Thread(target=read_slowly, daemon=True)
    try:
        reader.start()
        time.sleep(1.0)
        started = time.monotonic()
        during = wrk(
            server.url(), connections=CONNECTIONS, script=script, seconds=bench.wrk_seconds
        )
        still_listing = listing.poll() is None
        reading.set()
        reader.join(timeout=5)
        pipe.close()
        exited = time.monotonic()
        after = wrk(server.url(), connections=CONNECTIONS, script=script, seconds=5)
    finally:
        reading.set()
        with contextlib.suppress(subprocess.TimeoutExpired):
            listing.wait(timeout=10)
        listing.kill()
        listing.wait()
        outcome = watched.finish()
    samples = watched.sampler.wal_sizes
    peak = max((size for at, size in samples if started <= at <= exited), default=0) / MB
    later = [(at - exited, size / MB) for at, size in samples if exited < at <= exited + 5.5]
    back = next((seconds for seconds, size in later if size < 8), None)
    last = later[-1][1] if later else math.nan
    shown = f"under 8 MB after {back:.1f} s" if back is not None else f"{last:.0f} MB after 5 s"
    bench.table.record(
        "hostile k: slow reader, `tokencli list` read 1 KB / 10 ms under validations (issue 18.6)",
        f"WAL peak {peak:.0f} MB during, {shown}; {during.good_rps:,.0f} validations/s,"
        f" {during.failures} failed; list {'still running' if still_listing else 'had ended'}"
        f" when the reader left; {outcome['peak_mb']:.0f} MB; {outcome['afterwards']}",
        f"{received[0] / 1024:,.0f} KB read",
        None,
        "WAL < 64 MB during, < 8 MB within 5 s after, alive, exit 0",
        peak < 64 and back is not None and outcome["healthy"] and still_listing,
        {"during": asdict(during), "after": asdict(after), "wal_after_mb": later, **outcome},
    )


def long_import(bench: Bench, base: Path, known: list[str], export: Path) -> None:
    """(l) `tokencli import` of 450k tokens into the served database, while one probe
    asks /health and two ask validations, each every 100 ms."""
    watched = watch(bench, "l", base)
    port = watched.server.port
    db = bench.work / "hostile-l.db"
    valid = [f"/app/valid/{token}" for token in known[:100]]
    health = Probe(port, ["/health"])
    validations = [Probe(port, valid, timeout=30.0) for _ in range(2)]
    started = time.monotonic()
    try:
        with export.open("rb") as source:
            done = subprocess.run(
                ["taskset", "-c", "1", bench.tokencli, "--db", str(db), "import"],
                stdin=source,
                capture_output=True,
                timeout=600,
            )
        seconds = time.monotonic() - started
    finally:
        probed = health.stop()
        checks = [probe.stop() for probe in validations]
        outcome = watched.finish()
    statuses = sum((Counter(check["statuses"]) for check in checks), Counter[str]())
    waited = max(check["max_ms"] for check in checks) / 1000
    answers = ", ".join(f"{n:,} {status}" for status, n in sorted(statuses.items()))
    bench.table.record(
        "hostile l: `tokencli import` of 450k tokens beside the server (issue 18.7)",
        f"/health p99 {shown_ms(probed['p99_ms'], probed)}, {probed['failed']} failed;"
        f" validations: {answers} (longest wait {waited:.1f} s); import {seconds:.0f} s,"
        f" exit {done.returncode}; {outcome['afterwards']}",
        f"{probed['requests']:,} /health asked",
        None,
        "/health p99 < 100 ms, 0 /health failed, alive, exit 0",
        probed["p99_ms"] < 100
        and probed["failed"] == 0
        and outcome["healthy"]
        and done.returncode == 0,
        {"health": probed, "validations": checks, "import": done.stderr.decode()[-500:], **outcome},
    )


def hostile(bench: Bench) -> None:
    """Every attack, or those whose keys are in the option (`hostile:cgj`): a row each."""
    plans = {plan.key: plan for plan in attacks()}
    base, big = bench.work / "hostile-base.db", bench.work / "hostile-200k.db"
    known = build_database(base, live=0, known=1_000)
    script = validate_script(bench.work, known)

    @functools.cache
    def big_script() -> Path:  # 200,000 tokens for j and k, made once
        (bench.work / "big").mkdir(exist_ok=True)
        return validate_script(bench.work / "big", build_database(big, live=200_000, known=1_000))

    for key in bench.option or "abcdefghijkl":
        note(f"hostile {key}")
        try:
            if key == "k":
                slow_reader(bench, big, big_script())
            elif key == "l":
                long_import(bench, base, known, export_of(bench, 450_000))
            elif plans[key].health_ms:
                attack(bench, plans[key], big, big_script())
            else:
                attack(bench, plans[key], base, script)
        except Exception as error:  # one broken attack must not cost the other rows
            bench.table.failed(f"hostile {key}", error)
    fresh(base, big)


def export_of(bench: Bench, count: int) -> Path:
    """`tokencli export` of a database of `count` tokens (made once per run)."""
    export = bench.work / f"export-{count}.jsonl"
    if not export.exists():
        source = bench.work / "export-source.db"
        build_database(source, live=count)
        with export.open("wb") as out:
            subprocess.run([bench.tokencli, "--db", str(source), "export"], stdout=out, check=True)
        fresh(source)
    return export
