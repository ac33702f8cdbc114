"""Shared fixtures: every test gets its own database under tmp_path, and servers it
starts are stopped when it ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokencli.service import TokenService
from tokencli.store.sqlite import SQLiteStore

from support import Clock, Served, start_server

# PostgreSQL fixtures (postgres_cluster, postgres_schema, postgres_url): tests/pg_cluster.py.
pytest_plugins = ["pg_cluster"]


@pytest.fixture(autouse=True)
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TOKENCLI_DB at a fresh file so no test touches a real home folder."""
    path = tmp_path / "tokens.db"
    monkeypatch.setenv("TOKENCLI_DB", str(path))
    for variable in ("NO_COLOR", "TOKENCLI_ADMIN_KEY", "TOKENCLI_VALIDATE_KEY"):
        monkeypatch.delenv(variable, raising=False)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore.open(db_path, create=True)
    yield opened
    opened.close()


@pytest.fixture
def service(store: SQLiteStore, clock: Clock) -> TokenService:
    return TokenService(store, clock)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def serve(db_path: Path) -> Iterator[Callable[..., Served]]:
    """Start real servers (over the test's database unless told otherwise); all are
    stopped when the test ends."""
    running: list[Served] = []

    def start(backend: Any = None, **options: Any) -> Served:
        served = start_server(backend if backend is not None else db_path, **options)
        running.append(served)
        return served

    yield start
    for served in running:
        served.stop()


@pytest.fixture(params=[0, 2], ids=["inline", "pool"])
def served(serve: Callable[..., Served], request: pytest.FixtureRequest) -> Served:
    """The server answering on its event loop, and with a pool of two workers."""
    return serve(workers=request.param)
