"""SIGKILL at any moment leaves whole transactions only."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import (
    EXECUTABLE,
    needs_executable,
    tokencli,
)


@pytest.mark.slow
@needs_executable
def test_sigkill_mid_issue_leaves_whole_transactions_only(db_path: Path) -> None:
    assert EXECUTABLE is not None
    with subprocess.Popen(
        [EXECUTABLE, "issue", "--count", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(10)]  # the first batch is committed
        process.send_signal(signal.SIGKILL)
        rest = process.stdout.read()
        process.wait(timeout=60)
    printed_tokens = [line.decode().strip() for line in printed] + rest.decode().split()
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = connection.execute("SELECT count(*) FROM tokens").fetchone()[0]
    events = connection.execute("SELECT count(*) FROM audit WHERE action = 'issue'").fetchone()[0]
    connection.close()
    assert stored in (50_000, 100_000)  # whole batches of 50,000, never a part of one
    assert events == stored  # each token and its audit event committed together
    verifier = TokenService(SQLiteStore.open(db_path, create=False))
    assert all(verifier.check(token).valid for token in printed_tokens[::500] if ":" in token)
    after = tokencli("issue")
    assert after.returncode == 0 and after.stderr == ""
