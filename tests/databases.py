"""The test's database seen from outside tokencli, whichever store it is.

The store, service and CLI tests run on SQLite and on PostgreSQL (conftest.py's `location`
fixture). When a test must look past tokencli at what is really stored, or do to the
database what an operator or an attacker might, it uses the `raw` fixture: a
`RawDatabase` that speaks plain SQL to the SQLite file or to the test's PostgreSQL schema,
never through tokencli's own store code.

Queries are written once with `?` placeholders; the PostgreSQL side turns them into `%s`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import pytest
from psycopg import sql

if TYPE_CHECKING:  # imported by pytest as a plugin (conftest.py), so not before it
    from pg_cluster import PgCluster


class RawDatabase(Protocol):
    """Plain access to the test's database, beside tokencli."""

    kind: str

    def exists(self) -> bool:
        """Whether tokencli has made anything there yet (a file; a schema)."""
        ...

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of one query (tables unqualified: the schema is on the search path)."""
        ...

    def execute(self, query: str, *params: Any) -> None:
        """Run one statement and commit it."""

    def dump(self) -> bytes:
        """Everything an attacker who stole the database gets."""
        ...

    def refuse_audit_inserts(self) -> None:
        """Make every insert into the audit table fail from now on (a trigger)."""

    def hold_write_lock(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> contextlib.AbstractContextManager[None]:
        """While the block runs, another session keeps tokencli from writing tokens; the
        store's wait for it is cut to a fraction of a second."""
        ...

    def make_foreign(self) -> str:
        """Put someone else's data where tokencli looks; return words of the refusal."""
        ...


class SQLiteFile:
    """The test's SQLite file."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            return connection.execute(query, params).fetchall()
        finally:
            connection.close()

    def execute(self, query: str, *params: Any) -> None:
        connection = self._connect()
        try:
            connection.execute(query, params)
        finally:
            connection.close()

    def dump(self) -> bytes:
        """The file's bytes and its WAL and shared memory, then the SQL that rebuilds it."""
        raw = b""
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            if part.exists():
                raw += part.read_bytes()
        connection = self._connect()
        try:
            return raw + "\n".join(connection.iterdump()).encode()
        finally:
            connection.close()

    def refuse_audit_inserts(self) -> None:
        self.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit"
            " BEGIN SELECT RAISE(ABORT, 'nope'); END"
        )

    @contextlib.contextmanager
    def hold_write_lock(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        from tokencli.store.sqlite import opening as sqlite_open

        monkeypatch.setattr(sqlite_open, "BUSY_TIMEOUT_SECONDS", 0.2)
        holder = self._connect()
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    def make_foreign(self) -> str:
        self.path.write_bytes(b"not a database at all" * 10)
        return "not a SQLite database"


class PostgresSchema:
    """The test's schema in the session's PostgreSQL cluster."""

    kind = "postgres"

    def __init__(self, cluster: PgCluster, url: str, schema: str) -> None:
        self.cluster = cluster
        self.url = url
        self.schema = schema

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            yield connection

    def exists(self) -> bool:
        with self._connect() as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
        return bool(row and row[0])

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._connect() as connection:
            return [tuple(row) for row in connection.execute(_pg(query), params).fetchall()]

    def execute(self, query: str, *params: Any) -> None:
        with self._connect() as connection:
            connection.execute(_pg(query), params)

    def dump(self) -> bytes:
        return self.cluster.pg_dump(self.url, self.schema).encode()

    def refuse_audit_inserts(self) -> None:
        with self._connect() as connection:
            connection.execute(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'nope'; END $$"
            )
            connection.execute(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit"
                " FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )

    @contextlib.contextmanager
    def hold_write_lock(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        from tokencli.store.postgres import conninfo

        # tokencli's default when the URL's options set none, read when a store opens.
        monkeypatch.setattr(conninfo, "LOCK_TIMEOUT", "200ms")
        with self._connect() as holder, holder.transaction():
            # Reads go on; every insert, update and delete of a token waits.
            holder.execute("LOCK TABLE tokens IN EXCLUSIVE MODE")
            yield

    def make_foreign(self) -> str:
        with self._connect() as connection:
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            connection.execute("CREATE TABLE notes (body text)")
            connection.execute("INSERT INTO notes VALUES ('keep me')")
        return "not tokencli's"


def _pg(query: str) -> str:
    """A query written with SQLite's ? placeholders, for psycopg."""
    return query.replace("%", "%%").replace("?", "%s")
