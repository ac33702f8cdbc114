"""tokencli's benchmarks, each against a floor measured in the same run.

Run through `bench/run`, which prepares the virtual environment:

    bench/run                  every group, about 17 minutes on a quiet machine
    bench/run http hostile     some groups (see GROUPS)
    bench/run hostile:ch       some hostile-client attacks only (keys a-i)

Every row is a ratio of medians taken minutes apart on the same machine, so the noise of
a shared host cancels out as far as it can; absolute numbers are printed for orientation
only. The rows go to stdout as one table and into bench/results/latest.json, followed by
the load average at the start of each group and how much CPU other work took while it
ran (common.CpuWatch): a group run beside someone else's test suite should be run again.
Before each group it waits (up to BENCH_QUIET_WAIT seconds, default 600) for other work to
stop taking more than a tenth of the machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common
from cli_rows import (
    bench_bulk_issue,
    bench_check_at_scale,
    bench_list,
    bench_purge,
    bench_startup,
)
from common import (
    ROWS,
    CpuWatch,
    load_average,
    note,
    print_table,
    quiet_enough,
    wait_for_quiet,
    write_results,
)
from hostile import bench_hostile
from http_rows import bench_http, bench_metrics, bench_tls
from pg_rows import bench_postgres

# Before each group, wait up to this long for other work on the machine to stop.
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "600"))

# Each group takes (tokencli, python, work folder, option after a colon).
GROUPS: dict[str, Callable[[str, str, Path, str], None]] = {
    "startup": lambda tokencli, python, work, _: bench_startup(tokencli, python, work),
    "bulk": lambda tokencli, python, work, _: bench_bulk_issue(tokencli, python, work),
    "purge": lambda tokencli, python, work, _: bench_purge(tokencli, python, work),
    "check": lambda tokencli, _python, work, _: bench_check_at_scale(tokencli, work),
    "list": lambda tokencli, python, work, _: bench_list(tokencli, python, work),
    "http": lambda tokencli, python, work, _: bench_http(tokencli, python, work),
    "tls": lambda tokencli, _python, work, _: bench_tls(tokencli, work),
    "metrics": lambda tokencli, _python, work, _: bench_metrics(tokencli, work),
    "postgres": lambda tokencli, python, work, _: bench_postgres(tokencli, python, work),
    "hostile": bench_hostile,
}


def main(argv: list[str]) -> int:
    """bench.py VENV [GROUP[:OPTION]...]; exits 1 if a row of this run missed its target."""
    venv = Path(argv[0]).resolve()
    tokencli, python = str(venv / "bin" / "tokencli"), str(venv / "bin" / "python")
    chosen = [word.partition(":") for word in argv[1:]] or [(name, "", "") for name in GROUPS]
    unknown = [name for name, _, _ in chosen if name not in GROUPS]
    if unknown:
        print(
            f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tokencli-bench-") as scratch:
        for name, _, option in chosen:
            waited, busy = wait_for_quiet(QUIET_WAIT)
            if busy > common.FOREIGN_LIMIT:
                note(f"{name}: still {busy:.2f} cores busy with other work after {waited:.0f} s")
            load = load_average()
            note(f"{name} (load average {load})")
            common.current_group, common.current_load = name, load
            first_row = len(ROWS)
            watch = CpuWatch()
            try:
                GROUPS[name](tokencli, python, Path(scratch), option)
            finally:
                seen = watch.stop()
                common.GROUP_LOADS.append({"group": name, "load_at_start": load, "watch": seen})
                for row in ROWS[first_row:]:
                    row.details["machine"] = {"load_at_start": load, **seen}
                verdict = "quiet" if quiet_enough(seen) else "SHARED: re-run this group"
                note(
                    f"{name}: {seen['seconds']:.0f} s; other work took"
                    f" {seen['foreign_cores']:.2f} cores, steal {seen['steal_cores']:.2f}:"
                    f" {verdict}"
                )
    elapsed = time.monotonic() - started
    print_table(elapsed)
    write_results([name for name, _, option in chosen if not option], elapsed)
    return 0 if all(row.met for row in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
