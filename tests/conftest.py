"""Shared fixtures: every test gets its own database file under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.service import TokenService
from tokencli.store import Store

from support import Clock

# PostgreSQL fixtures (postgres_cluster, postgres_schema, postgres_url): tests/pg_cluster.py.
pytest_plugins = ["pg_cluster"]


@pytest.fixture(autouse=True)
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TOKENCLI_DB at a fresh file so no test touches a real home folder."""
    path = tmp_path / "tokens.db"
    monkeypatch.setenv("TOKENCLI_DB", str(path))
    monkeypatch.delenv("NO_COLOR", raising=False)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    opened = Store.open(db_path, create=True)
    yield opened
    opened.close()


@pytest.fixture
def service(store: Store, clock: Clock) -> TokenService:
    return TokenService(store, clock)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
