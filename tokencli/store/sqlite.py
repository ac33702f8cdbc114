"""The SQLite store: one file holds every token (the embedded default).

Opening and checking the file is `sqlite_open.py`; the schema is `sqlite_schema.py`; the
server's background upkeep is `sqlite_backend.py`. This module is the queries.

Each row carries `ends_at`: the moment it stops being usable (expiry, revocation or
last use). Purge is then one indexed `DELETE ... WHERE ends_at <= now`, and "live" starts
from `ends_at > now` (see _LIVE).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokencli.errors import StorageError
from tokencli.model import AuditEvent, Counts, TokenFilter, TokenRecord, TokenState, ends_at
from tokencli.store.base import IdCollisionError
from tokencli.store.sqlite_open import Held, open_connection, release, storage_errors
from tokencli.store.sqlite_schema import migrate

_TOKEN_COLUMNS = (
    "id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, uses_limit, scopes"
)
_EVENT_COLUMNS = "at, action, token_id, outcome, source, detail"
_INSERT_EVENT = f"INSERT INTO audit ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
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


def _record(row: Sequence[Any]) -> TokenRecord:
    token_id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, limit, scopes = row
    return TokenRecord(
        token_id,
        label,
        created_at,
        expires_at,
        uses_left,
        revoked_at,
        secret_hash,
        limit,
        tuple(scopes.split()) if scopes else (),
    )


def _row(record: TokenRecord) -> tuple[object, ...]:
    return (*record[:8], " ".join(record.scopes), ends_at(record))


class FileWatch:
    """A problem with the file found in the background (it was replaced), or None."""

    def __init__(self) -> None:
        self.problem: str | None = None


class SQLiteStore:
    """A tokencli database file: a checked, migrated SQLite connection and its queries.

    `write_lock`, shared by the stores of one process, queues write transactions in
    Python: SQLite's own busy wait sleeps and retries, which under many threads costs
    far more latency than a queue on a lock. `watch` lets the server's upkeep thread
    fail every write once the file has been replaced under it.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path | None,
        write_lock: contextlib.AbstractContextManager[Any] | None = None,
        watch: FileWatch | None = None,
        *,
        writable: bool = True,
        held: Held = None,
    ) -> None:
        self._connection = connection
        self.path = path
        self._held = held  # counted while open (sqlite_open.hold): released on close
        self._write_lock = write_lock if write_lock is not None else contextlib.nullcontext()
        self._watch = watch
        self._writable = writable
        self._depth = 0  # open blocks: 1 is the transaction, more are savepoints

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool,
        read_only: bool = False,
        write_lock: contextlib.AbstractContextManager[Any] | None = None,
        watch: FileWatch | None = None,
    ) -> SQLiteStore:
        """Open the database at `path`; create it if `create`, else read a missing one as
        empty. `read_only` opens it so that it cannot be written (read-only commands)."""
        opened = open_connection(path, create=create, read_only=read_only)
        if opened is None:
            return cls.empty()
        connection, held = opened
        return cls(connection, path, write_lock, watch, writable=not read_only, held=held)

    @classmethod
    def empty(cls) -> SQLiteStore:
        """An in-memory store, so read-only commands on a missing database create nothing."""
        connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(connection)
        return cls(connection, None)

    @property
    def location(self) -> str | None:
        """The file's path; None for a missing database read as empty."""
        return str(self.path) if self.path is not None else None

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()
        release(self._held)
        self._held = None

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return storage_errors(self.path, write=self._writable)

    def size_bytes(self) -> int | None:
        """Bytes on disk: the database file and its WAL (0 for a missing file)."""
        if self.path is None:
            return 0
        with self._errors():
            wal = Path(f"{self.path}-wal")
            return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def _check_watch(self) -> None:
        if self._watch is not None and self._watch.problem is not None:
            raise StorageError(self._watch.problem)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block as one write transaction, taking the write lock at the start.

        Inside another block (`batch()`, or a transaction) it becomes a savepoint: it
        commits with the outer block, and a failure rolls back this block alone.
        """
        with self._block():
            yield

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the transactions run in the block into one commit (group commit).

        A commit costs far more than the statements of one check; the server answers
        the requests that arrived together in one batch and sends the answers only once
        it has committed, so no client hears of a change that was not stored.
        """
        with self._block():
            yield

    @contextlib.contextmanager
    def _block(self) -> Iterator[None]:
        connection = self._connection
        if self._depth:
            name = f"step{self._depth}"
            with self._errors():
                self._refuse_if_rolled_back()
                connection.execute(f"SAVEPOINT {name}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    if connection.in_transaction:
                        connection.execute(f"ROLLBACK TO {name}")
                        connection.execute(f"RELEASE {name}")
                    raise
                finally:
                    self._depth -= 1
                connection.execute(f"RELEASE {name}")
            return
        self._check_watch()
        with self._write_lock, self._errors():
            connection.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._refuse_if_rolled_back()
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            connection.execute("COMMIT")

    def _refuse_if_rolled_back(self) -> None:
        # SQLite rolls a whole transaction back itself on some failures (disk full, I/O
        # error). Nothing may then be answered as stored, nor run on in autocommit.
        if not self._connection.in_transaction:
            raise StorageError(f"database at {self.path} rolled back a write")

    def set_autocheckpoint(self, pages: int) -> None:
        """WAL pages after which a commit also checkpoints; 0 leaves it to the upkeep."""
        with self._errors():
            self._connection.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, mostly alongside the writers.

        The first pass runs while others write and so may never reach the end of a busy
        WAL; the second holds the write lock for the little that is left, so the next
        writer can start the WAL over instead of letting it grow without end.
        """
        with self._errors():
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with self._write_lock:
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def ping(self) -> None:
        """Prove the database answers, at the cost of one page read."""
        self._check_watch()
        with self._errors():
            self._connection.execute("SELECT 1 FROM tokens LIMIT 1").fetchall()

    def _write(self, sql: str, parameters: Sequence[object] | Mapping[str, object]) -> int:
        """Run one write statement (inside `transaction()`); return the rows it changed."""
        with self._errors():
            return self._connection.execute(sql, parameters).rowcount

    def _rows(
        self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()
    ) -> list[Any]:
        with self._errors():
            return self._connection.execute(sql, parameters).fetchall()

    # -- tokens --------------------------------------------------------------------------

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
        where, parameters = _where(selector._replace(states=frozenset({TokenState.VALID})), now)
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

    def iter_tokens(self, selector: TokenFilter, now: int) -> Iterator[TokenRecord]:
        """The tokens the filter selects at `now`, oldest first, streamed from the cursor."""
        where, parameters = _where(selector, now)
        limit = "" if selector.limit is None else f" LIMIT {int(selector.limit)}"
        with self._errors():
            cursor = self._connection.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at, id{limit}",
                parameters,
            )
        while True:
            with self._errors():
                rows = cursor.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield _record(row)

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
        with self._errors():
            self._connection.executemany(_INSERT_EVENT, events)

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

    def iter_events(self) -> Iterator[AuditEvent]:
        """Every audit event, oldest first, streamed."""
        with self._errors():
            cursor = self._connection.execute(f"SELECT {_EVENT_COLUMNS} FROM audit ORDER BY at, id")
        while True:
            with self._errors():
                rows = cursor.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield AuditEvent(*row)

    def drop_events_before(self, cutoff: int) -> int:
        """Delete audit events older than `cutoff` (one indexed DELETE)."""
        return self._write("DELETE FROM audit WHERE at < ?", (cutoff,))


def _where(selector: TokenFilter, now: int) -> tuple[str, dict[str, object]]:
    """The WHERE clause and its parameters for a token filter at `now`."""
    conditions: list[str] = []
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
