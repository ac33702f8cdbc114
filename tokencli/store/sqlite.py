"""The SQLite store: the only module that knows SQL.

One file holds every token. The service talks to a `Store` through a narrow set of
methods (insert, fetch, consume a use, revoke, list, purge), so a second store, say a
replicated database, can be added later without touching the service or its adapters.

Three decisions shape this module:

- A file is checked before anything writes to it. SQLite must read it, and it must carry
  tokencli's `application_id`; its `user_version` must not be newer than this code. A
  file that fails is refused and left byte-for-byte untouched.
- A new database is built under a temporary name and linked into place fully formed, so
  a concurrent process never sees a half-made file, and the header (application_id,
  schema) is written to the main file before WAL mode starts.
- Each row carries `ends_at`: the moment it stops being usable (expiry, revocation or
  last use). Purge is then one indexed `DELETE ... WHERE ends_at <= now`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tokencli.errors import StorageError

if TYPE_CHECKING:
    from sqlite_utils import Database

# "tknc": marks a SQLite file as ours, so another application's database is refused.
APPLICATION_ID = 0x746B6E63
BUSY_TIMEOUT_SECONDS = 10.0

# (id, secret_hash, label, created_at, expires_at, uses_left), as `insert_tokens` takes it.
NewRow = tuple[str, bytes, str | None, int, int, int | None]
_TOKEN_COLUMNS = "id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, uses_limit"
_EVENT_COLUMNS = "at, action, token_id, outcome, source, detail"
_INSERT_EVENT = f"INSERT INTO audit ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"


class IdCollisionError(StorageError):
    """A freshly generated ID already exists (about one in 10^12 per token)."""


class TokenRecord(NamedTuple):
    """One stored token, exactly as the row holds it (times are UTC epoch seconds)."""

    id: str
    label: str | None
    created_at: int
    expires_at: int
    uses_left: int | None
    revoked_at: int | None
    secret_hash: bytes
    uses_limit: int | None


class AuditEvent(NamedTuple):
    """One line of the audit trail. Never holds a secret: IDs and outcomes only."""

    at: int
    action: str
    token_id: str | None
    outcome: str
    source: str
    detail: str | None = None


class Counts(NamedTuple):
    """Token counts by condition at one moment, for `stats`."""

    live: int
    expired: int
    used_up: int
    revoked: int
    next_expiry: int | None


def _m001_create_tokens(db: Database) -> None:
    # Raw DDL: sqlite-utils cannot say WITHOUT ROWID, and a token lookup by ID then
    # walks one b-tree instead of an index and a table.
    db.execute(
        """
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY NOT NULL,
            secret_hash BLOB NOT NULL,
            label TEXT,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            uses_left INTEGER,
            revoked_at INTEGER,
            ends_at INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID
        """
    )
    db.table("tokens").create_index(["ends_at"], index_name="tokens_ends_at")


def _m002_audit_and_use_limit(db: Database) -> None:
    # The limit a token was issued with, so `rotate` can give its successor the same one.
    # Rows from schema 1 keep NULL here; the service falls back to their uses left.
    db.table("tokens").add_column("uses_limit", int)
    audit = db.table("audit")
    audit.create(
        {
            "id": int,
            "at": int,
            "action": str,
            "token_id": str,
            "outcome": str,
            "source": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "action", "outcome", "source"},
        strict=True,
    )
    # Only `at` is indexed: it grows with the rowid, so its index is append-only and
    # cheap on the hot path (every check writes an event). `audit --token` scans.
    audit.create_index(["at"], index_name="audit_at")


# Ordered and append-only: never edit a migration that has shipped, add the next one.
MIGRATIONS: list[Callable[[Database], None]] = [_m001_create_tokens, _m002_audit_and_use_limit]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema up to SCHEMA_VERSION, each step and its version in one transaction."""
    if _user_version(connection) >= SCHEMA_VERSION:
        return
    from sqlite_utils import Database  # only needed on creation or upgrade

    db = Database(connection, execute_plugins=False)
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the write lock.
        for version in range(_user_version(connection), SCHEMA_VERSION):
            MIGRATIONS[version](db)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _user_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


@contextlib.contextmanager
def _storage_errors(path: Path | None) -> Iterator[None]:
    """Turn SQLite and file-system failures into StorageError with a useful message."""
    where = str(path) if path is not None else "(empty database)"
    try:
        yield
    except StorageError:
        raise
    except sqlite3.OperationalError as error:
        text = str(error)
        if "locked" in text or "busy" in text:
            raise StorageError(
                f"database at {where} stayed locked for over {BUSY_TIMEOUT_SECONDS:g}s; "
                "another process holds it (try again)"
            ) from None
        raise StorageError(f"cannot use database at {where}: {text}") from None
    except sqlite3.DatabaseError as error:
        raise StorageError(
            f"database at {where} is damaged or not a tokencli database ({error}); "
            "it was left as it is"
        ) from None
    except OSError as error:
        raise StorageError(f"cannot use database at {where}: {error.strerror or error}") from None


def _check_identity(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse, without writing, any file that is not a tokencli database.

    The check goes through SQLite rather than reading the file's header with open():
    closing any descriptor of a database file drops every POSIX lock this process holds
    on it, so a raw read beside a live connection (the server's) lets other processes
    reset the WAL under that connection's feet and corrupt what it reads.
    """
    hint = "(refusing to touch it); pass --db to choose another file"
    try:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            raise StorageError(f"{path} is not a SQLite database {hint}") from None
        raise StorageError(
            f"database at {path} is damaged ({error}); it was left as it is"
        ) from None
    if application_id == APPLICATION_ID:
        return
    if path.stat().st_size == 0:
        raise StorageError(f"database at {path} is an empty file, not a tokencli database {hint}")
    raise StorageError(f"database at {path} is not a tokencli database {hint}")


def _connect(path: Path | str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
    # lock up front and waits on the busy timeout instead of failing on upgrade.
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )


def _create_database(path: Path) -> None:
    """Build a new database beside `path`, then link it into place in one step."""
    import tempfile  # only when creating: it drags in shutil and friends

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600, so tokens are never group-readable.
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".new", dir=path.parent
    )
    os.close(handle)
    try:
        connection = sqlite3.connect(temporary_name, isolation_level=None)
        try:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            migrate(connection)
            connection.execute("PRAGMA journal_mode = WAL")
        finally:
            connection.close()
        try:
            os.link(temporary_name, path)
        except FileExistsError:
            pass  # another process created it first; theirs is just as good
    finally:
        os.unlink(temporary_name)


class SQLiteStore:
    """A tokencli database: a checked, migrated SQLite connection and its queries.

    Every write happens inside `transaction()`, so a change and its audit event commit
    together or not at all. `write_lock`, shared by the stores of one process, queues
    those transactions in Python: SQLite's own busy wait sleeps and retries, which under
    many threads costs far more latency than a queue on a lock.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path | None,
        write_lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        self._connection = connection
        self.path = path
        self._write_lock = write_lock if write_lock is not None else contextlib.nullcontext()
        self._in_batch = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool,
        write_lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> SQLiteStore:
        """Open the database at `path`; create it if `create`, else read a missing one as empty."""
        with _storage_errors(path):
            if not path.exists() and not path.is_symlink():
                if not create:
                    return cls.empty()
                _create_database(path)
            if path.is_dir():
                raise StorageError(f"{path} is a folder, not a database file; pass --db FILE")
            connection = _connect(path)
            try:
                _check_identity(connection, path)
                # NORMAL is crash-safe in WAL mode (a killed process loses nothing it
                # committed); only a power cut can drop the last commits.
                connection.execute("PRAGMA synchronous = NORMAL")
                version = _user_version(connection)
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"database at {path} has schema version {version}, newer than this "
                        f"tokencli understands ({SCHEMA_VERSION}); upgrade tokencli"
                    )
                if version < SCHEMA_VERSION:  # every open of a current file skips this
                    migrate(connection)
            except BaseException:
                connection.close()
                raise
            return cls(connection, path, write_lock)

    @classmethod
    def empty(cls) -> SQLiteStore:
        """An in-memory store, so read-only commands on a missing file create nothing."""
        connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(connection)
        return cls(connection, None)

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def size_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL (0 for an in-memory store)."""
        if self.path is None:
            return 0
        with _storage_errors(self.path):
            wal = Path(f"{self.path}-wal")
            return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block as one write transaction, taking the write lock at the start.

        Inside `batch()` it becomes a savepoint: it commits with the batch, and a failure
        rolls back this block alone.
        """
        if self._in_batch:
            with _storage_errors(self.path):
                self._connection.execute("SAVEPOINT step")
                try:
                    yield
                except BaseException:
                    self._connection.execute("ROLLBACK TO step")
                    self._connection.execute("RELEASE step")
                    raise
                self._connection.execute("RELEASE step")
            return
        with self._write_lock, _storage_errors(self.path):
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the transactions run in the block into one commit (group commit).

        A commit costs far more than the statements of one check; the server answers
        the requests that arrived together in one batch and sends the answers only once
        it has committed, so no client hears of a change that was not stored.
        """
        with self._write_lock, _storage_errors(self.path):
            self._connection.execute("BEGIN IMMEDIATE")
            self._in_batch = True
            try:
                yield
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            finally:
                self._in_batch = False
            self._connection.execute("COMMIT")

    def set_autocheckpoint(self, pages: int) -> None:
        """WAL pages after which a commit also checkpoints; 0 leaves it to `checkpoint()`."""
        with _storage_errors(self.path):
            self._connection.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, mostly alongside the writers.

        The first pass runs while others write and so may never reach the end of a busy
        WAL; the second holds the write lock for the little that is left, so the next
        writer can start the WAL over instead of letting it grow without end.
        """
        with _storage_errors(self.path):
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with self._write_lock:
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _write(self, sql: str, parameters: tuple[object, ...]) -> int:
        """Run one write statement (inside `transaction()`); return the rows it changed."""
        with _storage_errors(self.path):
            return self._connection.execute(sql, parameters).rowcount

    # -- tokens --------------------------------------------------------------------------

    def insert_tokens(self, rows: Iterable[NewRow]) -> None:
        """Insert rows of (id, secret_hash, label, created_at, expires_at, uses).

        Raises IdCollisionError if an ID is taken; call inside `transaction()` so the
        caller can roll the whole batch back and retry with fresh IDs.
        """
        with _storage_errors(self.path):
            try:
                self._connection.executemany(
                    "INSERT INTO tokens (id, secret_hash, label, created_at, expires_at,"
                    " uses_left, uses_limit, ends_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?5)",
                    rows,
                )
            except sqlite3.IntegrityError:
                raise IdCollisionError("a generated token ID is already taken") from None

    def get(self, token_id: str) -> TokenRecord | None:
        """Return the token with this ID, or None."""
        with _storage_errors(self.path):
            row = self._connection.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)
            ).fetchone()
        return TokenRecord(*row) if row is not None else None

    def consume_use(self, token_id: str, now: int) -> bool:
        """Take one use of a use-limited token; False if none was left.

        The condition is in the UPDATE itself, so two checkers can never both take
        the last use, whatever the isolation around them.
        """
        return (
            self._write(
                "UPDATE tokens SET uses_left = uses_left - 1,"
                " ends_at = CASE WHEN uses_left = 1 THEN ?2 ELSE ends_at END"
                " WHERE id = ?1 AND uses_left > 0",
                (token_id, now),
            )
            == 1
        )

    def delete_expired(self, token_id: str, now: int) -> None:
        """Delete this token if it has expired by `now`."""
        self._write("DELETE FROM tokens WHERE id = ? AND expires_at <= ?", (token_id, now))

    def revoke(self, token_id: str, now: int) -> bool:
        """Mark the token revoked at `now` (kept if already revoked); False if no such token."""
        changed = self._write(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2),"
            " ends_at = MIN(ends_at, ?2) WHERE id = ?1",
            (token_id, now),
        )
        return changed == 1

    def set_expiry(self, token_id: str, expires_at: int) -> None:
        """Give a live token a new expiry (renew)."""
        self._write(
            "UPDATE tokens SET expires_at = ?2, ends_at = ?2 WHERE id = ?1", (token_id, expires_at)
        )

    def cut_expiry(self, token_id: str, latest: int) -> None:
        """Make a token expire no later than `latest` (rotate's grace period)."""
        self._write(
            "UPDATE tokens SET expires_at = MIN(expires_at, ?2), ends_at = MIN(ends_at, ?2)"
            " WHERE id = ?1",
            (token_id, latest),
        )

    def list_tokens(self, now: int, *, include_ended: bool) -> list[TokenRecord]:
        """Tokens oldest first; only live ones unless `include_ended`."""
        where = "" if include_ended else "WHERE ends_at > ?"
        parameters: tuple[int, ...] = () if include_ended else (now,)
        with _storage_errors(self.path):
            rows = self._connection.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at, id",
                parameters,
            ).fetchall()
        return [TokenRecord(*row) for row in rows]

    def live_ids(self, now: int, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        """(ID, label) of live tokens whose ID starts with `prefix`, for shell completion."""
        with _storage_errors(self.path):
            rows = self._connection.execute(
                "SELECT id, label FROM tokens WHERE ends_at > ? AND id >= ? AND id < ?"
                " ORDER BY id LIMIT ?",
                (now, prefix, prefix + "\U0010ffff", limit),
            ).fetchall()
        return [(str(row[0]), row[1]) for row in rows]

    def ping(self) -> None:
        """Prove the database answers, at the cost of one page read."""
        with _storage_errors(self.path):
            self._connection.execute("SELECT 1 FROM tokens LIMIT 1").fetchall()

    def count_ended(self, now: int) -> int:
        """How many rows purge would delete at `now`."""
        with _storage_errors(self.path):
            row = self._connection.execute(
                "SELECT count(*) FROM tokens WHERE ends_at <= ?", (now,)
            ).fetchone()
        return int(row[0])

    def purge(self, now: int) -> int:
        """Delete every expired, used-up or revoked token in one indexed statement."""
        return self._write("DELETE FROM tokens WHERE ends_at <= ?", (now,))

    def counts(self, now: int) -> Counts:
        """Tokens by condition, in one pass."""
        with _storage_errors(self.path):
            row = self._connection.execute(
                "SELECT"
                " coalesce(sum(ends_at > ?1), 0),"
                " coalesce(sum(revoked_at IS NULL AND expires_at <= ?1), 0),"
                " coalesce(sum(revoked_at IS NULL AND expires_at > ?1 AND uses_left <= 0), 0),"
                " coalesce(sum(revoked_at IS NOT NULL), 0),"
                " min(CASE WHEN ends_at > ?1 THEN expires_at END)"
                " FROM tokens",
                (now,),
            ).fetchone()
        live, expired, used_up, revoked = (int(value) for value in row[:4])
        return Counts(live, expired, used_up, revoked, row[4])

    # -- audit trail ---------------------------------------------------------------------

    def record(self, events: Iterable[AuditEvent]) -> None:
        """Append audit events (inside the `transaction()` of the change they record)."""
        with _storage_errors(self.path):
            self._connection.executemany(_INSERT_EVENT, events)

    def record_one(self, event: AuditEvent) -> None:
        """Append one audit event; the hot path of every check."""
        with _storage_errors(self.path):
            self._connection.execute(_INSERT_EVENT, event)

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
        with _storage_errors(self.path):
            rows = self._connection.execute(
                f"SELECT {_EVENT_COLUMNS} FROM (SELECT id, {_EVENT_COLUMNS} FROM audit {where}"
                " ORDER BY at DESC, id DESC LIMIT ?) ORDER BY at, id",
                (*parameters, limit),
            ).fetchall()
        return [AuditEvent(*row) for row in rows]

    def drop_events_before(self, cutoff: int) -> int:
        """Delete audit events older than `cutoff` (one indexed DELETE)."""
        return self._write("DELETE FROM audit WHERE at < ?", (cutoff,))
