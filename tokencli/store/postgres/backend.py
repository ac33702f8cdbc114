"""Opening a PostgreSQL location: one store for a command, or a backend for `serve`.

The backend hands each of serve's threads a store on a connection of its own, and keeps
two figures for /metrics: whether the database answered the last time it was asked
(`available`), and how many times a connection lost to a failure was replaced
(`reconnects_total`). With several hosts in the URL (`target_session_attrs=read-write`),
each new connection goes to whichever host is the primary then, so a replacement after
a failover reaches the promoted standby by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from tokencli.store.postgres.connection import INSTALLED, _require_psycopg, connect
from tokencli.store.postgres.queries import PostgresStore

if TYPE_CHECKING:
    from tokencli.store.base import Backend, Store

if INSTALLED:
    from tokencli.store.postgres import conninfo
    from tokencli.store.postgres import schema as schema_module


def open_postgres(url: str, *, create: bool) -> PostgresStore | None:
    """Connect to `url` and check (or with `create`, make or upgrade) tokencli's schema.

    Returns None when the schema holds nothing of ours and `create` is False: read-only
    commands then behave as on an empty database, and nothing is created. An older schema
    of ours is upgraded either way (as SQLite upgrades an older file when opening it).
    """
    _require_psycopg()
    schema = schema_module.schema_from_env()
    info = conninfo.parse(url)
    store = PostgresStore(connect(info), info, schema)
    try:
        if store._prepare_schema(create=create):
            return store
    except BaseException:
        store.close()
        raise
    store.close()
    return None


class PostgresBackend:
    """A PostgreSQL database opened for `serve`: a new connection per store.

    The schema is checked and migrated once, here; nothing runs in the background (the
    database does its own upkeep), so upkeep is a no-op.
    """

    def __init__(self, url: str) -> None:
        _require_psycopg()
        schema = schema_module.schema_from_env()  # a bad name fails before connecting
        self._info = conninfo.parse(url)
        store = PostgresStore(connect(self._info), self._info, schema)
        try:
            store._prepare_schema(create=True)
        finally:
            store.close()
        self._schema = store.schema
        self._lock = threading.Lock()
        self._available = True
        self._lost = 0  # stores lost to a failure and not yet replaced
        self._reconnects = 0

    @property
    def location(self) -> str:
        """The URL as it may be printed (secrets as ***)."""
        return self._info.shown

    @property
    def inline(self) -> bool:
        """False: a round trip can wait seconds; the server answers on a thread."""
        return False

    def open_store(self) -> PostgresStore:
        """A new store on a new connection; StorageError if the database is unreachable."""
        try:
            connection = connect(self._info)
        except Exception:
            with self._lock:
                self._available = False
            raise
        with self._lock:
            self._available = True
            if self._lost:
                self._lost -= 1
                self._reconnects += 1
        return PostgresStore(connection, self._info, self._schema, on_lost=self._store_lost)

    def _store_lost(self) -> None:
        with self._lock:
            self._available = False
            self._lost += 1

    def start_upkeep(self, report: Callable[[str], None]) -> None:
        """Nothing to do: PostgreSQL vacuums and checkpoints on its own."""

    def stop_upkeep(self) -> None:
        """Nothing to stop."""

    def gauges(self) -> dict[str, float]:
        """`available`: 1 if the database answered when last asked (a store opened, or no
        store lost since), else 0; `reconnects_total`: lost connections replaced."""
        with self._lock:
            return {
                "available": 1.0 if self._available else 0.0,
                "reconnects_total": float(self._reconnects),
            }


if TYPE_CHECKING:  # mypy proves both classes keep the contracts of base.py

    def _conforms(store: PostgresStore, backend: PostgresBackend) -> tuple[Store, Backend]:
        return store, backend
