"""The command line: parses arguments, calls the service, renders the answer.

No SQL and no token rules here: those live in the store and the service. `app` (every
command registered) and `main` are loaded on first use, so `python -m tokencli check`
imports only the module of the command it runs.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from tokencli.cli.base import load_commands

        return load_commands()
    if name == "main":
        from tokencli.cli.base import main

        return main
    raise AttributeError(name)
