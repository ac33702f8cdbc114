"""The SQLite schema: ordered, append-only migrations and the version they leave behind.

A file carries tokencli's `application_id` ("tknc") and its schema version in
`PRAGMA user_version`; a newer tokencli upgrades an older file in place. Never edit a
migration that has shipped: add the next one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database

# "tknc": marks a SQLite file as ours, so another application's database is refused.
APPLICATION_ID = 0x746B6E63


def _m001_create_tokens(db: Database) -> None:
    # Raw DDL: sqlite-utils cannot say WITHOUT ROWID, and a token lookup by ID then
    # walks one b-tree instead of an index and a table.
    db.execute(
        """
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY NOT NULL,
            secret_hash BLOB NOT NULL,
            label TEXT,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            uses_left INTEGER,
            revoked_at INTEGER,
            ends_at INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID
        """
    )
    db.table("tokens").create_index(["ends_at"], index_name="tokens_ends_at")


def _m002_audit_and_use_limit(db: Database) -> None:
    # The limit a token was issued with, so `rotate` can give its successor the same one.
    # Rows from schema 1 keep NULL here; the service falls back to their uses left.
    db.table("tokens").add_column("uses_limit", int)
    audit = db.table("audit")
    audit.create(
        {
            "id": int,
            "at": int,
            "action": str,
            "token_id": str,
            "outcome": str,
            "source": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "action", "outcome", "source"},
        strict=True,
    )
    # Only `at` is indexed: it grows with the rowid, so its index is append-only and
    # cheap on the hot path (every check writes an event). `audit --token` scans.
    audit.create_index(["at"], index_name="audit_at")


def _m003_scopes(db: Database) -> None:
    # Scope names joined by single spaces, sorted ('' for none): a check reads them with
    # the row it already fetches, so the hot path pays no second lookup. Names cannot
    # hold a space, and a filter matches ' name ' inside ' ' || scopes || ' '.
    db.execute("ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT ''")


# Ordered and append-only: never edit a migration that has shipped, add the next one.
MIGRATIONS: list[Callable[[Database], None]] = [
    _m001_create_tokens,
    _m002_audit_and_use_limit,
    _m003_scopes,
]
SCHEMA_VERSION = len(MIGRATIONS)


def user_version(connection: sqlite3.Connection) -> int:
    """The schema version a connection's file records."""
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema up to SCHEMA_VERSION, each step and its version in one transaction."""
    if user_version(connection) >= SCHEMA_VERSION:
        return
    from sqlite_utils import Database  # only needed on creation or upgrade

    db = Database(connection, execute_plugins=False)
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the write lock.
        for version in range(user_version(connection), SCHEMA_VERSION):
            MIGRATIONS[version](db)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
