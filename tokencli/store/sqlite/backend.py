"""SQLite under `serve`: one store per thread, and the upkeep a long-running writer needs.

Two jobs run on an upkeep thread, so the event loop never waits for either:

- WAL checkpoints. The serving connections have automatic checkpoints off: a checkpoint
  fsyncs, which can take many milliseconds on a busy disk. Every quarter second a PASSIVE
  pass runs beside the writers, then a second one under the write lock catches the tail,
  so the WAL restarts instead of growing without end (PASSIVE alone let it pass 1 GB).
- A watch on the file's identity. If someone replaces or removes the database file under
  a running server, its connections keep writing to the old, unlinked inode and every
  token issued from then on vanishes on restart. Once the path names another file, every
  write and /health fail (503) with one log line, until the old file is back.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from tokencli.domain.errors import StorageError, TokencliError
from tokencli.store.sqlite.connection import FileWatch
from tokencli.store.sqlite.queries import SQLiteStore

CHECKPOINT_SECONDS = 0.25


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


class SQLiteBackend:
    """A SQLite file opened for serving: stores share one write lock and one file watch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None  # of the file first opened
        self._write_lock = threading.Lock()
        self._watch = FileWatch()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def location(self) -> str:
        """The database file's path."""
        return str(self.path)

    @property
    def inline(self) -> bool:
        """True: a local file, whose waits the store keeps short (`batch(wait=...)`)."""
        return True

    def open_store(self) -> SQLiteStore:
        """A connection for one thread, with automatic checkpoints left to the upkeep.

        The first store creates the file if it is missing; once a file has been served,
        a missing one is an error, never a fresh empty database.
        """
        if self._watch.problem is not None:
            raise StorageError(self._watch.problem)
        first = self._identity is None
        if not first and not self.path.exists():
            raise StorageError(f"database file {self.path} is gone")
        store = SQLiteStore.open(
            self.path, create=first, write_lock=self._write_lock, watch=self._watch
        )
        try:
            store.tune_for_serving()
        except StorageError:
            store.close()
            raise
        if first:
            self._identity = _identity(self.path)
        return store

    def start_upkeep(self, report: Callable[[str], None]) -> None:
        """Start checkpointing and watching the file on a thread of its own."""
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._upkeep, args=(report,), name="sqlite-upkeep", daemon=True
        )
        self._thread.start()

    def stop_upkeep(self) -> None:
        """Stop the upkeep thread after a last checkpoint."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def gauges(self) -> dict[str, float]:
        """The WAL's size in bytes (0 when there is none)."""
        try:
            return {"wal_bytes": float(os.stat(f"{self.path}-wal").st_size)}
        except OSError:
            return {"wal_bytes": 0.0}

    def check_identity(self, report: Callable[[str], None]) -> None:
        """Compare the file at the path with the one opened; fail writes if it changed."""
        if self._identity is None:
            return  # nothing opened yet
        now_there = _identity(self.path)
        if now_there == self._identity:
            if self._watch.problem is not None:
                report(f"database file {self.path} is back; writes resume")
            self._watch.problem = None
            return
        if self._watch.problem is None:
            self._watch.problem = (
                f"database file {self.path} was replaced or removed while serving; "
                "restart tokencli serve to use the file now there"
            )
            report(self._watch.problem)

    def _upkeep(self, report: Callable[[str], None]) -> None:
        store: SQLiteStore | None = None
        failing = False
        try:
            while not self._stopping.wait(CHECKPOINT_SECONDS):
                self.check_identity(report)
                if self._watch.problem is not None or self._identity is None:
                    continue
                try:
                    if store is None:
                        store = SQLiteStore.open(
                            self.path, create=False, write_lock=self._write_lock
                        )
                    store.checkpoint()
                    failing = False
                except TokencliError as error:
                    if not failing:
                        report(f"checkpoint failed: {error}")
                    failing = True
        finally:
            if store is not None:
                if self._watch.problem is None:
                    with contextlib.suppress(TokencliError):
                        store.checkpoint()
                store.close()
