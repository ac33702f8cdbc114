"""The failover rows (issue 20), on the postgres group's cluster once its other rows are
done: what a synchronous standby costs in validations/s, and how long `serve` answers 503
when the primary dies and its standby is promoted.

The standby streams from the primary (pg_basebackup) and shares CPU 0 with it and the
server, as the replicas do in the other PostgreSQL rows; wrk has CPU 1.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
from harness import Bench, Server, WrkResult, free_port, note, wrk

from pg_cluster import PgCluster

STANDBY = "standby1"
PROBE_SECONDS = 0.01  # how often /health is asked during the failover
SETTLE_SECONDS = 30.0  # the longest the failover row waits for an answer again


def synchronous(primary: PgCluster, on: bool) -> None:
    """Make commits wait for the standby (`on`) or not, and wait until it is so."""
    names = STANDBY if on else ""
    wanted = "sync" if on else "async"
    with psycopg.connect(primary.url(), autocommit=True) as admin:
        admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        admin.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY,),
            ).fetchone()
            if row is not None and row[0] == wanted:
                return
            time.sleep(0.05)
    raise RuntimeError(f"the standby did not become {wanted}")


def failover(
    bench: Bench, primary: PgCluster, script: Path, place: Callable[[PgCluster], None]
) -> None:
    """Both rows; the primary is crashed by the second, so this runs last. `place` puts
    the standby's processes where the primary's are."""
    standby = PgCluster.standby(primary, STANDBY)
    try:
        place(standby)
        sync_cost(bench, primary, script)
        window(bench, primary, standby, script)
    finally:
        standby.stop()


def sync_cost(bench: Bench, primary: PgCluster, script: Path) -> None:
    """One server; asynchronous and synchronous replication by turns, three runs each."""
    runs: dict[bool, list[WrkResult]] = {False: [], True: []}
    port = free_port()
    server = Server(bench.serve(primary.url(), port), port)
    try:
        for _ in range(3):
            for on in (False, True):
                synchronous(primary, on)
                runs[on].append(
                    wrk(server.url(), connections=64, script=script, seconds=bench.wrk_seconds)
                )
    finally:
        server.stop()
    rps = {on: statistics.median(run.rps for run in each) for on, each in runs.items()}
    p99 = {on: statistics.median(run.p99_ms for run in each) for on, each in runs.items()}
    failed = sum(run.failures for each in runs.values() for run in each)
    ratio = rps[True] / rps[False]
    bench.table.record(
        "PostgreSQL validate with a synchronous standby (synchronous_commit = on)",
        f"{rps[True]:,.0f}/s, p99 {p99[True]:.1f} ms; costs {1 - ratio:.0%}",
        f"{rps[False]:,.0f}/s, p99 {p99[False]:.1f} ms (asynchronous standby, by turns)",
        ratio,
        "(reported) 0 failed",
        failed == 0,
        {"rps": {str(on): [run.rps for run in each] for on, each in runs.items()}},
    )


class Prober(threading.Thread):
    """Asks /health every PROBE_SECONDS and keeps (monotonic time, status) of each."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/health"
        self.seen: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(PROBE_SECONDS):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    status = answer.status
            except urllib.error.HTTPError as error:
                status = error.code
            except OSError:
                status = 0  # no answer at all: counted as down
            self.seen.append((time.monotonic(), status))

    def back_after(self, moment: float) -> float | None:
        """When /health first answered 200 again after a failure past `moment`."""
        failed = False
        for at, status in self.seen:
            if at < moment:
                continue
            if status != 200:
                failed = True
            elif failed:
                return at
        return None


def window(bench: Bench, primary: PgCluster, standby: PgCluster, script: Path) -> None:
    """Validations on a server given both hosts; crash the primary, promote the standby
    at once, and time /health's 503s."""
    synchronous(primary, True)
    both = f"{primary.url()},{standby.folder}&target_session_attrs=read-write"
    port = free_port()
    server = Server(bench.serve(both, port), port)
    prober = Prober(server.url())
    load: list[WrkResult] = []
    loader = threading.Thread(
        target=lambda: load.append(wrk(server.url(), connections=16, script=script, seconds=8)),
        daemon=True,
    )
    try:
        prober.start()
        loader.start()
        time.sleep(2)
        crashed = time.monotonic()
        primary.crash()
        standby.promote()
        promoted = time.monotonic()
        deadline = crashed + SETTLE_SECONDS
        while prober.back_after(crashed) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        loader.join(timeout=SETTLE_SECONDS)
    finally:
        prober.stopping.set()
        prober.join(timeout=5)
        code = server.stop()
    back = prober.back_after(crashed)
    after_crash = back - crashed if back is not None else None
    after_promotion = back - promoted if back is not None else None
    failed = [status for at, status in prober.seen if at >= crashed and status not in (200, 503)]
    shown = (
        f"503 for {after_crash:.2f} s from the crash, {max(after_promotion or 0, 0):.2f} s"
        f" after the promotion ({promoted - crashed:.2f} s)"
        if after_crash is not None
        else f"no 200 within {SETTLE_SECONDS:.0f} s"
    )
    note(f"failover: /health statuses other than 200 and 503 after the crash: {len(failed)}")
    bench.table.record(
        "PostgreSQL failover: primary crashed under validations, standby promoted at once",
        f"{shown}; exit {code}",
        f"{len(prober.seen)} probes of /health every {PROBE_SECONDS * 1000:.0f} ms",
        None,
        "answers again < 5 s after the promotion, only 200/503, exit 0",
        after_promotion is not None and after_promotion < 5 and not failed and code == 0,
        {"after_crash_s": after_crash, "after_promotion_s": after_promotion},
    )
