"""The SQLite store: one file holds every token (the embedded default).

Opening and checking the file is `sqlite/opening.py`; transactions are
`sqlite/connection.py`; the schema is `sqlite/schema.py`; the server's background upkeep
is `sqlite/backend.py`. This module is the queries.

Each row carries `ends_at`: the moment it stops being usable (expiry, revocation or
last use). Purge is then one indexed `DELETE ... WHERE ends_at <= now`, and "live" starts
from `ends_at > now` (see _LIVE).
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from tokencli.domain.model import AuditEvent, Counts, TokenFilter, TokenRecord, TokenState, ends_at
from tokencli.store.base import (
    EventKey,
    EventPage,
    IdCollisionError,
    TokenPage,
    events_in_pages,
    finish_page,
    tokens_in_pages,
)
from tokencli.store.sqlite.connection import SQLiteConnection

_TOKEN_COLUMNS = (
    "id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, uses_limit, scopes"
)
_EVENT_COLUMNS = "at, action, token_id, outcome, source, detail"
_INSERT_EVENT = f"INSERT INTO audit ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
# A server's batch of checks appends dozens of events: as rows of one INSERT they cost
# about 40 % less than one executemany step each (6 parameters x 32 rows stays under
# the 999 parameters of old SQLite builds).
_EVENTS_PER_INSERT = 32
_INSERT_EVENTS = f"INSERT INTO audit ({_EVENT_COLUMNS}) VALUES " + ", ".join(
    ["(?, ?, ?, ?, ?, ?)"] * _EVENTS_PER_INSERT
)
_INSERT_TOKEN = (
    "INSERT {verb} INTO tokens (id, label, created_at, expires_at, uses_left, revoked_at,"
    " secret_hash, uses_limit, scopes, ends_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Live: `ends_at > now` picks the rows through the index; the rest keeps out a token
# revoked or used up "in the future" of a clock that stepped back.
_LIVE = (
    "(ends_at > {now} AND revoked_at IS NULL AND expires_at > {now}"
    " AND (uses_left IS NULL OR uses_left > 0))"
)
# The states of a stored token as SQL, in the precedence the service gives them.
_STATE_SQL = {
    TokenState.VALID: _LIVE.format(now=":now"),
    TokenState.REVOKED: "revoked_at IS NOT NULL",
    TokenState.EXPIRED: "(revoked_at IS NULL AND expires_at <= :now)",
    TokenState.USED_UP: "(revoked_at IS NULL AND expires_at > :now AND uses_left <= 0)",
}
# SQLite's default limit on host parameters in one statement is 999 on old builds.
_IDS_PER_QUERY = 500


# A NamedTuple's own __new__ is a Python function; tuple's is not (listings make millions).
_new = tuple.__new__


@functools.lru_cache(maxsize=1024)
def _scopes(joined: str) -> tuple[str, ...]:
    # Tokens share few scope sets: split each once.
    return tuple(joined.split())


def _record(row: Sequence[Any]) -> TokenRecord:
    scopes = row[8]
    return _new(TokenRecord, (*row[:8], _scopes(scopes) if scopes else ()))


def _row(record: TokenRecord) -> tuple[object, ...]:
    return (*record[:8], " ".join(record.scopes), ends_at(record))


class SQLiteStore(SQLiteConnection):
    """A tokencli database file and every query the service needs (store/base.py)."""

    def insert_tokens(self, records: Iterable[TokenRecord]) -> None:
        """Insert new tokens; IdCollisionError if an ID is taken (call inside a transaction,
        so the caller can roll the whole batch back and retry with fresh IDs)."""
        with self._errors():
            try:
                self._connection.executemany(
                    _INSERT_TOKEN.format(verb=""), (_row(record) for record in records)
                )
            except sqlite3.IntegrityError:
                raise IdCollisionError("a generated token ID is already taken") from None

    def insert_missing(self, records: Iterable[TokenRecord]) -> int:
        """Insert the tokens whose ID is not yet stored; return how many were inserted."""
        with self._errors():
            before = self._connection.total_changes
            self._connection.executemany(
                _INSERT_TOKEN.format(verb="OR IGNORE"), (_row(record) for record in records)
            )
            return self._connection.total_changes - before

    def existing_ids(self, ids: Collection[str]) -> set[str]:
        """The IDs among `ids` that are stored."""
        return set(self.get_many(list(ids)))

    def get(self, token_id: str) -> TokenRecord | None:
        """The token with this ID, or None."""
        rows = self._rows(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,))
        return _record(rows[0]) if rows else None

    def get_many(self, ids: Sequence[str]) -> dict[str, TokenRecord]:
        """The stored tokens among `ids`, by ID."""
        if len(ids) == 1:
            record = self.get(ids[0])
            return {record.id: record} if record is not None else {}
        found: dict[str, TokenRecord] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _IDS_PER_QUERY):
            chunk = unique[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            for row in self._rows(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id IN ({marks})", chunk
            ):
                found[row[0]] = _record(row)
        return found

    def consume_uses(self, wanted: Mapping[str, int], now: int) -> dict[str, tuple[int, int]]:
        """Take up to `wanted[id]` uses of each use-limited token still live at `now`.

        The condition is in the UPDATE itself, so two checkers can never both take the
        last use, whatever the isolation around them.
        """
        granted: dict[str, tuple[int, int]] = {}
        for token_id, count in wanted.items():
            before = None
            if count > 1:
                rows = self._rows("SELECT uses_left FROM tokens WHERE id = ?", (token_id,))
                before = rows[0][0] if rows else None
            changed = self._write(
                "UPDATE tokens SET uses_left = uses_left - min(:n, uses_left),"
                " ends_at = CASE WHEN uses_left <= :n THEN min(ends_at, :now) ELSE ends_at END"
                " WHERE id = :id AND uses_left > 0 AND revoked_at IS NULL AND expires_at > :now",
                {"id": token_id, "n": count, "now": now},
            )
            if not changed:
                continue
            if before is None:
                rows = self._rows("SELECT uses_left FROM tokens WHERE id = ?", (token_id,))
                granted[token_id] = (1, rows[0][0])
            else:
                taken = min(count, before)
                granted[token_id] = (taken, before - taken)
        return granted

    def revoke(self, token_id: str, now: int) -> bool:
        """Mark the token revoked at `now` (kept if already revoked); False if no such token."""
        changed = self._write(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2),"
            " ends_at = MIN(ends_at, ?2) WHERE id = ?1",
            (token_id, now),
        )
        return changed == 1

    def revoke_matching(self, selector: TokenFilter, now: int) -> list[str]:
        """Revoke every live token the filter selects; return their IDs, oldest first."""
        where, parameters = _where(selector._replace(states=frozenset({TokenState.VALID})), now, [])
        ids = [
            row[0]
            for row in self._rows(
                f"SELECT id FROM tokens {where} ORDER BY created_at, id", parameters
            )
        ]
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            self._write(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?),"
                f" ends_at = MIN(ends_at, ?) WHERE id IN ({marks})",
                (now, now, *chunk),
            )
        return ids

    def set_expiry(self, token_id: str, expires_at: int) -> None:
        """Give a token a new expiry (renew); a revoked or used-up one is left as it is."""
        self._write(
            "UPDATE tokens SET expires_at = ?2, ends_at = ?2 WHERE id = ?1"
            " AND revoked_at IS NULL AND (uses_left IS NULL OR uses_left > 0)",
            (token_id, expires_at),
        )

    def cut_expiry(self, token_id: str, latest: int) -> None:
        """Make a token expire no later than `latest`, and never before its creation."""
        self._write(
            "UPDATE tokens SET expires_at = MIN(expires_at, MAX(?2, created_at)),"
            " ends_at = MIN(ends_at, MAX(?2, created_at)) WHERE id = ?1",
            (token_id, latest),
        )

    def page_tokens(
        self,
        selector: TokenFilter,
        now: int,
        after: str | None,
        size: int,
        scan: int | None = None,
    ) -> TokenPage:
        """The next `size` tokens the filter selects, by ID after `after` (base.py): two
        primary-key range reads, none longer than `scan` rows when `scan` is given."""
        parameters: dict[str, object] = {"after": after or "", "rows": size + 1}
        conditions = ["id > :after"]
        bound = None
        if scan is not None:
            # The last of the next `scan` IDs bounds the page by range, not by count, so
            # tokens written between the two reads can neither be skipped nor repeated.
            found = self._rows(
                "SELECT id FROM tokens WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                (parameters["after"], scan - 1),
            )
            if found:
                bound = str(found[0][0])
                conditions.append("id <= :bound")
                parameters["bound"] = bound
        where, filtering = _where(selector, now, conditions)
        rows = self._rows(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY id LIMIT :rows",
            {**parameters, **filtering},
        )
        return finish_page([_record(row) for row in rows], size, bound)

    def iter_tokens(self, selector: TokenFilter, now: int) -> Iterator[TokenRecord]:
        """The tokens the filter selects at `now`, by ID, a page (one short read) at a time."""
        return tokens_in_pages(self, selector, now)

    def live_ids(self, now: int, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        """(ID, label) of live tokens whose ID starts with `prefix`, for shell completion."""
        rows = self._rows(
            f"SELECT id, label FROM tokens WHERE {_LIVE.format(now='?1')} AND id >= ?2 AND id < ?3"
            " ORDER BY id LIMIT ?4",
            (now, prefix, prefix + "\U0010ffff", limit),
        )
        return [(str(row[0]), row[1]) for row in rows]

    def scopes_in_use(self, now: int, prefix: str, limit: int) -> list[str]:
        """Scope names held by live tokens, starting with `prefix`, for shell completion."""
        names: set[str] = set()
        with self._errors():
            cursor = self._connection.execute(
                f"SELECT DISTINCT scopes FROM tokens WHERE {_LIVE.format(now='?1')}"
                " AND scopes != ''",
                (now,),
            )
            for (joined,) in cursor:
                names.update(name for name in joined.split() if name.startswith(prefix))
        return sorted(names)[:limit]

    def count_ended(self, now: int) -> int:
        """How many rows purge would delete at `now`."""
        return int(self._rows("SELECT count(*) FROM tokens WHERE ends_at <= ?", (now,))[0][0])

    def purge(self, now: int) -> int:
        """Delete every expired, used-up or revoked token in one indexed statement."""
        return self._write("DELETE FROM tokens WHERE ends_at <= ?", (now,))

    def counts(self, now: int) -> Counts:
        """Tokens by condition in one pass, and the audit trail's size and oldest event."""
        row = self._rows(
            "SELECT"
            f" coalesce(sum({_LIVE.format(now='?1')}), 0),"
            " coalesce(sum(revoked_at IS NULL AND expires_at <= ?1), 0),"
            " coalesce(sum(revoked_at IS NULL AND expires_at > ?1 AND uses_left <= 0), 0),"
            " coalesce(sum(revoked_at IS NOT NULL), 0),"
            f" min(CASE WHEN {_LIVE.format(now='?1')} THEN expires_at END)"
            " FROM tokens",
            (now,),
        )[0]
        audit_events, oldest = self._rows("SELECT count(*), min(at) FROM audit")[0]
        live, expired, used_up, revoked = (int(value) for value in row[:4])
        return Counts(live, expired, used_up, revoked, row[4], int(audit_events), oldest)

    # -- audit trail ---------------------------------------------------------------------

    def record(self, events: Iterable[AuditEvent]) -> None:
        """Append audit events (inside the `transaction()` of the change they record)."""
        rows = events if isinstance(events, list) else list(events)
        whole = len(rows) - len(rows) % _EVENTS_PER_INSERT
        with self._errors():
            for start in range(0, whole, _EVENTS_PER_INSERT):
                block = rows[start : start + _EVENTS_PER_INSERT]
                self._connection.execute(_INSERT_EVENTS, list(itertools.chain(*block)))
            if whole < len(rows):
                self._connection.executemany(_INSERT_EVENT, rows[whole:])

    def events(self, *, since: int | None, token_id: str | None, limit: int) -> list[AuditEvent]:
        """The newest `limit` events matching the filters, oldest first."""
        conditions = []
        parameters: list[object] = []
        if since is not None:
            conditions.append("at >= ?")
            parameters.append(since)
        if token_id is not None:
            conditions.append("token_id = ?")
            parameters.append(token_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._rows(
            f"SELECT {_EVENT_COLUMNS} FROM (SELECT id, {_EVENT_COLUMNS} FROM audit {where}"
            " ORDER BY at DESC, id DESC LIMIT ?) ORDER BY at, id",
            (*parameters, limit),
        )
        return [AuditEvent(*row) for row in rows]

    def existing_events(self, events: Sequence[AuditEvent]) -> set[AuditEvent]:
        """The events among `events` already stored: the rows at their seconds, compared
        whole (the index on `at` finds them)."""
        wanted = set(events)
        moments = sorted({event.at for event in wanted})
        found: set[AuditEvent] = set()
        for start in range(0, len(moments), _IDS_PER_QUERY):
            chunk = moments[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            rows = self._rows(f"SELECT {_EVENT_COLUMNS} FROM audit WHERE at IN ({marks})", chunk)
            found.update(event for event in map(AuditEvent._make, rows) if event in wanted)
        return found

    def page_events(self, after: EventKey | None, size: int) -> EventPage:
        """The next `size` audit events after the key `after`, oldest first (the index on
        `at` holds the row ID too, so the walk is an index range read)."""
        where = "" if after is None else "WHERE (at, id) > (?, ?)"
        rows = self._rows(
            f"SELECT at, id, {_EVENT_COLUMNS} FROM audit {where} ORDER BY at, id LIMIT ?",
            (*(after or ()), size),
        )
        events = [AuditEvent(*row[2:]) for row in rows]
        return EventPage(events, (rows[-1][0], rows[-1][1]) if len(rows) == size else None)

    def iter_events(self) -> Iterator[AuditEvent]:
        """Every audit event, oldest first, a page (one short read) at a time."""
        return events_in_pages(self)

    def drop_events_before(self, cutoff: int) -> int:
        """Delete audit events older than `cutoff` (one indexed DELETE)."""
        return self._write("DELETE FROM audit WHERE at < ?", (cutoff,))


def _where(selector: TokenFilter, now: int, conditions: list[str]) -> tuple[str, dict[str, object]]:
    """The WHERE clause and its parameters for a token filter at `now`, after the
    `conditions` given (ANDed)."""
    conditions = list(conditions)
    parameters: dict[str, object] = {"now": now}
    if selector.states is not None:
        states = " OR ".join(_STATE_SQL[state] for state in sorted(selector.states))
        conditions.append(f"({states})" if states else "0")
    if selector.label is not None:
        conditions.append("label = :label")
        parameters["label"] = selector.label
    for index, scope in enumerate(selector.scopes):
        conditions.append(f"instr(' ' || scopes || ' ', :scope{index}) > 0")
        parameters[f"scope{index}"] = f" {scope} "
    if selector.expires_by is not None:
        conditions.append("expires_at <= :expires_by")
        parameters["expires_by"] = selector.expires_by
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), parameters
