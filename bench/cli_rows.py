"""The command-line rows: whole `tokencli` processes under hyperfine against a floor
measured in the same run (start-up, bulk issue, purge, check at scale, list at scale)."""

from __future__ import annotations

import statistics
import subprocess

from harness import HERE, Bench, build_database, copy_database, fresh, hyperfine, interleaved, note

# The columns the SQLite store reads for `list` (a page at a time, in ID order).
LIST_COLUMNS = (
    "id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, uses_limit, scopes"
)


def peak_mb(command: str) -> float:
    """Peak RSS of a shell command's main process (`/usr/bin/time -f %M`)."""
    timed = subprocess.run(
        ["bash", "-c", f"/usr/bin/time -f %M -o /dev/stderr {command}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(timed.stderr.strip().splitlines()[-1]) / 1024


def startup(bench: Bench) -> None:
    """`check` and `issue` start-up against `python -c "import typer"`."""
    db = bench.work / "startup.db"
    fresh(db)
    issued = subprocess.run(
        [bench.tokencli, "--db", str(db), "issue"], check=True, capture_output=True, text=True
    )
    floor, check, issue = interleaved(
        [
            f"{bench.python} -c 'import typer'",
            f"{bench.tokencli} --db {db} check {issued.stdout.strip()}",
            f"{bench.tokencli} --db {db} issue",
        ]
    )
    for name, ours in (("start-up: check TOKEN", check), ("start-up: issue", issue)):
        ratio = ours / floor
        floor_text = f"{floor * 1000:.1f} ms (import typer)"
        bench.table.record(
            name, f"{ours * 1000:.1f} ms", floor_text, ratio, "<= 1.5x", ratio <= 1.5
        )


def bulk_issue(bench: Bench) -> None:
    """`issue --count 100000` against bench/floors.py bulk (the same tokens, one executemany)."""
    db, floor_db, count = bench.work / "bulk.db", bench.work / "bulk-floor.db", 100_000
    ours, floor = hyperfine(
        [
            f"{bench.tokencli} --db {db} issue --count {count} > /dev/null",
            f"{bench.python} {HERE / 'floors.py'} bulk {floor_db} {count}",
        ],
        runs=3,
        warmup=0,
        prepare=f"rm -f {db} {db}-wal {db}-shm {floor_db} {floor_db}-wal {floor_db}-shm",
    )
    ratio = floor / ours  # tokens per second, ours over the floor's
    bench.table.record(
        "bulk issue --count 100000 (tokens/s)",
        f"{count / ours:,.0f}/s",
        f"{count / floor:,.0f}/s (executemany)",
        ratio,
        ">= 0.5x",
        ratio >= 0.5,
    )
    fresh(db, floor_db)


def purge(bench: Bench) -> None:
    """`purge` of 900k expired of 1M against one raw DELETE, and its peak memory."""
    base, ours_db, floor_db = (
        bench.work / f"purge-{name}.db" for name in ("base", "ours", "floor")
    )
    build_database(base, live=100_000, expired=900_000)
    delete = (
        f"{bench.python} -c \"import sqlite3,time; c=sqlite3.connect('{floor_db}',"
        " isolation_level=None); c.execute('PRAGMA synchronous=NORMAL');"
        " c.execute('DELETE FROM tokens WHERE ends_at <= ?', (int(time.time()),))\""
    )
    ours, floor = hyperfine(
        [f"{bench.tokencli} --db {ours_db} purge --quiet", delete],
        runs=3,
        warmup=0,
        prepare=f"cp {base} {ours_db} && cp {base} {floor_db} && rm -f {ours_db}-* {floor_db}-*",
    )
    ratio = ours / floor
    floor_text = f"{floor:.2f} s (one DELETE)"
    bench.table.record(
        "purge 900k of 1M", f"{ours:.2f} s", floor_text, ratio, "<= 1.2x", ratio <= 1.2
    )
    copy_database(base, ours_db)
    peak = peak_mb(f"{bench.tokencli} --db {ours_db} purge --quiet")
    bench.table.record("purge peak memory", f"{peak:.1f} MB", "-", None, "< 60 MB", peak < 60)
    fresh(base, ours_db, floor_db)


def check_at_scale(bench: Bench) -> None:
    """`check` on a file of 1M tokens against one of 10: the lookup must not scan."""
    big, small = bench.work / "check-1m.db", bench.work / "check-10.db"
    big_token = build_database(big, live=999_999, known=1)[0]
    small_token = build_database(small, live=9, known=1)[0]
    at_scale, at_ten = hyperfine(
        [
            f"{bench.tokencli} --db {db} check {token}"
            for db, token in ((big, big_token), (small, small_token))
        ],
        runs=40,
        warmup=5,
    )
    ratio = at_scale / at_ten
    bench.table.record(
        "check on 1M tokens vs on 10",
        f"{at_scale * 1000:.1f} ms",
        f"{at_ten * 1000:.1f} ms",
        ratio,
        "<= 1.1x",
        ratio <= 1.1,
    )
    fresh(big, small)


def list_at_scale(bench: Bench) -> None:
    """`list --all` of 1M tokens as JSON, JSON lines and TSV against a bare `python -c`
    running the store's own SELECT and writing each row's printable columns."""
    db = bench.work / "list-1m.db"
    build_database(db, live=900_000, expired=100_000, label="ci-deploy", scopes="deploy read")
    floor = (
        f"{bench.python} -c \"import sqlite3,sys; c=sqlite3.connect('{db}');"
        f" sys.stdout.writelines('%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' % (r[:6] + r[7:])"
        f" for r in c.execute('SELECT {LIST_COLUMNS} FROM tokens ORDER BY id'))\""
        " > /dev/null"
    )
    variants = {
        "--json": f"{bench.tokencli} --db {db} list --all --json > /dev/null",
        "--jsonl": f"{bench.tokencli} --db {db} list --all --jsonl > /dev/null",
        "TSV (piped)": f"{bench.tokencli} --db {db} list --all > /dev/null",
    }
    # Three rounds of two runs, taking turns; one unmeasured run first warms the cache.
    commands = [floor, *variants.values()]
    rounds = [hyperfine(commands, runs=2, warmup=int(i == 0), shell=True) for i in range(3)]
    floor_seconds, *ours = (statistics.median(column) for column in zip(*rounds, strict=True))
    for (name, command), seconds in zip(variants.items(), ours, strict=True):
        ratio, peak = seconds / floor_seconds, peak_mb(command)
        bench.table.record(
            f"list --all {name}, 1M tokens",
            f"{seconds:.2f} s, peak {peak:.1f} MB",
            f"{floor_seconds:.2f} s (raw SELECT in python -c)",
            ratio,
            "<= 1.5x, < 60 MB",
            ratio <= 1.5 and peak < 60,
        )
    note(f"list: the floor's own peak memory is {peak_mb(floor):.1f} MB")
    fresh(db)
