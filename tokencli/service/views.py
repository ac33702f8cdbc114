"""The shapes tokencli shows data in, shared by the CLI, the HTTP API and export.

JSON objects with the keys docs/design.md names, ISO 8601 UTC times, and `literal`, which
makes text from a user (labels, audit details) display as itself. Nothing here writes to
a stream: the CLI (cli/output.py) and the server decide where the text goes.
"""

from __future__ import annotations

import functools
import time
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tokencli.domain.model import BIDI_CONTROLS

if TYPE_CHECKING:
    from tokencli.domain.model import (
        AuditEvent,
        CheckResult,
        IssuedToken,
        PurgeResult,
        Stats,
        TokenInfo,
    )


def iso_time(epoch_seconds: int) -> str:
    """ISO 8601 UTC with a Z, e.g. 2026-11-27T10:05:00Z.

    A listing writes two per token, and its times spread over many seconds but few
    minutes: each minute is formatted once (a cache of seconds thrashed, 1.6 us a miss),
    the seconds appended from a table (0.4 us).
    """
    minute, second = divmod(epoch_seconds, 60)
    return _minute(minute) + _SECONDS[second]


@functools.lru_cache(maxsize=4096)
def _minute(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))


_SECONDS = [f"{second:02d}Z" for second in range(60)]


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


def token_json_text(info: TokenInfo) -> str:
    """`json.dumps(token_json(info))`, written directly for listings of millions.

    Only the label needs escaping: IDs are a-z2-7, scope names a-z0-9:._-, times ISO
    8601, states fixed words. tests/service/test_wire_format.py checks it against json.dumps.
    """
    label = "null" if info.label is None else _json_label(info.label)
    uses = "null" if info.uses_left is None else info.uses_left
    return (
        f'{{"id": "{info.id}", "label": {label}, '
        f'"created_at": "{iso_time(info.created_at)}", '
        f'"expires_at": "{iso_time(info.expires_at)}", "uses_left": {uses}, '
        f'"state": "{info.state}", "scopes": [{_json_scopes(info.scopes)}]}}'
    )


@functools.lru_cache(maxsize=4096)
def _json_label(label: str) -> str:
    # Labels repeat across a listing (tokens issued in bulk): encode each once.
    return _json_string(label)


@functools.lru_cache(maxsize=1024)
def _json_scopes(scopes: tuple[str, ...]) -> str:
    # Scope names need no escaping (a-z0-9:._-); tokens share few scope sets.
    return ", ".join(f'"{name}"' for name in scopes)


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
