"""A slow reader never holds SQLite's WAL back (issue 18 item 6; docs/design.md,
"SQLite (the default)").

`tokencli list | less` used to keep one read open for as long as the pager stayed: no
checkpoint could pass it and the WAL grew by hundreds of MB under validation load. A
listing (and an export) now reads a page at a time with nothing open between pages, and
a WAL that did grow is cut back once it has been checkpointed.

Whether a checkpoint got past a reader is asked of SQLite itself: `wal_checkpoint(TRUNCATE)`
with no busy wait reports busy (and leaves the WAL) while any reader holds a snapshot.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokencli.domain.location import Location
from tokencli.domain.model import EVERY_TOKEN, AuditEvent, TokenRecord
from tokencli.service.reader import TokenReader
from tokencli.service.transfer import export_objects
from tokencli.store.sqlite.connection import WAL_SIZE_LIMIT
from tokencli.store.sqlite.queries import SQLiteStore

from support import EXECUTABLE, needs_executable

NOW = 1_790_000_000
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def synthetic(count: int, start: int = 0, label: str | None = None) -> list[TokenRecord]:
    """Stored-looking tokens with distinct valid IDs, without hashing a secret each."""
    made = []
    for n in range(start, start + count):
        digits, left = [], n
        for _ in range(12):
            left, rest = divmod(left, 32)
            digits.append(ALPHABET[rest])
        token_id = "".join(reversed(digits))
        made.append(
            TokenRecord(token_id, label, NOW - 10, NOW + 86_400, None, None, bytes(32), None)
        )
    return made


@pytest.fixture
def filled(db_path: Path) -> Iterator[SQLiteStore]:
    """A database of 3,500 tokens and as many events (several pages of each), and a
    writer on it (as `serve` or another CLI would be)."""
    writer = SQLiteStore.open(db_path, create=True)
    with writer.transaction():
        writer.insert_tokens(synthetic(3500))
        writer.record([AuditEvent(NOW + n, "check", None, "valid", "http") for n in range(3500)])
    yield writer
    writer.close()


def wal_bytes(db_path: Path) -> int:
    wal = Path(f"{db_path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def truncate_now(db_path: Path) -> bool:
    """A checkpoint that empties the WAL file, from a connection that does not wait: True
    if it did, False if a reader's snapshot stood in the way."""
    connection = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()
    return busy == 0 and wal_bytes(db_path) == 0


def write_some(writer: SQLiteStore, start: int) -> None:
    with writer.transaction():
        writer.insert_tokens(synthetic(200, start=start))
    assert wal_bytes(writer.path) > 0  # type: ignore[arg-type]


def test_a_reader_holding_a_snapshot_blocks_the_checkpoint(
    filled: SQLiteStore, db_path: Path
) -> None:
    """The yardstick the other tests rely on: a held read does keep the WAL."""
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tokens").fetchone()
    write_some(filled, 100_000)
    assert not truncate_now(db_path)
    reader.execute("COMMIT")
    reader.close()
    assert truncate_now(db_path)


def test_a_listing_paused_mid_page_lets_the_checkpoint_through(
    filled: SQLiteStore, db_path: Path
) -> None:
    before = {record.id for record in synthetic(3500)}
    with TokenReader.open(Location(path=db_path)) as listing:
        rows = listing.list_tokens(EVERY_TOKEN)  # what `tokencli list --all` writes out
        seen = [next(rows).id for _ in range(1500)]  # into the second page, then paused
        write_some(filled, 100_000)
        assert truncate_now(db_path)
        with filled.transaction():  # revoked ahead of the reader and behind it
            filled.revoke(min(before), NOW)
            filled.revoke(max(before), NOW)
        write_some(filled, 200_000)
        assert truncate_now(db_path)
        seen += [info.id for info in rows]
    assert len(seen) == len(set(seen))
    assert before <= set(seen)  # every token there from start to end, once


def test_an_export_paused_in_its_tokens_or_its_events_lets_the_checkpoint_through(
    filled: SQLiteStore, db_path: Path
) -> None:
    with TokenReader.open(Location(path=db_path)) as exporting:
        lines = export_objects(exporting, EVERY_TOKEN, audit=True)
        kinds = [next(lines)["type"] for _ in range(1200)]
        write_some(filled, 100_000)
        assert truncate_now(db_path)
        kinds += [next(lines)["type"] for _ in range(5000)]  # well into the events
        with filled.transaction():
            filled.record([AuditEvent(NOW + 9999, "check", None, "valid", "http")])
        assert truncate_now(db_path)
        kinds += [line["type"] for line in lines]
    # The tokens written during the export were behind or ahead of it: either way each
    # token of the 3,500 there all along is in it, and every event from before it began.
    assert kinds.count("token") >= 3500 and kinds.count("event") >= 3500
    assert kinds == sorted(kinds, key=lambda kind: kind != "token")


@needs_executable
def test_tokencli_list_blocked_on_a_full_pipe_holds_nothing_open(
    filled: SQLiteStore, db_path: Path
) -> None:
    """`tokencli list | less`, with the pager not reading: the real program."""
    with filled.transaction():
        filled.insert_tokens(synthetic(20_000, start=10_000))  # far more than a pipe holds
    assert EXECUTABLE is not None
    with subprocess.Popen(
        [EXECUTABLE, "--db", str(db_path), "list", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as listing:
        assert listing.stdout is not None
        assert listing.stdout.readline().startswith("ID\t")
        write_some(filled, 100_000)
        # The listing fills the pipe and then waits on it; at most moments before that it
        # is between reads too. A generous bound, never a timing: old code failed all 50.
        for _ in range(50):
            if truncate_now(db_path):
                break
            time.sleep(0.1)
        else:
            listing.kill()
            pytest.fail("a checkpoint never got past `tokencli list` waiting on its pipe")
        rest = listing.stdout.read()
        assert listing.wait(timeout=60) == 0
    assert len(rest.splitlines()) >= 3500 + 20_000 - 1


def grow_wal_behind_a_reader(writer: SQLiteStore, db_path: Path) -> None:
    """A WAL well past the size limit, as a slow reader once let it grow."""
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tokens").fetchone()
    for start in range(0, 60_000, 10_000):
        with writer.transaction():
            writer.insert_tokens(synthetic(10_000, start=500_000 + start, label="x" * 40))
    reader.execute("COMMIT")
    reader.close()
    assert wal_bytes(db_path) > 2 * WAL_SIZE_LIMIT


def test_the_upkeep_checkpoint_cuts_a_grown_wal_back(filled: SQLiteStore, db_path: Path) -> None:
    grow_wal_behind_a_reader(filled, db_path)
    filled.checkpoint()  # what serve's upkeep thread runs every half second
    assert wal_bytes(db_path) <= WAL_SIZE_LIMIT
    with filled.transaction():  # and writing goes on as before
        filled.insert_tokens(synthetic(10, start=900_000))
    assert filled.get(synthetic(1, start=900_000)[0].id) is not None


def test_the_upkeep_checkpoint_leaves_a_wal_a_reader_still_reads(
    filled: SQLiteStore, db_path: Path
) -> None:
    grow_wal_behind_a_reader(filled, db_path)
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tokens").fetchone()
    filled.checkpoint()  # returns, the reader still reading: nothing cut under it
    assert wal_bytes(db_path) > WAL_SIZE_LIMIT
    assert reader.execute("SELECT count(*) FROM tokens").fetchone() == (63_500,)
    reader.execute("COMMIT")
    reader.close()
    filled.checkpoint()
    assert wal_bytes(db_path) <= WAL_SIZE_LIMIT


def test_a_wal_grown_by_writers_alone_is_cut_at_most_every_so_often(
    filled: SQLiteStore, db_path: Path
) -> None:
    """Under steady heavy writes the WAL's working size is past the limit: cutting it
    every turn made the writers grow it again each time (loop p99 15 -> 45 ms)."""
    filled.tune_for_serving()
    grow_wal_behind_a_reader(filled, db_path)
    filled.checkpoint()
    assert wal_bytes(db_path) <= WAL_SIZE_LIMIT  # the first cut is not held off
    for turn in range(2):  # a turn of heavy writes, then the upkeep's checkpoint
        for start in range(0, 60_000, 10_000):  # writers alone, no reader
            first = 700_000 + 100_000 * turn + start
            with filled.transaction():
                filled.insert_tokens(synthetic(10_000, start=first, label="y" * 40))
        filled.checkpoint()  # copies everything; the next writer starts the WAL over
    assert wal_bytes(db_path) > WAL_SIZE_LIMIT  # left at its working size, not cut
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tokens").fetchone()
    with filled.transaction():  # written after the reader's snapshot
        filled.insert_tokens(synthetic(10, start=900_000))
    filled.checkpoint()  # held back by the reader: a short read might do that once
    filled.checkpoint()  # and again: a slow reader
    reader.execute("COMMIT")
    reader.close()
    filled.checkpoint()  # a reader held it back: cut at once, whenever the last cut was
    assert wal_bytes(db_path) <= WAL_SIZE_LIMIT


def test_a_short_read_that_overlaps_one_checkpoint_does_not_cut_the_wal(
    filled: SQLiteStore, db_path: Path
) -> None:
    """Short reads come and go under any mixed load; one may overlap a checkpoint."""
    filled.tune_for_serving()
    grow_wal_behind_a_reader(filled, db_path)
    filled.checkpoint()  # the first cut
    for start in range(0, 60_000, 10_000):
        with filled.transaction():
            filled.insert_tokens(synthetic(10_000, start=700_000 + start, label="y" * 40))
    filled.checkpoint()
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tokens").fetchone()
    with filled.transaction():
        filled.insert_tokens(synthetic(10, start=900_000))
    filled.checkpoint()  # one turn held back
    reader.execute("COMMIT")
    reader.close()
    filled.checkpoint()
    assert wal_bytes(db_path) > WAL_SIZE_LIMIT  # left at its working size


def test_a_serving_writer_leaves_the_cut_to_the_upkeep(filled: SQLiteStore, db_path: Path) -> None:
    """The writer that restarts the WAL would truncate the file on the event loop."""
    filled.tune_for_serving()
    grow_wal_behind_a_reader(filled, db_path)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    other.close()
    grown = wal_bytes(db_path)
    with filled.transaction():  # starts the WAL over; the file keeps its size
        filled.insert_tokens(synthetic(10, start=900_000))
    assert wal_bytes(db_path) == grown


def test_the_next_writer_cuts_a_checkpointed_wal_back_to_the_limit(
    filled: SQLiteStore, db_path: Path
) -> None:
    """Without the upkeep thread (a CLI writer): journal_size_limit does it."""
    grow_wal_behind_a_reader(filled, db_path)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # copies all; keeps the file
    other.close()
    assert wal_bytes(db_path) > 2 * WAL_SIZE_LIMIT
    with filled.transaction():  # starts the WAL over, and cuts the file at its commit
        filled.insert_tokens(synthetic(10, start=900_000))
    assert wal_bytes(db_path) <= WAL_SIZE_LIMIT
