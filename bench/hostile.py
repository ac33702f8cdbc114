"""Hostile clients: does `tokencli serve` keep serving well-behaved clients under attack?

For each attack: a fresh server on CPU 0 (its own copy of a database with 1,000 known
tokens); wrk on CPU 1 measures a well-behaved client unloaded (`-t1 -c20 -d10s` on
/health, then on validations as bench/validate.lua sends them), with a latency probe
beside it (one GET /health every 100 ms, see LatencyProbe); the attack starts
(bench/attackers.py, in its own processes on CPU 1) and the same runs are measured
during it. Meanwhile the server's VmRSS is sampled every 100 ms. After the attack: is the
process alive, does /health answer a new client, and what does SIGTERM make it exit with.

Targets per attack: loaded/unloaded 2xx throughput >= 0.5 (the worse of /health and
validation), loaded p99 < 1 s (the worse of wrk's and the probe's), peak RSS < 150 MB, no
failed legitimate request, alive and answering /health afterwards, exit 0 on SIGTERM.
Every attack is bounded in time and count, and sends to 127.0.0.1 only.

Attacks a-h are the security review's; i was found while building d. Attack h runs
against an HTTPS server (a throwaway certificate), and its well-behaved client, probe and
checks speak HTTPS too. Run alone: `bench/run hostile`, or `bench/run hostile:ch` for
some attacks only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import queue
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from common import (
    HERE,
    HOST,
    WRK_SECONDS,
    Background,
    WrkResult,
    build_database,
    free_port,
    fresh,
    note,
    record,
    serve_command,
    tls_arguments,
    validate_script,
    wrk,
)

CONNECTIONS = 20  # the well-behaved client's wrk connections
FLOOD_CONNECTIONS = 20_000  # slowloris, the idle flood and stalled TLS, as descriptors allow
MAX_RSS_MB = 150
MIN_RATIO = 0.5
MAX_P99_MS = 1000
# The last line of a traceback ("ValueError: ..."), not the server's own messages after it.
EXCEPTION_LINE = re.compile(r"[A-Z]\w*(Error|Exception|Exit|Interrupt)\b")


@dataclass(frozen=True)
class Attack:
    """One row: which bench/attackers.py processes to start, in order."""

    key: str
    name: str
    # (attack, count) per process, each started once the one before is at full strength;
    # count is connections or clients (0: the attack's default)
    clients: tuple[tuple[str, int], ...]
    ramp_seconds: float = 10.0  # how long they may take to reach full strength
    tls: bool = False  # against an HTTPS server (and a well-behaved HTTPS client)


def flood_plan() -> tuple[int, int]:
    """(processes, connections each) for FLOOD_CONNECTIONS within each process's
    descriptor limit; at most 4 processes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 65536 if hard == resource.RLIM_INFINITY else hard
    per_process = max(100, limit - 100)  # headroom for the interpreter's own files
    processes = min(4, math.ceil(FLOOD_CONNECTIONS / per_process))
    return processes, min(per_process, math.ceil(FLOOD_CONNECTIONS / processes))


def attacks() -> list[Attack]:
    """The review's attacks, and one more (i)."""
    processes, each = flood_plan()
    total = processes * each
    return [
        Attack("a", "Content-Length of 4,301 zeros / 5,000 digits", (("content_length", 0),)),
        Attack("b", "20,000 nested [ in POST /app/token, 3 clients", (("deep_json", 3),)),
        Attack(
            "c",
            f"slowloris, {total:,} connections, 1 byte / 5 s",
            (("slowloris", each),) * processes,
            ramp_seconds=40.0,
        ),
        Attack("d", "5 clients pipelining, never reading (SO_RCVBUF 1 KiB)", (("no_read", 5),)),
        Attack(
            "e",
            "2 clients pipelining /health, reading 64 KiB / 10 ms",
            (("pipeline_flood", 2),),
        ),
        Attack(
            "f",
            "20 conns: 62 KB of headers, body 4 bytes at a time",
            (("cpu_amplification", 20),),
        ),
        Attack(
            "g",
            f"{total:,} idle connections",
            (("connection_flood", each),) * processes,
            ramp_seconds=40.0,
        ),
        Attack(
            "h",
            f"stalled TLS handshakes, {total:,} connections (half a ClientHello or nothing)",
            (("tls_stall", each),) * processes,
            ramp_seconds=40.0,
            tls=True,
        ),
        # Found while building (d): past descriptor 1023, select.select() in the server's
        # send path raises ValueError, so one client that never reads ends the event loop.
        Attack(
            "i",
            "1,100 idle connections, then 1 client never reading",
            (("connection_flood", 1_100), ("no_read", 1)),
        ),
    ]


# -- watching the server ---------------------------------------------------------------


class MemorySampler:
    """Samples a process's VmRSS every 100 ms in a thread and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def status_kb(self, field: str) -> int | None:
        """A `kB` field of /proc/PID/status, or None once the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self.status_kb("VmRSS")
            if rss is not None:
                self.peak_kb = max(self.peak_kb, rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def unverified_context() -> ssl.SSLContext:
    """A client context that takes the throwaway certificate without checking it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def new_connection(port: int, timeout: float, tls: bool) -> http.client.HTTPConnection:
    """An HTTP or HTTPS client connection to the server under test (opened lazily)."""
    if tls:
        return http.client.HTTPSConnection(
            HOST, port, timeout=timeout, context=unverified_context()
        )
    return http.client.HTTPConnection(HOST, port, timeout=timeout)


def probe_health(port: int, timeout: float, tls: bool = False) -> tuple[str, float]:
    """GET /health from a new connection: its status (or what failed) and seconds taken."""
    started = time.monotonic()
    connection = new_connection(port, timeout, tls)
    try:
        connection.request("GET", "/health")
        status = str(connection.getresponse().status)
    except TimeoutError:
        status = "timeout"
    except ConnectionRefusedError:
        status = "refused"
    except (OSError, http.client.HTTPException) as error:
        status = type(error).__name__
    finally:
        connection.close()
    return status, time.monotonic() - started


class LatencyProbe:
    """GET /health every 100 ms on one keep-alive connection, from a thread on CPU 1.

    wrk cannot see a stall: a request still waiting when its run ends is never counted,
    so a server frozen for 10 s at a time showed a p99 of 25 ms. Here each request's
    latency counts from when it was due, not from when it could be sent, and the requests
    that fell due while one waited are counted as waiting until it ended, so a stall
    weighs as much as it would on a steady stream of clients (no coordinated omission).
    A request with no answer after 5 s counts until then; the connection is opened anew.
    """

    INTERVAL = 0.1
    TIMEOUT = 5.0

    def __init__(self, port: int, tls: bool = False) -> None:
        self.port = port
        self.tls = tls
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {1})  # this thread only: CPU 0 is the server's
        connection: http.client.HTTPConnection | None = None
        due = time.monotonic()
        while not self._stop.is_set():
            self._stop.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                break
            if connection is None:
                connection = new_connection(self.port, self.TIMEOUT, self.tls)
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as error:
                status = type(error).__name__
                connection.close()
                connection = None
            finished = time.monotonic()
            self.latencies.append(finished - due)
            if status != "200":
                self.failures[status] = self.failures.get(status, 0) + 1
            due += self.INTERVAL
            while due < finished:
                # The requests due while this one waited would have waited until now too.
                self.latencies.append(finished - due)
                due += self.INTERVAL
        if connection is not None:
            connection.close()

    def stop(self) -> dict[str, Any]:
        """Stop probing; the p99 and worst latency in ms, and the failures by kind."""
        self._stop.set()
        self._thread.join(timeout=self.TIMEOUT + 2)
        ordered = sorted(self.latencies) or [math.inf]
        p99 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]
        return {
            "requests": len(self.latencies),
            "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1),
            "failures": self.failures,
        }


def server_exception(log: Path) -> str:
    """The exception the server's tracebacks end with (the last of a chain), if any."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    found = ""
    seen_traceback = False
    for line in lines:
        if line.startswith("Traceback"):
            seen_traceback = True
        elif seen_traceback and EXCEPTION_LINE.match(line):
            found = line[:160]
    return found


class Attackers:
    """The attacking processes on CPU 1, each in its own session so that stopping
    takes all of it; a context manager, so they end even if the harness fails."""

    def __init__(self, python: str, port: int, seconds: float) -> None:
        self.python = python
        self.port = port
        self.seconds = seconds
        self.lines: queue.SimpleQueue[tuple[int, dict[str, Any]]] = queue.SimpleQueue()
        self.processes: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []
        self.ready: dict[int, dict[str, Any]] = {}
        self.done: dict[int, dict[str, Any]] = {}

    def start(self, attack: str, count: int, timeout: float) -> bool:
        """Start one attacking process; wait until it is at full strength (True) or has
        ended or `timeout` has passed (False)."""
        index = len(self.processes)
        process = subprocess.Popen(
            ["taskset", "-c", "1", self.python, str(HERE / "attackers.py"), attack]
            + [str(self.port), f"{self.seconds:.0f}", str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        reader = threading.Thread(target=self._read, args=(index, process), daemon=True)
        reader.start()
        self.readers.append(reader)
        deadline = time.monotonic() + timeout
        while index not in self.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not reader.is_alive() and self.lines.empty()):
                return False
            with contextlib.suppress(queue.Empty):
                self._collect(min(remaining, 0.5))
        return True

    def _read(self, index: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put((index, json.loads(line)))

    def _collect(self, timeout: float) -> None:
        index, message = self.lines.get(timeout=timeout)
        if "ready" in message:
            self.ready[index] = message["ready"]
        if "done" in message:
            self.done[index] = message["done"]

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM every attacker, SIGKILL what is left after 15 s; their summaries."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(queue.Empty):
            while True:
                self._collect(0.5)  # the reader threads may still hold the last lines
        return [self.done.get(index, {"lost": True}) for index in range(len(self.processes))]

    def __enter__(self) -> Attackers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# -- measuring -------------------------------------------------------------------------


def well_behaved(
    port: int, script: Path, tls: bool = False
) -> tuple[dict[str, WrkResult], dict[str, Any]]:
    """The well-behaved client: wrk on /health, then on validations, with the latency
    probe running beside both."""
    url = f"{'https' if tls else 'http'}://{HOST}:{port}"
    probe = LatencyProbe(port, tls)
    try:
        results = {
            "health": wrk(f"{url}/health", connections=CONNECTIONS),
            "validate": wrk(url, connections=CONNECTIONS, script=script),
        }
    finally:
        probed = probe.stop()
    return results, probed


def good_rps(result: WrkResult) -> float:
    """Requests per second that got a 2xx answer."""
    if result.requests == 0:
        return 0.0
    return result.rps * (result.requests - result.non_2xx) / result.requests


def tail_ms(result: WrkResult) -> float:
    """wrk's p99, or infinity when more than 1 % of the requests timed out (wrk leaves
    those out of its latencies, so its p99 would then flatter the server)."""
    attempted = result.requests + result.timeouts
    if attempted == 0 or result.timeouts > attempted / 100:
        return math.inf
    return result.p99_ms


def failed_requests(result: WrkResult) -> int:
    """Legitimate requests that got an error answer or a broken connection."""
    return result.non_2xx + result.socket_errors - result.timeouts


def run_attack(attack: Attack, tokencli: str, python: str, base: Path, script: Path) -> None:
    """One attack, start to finish, and its row."""
    work = base.parent
    db = work / f"hostile-{attack.key}.db"
    fresh(db)
    shutil.copy(base, db)
    log = work / f"hostile-{attack.key}.log"
    port = free_port()
    note(f"hostile {attack.key}: {attack.name}")
    extra = tls_arguments(work) if attack.tls else []
    server = Background(serve_command(tokencli, db, port, *extra), port, log=log)
    sampler = MemorySampler(server.pid)
    exit_code: int | None = None
    try:
        before, probe_before = well_behaved(port, script, attack.tls)
        # Long enough for the ramp and both loaded runs; stop() normally ends it sooner.
        bound = attack.ramp_seconds + 2 * WRK_SECONDS + 20
        with Attackers(python, port, bound) as attackers:
            ramp_ends = time.monotonic() + attack.ramp_seconds
            ready = [
                attackers.start(name, count, ramp_ends - time.monotonic())
                for name, count in attack.clients
            ]
            during, probe_during = well_behaved(port, script, attack.tls)
            probe, probe_seconds = probe_health(port, 3.0, attack.tls)
            summaries = attackers.stop()
        time.sleep(1.0)  # let the server see the attackers' resets
        alive_after = server.alive()
        after, _ = probe_health(port, 5.0, attack.tls) if alive_after else ("exited", 0.0)
        hwm_kb = sampler.status_kb("VmHWM") or 0
    finally:
        sampler.stop()
        exited_alone = not server.alive()
        exit_code = server.stop()
    crash = server_exception(log)
    fresh(db)

    ratios = {name: good_rps(during[name]) / max(good_rps(before[name]), 1e-9) for name in before}
    ratio = min(ratios.values())
    tail = max([tail_ms(result) for result in during.values()] + [probe_during["p99_ms"]])
    failed = sum(failed_requests(result) for result in during.values())
    failed += sum(probe_during["failures"].values())
    peak_mb = max(sampler.peak_kb, hwm_kb) / 1024
    healthy_after = alive_after and after == "200"
    met = (
        ratio >= MIN_RATIO
        and tail < MAX_P99_MS
        and failed == 0
        and peak_mb < MAX_RSS_MB
        and healthy_after
        and exit_code == 0
        and not exited_alone
    )
    if any(result.refused for result in during.values()):
        shown_tail = "- (refused)"
    elif any(result.requests == 0 for result in during.values()):
        shown_tail = "- (no answer)"
    elif "TimeoutError" in probe_during["failures"]:
        shown_tail = ">= 5 s"  # the probe gave up waiting at 5 s, so the stall was longer
    elif math.isinf(tail):
        shown_tail = "> 2 s"
    else:
        shown_tail = f"{tail:,.0f} ms"
    if exited_alone:
        afterwards = f"exited by itself ({exit_code})"
    else:
        afterwards = f"/health {after}, SIGTERM exit {'killed' if exit_code is None else exit_code}"
    record(
        f"hostile {attack.key}: {attack.name}",
        f"{good_rps(during['health']):,.0f} + {good_rps(during['validate']):,.0f}/s,"
        f" p99 {shown_tail}, {failed:,} failed, {peak_mb:.0f} MB; {afterwards}",
        f"{good_rps(before['health']):,.0f} + {good_rps(before['validate']):,.0f}/s unloaded",
        ratio,
        f">= {MIN_RATIO}x, p99 < 1 s, < {MAX_RSS_MB} MB, alive, exit 0",
        met,
        {
            "unloaded": {name: asdict(result) for name, result in before.items()},
            "loaded": {name: asdict(result) for name, result in during.items()},
            "probe_unloaded": probe_before,
            "probe_loaded": probe_during,
            "ratios": ratios,
            "ready": ready,
            "ready_reports": attackers.ready,
            "attackers": summaries,
            "new_client_during": {"status": probe, "seconds": round(probe_seconds, 3)},
            "peak_rss_sampled_mb": round(sampler.peak_kb / 1024, 1),
            "vm_hwm_mb": round(hwm_kb / 1024, 1),
            "alive_after": alive_after,
            "health_after": after,
            "exited_by_itself": exited_alone,
            "exit_code": exit_code,
            "server_exception": crash,
        },
    )
    if crash:
        note(f"hostile {attack.key}: the server wrote {crash}")


def bench_hostile(tokencli: str, python: str, work: Path, only: str = "") -> None:
    """Every attack (or those whose keys are in `only`, e.g. "cg"), one row each."""
    base = work / "hostile-base.db"
    known = build_database(base, live=0, expired=0, known=1_000)
    script = validate_script(work, known)
    for attack in attacks():
        if only and attack.key not in only:
            continue
        try:
            run_attack(attack, tokencli, python, base, script)
        except Exception as error:  # one broken attack must not cost the other rows
            record(
                f"hostile {attack.key}: {attack.name}",
                f"harness error: {type(error).__name__}: {error}",
                "-",
                None,
                "(the run itself failed)",
                False,
            )
    fresh(base)


if __name__ == "__main__":
    # Alone: python bench/hostile.py VENV [KEYS]; bench/run hostile does the same.
    import bench

    sys.exit(
        bench.main([sys.argv[1], "hostile" + (f":{sys.argv[2]}" if len(sys.argv) > 2 else "")])
    )
