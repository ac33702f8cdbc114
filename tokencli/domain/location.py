"""The one place that decides where the tokens are: a SQLite file or a PostgreSQL URL.

`--db` and `$TOKENCLI_DB` hold a location, never a `Path` (a path type would turn the
`//` of a URL into `/`). A URL is kept exactly as typed, for libpq to read; what of it may
be printed is decided by libpq's own reading of it (`store.factory.shown`), never here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

ENV_VAR = "TOKENCLI_DB"
URL_SCHEMES = ("postgresql://", "postgres://")


class Location(NamedTuple):
    """Where the database is: `path` for SQLite, `url` for PostgreSQL (one of them)."""

    path: Path | None = None
    url: str | None = None


def is_url(text: str) -> bool:
    """True for a PostgreSQL URL (postgresql:// or postgres://, any case)."""
    return text[:13].lower().startswith(URL_SCHEMES)


def parse_location(text: str) -> Location:
    """A location from what a user typed: a URL stays as it is; a path is expanded (~)."""
    if is_url(text):
        return Location(url=text)
    return Location(path=Path(text).expanduser())


def database_location(option: str | None) -> Location:
    """`--db`, else $TOKENCLI_DB, else tokens.db in the user's application data folder."""
    if option:
        return parse_location(option)
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return parse_location(from_env)
    import typer  # already loaded by the CLI; imported here to keep this module light

    return Location(path=Path(typer.get_app_dir("tokencli")) / "tokens.db")
