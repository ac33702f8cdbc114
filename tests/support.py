"""Helpers the tests import: a clock moved by hand, and files that are not ours."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tokencli.service import TokenService
from tokencli.store import Store

START = 1_790_000_000  # a fixed UTC instant (2026-09-21), so tests never read the wall clock


class Clock:
    """A clock the test moves by hand: pass it where the service takes `clock`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def truncated_database(path: Path) -> None:
    """A real tokencli database with its second half cut off."""
    service = TokenService(Store.open(path, create=True))
    list(service.issue_batches(count=3000))
    service.store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def other_application_database(path: Path) -> None:
    """A healthy SQLite file that belongs to someone else."""
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (body TEXT)")
    connection.execute("INSERT INTO notes VALUES ('keep me')")
    connection.commit()
    connection.close()


def check_reading_stdin(executable: str) -> subprocess.Popen[str]:
    """`tokencli check` started with no argument, waiting for the token on stdin."""
    return subprocess.Popen(
        [executable, "check"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
