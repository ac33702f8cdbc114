"""The store on real files: schema, migrations, file checks, permissions."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import sqlite_utils

from tokencli.domain.errors import StorageError
from tokencli.domain.model import EVERY_TOKEN
from tokencli.service.service import TokenService
from tokencli.store.sqlite import schema as store_module
from tokencli.store.sqlite.queries import SQLiteStore
from tokencli.store.sqlite.schema import APPLICATION_ID, SCHEMA_VERSION

from support import other_application_database, truncated_database


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_database_has_schema_pragmas_and_mode(db_path: Path) -> None:
    SQLiteStore.open(db_path, create=True).close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    db = sqlite_utils.Database(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = {column.name: column.type for column in db["tokens"].columns}
    assert columns == {
        "id": "TEXT",
        "secret_hash": "BLOB",
        "label": "TEXT",
        "created_at": "INTEGER",
        "expires_at": "INTEGER",
        "uses_left": "INTEGER",
        "revoked_at": "INTEGER",
        "ends_at": "INTEGER",
        "uses_limit": "INTEGER",
        "scopes": "TEXT",
    }
    audit_columns = {column.name: column.type for column in db["audit"].columns}
    assert audit_columns == {
        "id": "INTEGER",
        "at": "INTEGER",
        "action": "TEXT",
        "token_id": "TEXT",
        "outcome": "TEXT",
        "source": "TEXT",
        "detail": "TEXT",
    }
    assert db["tokens"].pks == ["id"]
    assert any(index.columns == ["ends_at"] for index in db["tokens"].indexes)
    # no temporary file is left beside it
    assert (
        sorted(p.name for p in db_path.parent.iterdir() if not p.name.startswith("tokens.db")) == []
    )


def test_parent_folders_are_created_on_first_write(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tokens.db"
    SQLiteStore.open(path, create=True).close()
    assert path.is_file()


def test_read_only_open_of_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "tokens.db"
    opened = SQLiteStore.open(path, create=False)
    assert list(opened.iter_tokens(EVERY_TOKEN, 0)) == []
    assert opened.get("aaaaaaaaaaaa") is None
    opened.close()
    assert not path.parent.exists()


def test_purge_is_one_indexed_delete(store: SQLiteStore) -> None:
    connection = store._connection
    plan = connection.execute(
        "EXPLAIN QUERY PLAN DELETE FROM tokens WHERE ends_at <= ?", (0,)
    ).fetchall()
    assert "tokens_ends_at" in " ".join(str(row) for row in plan)


def test_migrations_run_in_order_and_keep_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = TokenService(SQLiteStore.open(db_path, create=True))
    kept = service.issue(label="old")
    service.store.close()

    def m002_add_note(db: sqlite_utils.Database) -> None:
        db.table("tokens").add_column("note", str)

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, m002_add_note])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    upgraded = TokenService(SQLiteStore.open(db_path, create=True))
    assert upgraded.check(kept.token).valid
    upgraded.store.close()
    db = sqlite_utils.Database(db_path)
    assert "note" in db["tokens"].columns_dict
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_failed_migration_rolls_back_whole(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SQLiteStore.open(db_path, create=True).close()

    def m002_broken(db: sqlite_utils.Database) -> None:
        db.table("tokens").add_column("half", str)
        raise sqlite3.OperationalError("boom")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, m002_broken])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StorageError, match="boom"):
        SQLiteStore.open(db_path, create=True)
    db = sqlite_utils.Database(db_path)
    assert "half" not in db["tokens"].columns_dict
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused_and_untouched(db_path: Path) -> None:
    SQLiteStore.open(db_path, create=True).close()
    connection = sqlite3.connect(db_path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    connection.commit()
    connection.close()
    before = digest(db_path)
    with pytest.raises(StorageError, match="newer than this tokencli"):
        SQLiteStore.open(db_path, create=True)
    assert digest(db_path) == before


def _random_file(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _short_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 10)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_random_file, "not a SQLite database"),
        (_empty_file, "empty file"),
        (other_application_database, "not a tokencli database"),
        (_short_header, "not a SQLite database"),
        (truncated_database, "damaged"),
    ],
)
@pytest.mark.parametrize("create", [True, False])
def test_foreign_files_are_refused_and_left_untouched(
    tmp_path: Path, make: object, fragment: str, create: bool
) -> None:
    path = tmp_path / "victim.db"
    make(path)  # type: ignore[operator]
    before = digest(path)
    with pytest.raises(StorageError, match=fragment):
        opened = SQLiteStore.open(path, create=create)
        try:
            list(TokenService(opened).list_tokens(EVERY_TOKEN))
            TokenService(opened).purge()
        finally:
            opened.close()
    assert digest(path) == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a folder"):
        SQLiteStore.open(tmp_path, create=True)


def test_two_stores_share_one_file(db_path: Path) -> None:
    first = TokenService(SQLiteStore.open(db_path, create=True))
    second = TokenService(SQLiteStore.open(db_path, create=True))
    issued = first.issue(uses=1)
    assert second.check(issued.token).valid
    assert not first.check(issued.token).valid
