"""Rendering for people and for programs: JSON objects, plain lines, rich tables.

Machine output (JSON, tab-separated text) is written straight to the stream, never
through rich, so nothing in it can be taken for markup. Text that came from a user
(labels) is shown literally: control and bidirectional characters are escaped, so a
label can neither colour a terminal nor move its cursor.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from tokencli.durations import UNIT_SECONDS

if TYPE_CHECKING:
    from tokencli.service import CheckResult, IssuedToken, PurgeResult, Stats, TokenInfo
    from tokencli.store import AuditEvent

_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
TABLE_HEADERS = ("ID", "LABEL", "CREATED", "EXPIRES", "USES LEFT", "STATE")
EVENT_HEADERS = ("TIME", "ACTION", "TOKEN", "OUTCOME", "SOURCE", "DETAIL")


def iso_time(epoch_seconds: int) -> str:
    """ISO 8601 UTC with a Z, e.g. 2026-11-27T10:05:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


def relative_time(epoch_seconds: int, now: int) -> str:
    """A short human distance: "in 14m", "3h ago", "now"; two units at most."""
    delta = epoch_seconds - now
    if delta == 0:
        return "now"
    distance = abs(delta)
    units = list(UNIT_SECONDS.items())
    # The largest unit that fits, then the next one down if it adds anything: "1h30m".
    index = next(i for i, (_, size) in enumerate(units) if distance >= size)
    unit, size = units[index]
    text = f"{distance // size}{unit}"
    if index + 1 < len(units):
        next_unit, next_size = units[index + 1]
        rest = (distance % size) // next_size
        if rest:
            text += f"{rest}{next_unit}"
    return f"in {text}" if delta > 0 else f"{text} ago"


def literal(text: str) -> str:
    """Escape control, surrogate and bidi characters so text displays as itself."""
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    out = []
    for character in text:
        if character in _BIDI or unicodedata.category(character) in ("Cc", "Cs", "Cf", "Zl", "Zp"):
            code = ord(character)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(character)
    return "".join(out)


def token_json(info: TokenInfo) -> dict[str, Any]:
    """The JSON object of a token, with the keys DESIGN.md names, in that order."""
    return {
        "id": info.id,
        "label": info.label,
        "created_at": iso_time(info.created_at),
        "expires_at": iso_time(info.expires_at),
        "uses_left": info.uses_left,
        "state": info.state.value,
    }


def issued_json(issued: IssuedToken) -> dict[str, Any]:
    """The JSON object `issue --json` prints: the token's info and the plaintext, once."""
    return {**token_json(issued.info), "token": issued.token}


def check_json(result: CheckResult) -> dict[str, Any]:
    """`check --json`: valid and state always, the token's info when it is known."""
    body: dict[str, Any] = {"valid": result.valid, "state": result.state.value}
    if result.info is not None:
        body = {**token_json(result.info), **body}
    return body


def purge_json(result: PurgeResult) -> dict[str, Any]:
    """`purge --json`."""
    body: dict[str, Any] = {"purged": result.purged, "dry_run": result.dry_run}
    if result.audit_events_dropped:
        body["audit_events_dropped"] = result.audit_events_dropped
    return body


def stats_json(report: Stats) -> dict[str, Any]:
    """`stats --json`."""
    return {
        "live": report.live,
        "expired": report.expired,
        "used_up": report.used_up,
        "revoked": report.revoked,
        "next_expiry": None if report.next_expiry is None else iso_time(report.next_expiry),
        "database": report.database,
        "size_bytes": report.size_bytes,
    }


def write_stats(stream: TextIO, report: Stats, now: int) -> None:
    """`stats` for people and pipes: one `name<TAB>value` line each."""
    body = stats_json(report)
    if report.next_expiry is not None and wants_rich(stream):
        body["next_expiry"] += f" ({relative_time(report.next_expiry, now)})"
    if body["database"] is None:
        body["database"] = "(none yet)"
    stream.write("".join(f"{key}\t{literal(str(value))}\n" for key, value in body.items()))


def event_json(event: AuditEvent) -> dict[str, Any]:
    """One audit event as JSON."""
    return {
        "at": iso_time(event.at),
        "action": event.action,
        "token_id": event.token_id,
        "outcome": event.outcome,
        "source": event.source,
        "detail": event.detail,
    }


def _event_cells(event: AuditEvent) -> tuple[str, ...]:
    return (
        event.action,
        event.token_id or "-",
        event.outcome,
        event.source,
        literal(event.detail or ""),
    )


def write_plain_events(stream: TextIO, events: list[AuditEvent]) -> None:
    """Audit events as tab-separated lines under a header."""
    lines = ["\t".join(EVENT_HEADERS)]
    lines.extend("\t".join((iso_time(event.at), *_event_cells(event))) for event in events)
    stream.write("\n".join(lines) + "\n")


def write_rich_events(stream: TextIO, events: list[AuditEvent], now: int) -> None:
    """Audit events as a table with human times, for a terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*EVENT_HEADERS, box=None, header_style="bold", pad_edge=False)
    for event in events:
        table.add_row(
            *(Text(cell) for cell in (relative_time(event.at, now), *_event_cells(event)))
        )
    Console(file=stream, highlight=False).print(table)


def dumps(value: Any) -> str:
    """ASCII-only JSON on one line: every odd character arrives escaped."""
    import json  # not every command prints JSON; keep start-up lean

    return json.dumps(value)


def wants_rich(stream: TextIO) -> bool:
    """Tables and colour only for a person at a terminal."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def uses_text(uses_left: int | None) -> str:
    """Uses left as a person reads it."""
    return "unlimited" if uses_left is None else str(uses_left)


def write_plain_table(stream: TextIO, tokens: list[TokenInfo]) -> None:
    """Tab-separated rows under a header line, for pipes and scripts."""
    lines = ["\t".join(TABLE_HEADERS)]
    for info in tokens:
        label = literal(info.label or "")
        lines.append(
            "\t".join(
                (
                    info.id,
                    label,
                    iso_time(info.created_at),
                    iso_time(info.expires_at),
                    uses_text(info.uses_left),
                    info.state.value,
                )
            )
        )
    stream.write("\n".join(lines) + "\n")


def write_rich_table(stream: TextIO, tokens: list[TokenInfo], now: int) -> None:
    """A rich table with human times, for a terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    styles = {"valid": "green", "expired": "yellow", "revoked": "red", "used_up": "magenta"}
    table = Table(*TABLE_HEADERS, box=None, header_style="bold", pad_edge=False)
    for info in tokens:
        table.add_row(
            Text(info.id),
            Text(literal(info.label or "")),
            Text(relative_time(info.created_at, now)),
            Text(relative_time(info.expires_at, now)),
            Text(uses_text(info.uses_left)),
            Text(info.state.value, style=styles.get(info.state.value, "")),
        )
    Console(file=stream, highlight=False).print(table)


@contextlib.contextmanager
def progress(total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (when `enabled`); yields a function to advance it."""
    if not enabled:
        yield lambda _done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "issuing",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task("issue", total=total)
        yield lambda done: bar.advance(task, done)


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write one line to stdout (or `stream`)."""
    (stream or sys.stdout).write(text + "\n")
