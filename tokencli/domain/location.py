"""The one place that decides where the tokens are: a SQLite file or a PostgreSQL URL.

`--db` and `$TOKENCLI_DB` hold a location, never a `Path` (a path type would turn the
`//` of a URL into `/`). A URL's password is never shown: `shown` replaces it with ***.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

ENV_VAR = "TOKENCLI_DB"
URL_SCHEMES = ("postgresql://", "postgres://")
# user:password@ in the authority part of a URL; the password ends at the last @ before
# the host, so a password holding @ or : is hidden whole.
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z]+://[^/?#@:]*:)(?P<password>[^/?#]*)(?P<at>@)")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)


class Location(NamedTuple):
    """Where the database is: `path` for SQLite, `url` for PostgreSQL (one of them)."""

    path: Path | None = None
    url: str | None = None

    @property
    def shown(self) -> str:
        """The location as it may be printed: a URL's password replaced by ***."""
        if self.url is not None:
            return redact_url(self.url)
        return str(self.path)


def is_url(text: str) -> bool:
    """True for a PostgreSQL URL (postgresql:// or postgres://, any case)."""
    return text[:13].lower().startswith(URL_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with any password (in the authority or as ?password=) shown as ***."""
    shown = _URL_PASSWORD.sub(r"\g<head>***\g<at>", url, count=1)
    return _QUERY_PASSWORD.sub(r"\g<key>***", shown)


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
