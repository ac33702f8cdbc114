"""Rendering for people and pipes: plain lines, rich tables, the progress bar.

Machine output (JSON, tab-separated text) is written straight to the stream, never
through rich, so nothing in it can be taken for markup. Text that came from a user
(labels) is shown literally (service/views.py's `literal`), so a label can neither colour
a terminal nor move its cursor. In tab-separated output, a text cell that a spreadsheet
would take for a formula (starting with = + - @) gets a leading apostrophe (`cell()`):
JSON carries every value exactly. The JSON shapes themselves live in service/views.py,
shared with the HTTP API.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from tokencli.domain.durations import UNIT_SECONDS
from tokencli.service.views import iso_time, literal, stats_json

if TYPE_CHECKING:
    from tokencli.domain.model import AuditEvent, Stats, TokenInfo


TABLE_HEADERS = ("ID", "LABEL", "CREATED", "EXPIRES", "USES LEFT", "STATE", "SCOPES")
EVENT_HEADERS = ("TIME", "ACTION", "TOKEN", "OUTCOME", "SOURCE", "DETAIL")
# What a spreadsheet opening tab-separated text takes for the start of a formula
# (OWASP's CSV injection list; tab and carriage return never reach a cell unescaped).
FORMULA_STARTS = ("=", "+", "-", "@")
# What a tab-separated cell shows for no value (audit's token, stats' next expiry).
NO_VALUE = "-"


@functools.lru_cache(maxsize=4096)
def cell(text: str) -> str:
    """Text from a user as one tab-separated cell: literal, and never a formula.

    Cached: a listing repeats its labels and scope sets (tokens issued in bulk).

    `=HYPERLINK(...)` as a label would run in a spreadsheet that opens `tokencli list >
    tokens.tsv`; with an apostrophe in front, spreadsheets show it as text. JSON output
    (`--json`, `--jsonl`, `export`) carries the value exactly.
    """
    shown = literal(text)
    return "'" + shown if shown.startswith(FORMULA_STARTS) else shown


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
    stream.write(
        "".join(
            f"{key}\t{NO_VALUE if value is None else cell(str(value))}\n"
            for key, value in body.items()
        )
    )


def _event_cells(event: AuditEvent, text: Callable[[str], str]) -> tuple[str, ...]:
    # Every cell as text from a user: an import or another tool may have written the trail.
    return (
        text(event.action),
        NO_VALUE if event.token_id is None else text(event.token_id),
        text(event.outcome),
        text(event.source),
        text(event.detail or ""),
    )


def write_plain_events(stream: TextIO, events: list[AuditEvent]) -> None:
    """Audit events as tab-separated lines under a header."""
    lines = ["\t".join(EVENT_HEADERS)]
    lines.extend("\t".join((iso_time(event.at), *_event_cells(event, cell))) for event in events)
    stream.write("\n".join(lines) + "\n")


def write_rich_events(stream: TextIO, events: list[AuditEvent], now: int) -> None:
    """Audit events as a table with human times, for a terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*EVENT_HEADERS, box=None, header_style="bold", pad_edge=False)
    for event in events:
        cells = (relative_time(event.at, now), *_event_cells(event, literal))
        table.add_row(*(Text(shown) for shown in cells))
    Console(file=stream, highlight=False).print(table)


def wants_rich(stream: TextIO) -> bool:
    """Tables and colour only for a person at a terminal."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def uses_text(uses_left: int | None) -> str:
    """Uses left as a person reads it."""
    return "unlimited" if uses_left is None else str(uses_left)


def _plain_row(info: TokenInfo) -> str:
    # One f-string: a listing writes a million of these (a StrEnum formats as its value).
    uses = "unlimited" if info.uses_left is None else info.uses_left
    return (
        f"{info.id}\t{cell(info.label or '')}\t{iso_time(info.created_at)}\t"
        f"{iso_time(info.expires_at)}\t{uses}\t{info.state}\t{cell(','.join(info.scopes))}"
    )


def write_lines(stream: TextIO, lines: Iterable[str]) -> None:
    """Write lines a thousand at a time: few writes, and memory flat whatever the count."""
    remaining = iter(lines)
    while chunk := list(itertools.islice(remaining, 1000)):  # gathered in C
        stream.write("\n".join(chunk) + "\n")


def write_plain_table(stream: TextIO, tokens: Iterable[TokenInfo]) -> None:
    """Tab-separated rows under a header line, for pipes and scripts; streamed, so a
    million rows cost no more memory than ten."""
    stream.write("\t".join(TABLE_HEADERS) + "\n")
    write_lines(stream, map(_plain_row, tokens))


def write_json_array(stream: TextIO, texts: Iterable[str]) -> None:
    """One JSON array of already-encoded values, written a thousand at a time (flat
    memory); `[]` when there is none."""
    remaining = iter(texts)
    opening = "["
    while chunk := list(itertools.islice(remaining, 1000)):  # gathered in C
        stream.write(opening + ", ".join(chunk))
        opening = ", "
    stream.write("]\n" if opening == ", " else "[]\n")


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
    """A progress bar on stderr (when `enabled`); yields a function to advance it.

    Only on stderr: rich's bar would otherwise capture stdout while it runs and send
    what is written there (the tokens of `issue`) to the bar's terminal instead.
    """
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
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task("issue", total=total)
        yield lambda done: bar.advance(task, done)


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write one line to stdout (or `stream`)."""
    (stream or sys.stdout).write(text + "\n")
