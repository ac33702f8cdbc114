"""Export and import: every token (and, on request, the audit trail) as JSON lines.

For backups, and for moving a SQLite file to PostgreSQL:
`tokencli --db A export --audit | tokencli --db postgresql://... import`.

A line is one JSON object with a "type": "token" lines hold a token's public fields and
the SHA-256 of the whole token (`"secret_hash": "sha256:<hex>"`), never a plaintext;
"event" lines hold one audit event. Times are ISO 8601 UTC, as everywhere in tokencli.

Export reads the store a page at a time (tokens by ID, then events by time), so it never
holds one read open for as long as a slow pipe takes: each token is exported as it was
when its page was read, and every event committed before the export began is in it.

Import checks every line first, outside any transaction, then stores the whole input in
one transaction: any bad line, or an ID already stored (unless skip_existing) or
repeated, and nothing is imported. Every value import accepts, export writes back as the
same text, so a backup restores.
"""

from __future__ import annotations

import calendar
import datetime
import json
import marshal
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, NamedTuple

from tokencli.domain import tokens
from tokencli.domain.errors import ConflictError, InvalidRequestError
from tokencli.domain.model import (
    MAX_TTL_SECONDS,
    MAX_USES,
    AuditEvent,
    TokenFilter,
    TokenRecord,
)
from tokencli.domain.rules import validate_label, validate_printable, validate_scopes
from tokencli.service.reader import TokenReader
from tokencli.service.service import TokenService
from tokencli.service.views import event_json, iso_time

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
_HASH = re.compile(r"sha256:[0-9a-fA-F]{64}", re.ASCII)
_MOMENT = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z", re.ASCII)
# The times a line may hold: four-digit years from the epoch on, as export writes them.
EARLIEST = 0  # 1970-01-01T00:00:00Z
LATEST = 253_402_300_799  # 9999-12-31T23:59:59Z
# A token created later than this could be renewed (3650 days from its creation at most)
# past LATEST, into a time no export line can hold.
LATEST_CREATION = LATEST - MAX_TTL_SECONDS


class ImportResult(NamedTuple):
    """What an import stored."""

    tokens: int
    skipped: int
    events: int


def token_line(record: TokenRecord) -> dict[str, Any]:
    """The export object of one stored token."""
    return {
        "type": FORMAT_TOKEN,
        "id": record.id,
        "label": record.label,
        "created_at": iso_time(record.created_at),
        "expires_at": iso_time(record.expires_at),
        "uses_left": record.uses_left,
        "uses_limit": record.uses_limit,
        "revoked_at": None if record.revoked_at is None else iso_time(record.revoked_at),
        "scopes": list(record.scopes),
        "secret_hash": _HASH_PREFIX + record.secret_hash.hex(),
    }


def event_line(event: AuditEvent) -> dict[str, Any]:
    """The export object of one audit event."""
    return {"type": FORMAT_EVENT, **event_json(event)}


def export_objects(
    service: TokenReader, selector: TokenFilter, *, audit: bool
) -> Iterator[dict[str, Any]]:
    """The tokens the selector matches, by ID, then (with `audit`) every audit event,
    oldest first; read a page at a time (see the module docstring for what that gives)."""
    now = service.now()
    for record in service.records(selector, now):
        yield token_line(record)
    if audit:
        for event in service.store.iter_events():
            yield event_line(event)


# -- import ------------------------------------------------------------------------------


class _Spool:
    """Checked rows waiting for the transaction, in a temporary file (hashes, never a
    secret), so neither memory nor the write lock grows with the input's length."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._pending: list[tuple[Any, ...]] = []
        self.count = 0

    def add(self, row: tuple[Any, ...]) -> None:
        self._pending.append(tuple(row))
        self.count += 1
        if len(self._pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            # Length-prefixed: marshal.loads of a whole chunk is many times faster than
            # marshal.load reading the file object by object.
            data = marshal.dumps(self._pending)
            self._file.write(len(data).to_bytes(8, "big") + data)
            self._pending = []

    def chunks(self) -> Iterator[list[tuple[Any, ...]]]:
        """Every row added, a chunk at a time, in order."""
        self._flush()
        self._file.seek(0)
        while size := self._file.read(8):
            yield marshal.loads(self._file.read(int.from_bytes(size, "big")))


def import_lines(
    service: TokenService, lines: Iterable[str], *, skip_existing: bool = False
) -> ImportResult:
    """Store every token and event of an export, in one transaction.

    Every line is parsed and checked before the transaction starts, so the write lock is
    held only while rows are inserted. A bad line is InvalidRequestError naming its
    number; an ID repeated in the input, or already stored (without `skip_existing`), is
    ConflictError; either way nothing is imported.

    With `skip_existing`, a stored token is left exactly as it is, and so is its audit
    trail: an event line about a token stored before this import is left out, and so is
    one identical to an event already stored (same time, action, token, outcome, source
    and detail). Importing the same export twice adds nothing the second time but the
    import's own event. Without `skip_existing`, every event line is appended.
    """
    with tempfile.TemporaryFile() as token_file, tempfile.TemporaryFile() as event_file:
        token_rows, event_rows = _Spool(token_file), _Spool(event_file)
        seen = _check_lines(lines, token_rows, event_rows)
        with service.store.transaction():
            skipped = _store_tokens(service, token_rows, skip_existing)
            events = _store_events(service, event_rows, seen, skipped if skip_existing else None)
            imported = token_rows.count - len(skipped)
            if imported or events:
                detail = f"{imported} tokens, {events} audit events"
                now = service.now()
                service.store.record(
                    [AuditEvent(now, "import", None, "imported", service.source, detail)]
                )
    return ImportResult(imported, len(skipped), events)


def _check_lines(lines: Iterable[str], token_rows: _Spool, event_rows: _Spool) -> set[str]:
    """Parse and check every line into the spools; return the token IDs seen."""
    seen: set[str] = set()
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
            token_rows.add(item)
        else:
            event_rows.add(item)
    return seen


def _store_tokens(service: TokenService, rows: _Spool, skip_existing: bool) -> set[str]:
    """Insert the spooled tokens; return the IDs skipped as already stored."""
    store = service.store
    skipped: set[str] = set()
    for chunk in rows.chunks():
        records = [TokenRecord(*row) for row in chunk]
        taken = store.existing_ids([record.id for record in records])
        if taken and not skip_existing:
            raise ConflictError(
                f"token {min(taken)} is already stored; nothing was imported "
                "(--skip-existing leaves stored tokens as they are)"
            )
        fresh = [record for record in records if record.id not in taken]
        skipped |= taken
        # On PostgreSQL another process may store one of these IDs meanwhile (SQLite's
        # write lock rules that out): the import then stops, never half-merged.
        if store.insert_missing(fresh) != len(fresh):
            raise ConflictError(
                "another process stored a token of the input during the import;"
                " nothing was imported (try again)"
            )
    return skipped


def _store_events(
    service: TokenService, rows: _Spool, seen: set[str], skipped: set[str] | None
) -> int:
    """Append the spooled events; return how many were appended.

    With `skipped` (skip_existing), an event is left out when it is about a token stored
    before this import, or when the same event is stored already. Which ones is decided
    for every chunk before any is appended, so only what was there before counts.
    """
    store = service.store
    keep: bytearray | None = None
    if skipped is not None:
        keep = bytearray()
        for chunk in rows.chunks():
            events = [AuditEvent(*row) for row in chunk]
            elsewhere = {e.token_id for e in events if e.token_id and e.token_id not in seen}
            stored_before = skipped | (store.existing_ids(elsewhere) if elsewhere else set())
            present = store.existing_events(events)
            keep += bytes(
                event.token_id not in stored_before and event not in present for event in events
            )
    appended = position = 0
    for chunk in rows.chunks():
        events = [AuditEvent(*row) for row in chunk]
        if keep is not None:
            flags = keep[position : position + len(events)]
            position += len(events)
            events = [event for event, kept in zip(events, flags, strict=True) if kept]
        store.record(events)
        appended += len(events)
    return appended


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


def _moment(value: object, name: str) -> int:
    """An export line's time: exactly YYYY-MM-DDTHH:MM:SSZ (as export writes it), a real
    UTC date and time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z."""
    match = _MOMENT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shown = f" {value[:40]!r}" if isinstance(value, str) else ""
        raise InvalidRequestError(f"{name}{shown} is not a UTC time like 2026-01-31T12:00:00Z")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:  # a real date, seconds 0-59 (no leap second: it would export as another time)
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise InvalidRequestError(f"{name} {value!r} is not a real date and time") from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if seconds < EARLIEST:
        raise InvalidRequestError(f"{name} {value!r} is before 1970-01-01T00:00:00Z")
    return seconds


def _count(value: object, name: str, lowest: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= MAX_USES:
        raise InvalidRequestError(f"{name} must be null or a whole number {lowest}..{MAX_USES}")
    return value


def _text(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequestError(f"{name} must be a string or null")


def _token(item: dict[str, Any]) -> TokenRecord:
    """A token line as a record, every field checked against what tokencli can store and
    export again (the rules are listed in docs/design.md, "Command line")."""
    _check_keys(item, _TOKEN_KEYS)
    token_id = item["id"]
    if not isinstance(token_id, str) or not tokens.is_token_id(token_id):
        raise InvalidRequestError("id is not a token ID (12 characters of a-z, 2-7)")
    secret_hash = item["secret_hash"]
    if not isinstance(secret_hash, str) or not _HASH.fullmatch(secret_hash):
        raise InvalidRequestError('secret_hash must be "sha256:" and 64 hex digits')
    scopes = item["scopes"]
    if not isinstance(scopes, list):
        raise InvalidRequestError("scopes must be an array of names")
    created_at = _moment(item["created_at"], "created_at")
    if created_at > LATEST_CREATION:
        raise InvalidRequestError(
            f"created_at is after {iso_time(LATEST_CREATION)}: a renewal could not be exported"
        )
    expires_at = _moment(item["expires_at"], "expires_at")
    if expires_at < created_at:
        raise InvalidRequestError("expires_at is before created_at")
    revoked = item["revoked_at"]
    uses_limit = _count(item["uses_limit"], "uses_limit", 1)
    uses_left = _count(item["uses_left"], "uses_left", 0)
    if uses_limit is not None and (uses_left is None or uses_left > uses_limit):
        raise InvalidRequestError("uses_left must be a number no greater than uses_limit")
    return TokenRecord(
        token_id,
        validate_label(_text(item.get("label"), "label")),
        created_at,
        expires_at,
        uses_left,
        None if revoked is None else _moment(revoked, "revoked_at"),
        bytes.fromhex(secret_hash[len(_HASH_PREFIX) :]),
        uses_limit,
        validate_scopes(scopes),
    )


def _event(item: dict[str, Any]) -> AuditEvent:
    _check_keys(item, _EVENT_KEYS)
    at = _moment(item["at"], "at")
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
