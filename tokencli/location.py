"""The one place that decides where the database file is."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TOKENCLI_DB"


def database_path(option: Path | None) -> Path:
    """`--db`, else $TOKENCLI_DB, else tokens.db in the user's application data folder."""
    if option is not None:
        return option.expanduser()
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    import typer  # already loaded by the CLI; imported here to keep this module light

    return Path(typer.get_app_dir("tokencli")) / "tokens.db"
