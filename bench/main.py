"""tokencli's benchmarks, each against a floor measured in the same run; run through
`bench/run`, which prepares bench/.venv:

    bench/run                  every group (about 20 minutes on a quiet machine)
    bench/run http hostile     some groups (GROUPS below)
    bench/run hostile:cj       some hostile attacks only, by key (a-l)

Rows are ratios of medians taken minutes apart on the same machine, so a shared host's
noise cancels as far as it can. The table goes to stdout and bench/results/latest.json,
with how busy other work kept the machine during each group (docs/benchmarks.md, Method).
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# tests/pg_cluster.py: the PostgreSQL cluster the tests and the postgres rows share.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

import cli_rows
import hostile
import http_rows
import pg_rows
from harness import Bench, CpuWatch, Group, Table, load_average, note, quietness, wait_for_quiet

GROUPS: dict[str, Group] = {
    "startup": cli_rows.startup,
    "bulk": cli_rows.bulk_issue,
    "purge": cli_rows.purge,
    "check": cli_rows.check_at_scale,
    "list": cli_rows.list_at_scale,
    "http": http_rows.http,
    "tls": http_rows.https,
    "metrics": http_rows.metrics,
    "postgres": pg_rows.postgres,
    "hostile": hostile.hostile,
}


def main(argv: list[str]) -> int:
    """main.py VENV [GROUP[:OPTION]...]; exit 1 if a row of this run missed its target."""
    venv = Path(argv[0]).resolve()
    chosen = [word.partition(":")[::2] for word in argv[1:]] or [(name, "") for name in GROUPS]
    unknown = [name for name, _ in chosen if name not in GROUPS]
    if unknown:
        print(
            f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            file=sys.stderr,
        )
        return 2
    # A subreaper adopts what its children daemonise (PostgreSQL under pg_ctl), so that
    # CPU stays the benchmark's own rather than counting as other people's work.
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    # tokencli as its command line configures it: no key, schema or database from outside.
    for name in [name for name in os.environ if name.startswith("TOKENCLI_")]:
        del os.environ[name]
    quiet_wait = float(os.environ.get("BENCH_QUIET_WAIT", "600"))
    table, started = Table(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tokencli-bench-") as scratch:
        tokencli, python = (str(venv / "bin" / name) for name in ("tokencli", "python"))
        seconds = int(os.environ.get("BENCH_WRK_SECONDS", "10"))  # shorter: a trial only
        bench = Bench(tokencli, python, Path(scratch), table, wrk_seconds=seconds)
        for name, option in chosen:
            busy = wait_for_quiet(quiet_wait)
            table.group, table.load = name, load_average()
            note(f"{name} (load average {table.load}; other work {busy:.2f} cores)")
            watch = CpuWatch()
            try:
                GROUPS[name](replace(bench, option=option))
            except Exception as error:  # a group that breaks still leaves the others' rows
                table.failed(f"{name} group", error)
            finally:
                seen = watch.stop()
                table.groups.append({"group": name, "load": table.load, "watch": seen})
                others = f"other work {seen['foreign_cores']:.2f} cores"
                note(f"{name}: {seen['seconds']:.0f} s, {others}: {quietness(seen)}")
    elapsed = time.monotonic() - started
    table.print(elapsed)
    table.save([name for name, option in chosen if not option], elapsed)
    return 0 if all(row.met is not False for row in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
