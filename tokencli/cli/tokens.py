"""Commands about single tokens: issue, check, show, revoke, renew, rotate."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tokencli.cli import output
from tokencli.cli.base import (
    app,
    checker,
    complete_live_ids,
    complete_scopes,
    duration_option,
    duration_text,
    error,
    exit_codes,
    json_option,
    reader,
    service,
    warn,
)
from tokencli.cli.selectors import selector_options_filter
from tokencli.domain import tokens
from tokencli.domain.errors import (
    ExitStatus,
    InvalidRequestError,
    NoPermissionError,
    NotFoundError,
)
from tokencli.domain.model import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    CheckResult,
    TokenInfo,
    TokenState,
)
from tokencli.domain.rules import validate_scopes
from tokencli.service import views
from tokencli.service.reader import parse_presented
from tokencli.service.service import ISSUE_BATCH_SIZE

# `issue --count` shows a progress bar from this many tokens on, when the tokens go to a
# file or a pipe and stderr is a terminal; it then commits in smaller batches so the bar
# moves.
_PROGRESS_THRESHOLD = 5_000
_PROGRESS_BATCH = 10_000  # so --count 10000 stays one transaction
# Longest line `check` reads from stdin (a real token is 43 characters), and how many
# blank lines it skips before the token.
_MAX_STDIN_TOKEN = 4096
_MAX_BLANK_LINES = 100

ScopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        metavar="NAME",
        help="A scope (repeatable): 1-64 of a-z 0-9 : . _ -",
        autocompletion=complete_scopes,
    ),
]


@app.command()
def issue(
    ctx: typer.Context,
    ttl: Annotated[
        int,
        duration_option(
            "Lifetime: 90s, 15m, 2h, 7d, 1w, 1h30m; a bare number is seconds. "
            f"At most {duration_text(MAX_TTL_SECONDS)}."
        ),
    ] = duration_text(DEFAULT_TTL_SECONDS),  # type: ignore[assignment]  # parsed by the option
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
    scope: ScopeOption = None,
    count: Annotated[
        int, typer.Option(metavar="N", help="How many tokens to issue (at most 1,000,000).")
    ] = 1,
    json_output: Annotated[bool, json_option("One JSON object per token, one per line.")] = False,
) -> None:
    """Issue new tokens and print each one once, one per line.

    The token is shown only here: only a hash of it is stored. A token holds up to 32
    scopes; `check --scope` then requires them.

    \b
    Examples:
      TOKEN=$(tokencli issue --ttl 15m)
      tokencli issue --ttl 1h --uses 1 --label "password reset for ada"
      tokencli issue --scope deploy --scope read:logs --label ci
      tokencli issue --count 100 --ttl 7d --json > tokens.jsonl
    """
    with exit_codes(), service(ctx) as issuing:
        # Not when the tokens go to the terminal too: they scroll there, and a bar
        # redrawn between them would garble both.
        show_progress = (
            count >= _PROGRESS_THRESHOLD
            and output.wants_rich(sys.stderr)
            and not sys.stdout.isatty()
        )
        batches = issuing.issue_batches(
            ttl_seconds=ttl,
            label=label,
            uses=uses,
            scopes=scope or (),
            count=count,
            batch_size=_PROGRESS_BATCH if show_progress else ISSUE_BATCH_SIZE,
        )
        with output.progress(count, enabled=show_progress) as advance:
            for batch in batches:
                if json_output:
                    text = "\n".join(
                        views.encode_json(views.issued_json(issued)) for issued in batch
                    )
                else:
                    text = "\n".join(issued.token for issued in batch)
                sys.stdout.write(text + "\n")
                advance(len(batch))
        sys.stdout.flush()


# What `check` judges when standard input is not text: not a token, so malformed.
_NOT_TEXT = "\ufffd"


def _read_token_from_stdin() -> str:
    """The first non-blank line of standard input (a prompt without echo on a terminal);
    "" when there is none."""
    if sys.stdin is None:
        return ""
    if sys.stdin.isatty():
        import getpass

        try:
            return getpass.getpass("Token: ", stream=sys.stderr)
        except EOFError:
            return ""
    try:
        for _ in range(_MAX_BLANK_LINES):
            line = sys.stdin.readline(_MAX_STDIN_TOKEN)
            if not line or tokens.strip(line):
                return line
    except UnicodeDecodeError:
        return _NOT_TEXT
    return ""


@app.command()
def check(
    ctx: typer.Context,
    token: Annotated[
        str | None,
        typer.Argument(
            metavar="[TOKEN]", help="The token; '-' or nothing reads it from standard input."
        ),
    ] = None,
    scope: ScopeOption = None,
    json_output: Annotated[bool, json_option()] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code says it.")
    ] = False,
) -> None:
    """Check a token: exit 0 if valid, 1 if not. A valid check uses up one use.

    Prints one of: valid, malformed, unknown, expired, revoked, used_up,
    insufficient_scope (a --scope the token lacks; no use is taken then). Reading the
    token from standard input keeps it out of `ps` and shell history. A check records
    its use and an audit event, so it needs write access; `show` looks without writing.

    \b
    Examples:
      printf '%s\\n' "$TOKEN" | tokencli check
      tokencli check --scope deploy "$TOKEN" --json
      if tokencli check -q "$TOKEN"; then echo ok; fi
    """
    with exit_codes():
        required = validate_scopes(scope or (), limit=None)
        text = _read_token_from_stdin() if token is None or token == "-" else token
        if not tokens.strip(text):
            raise InvalidRequestError(
                "no token given: pass it as the argument, or on standard input"
            )
        result = _check(ctx, text, required)
        if not quiet:
            line = (
                views.encode_json(views.check_json(result)) if json_output else result.state.value
            )
            output.write_line(line)
        if not result.valid:
            raise typer.Exit(int(ExitStatus.NOT_VALID))


def _check(ctx: typer.Context, text: str, required: tuple[str, ...]) -> CheckResult:
    """The verdict on `text`, its use and audit event recorded.

    A malformed token is judged by its shape, without a lookup: on a database the user may
    only read, it is still `malformed` (exit 1), with a warning that the check could not be
    recorded. A database that is not usable at all (damaged, foreign) stays exit 3.
    """
    try:
        # A missing database reads as empty (unknown), and nothing is created.
        with checker(ctx) as checking:
            return checking.check(text, required)
    except NoPermissionError as failure:
        if parse_presented(text) is None:
            warn(f"the check was not recorded in the audit trail: {failure}")
            return CheckResult(TokenState.MALFORMED)
        raise NoPermissionError(
            f"{failure}: a check records its use and an audit event; "
            "`tokencli show` looks without writing"
        ) from None


@app.command()
def show(
    ctx: typer.Context,
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID_OR_TOKEN...",
            help="Token IDs or whole tokens.",
            autocompletion=complete_live_ids,
        ),
    ],
    json_output: Annotated[bool, json_option("One JSON object per token, one per line.")] = False,
) -> None:
    """Show tokens without using them: no use taken, nothing written. Exit 1 if any is
    not there (the others are still shown).

    \b
    Examples:
      tokencli show 3kq7d2mxa4bz
      tokencli show "$TOKEN" --json | jq .uses_left
    """
    with exit_codes(), reader(ctx) as looking:
        found: list[TokenInfo] = []
        missing = 0
        for id_or_token in ids:
            try:
                found.append(looking.show(id_or_token))
            except NotFoundError as failure:
                error(str(failure))
                missing += 1
        if json_output:
            output.write_json_lines(sys.stdout, map(views.token_json_text, found))
        elif found and output.wants_rich(sys.stdout):
            output.write_rich_table(sys.stdout, found, looking.now())
        elif found:
            output.write_plain_table(sys.stdout, found)
        if missing:
            raise typer.Exit(int(ExitStatus.NOT_VALID))


@app.command()
def revoke(
    ctx: typer.Context,
    ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID_OR_TOKEN]...",
            help="Token IDs or whole tokens.",
            autocompletion=complete_live_ids,
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Every live token with this label.")
    ] = None,
    scope: ScopeOption = None,
    all_tokens: Annotated[
        bool,
        typer.Option(
            "--all", help="Every live token: asks first on a terminal; without one, needs --yes."
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --all.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be revoked; change nothing.")
    ] = False,
) -> None:
    """Revoke tokens by ID (or whole token), or every live token a selector matches.

    Selectors (--label, --scope, --all) combine with AND and revoke in one transaction.
    Prints `revoked ID` per token. Exit 1 if a named ID is not there; a selector that
    matches nothing is fine (exit 0). A revoked token stays listed until the next purge.

    \b
    Examples:
      tokencli revoke 3kq7d2mxa4bz
      tokencli revoke --label ci-runner-17 --dry-run
      tokencli revoke --scope deploy
      tokencli revoke --all --yes
    """
    with exit_codes():
        selector = selector_options_filter(label=label, scopes=scope)
        if not ids and selector is None and not all_tokens:
            raise InvalidRequestError("name tokens to revoke, or --label, --scope or --all")
        if all_tokens and selector is None:
            selector = selector_options_filter(everything=True)
        if all_tokens and not yes and not dry_run:
            if sys.stdin is None or not sys.stdin.isatty():
                # Never every token on the strength of /dev/null or a closed stdin (cron).
                raise InvalidRequestError(
                    "--all revokes every live token, and there is no terminal to ask on; "
                    "pass --yes to do it (or --dry-run to see what it would revoke)"
                )
            if not _confirmed("Revoke every live token?"):
                raise typer.Exit(int(ExitStatus.OK))
        if dry_run:
            with reader(ctx) as previewing:
                revoked, missing = previewing.would_revoke(ids or (), selector)
        else:
            with service(ctx) as revoking:
                revoked, missing = revoking.revoke_many(ids or (), selector)
        for failure in missing:
            error(str(failure))
        verb = "would revoke" if dry_run else "revoked"
        sys.stdout.write("".join(f"{verb} {token_id}\n" for token_id in revoked))
        if missing:
            raise typer.Exit(int(ExitStatus.NOT_VALID))


def _confirmed(question: str) -> bool:
    """Ask on stderr and read the answer from the terminal; only y or yes is yes.

    Not click's prompt: it turns Ctrl-C into "Aborted!" and exit 1, where Ctrl-C is 130
    everywhere else (`exit_codes()` maps the KeyboardInterrupt). End of input is no.
    """
    sys.stderr.write(f"{question} [y/N]: ")
    sys.stderr.flush()
    answer = sys.stdin.readline(256)
    if not answer:
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


@app.command()
def renew(
    ctx: typer.Context,
    token_id: Annotated[
        str,
        typer.Argument(
            metavar="ID_OR_TOKEN",
            help="The live token to extend.",
            autocompletion=complete_live_ids,
        ),
    ],
    ttl: Annotated[
        int,
        duration_option(
            f"New lifetime, counted from now (at most {duration_text(MAX_TTL_SECONDS)})."
        ),
    ] = duration_text(DEFAULT_TTL_SECONDS),  # type: ignore[assignment]  # parsed by the option
    json_output: Annotated[bool, json_option("Print the token as JSON.")] = False,
) -> None:
    """Give a live token a new expiry, TTL from now. Exit 1 if it is unknown or not live.

    \b
    Examples:
      tokencli renew 3kq7d2mxa4bz --ttl 2h
      tokencli renew "$TOKEN" --ttl 7d --json
    """
    with exit_codes(), service(ctx) as renewing:
        info = renewing.renew(token_id, ttl)
        if json_output:
            output.write_line(views.encode_json(views.token_json(info)))
        else:
            output.write_line(f"renewed {info.id} until {views.iso_time(info.expires_at)}")


@app.command()
def rotate(
    ctx: typer.Context,
    token_id: Annotated[
        str,
        typer.Argument(
            metavar="ID_OR_TOKEN",
            help="The live token to replace.",
            autocompletion=complete_live_ids,
        ),
    ],
    grace: Annotated[
        int, duration_option("How long the old token stays valid after the rotation.")
    ] = duration_text(0),  # type: ignore[assignment]  # parsed by the option
    ttl: Annotated[
        int | None,
        duration_option("Lifetime of the new token (default: the old token's lifetime)."),
    ] = None,
    json_output: Annotated[bool, json_option("Print the new token as JSON.")] = False,
) -> None:
    """Issue a replacement with the same label, use limit and scopes and print it once;
    the old token expires after the grace period. Exit 1 if the old one is not live.

    \b
    Examples:
      NEW=$(tokencli rotate 3kq7d2mxa4bz --grace 10m)
      tokencli rotate "$OLD" --ttl 30d --json
    """
    with exit_codes(), service(ctx) as rotating:
        issued = rotating.rotate(token_id, grace_seconds=grace, ttl_seconds=ttl)
        if json_output:
            output.write_line(views.encode_json(views.issued_json(issued)))
        else:
            output.write_line(issued.token)
