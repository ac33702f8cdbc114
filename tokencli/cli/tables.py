"""Commands over many tokens: list, purge, stats, audit, export, import."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from tokencli.cli import output
from tokencli.cli.base import (
    app,
    complete_live_ids,
    complete_scopes,
    duration_option,
    duration_text,
    exit_codes,
    json_option,
    parse_duration_option,
    reader,
    service,
)
from tokencli.domain.errors import InvalidRequestError
from tokencli.domain.model import DEFAULT_AUDIT_RETENTION_SECONDS, STATE_NAMES
from tokencli.service import views
from tokencli.service.listing import list_filter

LabelFilter = Annotated[
    str | None, typer.Option("--label", metavar="TEXT", help="Only tokens with this exact label.")
]
ScopeFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        metavar="NAME",
        help="Only tokens holding this scope (repeatable: all of them).",
        autocompletion=complete_scopes,
    ),
]
StateFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--state",
        metavar="STATE",
        help=f"Only tokens in this state (repeatable): {', '.join(STATE_NAMES)}.",
        autocompletion=lambda: list(STATE_NAMES),
    ),
]
ExpiringFilter = Annotated[
    int | None, duration_option("Only tokens expiring within this long from now, e.g. 1d.")
]
LimitOption = Annotated[int | None, typer.Option(metavar="N", help="At most N tokens.")]


@app.command(name="list")
def list_tokens(
    ctx: typer.Context,
    all_tokens: Annotated[
        bool,
        typer.Option("--all", "-a", help="Also show expired, used-up and revoked tokens."),
    ] = False,
    label: LabelFilter = None,
    scope: ScopeFilter = None,
    state: StateFilter = None,
    expiring_within: ExpiringFilter = None,
    limit: LimitOption = None,
    json_output: Annotated[bool, json_option("Print one JSON array.")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per line.")] = False,
) -> None:
    """List live tokens (never their secrets): a table on a terminal, tab-separated when piped.

    Filters combine with AND; --state works without --all. Tokens come by ID, read a
    page at a time, so a million cost no more memory than ten and a slow reader
    (`| less`) holds nothing open in the database; each token shows as it was when its
    page was read.

    \b
    Examples:
      tokencli list
      tokencli list --all --json
      tokencli list --label ci --scope deploy --jsonl
      tokencli list --state revoked --state expired
      tokencli list --expiring-within 1d --limit 20
    """
    with exit_codes():
        if json_output and jsonl:
            raise InvalidRequestError("--json and --jsonl do not go together; choose one")
        with reader(ctx) as listing:
            now = listing.now()
            selector = list_filter(
                include_ended=all_tokens,
                label=label,
                scopes=scope,
                states=state,
                expiring_within=expiring_within,
                now=now,
                limit=limit,
            )
            rows = listing.list_tokens(selector)
            if json_output:
                output.write_json_array(sys.stdout, map(views.token_json_text, rows))
            elif jsonl:
                output.write_json_lines(sys.stdout, map(views.token_json_text, rows))
            elif output.wants_rich(sys.stdout):
                output.write_rich_table(sys.stdout, rows, now)
            else:
                output.write_plain_table(sys.stdout, rows)


_KEEP_EVERY_EVENT = -1


def _retention(text: str) -> int:
    """--audit-retention's value in seconds, or _KEEP_EVERY_EVENT for "none"."""
    if text.strip().lower() == "none":
        return _KEEP_EVERY_EVENT
    return parse_duration_option(text)


@app.command()
def purge(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
    ] = False,
    json_output: Annotated[bool, json_option()] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    audit_retention: Annotated[
        int,
        typer.Option(
            parser=_retention,
            metavar="DURATION|none",
            help="Drop audit events older than this; 'none' keeps them all.",
        ),
    ] = duration_text(DEFAULT_AUDIT_RETENTION_SECONDS),  # type: ignore[assignment]
) -> None:
    """Delete every expired, used-up and revoked token, and say how many; drop audit
    events older than --audit-retention.

    Prints nothing when there is nothing to purge, so it suits a crontab line.

    \b
    Examples:
      tokencli purge
      tokencli purge --dry-run --json
      tokencli purge --audit-retention 365d
      tokencli purge --audit-retention none
      */10 * * * *  tokencli purge --quiet
    """
    with exit_codes():
        retention = None if audit_retention == _KEEP_EVERY_EVENT else audit_retention
        if dry_run:
            with reader(ctx) as previewing:
                result = previewing.would_purge(audit_retention_seconds=retention)
        else:
            with service(ctx) as purging:
                result = purging.purge(audit_retention_seconds=retention)
        if quiet:
            return
        if json_output:
            output.write_line(views.encode_json(views.purge_json(result)))
        elif result.purged:
            verb = "would purge" if dry_run else "purged"
            noun = "token" if result.purged == 1 else "tokens"
            output.write_line(f"{verb} {result.purged} {noun}")


@app.command()
def stats(
    ctx: typer.Context,
    json_output: Annotated[bool, json_option()] = False,
) -> None:
    """Counts of live, expired, used-up and revoked tokens, the next expiry, the audit
    trail's size and oldest event, and where the database is.

    \b
    Examples:
      tokencli stats
      tokencli stats --json | jq .live
    """
    with exit_codes(), reader(ctx) as reporting:
        report = reporting.stats()
        if json_output:
            output.write_line(views.encode_json(views.stats_json(report)))
        else:
            output.write_stats(sys.stdout, report, reporting.now())


@app.command()
def audit(
    ctx: typer.Context,
    since: Annotated[int | None, duration_option("Only events this recent, e.g. 1d.")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help="Only events about this token.", autocompletion=complete_live_ids
        ),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most N events (the newest).")] = 100,
    json_output: Annotated[bool, json_option("Print one JSON array.")] = False,
) -> None:
    """Show the audit trail: every issue, check, revoke, renew, rotate, import and purge.

    Events carry time, action, token ID, outcome and source (cli or http); never a secret.

    \b
    Examples:
      tokencli audit --since 1d
      tokencli audit --token 3kq7d2mxa4bz --json
    """
    with exit_codes(), reader(ctx) as reading:
        events = reading.audit(since_seconds=since, token_id=token, limit=limit)
        if json_output:
            output.write_line(views.encode_json([views.event_json(event) for event in events]))
        elif output.wants_rich(sys.stdout):
            output.write_rich_events(sys.stdout, events, reading.now())
        else:
            output.write_plain_events(sys.stdout, events)


@app.command()
def export(
    ctx: typer.Context,
    audit_events: Annotated[
        bool, typer.Option("--audit", help="Also export every audit event.")
    ] = False,
    label: LabelFilter = None,
    scope: ScopeFilter = None,
    state: StateFilter = None,
    expiring_within: ExpiringFilter = None,
    limit: LimitOption = None,
) -> None:
    """Write every token not yet purged as JSON lines: public fields and the secret's
    SHA-256, never a plaintext. Filters as for `list` (default: every state).

    Read a page at a time, so writers are never held back: each token is as it was when
    its page was read, and with --audit every event committed before the export began is
    in it. For a copy of one instant, stop writers first (or copy the SQLite file with
    `sqlite3 tokens.db ".backup copy.db"`).

    \b
    Examples:
      tokencli export > tokens.jsonl
      tokencli export --audit | gzip > backup.jsonl.gz
      tokencli --db tokens.db export --audit | tokencli --db postgresql:///tokens import
    """
    from tokencli.service.transfer import export_objects

    with exit_codes(), reader(ctx) as exporting:
        now = exporting.now()
        selector = list_filter(
            include_ended=True,
            label=label,
            scopes=scope,
            states=state,
            expiring_within=expiring_within,
            now=now,
            limit=limit,
        )
        objects = export_objects(exporting, selector, audit=audit_events)
        output.write_json_lines(sys.stdout, map(views.encode_json, objects))


@app.command(name="import")
def import_tokens(
    ctx: typer.Context,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Leave tokens already stored, and their audit trail, as they are.",
        ),
    ] = False,
    json_output: Annotated[bool, json_option()] = False,
) -> None:
    """Read an export (JSON lines) from standard input and store it in one transaction.

    All or nothing: a bad line (exit 2) or an ID already stored or repeated (exit 1)
    imports nothing; the error names the line. Tokens keep their state: revoked and
    used-up ones stay refused. Every line is checked first; then the rows are stored,
    and while they are (about 1.5 s per 100,000 tokens with their events on
    SQLite) other writers wait,
    `serve`'s checks included; reads go on. With --skip-existing, a stored token and
    its audit trail stay as they are: the input's events about it, and any event
    already stored, are left out, so importing the same file twice adds nothing.

    \b
    Examples:
      tokencli import < tokens.jsonl
      tokencli --db postgresql:///tokens import --skip-existing < backup.jsonl
    """
    from tokencli.service.transfer import import_lines

    with exit_codes(), service(ctx) as importing:
        result = import_lines(importing, _stdin_lines(), skip_existing=skip_existing)
        if json_output:
            output.write_line(views.encode_json(result._asdict()))
        else:
            skipped = (
                f" ({result.skipped} already stored, left as they were)" if result.skipped else ""
            )
            output.write_line(
                f"imported {result.tokens} tokens and {result.events} audit events{skipped}"
            )


def _stdin_lines() -> Iterator[str]:
    """Standard input as text lines, each bounded in length and checked to be UTF-8."""
    from tokencli.service.transfer import MAX_LINE_CHARACTERS

    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_CHARACTERS * 4 + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_CHARACTERS * 4:
            raise InvalidRequestError(
                f"line {number}: longer than {MAX_LINE_CHARACTERS} characters"
            )
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"line {number}: not UTF-8 text") from None
