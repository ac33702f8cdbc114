"""Long CLI writes and the SQLite write lock (issue 18 item 7, the CLI's half).

`issue --count` commits a batch at a time and holds the lock only while it stores one;
`import` stays all or nothing, but reads and checks every line before it takes the lock.
Whether another writer gets in is asked of SQLite: a `BEGIN IMMEDIATE` that may not wait.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokencli.service.service import TokenService
from tokencli.service.transfer import import_lines, token_line

from support import Clock


def another_writer_gets_in(db_path: Path) -> bool:
    """True if a writer in another connection takes the lock at once (no busy wait)."""
    connection = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    else:
        connection.execute("UPDATE tokens SET label = label WHERE 0")
        connection.execute("COMMIT")
        return True
    finally:
        connection.close()


def test_the_yardstick_sees_a_held_lock(service: TokenService, db_path: Path) -> None:
    service.issue()
    with service.store.transaction():
        assert not another_writer_gets_in(db_path)
    assert another_writer_gets_in(db_path)


def test_issue_count_lets_other_writers_in_between_its_batches(
    service: TokenService, db_path: Path
) -> None:
    batches = service.issue_batches(count=5, batch_size=2)
    sizes = []
    for batch in batches:  # each one committed before it is shown
        sizes.append(len(batch))
        assert another_writer_gets_in(db_path)
    assert sizes == [2, 2, 1]


def test_issue_count_takes_the_lock_only_to_store_a_batch(
    service: TokenService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making the secrets (the slow part of a batch) happens outside the transaction."""
    from tokencli.domain import tokens

    real = tokens.generate
    seen: list[bool] = []

    def generate() -> tokens.NewToken:
        if not seen:
            seen.append(another_writer_gets_in(db_path))
        return real()

    monkeypatch.setattr(tokens, "generate", generate)
    list(service.issue_batches(count=3))
    assert seen == [True]


def test_import_checks_its_input_before_it_takes_the_lock(
    service: TokenService, clock: Clock, db_path: Path
) -> None:
    source = TokenService(service.store, clock)
    records = [
        source.store.get(item.info.id) for batch in source.issue_batches(count=30) for item in batch
    ]
    lines = [json.dumps(token_line(record)) for record in records if record is not None]
    with source.store.transaction():  # gone again: the import brings them back
        assert source.store.purge(int(clock.now) + 10**9) == len(lines)
    checked: list[bool] = []

    def reading() -> Iterator[str]:
        for number, line in enumerate(lines):
            if number == len(lines) - 1:  # the whole input read but the last line
                checked.append(another_writer_gets_in(db_path))
            yield line

    result = import_lines(service, reading())
    assert checked == [True] and result.tokens == len(lines)
