"""tokencli's benchmarks, each against a floor measured in the same run.

Run through `bench/run`, which prepares the virtual environment:

    bench/run                  every group, about 9 minutes
    bench/run http hostile     some groups: startup, bulk, purge, check, http, hostile
    bench/run hostile:cg       some hostile-client attacks only (keys a-i)

Every row is a ratio of medians taken minutes apart on the same machine, so the noise of
a shared host cancels out as far as it can; absolute numbers are printed for orientation
only. The rows go to stdout as one table and into bench/results/latest.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common
from cli_rows import bench_bulk_issue, bench_check_at_scale, bench_purge, bench_startup
from common import ROWS, note, print_table, write_results
from hostile import bench_hostile
from http_rows import bench_http

# Each group takes (tokencli, python, work folder, option after a colon).
GROUPS: dict[str, Callable[[str, str, Path, str], None]] = {
    "startup": lambda tokencli, python, work, _: bench_startup(tokencli, python, work),
    "bulk": lambda tokencli, python, work, _: bench_bulk_issue(tokencli, python, work),
    "purge": lambda tokencli, python, work, _: bench_purge(tokencli, python, work),
    "check": lambda tokencli, _python, work, _: bench_check_at_scale(tokencli, work),
    "http": lambda tokencli, python, work, _: bench_http(tokencli, python, work),
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
            note(name)
            common.current_group = name
            GROUPS[name](tokencli, python, Path(scratch), option)
    elapsed = time.monotonic() - started
    print_table(elapsed)
    write_results([name for name, _, option in chosen if not option], elapsed)
    return 0 if all(row.met for row in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
