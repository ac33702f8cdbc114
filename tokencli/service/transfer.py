"""Export and import: every token (and, on request, the audit trail) as JSON lines.

For backups, and for moving a SQLite file to PostgreSQL:
`tokencli --db A export --audit | tokencli --db postgresql://... import`.

A line is one JSON object with a "type": "token" lines hold a token's public fields and
the SHA-256 of the whole token (`"secret_hash": "sha256:<hex>"`), never a plaintext;
"event" lines hold one audit event. Times are ISO 8601 UTC, as everywhere in tokencli.
An import is one transaction: any bad line, or an ID already stored (unless
skip_existing) or repeated, and nothing is imported.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from tokencli.domain import tokens
from tokencli.domain.errors import ConflictError, InvalidRequestError
from tokencli.domain.model import MAX_USES, AuditEvent, TokenFilter, TokenRecord
from tokencli.domain.rules import validate_label, validate_printable, validate_scopes
from tokencli.service.reader import TokenReader
from tokencli.service.service import TokenService

FORMAT_TOKEN = "token"
FORMAT_EVENT = "event"
MAX_LINE_CHARACTERS = 64 * 1024
_CHUNK = 5_000
_TOKEN_KEYS = {
    "type",
    "id",
    "label",
    "created_at",
    "expires_at",
    "uses_left",
    "uses_limit",
    "revoked_at",
    "scopes",
    "secret_hash",
}
_EVENT_KEYS = {"type", "at", "action", "token_id", "outcome", "source", "detail"}
_HASH_PREFIX = "sha256:"


class ImportResult(NamedTuple):
    """What an import stored."""

    tokens: int
    skipped: int
    events: int


def _iso(epoch_seconds: int | None) -> str | None:
    if epoch_seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


def token_line(record: TokenRecord) -> dict[str, Any]:
    """The export object of one stored token."""
    return {
        "type": FORMAT_TOKEN,
        "id": record.id,
        "label": record.label,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "uses_left": record.uses_left,
        "uses_limit": record.uses_limit,
        "revoked_at": _iso(record.revoked_at),
        "scopes": list(record.scopes),
        "secret_hash": _HASH_PREFIX + record.secret_hash.hex(),
    }


def event_line(event: AuditEvent) -> dict[str, Any]:
    """The export object of one audit event."""
    return {
        "type": FORMAT_EVENT,
        "at": _iso(event.at),
        "action": event.action,
        "token_id": event.token_id,
        "outcome": event.outcome,
        "source": event.source,
        "detail": event.detail,
    }


def export_objects(
    service: TokenReader, selector: TokenFilter, *, audit: bool
) -> Iterator[dict[str, Any]]:
    """The tokens the selector matches, then (with `audit`) every audit event; streamed."""
    now = service.now()
    for record in service.records(selector, now):
        yield token_line(record)
    if audit:
        for event in service.store.iter_events():
            yield event_line(event)


def import_lines(
    service: TokenService, lines: Iterable[str], *, skip_existing: bool = False
) -> ImportResult:
    """Store every token and event of an export, in one transaction.

    A bad line is InvalidRequestError naming its number; an ID repeated in the input, or
    already stored (without `skip_existing`), is ConflictError; either way nothing is
    imported. With `skip_existing`, a stored token is left exactly as it is.
    """
    seen: set[str] = set()
    imported = skipped = events = 0
    pending_tokens: list[TokenRecord] = []
    pending_events: list[AuditEvent] = []

    def flush() -> None:
        nonlocal imported, skipped, events
        if pending_tokens:
            if skip_existing:
                stored = service.store.insert_missing(pending_tokens)
                imported += stored
                skipped += len(pending_tokens) - stored
            else:
                taken = service.store.existing_ids([record.id for record in pending_tokens])
                if taken:
                    raise ConflictError(
                        f"token {min(taken)} is already stored; nothing was imported "
                        "(--skip-existing leaves stored tokens as they are)"
                    )
                service.store.insert_tokens(pending_tokens)
                imported += len(pending_tokens)
            pending_tokens.clear()
        if pending_events:
            service.store.record(pending_events)
            events += len(pending_events)
            pending_events.clear()

    with service.store.transaction():
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            item = _parse_line(number, line)
            if isinstance(item, TokenRecord):
                if item.id in seen:
                    raise ConflictError(
                        f"line {number}: token {item.id} appears twice; nothing was imported"
                    )
                seen.add(item.id)
                pending_tokens.append(item)
            else:
                pending_events.append(item)
            if len(pending_tokens) + len(pending_events) >= _CHUNK:
                flush()
        flush()
        if imported or events:
            detail = f"{imported} tokens, {events} audit events"
            now = service.now()
            service.store.record(
                [AuditEvent(now, "import", None, "imported", service.source, detail)]
            )
    return ImportResult(imported, skipped, events)


def _parse_line(number: int, line: str) -> TokenRecord | AuditEvent:
    where = f"line {number}"
    if len(line) > MAX_LINE_CHARACTERS:
        raise InvalidRequestError(f"{where}: longer than {MAX_LINE_CHARACTERS} characters")
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        raise InvalidRequestError(f"{where}: not a JSON object") from None
    if not isinstance(item, dict):
        raise InvalidRequestError(f"{where}: not a JSON object")
    kind = item.get("type")
    try:
        if kind == FORMAT_TOKEN:
            return _token(item)
        if kind == FORMAT_EVENT:
            return _event(item)
    except (InvalidRequestError, ValueError, TypeError) as error:
        raise InvalidRequestError(f"{where}: {error}") from None
    raise InvalidRequestError(f'{where}: "type" must be "token" or "event"')


def _check_keys(item: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(item) - allowed
    if unknown:
        raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))[:80]}")
    missing = allowed - set(item) - {"label", "detail", "token_id"}
    if missing:
        raise InvalidRequestError(f"missing field(s): {', '.join(sorted(missing))}")


def _moment(value: object, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(
            f"{name} must be an ISO 8601 UTC time such as 2026-01-31T12:00:00Z"
        )
    try:
        return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise InvalidRequestError(
            f"{name} {value[:40]!r} is not like 2026-01-31T12:00:00Z"
        ) from None


def _count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_USES:
        raise InvalidRequestError(f"{name} must be null or a whole number 0..{MAX_USES}")
    return value


def _text(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequestError(f"{name} must be a string or null")


def _token(item: dict[str, Any]) -> TokenRecord:
    _check_keys(item, _TOKEN_KEYS)
    token_id = item["id"]
    if not isinstance(token_id, str) or not tokens.is_token_id(token_id):
        raise InvalidRequestError("id is not a token ID (12 characters of a-z, 2-7)")
    secret_hash = item["secret_hash"]
    if not isinstance(secret_hash, str) or not secret_hash.startswith(_HASH_PREFIX):
        raise InvalidRequestError('secret_hash must be "sha256:" and 64 hex digits')
    digest = bytes.fromhex(secret_hash[len(_HASH_PREFIX) :])
    if len(digest) != 32:
        raise InvalidRequestError('secret_hash must be "sha256:" and 64 hex digits')
    scopes = item["scopes"]
    if not isinstance(scopes, list):
        raise InvalidRequestError("scopes must be an array of names")
    created_at = _moment(item["created_at"], "created_at")
    expires_at = _moment(item["expires_at"], "expires_at")
    assert created_at is not None and expires_at is not None
    if expires_at < created_at:
        raise InvalidRequestError("expires_at is before created_at")
    return TokenRecord(
        token_id,
        validate_label(_text(item.get("label"), "label")),
        created_at,
        expires_at,
        _count(item["uses_left"], "uses_left"),
        _moment(item["revoked_at"], "revoked_at", optional=True),
        digest,
        _count(item["uses_limit"], "uses_limit"),
        validate_scopes(scopes),
    )


def _event(item: dict[str, Any]) -> AuditEvent:
    _check_keys(item, _EVENT_KEYS)
    at = _moment(item["at"], "at")
    assert at is not None
    token_id = _text(item.get("token_id"), "token_id")
    if token_id is not None and not tokens.is_token_id(token_id):
        raise InvalidRequestError("token_id is not a token ID")
    fields = []
    for name in ("action", "outcome", "source"):
        value = _text(item[name], name)
        if not value or len(value) > 64:
            raise InvalidRequestError(f"{name} must be a non-empty string of at most 64 characters")
        fields.append(validate_printable(value, name))
    detail = _text(item.get("detail"), "detail")
    if detail is not None and len(detail) > 1000:
        raise InvalidRequestError("detail is longer than 1000 characters")
    if detail is not None:
        validate_printable(detail, "detail")
    return AuditEvent(at, fields[0], token_id, fields[1], fields[2], detail)
