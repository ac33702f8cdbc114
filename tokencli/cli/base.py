"""The Typer app, its root options, and what every command shares.

Commands live in `tokens.py` (issue, check, show, revoke, renew, rotate), `tables.py`
(list, purge, stats, audit, export, import), `completion.py` and `serve.py`. `main()`
imports only the module of the command on the line, and builds only that command's
parser: start-up time is most of what a `check` costs (docs/benchmarks.md).

Every command runs inside `exit_codes()`, which turns the foreseeable failures into a
one-line message on stderr and the exit code of docs/design.md, so no traceback reaches
a user.

A command opens the narrowest role it needs: `reader()` (a `TokenReader`: read-only,
never creates a database, has no method that writes) for list, show, stats, audit,
export, the dry runs and completion; `checker()` for check; `service()` for the rest.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from tokencli import __version__
from tokencli.domain.durations import UNIT_SECONDS, DurationError, parse_duration
from tokencli.domain.errors import ExitStatus, TokencliError
from tokencli.domain.location import Location, database_location
from tokencli.service.checking import TokenChecker
from tokencli.service.reader import TokenReader
from tokencli.service.service import TokenService
from tokencli.store.factory import shown

# Which module defines each command, so `main()` imports just that one.
COMMAND_MODULES = {
    "issue": "tokens",
    "check": "tokens",
    "show": "tokens",
    "revoke": "tokens",
    "renew": "tokens",
    "rotate": "tokens",
    "list": "tables",
    "purge": "tables",
    "stats": "tables",
    "audit": "tables",
    "export": "tables",
    "import": "tables",
    "completion": "completion",
    "serve": "serve",
}

# The status of a command whose output was closed early (`tokencli list | head -2`): what
# `seq` and `cat` give there, 128 + SIGPIPE, so a shell sees the same as for them.
CLOSED_PIPE_STATUS = 141

app = typer.Typer(
    name="tokencli",
    help="Issue, check, revoke, list and purge short-lived tokens in SQLite or PostgreSQL.",
    no_args_is_help=True,
    # Locals in a traceback could hold a plaintext token; and no traceback is expected.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    # Typer's --install-completion writes scripts that `eval` what tokencli prints:
    # `tokencli completion SHELL` prints ours (completion.py).
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class AppState:
    """What the root options decide for every command."""

    __slots__ = ("location",)

    def __init__(self, location: Location) -> None:
        self.location = location


def error(message: str) -> None:
    """One line on stderr, prefixed `Error:`."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    """One line on stderr, prefixed `Warning:`."""
    sys.stderr.write(f"Warning: {message}\n")
    sys.stderr.flush()


def note(message: str) -> None:
    """One line on stderr, prefixed `Note:`: worth knowing, nothing failed."""
    sys.stderr.write(f"Note: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Map foreseeable failures to a message on stderr and docs/design.md's exit code."""
    try:
        yield
    except TokencliError as failure:
        error(str(failure))
        raise typer.Exit(int(failure.exit_status)) from None
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None
    except BrokenPipeError:
        # The reader went away (`| head`): end quietly, with no traceback and no flush
        # at exit that could raise again.
        _discard_stdout()
        raise typer.Exit(CLOSED_PIPE_STATUS) from None


def location_of(ctx: typer.Context) -> Location:
    """The database location the root options chose."""
    state: AppState = ctx.ensure_object(AppState)
    return state.location


@contextlib.contextmanager
def reader(ctx: typer.Context) -> Iterator[TokenReader]:
    """A `TokenReader` over the chosen database: read-only, creates nothing (a missing
    database reads as empty, with a note on stderr)."""
    with TokenReader.open(location_of(ctx)) as reading:
        _note_if_missing(reading, ctx)
        yield reading


@contextlib.contextmanager
def checker(ctx: typer.Context) -> Iterator[TokenChecker]:
    """A `TokenChecker` over the chosen database: writes a check's use and audit event,
    creates nothing (on a missing database every token is unknown; a note says so)."""
    with TokenChecker.open(location_of(ctx)) as checking:
        _note_if_missing(checking, ctx)
        yield checking


def service(ctx: typer.Context) -> contextlib.AbstractContextManager[TokenService]:
    """The full `TokenService` over the chosen database, created if it is missing."""
    return TokenService.open(location_of(ctx))


def _note_if_missing(opened: TokenReader, ctx: typer.Context) -> None:
    # Exit 0 with a note rather than exit 3: a script that lists or checks before the
    # first token is issued works, and a mistyped --db is still seen (docs/design.md).
    if not opened.database_exists:
        note(f"no database at {shown(location_of(ctx))} yet; read as empty")


def parse_duration_option(text: str) -> int:
    """A duration option's value in seconds, or a usage error."""
    try:
        return parse_duration(text)
    except DurationError as failure:
        raise typer.BadParameter(str(failure)) from None


def duration_text(seconds: int) -> str:
    """A duration as help texts write it, defaults included: a whole number of the
    largest unit that divides it (90d, 1h, 3650d, 0s), so one value reads one way."""
    if seconds == 0:
        return "0s"
    unit, size = next((unit, size) for unit, size in UNIT_SECONDS.items() if seconds % size == 0)
    return f"{seconds // size}{unit}"


def duration_option(help_text: str, *names: str) -> Any:
    """A --ttl-style option: parsed by the duration parser, shown as DURATION in help."""
    return typer.Option(*names, parser=parse_duration_option, metavar="DURATION", help=help_text)


def json_option(help_text: str = "Print one JSON object.") -> Any:
    """The --json flag every printing command takes."""
    return typer.Option("--json", help=help_text)


def complete_live_ids(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Shell completion: live token IDs starting with what was typed, labels as help
    (completion.py turns them into inert lines of data)."""
    try:
        with _completion_reader(ctx) as completing:
            return [(token_id, label or "") for token_id, label in completing.live_ids(incomplete)]
    except TokencliError:
        return []  # a completion must never print an error into the prompt


def complete_scopes(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: scope names held by live tokens."""
    try:
        with _completion_reader(ctx) as completing:
            return completing.scopes_in_use(incomplete)
    except TokencliError:
        return []


def _completion_reader(ctx: typer.Context) -> contextlib.AbstractContextManager[TokenReader]:
    db_option = ctx.find_root().params.get("db")
    return TokenReader.open(database_location(db_option))


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"tokencli {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="LOCATION",
            help="Database: a file path (SQLite) or a postgresql:// URL. "
            "Default: $TOKENCLI_DB, else tokens.db in the app data folder.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Issue, check, revoke, list and purge short-lived tokens in SQLite or PostgreSQL.

    \b
    Examples:
      TOKEN=$(tokencli issue --ttl 15m --label deploy --scope deploy)
      tokencli check --scope deploy "$TOKEN"
      tokencli list --expiring-within 1d
      tokencli purge --quiet        # in a crontab line
      tokencli --db postgresql://tokencli@db.internal/tokens stats
    """
    ctx.obj = AppState(database_location(db))


def _command_named(argv: list[str]) -> str | None:
    """The subcommand on the command line, skipping the root options; None if unsure."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--db":
            index += 2
        elif word.startswith("--db="):
            index += 1
        elif word.startswith("-"):
            return None  # --help, --version, completion flags, typos: the full app answers
        else:
            return word
    return None


def load_commands(name: str | None = None) -> typer.Typer:
    """Register the command `name` (every command when None or unknown); return the app.

    With one name, the app is trimmed to that command: Typer builds every registered
    command's parser before running one.
    """
    module = COMMAND_MODULES.get(name or "")
    if module is None or "_TOKENCLI_COMPLETE" in os.environ:
        for every in dict.fromkeys(COMMAND_MODULES.values()):
            importlib.import_module(f"tokencli.cli.{every}")
        return app
    importlib.import_module(f"tokencli.cli.{module}")
    chosen = [info for info in app.registered_commands if _command_name(info) == name]
    trimmed = copy.copy(app)
    trimmed.registered_commands = chosen
    return trimmed


def _command_name(info: Any) -> str:
    return str(info.name or getattr(info.callback, "__name__", "").replace("_", "-"))


def main() -> None:
    """Console-script entry point."""
    try:
        load_commands(_command_named(sys.argv[1:]))()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(int(ExitStatus.INTERRUPTED))
    except SystemExit:
        # Output still buffered is written now, while a closed pipe can still be told
        # apart: at interpreter exit it would print "Exception ignored" and exit 120.
        if not _flushed(sys.stdout):
            sys.exit(CLOSED_PIPE_STATUS)
        raise


def _flushed(stream: Any) -> bool:
    """Flush stdout; False when its reader has gone (then it points at /dev/null)."""
    if stream is None:
        return True
    try:
        stream.flush()
    except BrokenPipeError:
        _discard_stdout()
        return False
    return True


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so what is still buffered for a closed pipe goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
