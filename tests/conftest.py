"""Shared fixtures: every test gets its own database, and servers it starts are stopped
when it ends.

Both stores, one suite. The database of a test is its `location`: a SQLite file under
tmp_path, or (for tests marked to run on both stores) also a schema of its own in the
session's throwaway PostgreSQL cluster. Everything built on it follows:

- `location` (autouse): the Location, with TOKENCLI_DB (and TOKENCLI_PG_SCHEMA) pointing
  at it, so `runner.invoke(app, ...)` and the installed `tokencli` use it too;
- `store`, `service`: a store opened on it, and the service over that store;
- `make_service`: more services on the same database (another clock, another source);
- `raw`: the same database seen from outside tokencli (tests/databases.py);
- `serve`: real servers over it.

Which stores a test runs on is the marker `stores`, closest first:
`pytestmark = pytest.mark.stores("sqlite", "postgres")` on a module of behaviour tests,
`@pytest.mark.stores("sqlite", reason=...)` on a test about SQLite files themselves. With
no marker a test runs on SQLite only (the default store). Test IDs end in [sqlite] or
[postgres] when a test runs on both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokencli.domain.location import Location
from tokencli.service.service import TokenService
from tokencli.store.base import Store
from tokencli.store.factory import open_store
from tokencli.store.sqlite.queries import SQLiteStore

from databases import PostgresSchema, RawDatabase, SQLiteFile
from support import Clock, Served, start_server

# PostgreSQL fixtures (postgres_cluster, postgres_schema, postgres_url, own_postgres_cluster):
# tests/pg_cluster.py.
pytest_plugins = ["pg_cluster"]

STORE_KINDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stores(*kinds, reason=None): the stores the test runs on, of 'sqlite' and"
        " 'postgres' (the closest marker wins; none: sqlite only)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests marked `stores("sqlite", "postgres")` once on each store."""
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is None or "location" not in metafunc.fixturenames:
        return
    kinds = tuple(marker.args)
    unknown = set(kinds) - set(STORE_KINDS)
    if not kinds or unknown:
        raise pytest.UsageError(f"stores({', '.join(map(repr, kinds))}): use {STORE_KINDS}")
    if kinds == ("sqlite",):
        return  # the default: no parameter, no [sqlite] in the test's ID
    metafunc.parametrize("location", kinds, indirect=True)


@pytest.fixture
def on_file(db_path: Path) -> Iterator[TokenService]:
    """The service over the file the CLI uses (TOKENCLI_DB), on the wall clock as the CLI."""
    store = SQLiteStore.open(db_path, create=True)
    yield TokenService(store)
    store.close()


@pytest.fixture(autouse=True)
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TOKENCLI_DB at a fresh file so no test touches a real home folder."""
    path = tmp_path / "tokens.db"
    monkeypatch.setenv("TOKENCLI_DB", str(path))
    for variable in (
        "NO_COLOR",
        "TOKENCLI_ADMIN_KEY",
        "TOKENCLI_VALIDATE_KEY",
        "TOKENCLI_PG_SCHEMA",
    ):
        monkeypatch.delenv(variable, raising=False)
    return path


@pytest.fixture(autouse=True)
def location(
    request: pytest.FixtureRequest, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Location:
    """The test's database: `db_path`, or on PostgreSQL a schema of the test's own."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        return Location(path=db_path)
    url: str = request.getfixturevalue("postgres_url")  # sets TOKENCLI_PG_SCHEMA
    monkeypatch.setenv("TOKENCLI_DB", url)
    return Location(url=url)


@pytest.fixture
def raw(location: Location, request: pytest.FixtureRequest) -> RawDatabase:
    """The test's database seen from outside tokencli."""
    if location.url is None:
        assert location.path is not None
        return SQLiteFile(location.path)
    return PostgresSchema(
        request.getfixturevalue("postgres_cluster"),
        location.url,
        request.getfixturevalue("postgres_schema"),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(location: Location) -> Iterator[Store]:
    opened = open_store(location, create=True)
    yield opened
    opened.close()


@pytest.fixture
def service(store: Store, clock: Clock) -> TokenService:
    return TokenService(store, clock)


@pytest.fixture
def make_service(location: Location) -> Iterator[Callable[..., TokenService]]:
    """Services on the test's database, each on a store of its own, closed at the end."""
    opened: list[Store] = []

    def make(clock: Callable[[], float] | None = None, *, source: str = "cli") -> TokenService:
        store = open_store(location, create=True)
        opened.append(store)
        return TokenService(store, clock or Clock(), source=source)

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def serve(location: Location) -> Iterator[Callable[..., Served]]:
    """Start real servers (over the test's database unless told otherwise); all are
    stopped when the test ends."""
    running: list[Served] = []

    def start(where: Location | Path | None = None, **options: Any) -> Served:
        served = start_server(where if where is not None else location, **options)
        running.append(served)
        return served

    yield start
    for served in running:
        served.stop()


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    """A server over the test's database: answering on its event loop over SQLite, on its
    store thread over PostgreSQL."""
    return serve()
