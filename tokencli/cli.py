"""The command line: parses arguments, calls the service, renders the answer.

No SQL and no token rules here: those live in store.py and service.py. Every command
runs inside `_exit_codes()`, which turns the foreseeable failures into a one-line
message on stderr and the exit code of DESIGN.md, so no traceback reaches a user.
"""

import contextlib
import copy
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tokencli import __version__, output
from tokencli.durations import DurationError, parse_duration
from tokencli.errors import ExitStatus, InvalidRequestError, TokencliError
from tokencli.location import database_path
from tokencli.service import ISSUE_BATCH_SIZE, TokenService
from tokencli.store import Store

ADMIN_KEY_ENV = "TOKENCLI_ADMIN_KEY"
# `issue --count` shows a progress bar on a terminal from this many tokens on, and then
# commits in smaller batches so the bar moves.
_PROGRESS_THRESHOLD = 5_000
_PROGRESS_BATCH = 10_000  # so --count 10000 stays one transaction
# Longest line `check` reads from stdin: a real token is 43 characters.
_MAX_STDIN_TOKEN = 4096

app = typer.Typer(
    name="tokencli",
    help="Issue, check, revoke, list and purge short-lived tokens in one SQLite file.",
    no_args_is_help=True,
    # Locals in a traceback could hold a plaintext token; and no traceback is expected.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class AppState:
    """What the root options decide for every command."""

    __slots__ = ("db_path",)

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path


def _error(message: str) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """Map foreseeable failures to a message on stderr and DESIGN.md's exit code."""
    try:
        yield
    except TokencliError as error:
        _error(str(error))
        raise typer.Exit(int(error.exit_status)) from None
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None


def _service(ctx: typer.Context, *, write: bool) -> TokenService:
    state: AppState = ctx.ensure_object(AppState)
    return TokenService(Store.open(state.db_path, create=write))


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"tokencli {__version__}\n")
        raise typer.Exit()


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except DurationError as error:
        raise typer.BadParameter(str(error)) from None


def _duration_option(help_text: str) -> Any:
    """A --ttl-style option: parsed by the duration parser, shown as DURATION in help."""
    return typer.Option(parser=_duration, metavar="DURATION", help=help_text)


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            metavar="PATH",
            help="Database file. Default: $TOKENCLI_DB, else tokens.db in the app data folder.",
            dir_okay=True,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Issue, check, revoke, list and purge short-lived tokens in one SQLite file.

    \b
    Examples:
      TOKEN=$(tokencli issue --ttl 15m --label deploy)
      tokencli check "$TOKEN"
      tokencli list
      tokencli purge --quiet        # in a crontab line
    """
    ctx.obj = AppState(db_path=database_path(db))


@app.command()
def issue(
    ctx: typer.Context,
    ttl: Annotated[
        int,
        _duration_option(
            "Lifetime: 90s, 15m, 2h, 7d, 1w, 1h30m; a bare number is seconds. At most 3650d."
        ),
    ] = "60m",  # type: ignore[assignment]  # parsed by _duration
    label: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT", help="Free text shown by list (up to 200 printable characters)."
        ),
    ] = None,
    uses: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Valid for this many successful checks (1: single-use). Default: unlimited.",
        ),
    ] = None,
    count: Annotated[
        int, typer.Option(metavar="N", help="How many tokens to issue (at most 1,000,000).")
    ] = 1,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per token, one per line.")
    ] = False,
) -> None:
    """Issue new tokens and print each one once, one per line.

    The token is shown only here: only a hash of it is stored.

    \b
    Examples:
      TOKEN=$(tokencli issue --ttl 15m)
      tokencli issue --ttl 1h --uses 1 --label "password reset for ada"
      tokencli issue --count 100 --ttl 7d --json > tokens.jsonl
    """
    with _exit_codes():
        service = _service(ctx, write=True)
        show_progress = count >= _PROGRESS_THRESHOLD and output.wants_rich(sys.stderr)
        batches = service.issue_batches(
            ttl_seconds=ttl,
            label=label,
            uses=uses,
            count=count,
            batch_size=_PROGRESS_BATCH if show_progress else ISSUE_BATCH_SIZE,
        )
        with output.progress(count, enabled=show_progress) as advance:
            for batch in batches:
                if json_output:
                    text = "\n".join(output.dumps(output.issued_json(issued)) for issued in batch)
                else:
                    text = "\n".join(issued.token for issued in batch)
                sys.stdout.write(text + "\n")
                advance(len(batch))
        sys.stdout.flush()


def _read_token_from_stdin() -> str:
    if sys.stdin is None:
        return ""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("Token: ", stream=sys.stderr)
    try:
        return sys.stdin.readline(_MAX_STDIN_TOKEN)
    except UnicodeDecodeError:
        return ""  # not text, so not a token: judged malformed


@app.command()
def check(
    ctx: typer.Context,
    token: Annotated[
        str | None,
        typer.Argument(
            metavar="[TOKEN]", help="The token; '-' or nothing reads it from standard input."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it.")
    ] = False,
) -> None:
    """Check a token: exit 0 if valid, 1 if not. A valid check uses up one use.

    Prints one of: valid, malformed, unknown, expired, revoked, used_up. Reading the
    token from standard input keeps it out of `ps` and shell history.

    \b
    Examples:
      printf '%s\\n' "$TOKEN" | tokencli check
      tokencli check "$TOKEN" --json
      if tokencli check -q "$TOKEN"; then echo ok; fi
    """
    with _exit_codes():
        text = _read_token_from_stdin() if token is None or token == "-" else token
        result = _service(ctx, write=False).check(text)
        if not quiet:
            line = output.dumps(output.check_json(result)) if json_output else result.state.value
            output.write_line(line)
        if not result.valid:
            raise typer.Exit(int(ExitStatus.NOT_VALID))


def _complete_live_ids(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Shell completion: live token IDs starting with what was typed, labels as help."""
    root = ctx.find_root()
    db_option = root.params.get("db")
    try:
        store = Store.open(database_path(db_option), create=False)
        try:
            return [
                (token_id, output.literal(label or ""))
                for token_id, label in TokenService(store).live_ids(incomplete)
            ]
        finally:
            store.close()
    except TokencliError:
        return []  # a completion must never print an error into the prompt


def _live_token_argument(help_text: str) -> Any:
    """An ID_OR_TOKEN argument that completes live token IDs in the shell."""
    return typer.Argument(metavar="ID_OR_TOKEN", help=help_text, autocompletion=_complete_live_ids)


@app.command()
def revoke(
    ctx: typer.Context,
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID_OR_TOKEN...",
            help="Token IDs or whole tokens.",
            autocompletion=_complete_live_ids,
        ),
    ],
) -> None:
    """Revoke tokens by ID (or whole token). Exit 1 if any is not there.

    A revoked token stays listed as revoked until the next purge.

    \b
    Examples:
      tokencli revoke 3kq7d2mxa4bz
      tokencli list --json | jq -r '.[] | select(.label=="ci") | .id' | xargs tokencli revoke
    """
    with _exit_codes():
        service = _service(ctx, write=True)
        missing = 0
        for id_or_token in ids:
            try:
                token_id = service.revoke(id_or_token)
            except TokencliError as error:
                if error.exit_status is not ExitStatus.NOT_VALID:
                    raise
                _error(str(error))
                missing += 1
                continue
            output.write_line(f"revoked {token_id}")
        if missing:
            raise typer.Exit(int(ExitStatus.NOT_VALID))


@app.command(name="list")
def list_tokens(
    ctx: typer.Context,
    all_tokens: Annotated[
        bool,
        typer.Option("--all", "-a", help="Also show expired, used-up and revoked tokens."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """List live tokens (never their secrets): a table on a terminal, tab-separated when piped.

    \b
    Examples:
      tokencli list
      tokencli list --all --json
    """
    with _exit_codes():
        service = _service(ctx, write=False)
        tokens = service.list_tokens(include_ended=all_tokens)
        if json_output:
            output.write_line(output.dumps([output.token_json(info) for info in tokens]))
        elif output.wants_rich(sys.stdout):
            output.write_rich_table(sys.stdout, tokens, service.now())
        else:
            output.write_plain_table(sys.stdout, tokens)


@app.command()
def purge(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    audit_retention: Annotated[
        int | None,
        _duration_option("Also drop audit events older than this, e.g. 90d."),
    ] = None,
) -> None:
    """Delete every expired, used-up and revoked token, and say how many.

    Prints nothing when there is nothing to purge, so it suits a crontab line.

    \b
    Examples:
      tokencli purge
      tokencli purge --dry-run --json
      tokencli purge --audit-retention 90d
      */10 * * * *  tokencli purge --quiet
    """
    with _exit_codes():
        result = _service(ctx, write=not dry_run).purge(
            dry_run=dry_run, audit_retention_seconds=audit_retention
        )
        if quiet:
            return
        if json_output:
            output.write_line(output.dumps(output.purge_json(result)))
        elif result.purged:
            verb = "would purge" if dry_run else "purged"
            noun = "token" if result.purged == 1 else "tokens"
            output.write_line(f"{verb} {result.purged} {noun}")


@app.command()
def renew(
    ctx: typer.Context,
    token_id: Annotated[
        str,
        _live_token_argument("The live token to extend."),
    ],
    ttl: Annotated[
        int,
        _duration_option("New lifetime, counted from now (at most 3650d)."),
    ] = "60m",  # type: ignore[assignment]  # parsed by _duration
    json_output: Annotated[bool, typer.Option("--json", help="Print the token as JSON.")] = False,
) -> None:
    """Give a live token a new expiry, TTL from now. Exit 1 if it is unknown or not live.

    \b
    Examples:
      tokencli renew 3kq7d2mxa4bz --ttl 2h
      tokencli renew "$TOKEN" --ttl 7d --json
    """
    with _exit_codes():
        info = _service(ctx, write=True).renew(token_id, ttl)
        if json_output:
            output.write_line(output.dumps(output.token_json(info)))
        else:
            output.write_line(f"renewed {info.id} until {output.iso_time(info.expires_at)}")


@app.command()
def rotate(
    ctx: typer.Context,
    token_id: Annotated[
        str,
        _live_token_argument("The live token to replace."),
    ],
    grace: Annotated[
        int,
        _duration_option("How long the old token stays valid (default: not at all)."),
    ] = "0s",  # type: ignore[assignment]  # parsed by _duration
    ttl: Annotated[
        int | None,
        _duration_option("Lifetime of the new token (default: the old token's lifetime)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the new token as JSON.")
    ] = False,
) -> None:
    """Issue a replacement with the same label and use limit and print it once; the old
    token expires after the grace period. Exit 1 if the old one is unknown or not live.

    \b
    Examples:
      NEW=$(tokencli rotate 3kq7d2mxa4bz --grace 10m)
      tokencli rotate "$OLD" --ttl 30d --json
    """
    with _exit_codes():
        issued = _service(ctx, write=True).rotate(token_id, grace_seconds=grace, ttl_seconds=ttl)
        if json_output:
            output.write_line(output.dumps(output.issued_json(issued)))
        else:
            output.write_line(issued.token)


@app.command()
def stats(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Counts of live, expired, used-up and revoked tokens, the next expiry, the file.

    \b
    Examples:
      tokencli stats
      tokencli stats --json | jq .live
    """
    with _exit_codes():
        service = _service(ctx, write=False)
        report = service.stats()
        if json_output:
            output.write_line(output.dumps(output.stats_json(report)))
        else:
            output.write_stats(sys.stdout, report, service.now())


@app.command()
def audit(
    ctx: typer.Context,
    since: Annotated[
        int | None,
        _duration_option("Only events this recent, e.g. 1d."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help="Only events about this token.", autocompletion=_complete_live_ids
        ),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most N events (the newest).")] = 100,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """Show the audit trail: every issue, check, revoke, renew, rotate and purge.

    Events carry time, action, token ID, outcome and source (cli or http); never a secret.

    \b
    Examples:
      tokencli audit --since 1d
      tokencli audit --token 3kq7d2mxa4bz --json
    """
    with _exit_codes():
        service = _service(ctx, write=False)
        events = service.audit(since_seconds=since, token_id=token, limit=limit)
        if json_output:
            output.write_line(output.dumps([output.event_json(event) for event in events]))
        elif output.wants_rich(sys.stdout):
            output.write_rich_events(sys.stdout, events, service.now())
        else:
            output.write_plain_events(sys.stdout, events)


def _admin_key(key_file: Path | None) -> str | None:
    """The admin key from --admin-key-file, else $TOKENCLI_ADMIN_KEY, else None."""
    if key_file is None:
        return os.environ.get(ADMIN_KEY_ENV) or None
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequestError(f"cannot read admin key file {key_file}: {error}") from None
    if not key:
        raise InvalidRequestError(f"admin key file {key_file} is empty")
    if key_file.stat().st_mode & 0o077:
        _warn(f"admin key file {key_file} is readable by others; chmod 600 it")
    return key


def _warn(message: str) -> None:
    sys.stderr.write(f"Warning: {message}\n")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help=f"File holding the admin key (else ${ADMIN_KEY_ENV}). "
            "With a key, issuing and purging need 'Authorization: Bearer KEY'.",
        ),
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(help="Allow a non-loopback --host with no admin key."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help="Worker threads answering requests; 0 answers them on the event loop "
            "(fastest here, see docs/benchmarks.md).",
        ),
    ] = 0,
) -> None:
    """Serve the token API over HTTP (the original service's endpoints).

    Prints 'listening on http://HOST:PORT' to stderr once bound; one access-log line per
    request follows, with token secrets redacted. SIGINT or SIGTERM stops it cleanly.

    \b
    Examples:
      tokencli serve
      tokencli serve --port 0
      TOKENCLI_ADMIN_KEY=... tokencli serve --host 0.0.0.0 --port 8080
      curl -X POST http://127.0.0.1:8000/app/token -H 'Content-Type: application/json'
    """
    with _exit_codes():
        from tokencli.server import is_loopback, make_server

        admin_key = _admin_key(admin_key_file)
        if admin_key is None and not is_loopback(host) and not allow_unauthenticated:
            raise InvalidRequestError(
                f"refusing to listen on {host} with no admin key: set ${ADMIN_KEY_ENV} or "
                "--admin-key-file, or pass --allow-unauthenticated"
            )
        state: AppState = ctx.ensure_object(AppState)
        db_path = state.db_path
        Store.open(db_path, create=True).close()  # a bad file fails now, not per request
        write_lock = threading.Lock()

        def open_service() -> TokenService:
            store = Store.open(db_path, create=True, write_lock=write_lock)
            return TokenService(store, source="http")

        try:
            server = make_server(
                open_service,
                host,
                port,
                admin_key=admin_key,
                access_log=None if quiet else sys.stderr,
                workers=workers,
            )
        except OSError as error:
            raise InvalidRequestError(
                f"cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None
        _raise_open_file_limit()
        stop = threading.Event()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, lambda *_: stop.set())
        worker = threading.Thread(target=server.serve_forever, name="event-loop", daemon=True)
        worker.start()
        sys.stderr.write(f"listening on {server.url}\n")
        sys.stderr.flush()
        while not stop.wait(0.5):
            pass
        sys.stderr.write("stopping: finishing requests in flight\n")
        sys.stderr.flush()
        server.stop()
        worker.join(timeout=5)


def _raise_open_file_limit() -> None:
    """Each client connection is a file descriptor; allow as many as the system lets us."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            wanted = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass  # not fatal: the server pauses accepting when it runs out


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


def _app_for(argv: list[str]) -> typer.Typer:
    """The app, trimmed to the one command being run.

    Typer builds every command's parser before running any; trimming the others saves
    a third of what tokencli adds to Python's start-up (docs/benchmarks.md).
    """
    name = _command_named(argv)
    if name is None or "_TOKENCLI_COMPLETE" in os.environ:
        return app
    chosen = [
        info
        for info in app.registered_commands
        if (info.name or getattr(info.callback, "__name__", "").replace("_", "-")) == name
    ]
    if not chosen:
        return app
    trimmed = copy.copy(app)
    trimmed.registered_commands = chosen
    return trimmed


def main() -> None:
    """Console-script entry point."""
    try:
        _app_for(sys.argv[1:])()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(int(ExitStatus.INTERRUPTED))
