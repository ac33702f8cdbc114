"""Where tokens live: one function opens a store from a location, whatever its kind.

A file path means SQLite (the embedded default); a `postgresql://` URL means PostgreSQL,
whose driver is imported only then, so the start-up of every SQLite command never pays
for it. `base.py` holds the contract both keep.
"""

from __future__ import annotations

from tokencli.domain.location import Location
from tokencli.store.base import Backend, IdCollisionError, Store

__all__ = ["Backend", "IdCollisionError", "Store", "open_backend", "open_store", "shown"]


def shown(location: Location) -> str:
    """The location as it may be printed: a path, or a URL as libpq reads it with its
    password (and any other secret field) shown as ***."""
    if location.url is None:
        return str(location.path)
    from tokencli.store.postgres.connection import INSTALLED

    if not INSTALLED:  # only libpq can say what is a password: show nothing of the URL
        return "a PostgreSQL URL (not shown: psycopg is not installed)"
    from tokencli.store.postgres.conninfo import shown as shown_url

    return shown_url(location.url)


def open_store(location: Location, *, create: bool, read_only: bool = False) -> Store:
    """Open the database at `location`.

    `create`: make (or migrate) it if it is missing; otherwise a missing one reads as
    empty and nothing is created. `read_only`: the caller only reads, so a file the user
    may read but not write is fine.
    """
    if location.url is not None:
        from tokencli.store.postgres.backend import open_postgres
        from tokencli.store.sqlite.queries import SQLiteStore

        store = open_postgres(location.url, create=create)
        return store if store is not None else SQLiteStore.empty()
    from tokencli.store.sqlite.queries import SQLiteStore

    assert location.path is not None
    return SQLiteStore.open(location.path, create=create, read_only=read_only)


def open_backend(location: Location) -> Backend:
    """Open the database at `location` for `serve` (created or migrated if needed)."""
    if location.url is not None:
        from tokencli.store.postgres.backend import PostgresBackend

        return PostgresBackend(location.url)
    from tokencli.store.sqlite.backend import SQLiteBackend
    from tokencli.store.sqlite.queries import SQLiteStore

    assert location.path is not None
    SQLiteStore.open(location.path, create=True).close()  # a bad file fails now, not later
    return SQLiteBackend(location.path)
