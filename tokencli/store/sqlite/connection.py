"""One connection to a tokencli SQLite file: transactions, savepoints, the group-commit
batch, checkpoints, and SQLite's errors turned into messages for the operator.

The queries are in queries.py (`SQLiteStore` extends this class); opening and checking
the file is sqlite/opening.py.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from tokencli.domain.errors import StorageError
from tokencli.store.base import StoreBusy
from tokencli.store.sqlite.opening import (
    BUSY_TIMEOUT_SECONDS,
    Held,
    StorageErrors,
    open_connection,
    release,
)
from tokencli.store.sqlite.schema import migrate

BUSY_TIMEOUT_MS = int(BUSY_TIMEOUT_SECONDS * 1000)
# Bytes the WAL file is cut back to once checkpointed (`PRAGMA journal_size_limit`).
WAL_SIZE_LIMIT = 4 * 1024 * 1024
# Under steady heavy writes the WAL's working size is itself past the limit (30-50 MB
# at 12,000 issues/s between checkpoints half a second apart). Cutting it back every
# turn made the writers grow the file again each time and tripled the loop's p99 (15 ->
# 45 ms), so without a reader to blame the upkeep cuts it at most this often.
WAL_CUT_SECONDS = 30.0


class FileWatch:
    """A problem with the file found in the background (it was replaced), or None."""

    def __init__(self) -> None:
        self.problem: str | None = None


class SQLiteConnection:
    """A checked, migrated connection to a tokencli database file: transactions,
    savepoints, the group-commit batch, checkpoints and error mapping.

    `write_lock`, shared by the stores of one process, queues write transactions in
    Python: SQLite's own busy wait sleeps and retries, which under many threads costs
    far more latency than a queue on a lock. `watch` lets the server's upkeep thread
    fail every write once the file has been replaced under it.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path | None,
        write_lock: threading.Lock | None = None,
        watch: FileWatch | None = None,
        *,
        writable: bool = True,
        held: Held = None,
    ) -> None:
        self._connection = connection
        self.path = path
        self._held = held  # counted while open (sqlite_open.hold): released on close
        self._write_lock = write_lock
        self._watch = watch
        self._writable = writable
        self._depth = 0  # open blocks: 1 is the transaction, more are savepoints
        self._busy_ms = BUSY_TIMEOUT_MS  # what connect() set
        self._wal_held_back = False  # a slow reader kept checkpoints from the end
        self._wal_held_turns = 0  # checkpoints in a row that a reader kept from the end
        self._wal_cut_at: float | None = None  # monotonic time of the last cut

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool,
        read_only: bool = False,
        write_lock: threading.Lock | None = None,
        watch: FileWatch | None = None,
    ) -> Self:
        """Open the database at `path`; create it if `create`, else read a missing one as
        empty. `read_only` opens it so that it cannot be written (read-only commands)."""
        opened = open_connection(path, create=create, read_only=read_only)
        if opened is None:
            return cls.empty()
        connection, held = opened
        store = cls(connection, path, write_lock, watch, writable=not read_only, held=held)
        if not read_only:
            try:
                with store._errors():
                    # The writer that starts the WAL over after a checkpoint cuts the
                    # file back to this size: a WAL a slow reader once let grow does
                    # not keep its gigabyte for good.
                    connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            except BaseException:
                store.close()
                raise
        return store

    @classmethod
    def empty(cls) -> Self:
        """An in-memory store, so read-only commands on a missing database create nothing."""
        connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(connection)
        return cls(connection, None)

    @property
    def location(self) -> str | None:
        """The file's path; None for a missing database read as empty."""
        return str(self.path) if self.path is not None else None

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()
        release(self._held)
        self._held = None

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return StorageErrors(self.path, write=self._writable)

    def size_bytes(self) -> int | None:
        """Bytes on disk: the database file and its WAL (0 for a missing file)."""
        if self.path is None:
            return 0
        with self._errors():
            wal = Path(f"{self.path}-wal")
            return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def _check_watch(self) -> None:
        if self._watch is not None and self._watch.problem is not None:
            raise StorageError(self._watch.problem)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Run the block as one write transaction, taking the write lock at the start.

        Inside another block (`batch()`, or a transaction) it becomes a savepoint: it
        commits with the outer block, and a failure rolls back this block alone.
        """
        return self._block()

    def batch(self, *, wait: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Group the transactions run in the block into one commit (group commit).

        A commit costs far more than the statements of one check; the server answers
        the requests that arrived together in one batch and sends the answers only once
        it has committed, so no client hears of a change that was not stored. With
        `wait`, the write lock (this process's and SQLite's) is waited for at most that
        long, then StoreBusy: the event loop must never sleep behind another writer.
        """
        return self._block(wait)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction (a snapshot); in WAL mode it never waits for a writer."""
        connection = self._connection
        self._check_watch()
        with self._errors():
            connection.execute("BEGIN")
            try:
                yield
            finally:
                if connection.in_transaction:
                    connection.execute("COMMIT")

    def isolated(self) -> contextlib.AbstractContextManager[None]:
        """Nothing: on SQLite a failed statement leaves the transaction usable, and each
        change runs in a `transaction()` of its own (a savepoint here would cost a
        tenth of an HTTP issue)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _block(self, wait: float | None = None) -> Iterator[None]:
        connection = self._connection
        if self._depth:
            name = f"step{self._depth}"
            with self._errors():
                self._refuse_if_rolled_back()
                connection.execute(f"SAVEPOINT {name}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    if connection.in_transaction:
                        connection.execute(f"ROLLBACK TO {name}")
                        connection.execute(f"RELEASE {name}")
                    raise
                finally:
                    self._depth -= 1
                connection.execute(f"RELEASE {name}")
            return
        self._check_watch()
        lock = self._write_lock
        if lock is not None and not lock.acquire(timeout=-1 if wait is None else wait):
            raise StoreBusy(f"database at {self.path} is being written by this process")
        try:
            with self._errors():
                self._begin(wait)
                self._depth = 1
                try:
                    yield
                    self._refuse_if_rolled_back()
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                finally:
                    self._depth = 0
                connection.execute("COMMIT")
        finally:
            if lock is not None:
                lock.release()

    def _begin(self, wait: float | None) -> None:
        """BEGIN IMMEDIATE: take SQLite's write lock now, waiting at most `wait` (else the
        busy timeout) for another process to let go of it."""
        wanted = BUSY_TIMEOUT_MS if wait is None else int(wait * 1000)
        if wanted != self._busy_ms:  # a serving connection sets it once, not per batch
            self._connection.execute(f"PRAGMA busy_timeout = {wanted}")
            self._busy_ms = wanted
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if wait is not None and ("locked" in str(error) or "busy" in str(error)):
                raise StoreBusy(f"database at {self.path} is locked by another process") from None
            raise

    def _refuse_if_rolled_back(self) -> None:
        # SQLite rolls a whole transaction back itself on some failures (disk full, I/O
        # error). Nothing may then be answered as stored, nor run on in autocommit.
        if not self._connection.in_transaction:
            raise StorageError(f"database at {self.path} rolled back a write")

    def tune_for_serving(self) -> None:
        """Settings for a connection that serves for hours rather than one command.

        Automatic checkpoints and the cut of the WAL file at its restart are off: both
        run on the committing thread (the event loop); the upkeep thread does them.
        Reads through a memory map were tried and left out: no measurable gain on
        100,000 tokens, and an I/O error in a mapped page is a SIGBUS that kills the
        whole server instead of one request.
        """
        with self._errors():
            self._connection.execute("PRAGMA wal_autocheckpoint = 0")
            # Cutting the WAL file back is the upkeep's job: the writer that restarts
            # the WAL would otherwise truncate it on the event loop's thread.
            self._connection.execute("PRAGMA journal_size_limit = -1")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, mostly alongside the writers.

        The first pass runs while others write and so may never reach the end of a busy
        WAL; the second holds the write lock for the little that is left, so the next
        writer can start the WAL over instead of letting it grow without end. When that
        pass copied everything and the file is still past the limit, it is truncated,
        unless some reader still reads it (that check does not wait: the next turn tries
        again): at once if a slow reader held the WAL back (two turns in a row), else at
        most every `WAL_CUT_SECONDS`, since a busy writer only grows it again.
        """
        now = time.monotonic()
        with self._errors():
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with self._write_lock or contextlib.nullcontext():
                _, frames, copied = self._connection.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
                if frames != copied:
                    # Twice in a row: a slow reader, not a short read that happened to
                    # overlap one turn (those come and go under any mixed load).
                    self._wal_held_turns += 1
                    self._wal_held_back |= self._wal_held_turns >= 2
                    return
                self._wal_held_turns = 0
                if self._wal_bytes() <= WAL_SIZE_LIMIT:
                    self._wal_held_back = False
                    return
                due = self._wal_cut_at is None or now - self._wal_cut_at >= WAL_CUT_SECONDS
                if (self._wal_held_back or due) and self._truncate_wal():
                    self._wal_held_back = False
                    self._wal_cut_at = now

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _truncate_wal(self) -> bool:
        """Empty the (wholly copied) WAL file now if no reader is in it; never wait.
        True if it was emptied."""
        connection = self._connection
        waited = connection.execute("PRAGMA busy_timeout").fetchone()[0]
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(waited)}")
        return bool(busy == 0)

    def ping(self) -> None:
        """Prove the database answers, at the cost of one page read."""
        self._check_watch()
        with self._errors():
            self._connection.execute("SELECT 1 FROM tokens LIMIT 1").fetchall()

    def _write(self, sql: str, parameters: Sequence[object] | Mapping[str, object]) -> int:
        """Run one write statement (inside `transaction()`); return the rows it changed."""
        with self._errors():
            return self._connection.execute(sql, parameters).rowcount

    def _rows(
        self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()
    ) -> list[Any]:
        with self._errors():
            return self._connection.execute(sql, parameters).fetchall()

    # -- tokens --------------------------------------------------------------------------
