"""The command-line rows: start-up, bulk issue, purge, check and list on a large file.

Each runs whole `tokencli` processes under hyperfine against a floor measured in the
same run (docs/benchmarks.md, "Method").
"""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

from common import HERE, build_database, fresh, hyperfine, interleaved, note, record


def bench_startup(tokencli: str, python: str, work: Path) -> None:
    """`check` and `issue` start-up against `python -c "import typer"`."""
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
    """`issue --count 100000` against floor_bulk.py (same tokens, one executemany)."""
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
    """`purge` of 900k expired of 1M against one raw DELETE; and its peak memory."""
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
    """`check` on a file of 1M tokens against one of 10: the lookup must not scan."""
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


# The columns the SQLite store reads for `list` (tokencli/store/sqlite.py), in its order.
LIST_COLUMNS = (
    "id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, uses_limit, scopes"
)


def peak_memory_mb(command: str) -> float:
    """Peak RSS of a shell command's main process, from `/usr/bin/time -f %M`."""
    timed = subprocess.run(
        ["bash", "-c", f"/usr/bin/time -f %M -o /dev/stderr {command}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(timed.stderr.strip().splitlines()[-1]) / 1024


def bench_list(tokencli: str, python: str, work: Path) -> None:
    """`list --all` of 1M tokens as JSON, JSON lines and TSV, against a raw SELECT.

    The floor is a bare `python -c` that runs the store's own SELECT (same columns, same
    ORDER BY created_at, id) and writes each row's printable columns tab-separated, with
    no conversion: what reading the rows and writing them costs at the least.
    """
    db = work / "list-1m.db"
    # 900k live and 100k expired, each with a label and two scopes, as a real list shows.
    build_database(db, live=900_000, expired=100_000, label="ci-deploy", scopes="deploy read")
    floor = (
        f"{python} -c \"import sqlite3,sys; c=sqlite3.connect('{db}');"
        f" sys.stdout.writelines('%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' % (r[:6] + r[7:])"
        f" for r in c.execute('SELECT {LIST_COLUMNS} FROM tokens ORDER BY created_at, id'))\""
        " > /dev/null"
    )
    variants = {
        "--json": f"{tokencli} --db {db} list --all --json > /dev/null",
        "--jsonl": f"{tokencli} --db {db} list --all --jsonl > /dev/null",
        "TSV (piped)": f"{tokencli} --db {db} list --all > /dev/null",
    }
    commands = [floor, *variants.values()]
    # Three rounds of two runs each, the commands taking turns round by round; the first
    # round starts with one unmeasured run of each, which also warms the page cache.
    rounds = [
        hyperfine(commands, runs=2, warmup=1 if index == 0 else 0, shell=True) for index in range(3)
    ]
    medians = [statistics.median(column) for column in zip(*rounds, strict=True)]
    floor_seconds, ours = medians[0], dict(zip(variants, medians[1:], strict=True))
    for name, command in variants.items():
        ratio = ours[name] / floor_seconds
        peak_mb = peak_memory_mb(command)
        record(
            f"list --all {name}, 1M tokens",
            f"{ours[name]:.2f} s, peak {peak_mb:.1f} MB",
            f"{floor_seconds:.2f} s (raw SELECT in python -c)",
            ratio,
            "<= 1.5x, < 60 MB",
            ratio <= 1.5 and peak_mb < 60,
            {"seconds": ours[name], "floor_seconds": floor_seconds, "peak_mb": peak_mb},
        )
    floor_peak = peak_memory_mb(floor)
    note(f"list: the floor's own peak memory is {floor_peak:.1f} MB")
    fresh(db)
