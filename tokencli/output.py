"""Rendering for people and for programs: JSON objects, plain lines, rich tables.

Machine output (JSON, tab-separated text) is written straight to the stream, never
through rich, so nothing in it can be taken for markup. Text that came from a user
(labels) is shown literally: control and bidirectional characters are escaped, so a
label can neither colour a terminal nor move its cursor.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from tokencli.durations import UNIT_SECONDS
from tokencli.model import BIDI_CONTROLS

if TYPE_CHECKING:
    from tokencli.model import AuditEvent, CheckResult, IssuedToken, PurgeResult, Stats, TokenInfo

TABLE_HEADERS = ("ID", "LABEL", "CREATED", "EXPIRES", "USES LEFT", "STATE", "SCOPES")
EVENT_HEADERS = ("TIME", "ACTION", "TOKEN", "OUTCOME", "SOURCE", "DETAIL")


@functools.lru_cache(maxsize=4096)
def iso_time(epoch_seconds: int) -> str:
    """ISO 8601 UTC with a Z, e.g. 2026-11-27T10:05:00Z.

    Cached: a listing in creation order, and tokens issued in bulk, repeat their seconds.
    """
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
    if text.isprintable() and not BIDI_CONTROLS.intersection(text):
        return text
    out = []
    for character in text:
        if character in BIDI_CONTROLS or unicodedata.category(character) in (
            "Cc",
            "Cs",
            "Cf",
            "Zl",
            "Zp",
        ):
            code = ord(character)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(character)
    return "".join(out)


def token_json(info: TokenInfo) -> dict[str, Any]:
    """The JSON object of a token, with the keys docs/design.md names, in that order."""
    return {
        "id": info.id,
        "label": info.label,
        "created_at": iso_time(info.created_at),
        "expires_at": iso_time(info.expires_at),
        "uses_left": info.uses_left,
        "state": info.state.value,
        "scopes": list(info.scopes),
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


def _iso_or_none(epoch_seconds: int | None) -> str | None:
    return None if epoch_seconds is None else iso_time(epoch_seconds)


def stats_json(report: Stats) -> dict[str, Any]:
    """`stats --json`."""
    counts = report.counts
    return {
        "live": counts.live,
        "expired": counts.expired,
        "used_up": counts.used_up,
        "revoked": counts.revoked,
        "next_expiry": _iso_or_none(counts.next_expiry),
        "audit_events": counts.audit_events,
        "oldest_event": _iso_or_none(counts.oldest_event),
        "database": report.database,
        "size_bytes": report.size_bytes,
    }


def write_stats(stream: TextIO, report: Stats, now: int) -> None:
    """`stats` for people and pipes: one `name<TAB>value` line each."""
    body = stats_json(report)
    if wants_rich(stream):
        for key, moment in (
            ("next_expiry", report.counts.next_expiry),
            ("oldest_event", report.counts.oldest_event),
        ):
            if moment is not None:
                body[key] += f" ({relative_time(moment, now)})"
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
    # Every cell literally: an import or another tool may have written the trail.
    return (
        literal(event.action),
        literal(event.token_id or "-"),
        literal(event.outcome),
        literal(event.source),
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


def _plain_row(info: TokenInfo) -> str:
    return "\t".join(
        (
            info.id,
            literal(info.label or ""),
            iso_time(info.created_at),
            iso_time(info.expires_at),
            uses_text(info.uses_left),
            info.state.value,
            ",".join(info.scopes),
        )
    )


def write_lines(stream: TextIO, lines: Iterable[str]) -> None:
    """Write lines a thousand at a time: few writes, and memory flat whatever the count."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= 1000:
            stream.write("\n".join(chunk) + "\n")
            chunk.clear()
    if chunk:
        stream.write("\n".join(chunk) + "\n")


def write_plain_table(stream: TextIO, tokens: Iterable[TokenInfo]) -> None:
    """Tab-separated rows under a header line, for pipes and scripts; streamed, so a
    million rows cost no more memory than ten."""
    stream.write("\t".join(TABLE_HEADERS) + "\n")
    write_lines(stream, map(_plain_row, tokens))


def token_json_text(info: TokenInfo) -> str:
    """`json.dumps(token_json(info))`, written directly for listings of millions.

    Only the label needs escaping: IDs are a-z2-7, scope names a-z0-9:._-, times ISO
    8601, states fixed words. tests/test_wire_format.py checks it against json.dumps.
    """
    label = "null" if info.label is None else _json_string(info.label)
    uses = "null" if info.uses_left is None else str(info.uses_left)
    scopes = ", ".join(f'"{name}"' for name in info.scopes)
    return (
        f'{{"id": "{info.id}", "label": {label}, '
        f'"created_at": "{iso_time(info.created_at)}", '
        f'"expires_at": "{iso_time(info.expires_at)}", "uses_left": {uses}, '
        f'"state": "{info.state}", "scopes": [{scopes}]}}'
    )


@functools.cache
def _string_encoder() -> Callable[[str], str]:
    # What json.dumps uses for strings, in C; imported on first use (start-up time).
    from json.encoder import encode_basestring_ascii

    return encode_basestring_ascii


def _json_string(text: str) -> str:
    return _string_encoder()(text)


def encode_json(value: Any) -> str:
    """One JSON value as text (ASCII only, as everywhere in tokencli's output)."""
    import json

    return json.dumps(value)


def write_json_array(stream: TextIO, texts: Iterable[str]) -> None:
    """One JSON array of already-encoded values, written a thousand at a time (flat
    memory); `[]` when there is none."""
    separator = "["
    chunk: list[str] = []
    for text in texts:
        chunk.append(separator)
        chunk.append(text)
        separator = ", "
        if len(chunk) >= 2000:
            stream.write("".join(chunk))
            chunk.clear()
    stream.write("".join(chunk) + ("]\n" if separator == ", " else "[]\n"))


def write_json_lines(stream: TextIO, texts: Iterable[str]) -> None:
    """Already-encoded JSON values, one per line, streamed."""
    write_lines(stream, texts)


def write_rich_table(stream: TextIO, tokens: Iterable[TokenInfo], now: int) -> None:
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
            Text(", ".join(info.scopes)),
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
