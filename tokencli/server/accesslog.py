"""The access log: one line per request, as text or JSON, and never a secret in it.

A text line is `CLIENT "METHOD TARGET" STATUS DURATIONms [VERDICT] [id=REQUEST_ID]`.
Every field a client can influence is escaped (`escape_field`): a backslash and a
double quote get a backslash, anything that is not printable (controls, bidi marks,
separators other than the space) is written \\xNN or \\uNNNN, and outside the quotes
a space is \\x20 too (an empty value there is `-`, and a lone `-` is \\x2d). So a line
always splits into the fields that were logged, and a target holding `%22` or `%0a`
cannot forge a status, a verdict or another line.

A request target is logged only after `redact_target`: percent-escapes are decoded
first; whatever follows /app/valid/ is a presented token (only a token ID stays
readable); then, anywhere in the path or query, anything after a colon (the SECRET of
ID:SECRET on a near-miss path such as //app/valid/ or /APP/valid/) and any run of 20 or
more token characters (a secret without its ID) becomes ***. Lines are buffered and written
once per turn of the event loop, so logging costs one write per turn, not per request.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from enum import StrEnum
from typing import NamedTuple, TextIO
from urllib.parse import unquote

from tokencli.domain.model import BIDI_CONTROLS
from tokencli.service.views import literal


class AccessLogFormat(StrEnum):
    """How `serve` writes its access log (`--access-log`)."""

    TEXT = "text"
    JSON = "json"
    OFF = "off"


MAX_LOGGED_TARGET = 200
MAX_REQUEST_ID = 128
_AFTER_COLON = re.compile(r":[^/?&=#;,\s]+")
_LONG_RUN = re.compile(r"[A-Za-z0-9_-]{20,}")
_REQUEST_ID_JUNK = re.compile(r"[^A-Za-z0-9._~:/+=@-]")
_VALID_PREFIX = "/app/valid/"
_TOKEN_ID = re.compile(r"[a-z2-7]{12}")
# Printable ASCII but the backslash and the quote: written as it is.
_PLAIN_FIELD = re.compile(r"[ !#-\[\]-~]*")


def redact_target(target: str) -> str:
    """The request target as the JSON log shows it: no secret, no escapes, <= 200 chars."""
    return literal(redacted_target(target))


def redacted_target(target: str) -> str:
    """The request target decoded, secrets replaced by ***, cut at 200 characters; still
    raw text (what a line shows goes through `literal` or `escape_field`)."""
    shown = unquote(target, errors="replace")
    # Twice-escaped text (%253A) decodes to an escape again; decode until it settles.
    for _ in range(3):
        if "%" not in shown:
            break
        decoded = unquote(shown, errors="replace")
        if decoded == shown:
            break
        shown = decoded
    path, mark, query = shown.partition("?")
    if path.startswith(_VALID_PREFIX):
        # Whatever is presented for validation is treated as a secret, token-shaped or not.
        presented = path[len(_VALID_PREFIX) :]
        token_id, colon, _ = presented.partition(":")
        kept = f"{token_id}:***" if colon and _TOKEN_ID.fullmatch(token_id) else "***"
        path = _VALID_PREFIX + kept
    shown = path + mark + query
    shown = _AFTER_COLON.sub(":***", shown)
    shown = _LONG_RUN.sub("***", shown)
    return shown[:MAX_LOGGED_TARGET]


def _escape_character(character: str) -> str:
    code = ord(character)
    if character == "\\" or character == '"':
        return "\\" + character
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_field(text: str, *, quoted: bool = False) -> str:
    """A field as a text line shows it: backslash, quote and every non-printable or bidi
    character escaped, and (outside quotes) spaces too, so no field can run into the next."""
    if not quoted and (not text or text == "-"):
        return "-" if not text else "\\x2d"  # "-" stands for empty, as in common log format
    if _PLAIN_FIELD.fullmatch(text) and (quoted or " " not in text):
        return text  # the usual case: nothing to escape
    out = []
    for character in text:
        if (
            character in '\\"'
            or (character == " " and not quoted)
            or not character.isprintable()
            or character in BIDI_CONTROLS
        ):
            out.append(_escape_character(character))
        else:
            out.append(character)
    return "".join(out)


class RequestIds:
    """Request IDs: the client's X-Request-Id when sane, else a fresh one."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = 0

    def take(self, offered: str | None) -> str:
        """The client's ID cleaned (printable, no spaces or quotes, <= 128), else a new one."""
        if offered:
            cleaned = _REQUEST_ID_JUNK.sub("", offered)[:MAX_REQUEST_ID]
            if cleaned:
                return cleaned
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"


class Entry(NamedTuple):
    """One request as the log records it."""

    client: str
    method: str | None
    target: str | None
    status: int
    duration_ms: float
    request_id: str | None
    verdict: str | None = None


class AccessLog:
    """Formats entries and writes them in one go per loop turn."""

    def __init__(self, stream: TextIO, log_format: AccessLogFormat = AccessLogFormat.TEXT) -> None:
        self._stream = stream
        self._json = log_format == AccessLogFormat.JSON
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, entry: Entry) -> None:
        """Queue one line (written by the next `flush`)."""
        line = self._json_line(entry) if self._json else self._text_line(entry)
        with self._lock:
            self._lines.append(line)

    def flush(self) -> None:
        """Write the queued lines."""
        if not self._lines:
            return
        with self._lock:
            lines, self._lines = self._lines, []
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must not stop the server answering

    @staticmethod
    def _text_line(entry: Entry) -> str:
        if entry.method is None or entry.target is None:
            request = "-"
        else:
            # The method is escaped as an unquoted field: the first space ends it.
            method = escape_field(entry.method[:16])
            request = f"{method} {escape_field(redacted_target(entry.target), quoted=True)}"
        line = f'{escape_field(entry.client)} "{request}" {entry.status} {entry.duration_ms:.1f}ms'
        if entry.verdict is not None:
            line += f" {escape_field(entry.verdict)}"
        if entry.request_id is not None:
            line += f" id={escape_field(entry.request_id)}"
        return line

    @staticmethod
    def _json_line(entry: Entry) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "client": entry.client,
                "method": None if entry.method is None else literal(entry.method[:16]),
                "path": None if entry.target is None else redact_target(entry.target),
                "status": entry.status,
                "duration_ms": round(entry.duration_ms, 3),
                "request_id": entry.request_id,
                "verdict": entry.verdict,
            }
        )
