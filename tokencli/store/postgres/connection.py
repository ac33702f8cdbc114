"""One connection to tokencli's schema in a PostgreSQL database: transactions, savepoints,
the group-commit batch, deferred statements, and psycopg's errors turned into
messages for the operator (never holding a password).

The queries are in queries.py (`PostgresStore` extends `PostgresConnection`); the schema
and migrations in postgres/schema.py. These are the only modules that import psycopg;
tokencli imports them only for a postgresql:// location, and without psycopg it says how
to install it.

Round trips decide the speed here, not the statements: every statement the client waits
for costs a network round trip. So:

- The connection runs in autocommit mode: a read outside a transaction is one round trip,
  and no idle connection ever sits inside an open transaction.
- BEGIN, SAVEPOINT and RELEASE are not sent when asked for; they wait in `_pending` and
  leave in one pipeline with the next statement (or the COMMIT). A block that runs no
  statement costs nothing; a savepoint costs no round trip of its own.
- Audit events recorded in the outermost block also wait, and leave with the COMMIT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

from tokencli.domain.errors import StorageError
from tokencli.domain.location import redact_url
from tokencli.store.base import IdCollisionError

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # the optional extra is not installed: say so when a URL is used
    INSTALLED = False
else:
    INSTALLED = True
    # psycopg logs what it ignores while cleaning up after a lost connection ("error
    # ignored terminating <psycopg.Pipeline ...>"); tokencli configures no logging, so
    # Python would print those lines raw on stderr, beside the access log. The error that
    # matters is raised as StorageError and reported in tokencli's own words.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())


NOT_INSTALLED = "PostgreSQL support is not installed: pip install 'tokencli[postgres]'"

CONNECT_TIMEOUT_SECONDS = 10

# A write waits this long for a row another transaction holds, then fails (exit 3) rather
# than hang: the same bound as SQLite's busy timeout. Set per transaction with SET LOCAL,
# which every managed PostgreSQL and transaction pooler allows.
LOCK_TIMEOUT_SECONDS = 10

_BEGIN = "BEGIN"

_SET_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'"


def _require_psycopg() -> None:
    if not INSTALLED:
        raise StorageError(NOT_INSTALLED)


def _secrets_in(url: str) -> list[str]:
    """The password of a URL as written and decoded, to scrub from any message.

    Only for scrubbing: the URL itself goes to libpq untouched. libpq echoes some bad
    input back (`invalid percent-encoded token: "..."`), password included.
    """
    found: list[str] = []
    authority = re.match(r"^[a-z]+://([^/?#]*)@", url, re.IGNORECASE)
    if authority is not None and ":" in authority.group(1):
        found.append(authority.group(1).split(":", 1)[1])
    found += re.findall(r"[?&]password=([^&#]*)", url, re.IGNORECASE)
    decoded = [urllib.parse.unquote(secret) for secret in found]
    # Very short strings would scrub half the message and hide nothing worth hiding.
    return sorted({s for s in found + decoded if len(s) >= 3}, key=len, reverse=True)


def _reason(error: BaseException, secrets: Sequence[str]) -> str:
    """The error's own words on one line, with any password replaced by ***."""
    diag = getattr(error, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(error)
    for secret in secrets:
        text = text.replace(secret, "***")
    lines = [line.strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line) or type(error).__name__


def _storage_error(
    error: psycopg.Error, where: str, secrets: Sequence[str], *, lost: bool
) -> StorageError:
    """An operator's message for a psycopg error (never holding a password)."""
    reason = _reason(error, secrets)
    state = error.sqlstate or ""
    if state == "23505" and error.diag.constraint_name == "tokens_pkey":
        # Only insert_tokens can break the key: insert_missing says ON CONFLICT DO NOTHING.
        return IdCollisionError("a generated token ID is already taken")
    if state == "55P03":
        return StorageError(
            f"database at {where} stayed locked for over {LOCK_TIMEOUT_SECONDS}s;"
            " another process holds it (try again)"
        )
    if state in ("40001", "40P01"):
        return StorageError(
            f"database at {where}: a concurrent transaction got in the way ({reason}); try again"
        )
    if state == "25006":
        return StorageError(
            f"database at {where} is read-only ({reason}); point tokencli at the primary,"
            " e.g. add target_session_attrs=read-write to the URL"
        )
    if lost or state.startswith("08") or state in ("57P01", "57P02", "57P03"):
        return StorageError(f"lost the connection to the database at {where}: {reason}")
    return StorageError(f"cannot use the database at {where}: {reason}")


def _connect(url: str) -> psycopg.Connection[Any]:
    """A new autocommit connection; libpq reads the URL, PG* variables and .pgpass itself."""
    _require_psycopg()
    where, secrets = redact_url(url), _secrets_in(url)
    options: dict[str, Any] = {"fallback_application_name": "tokencli"}
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as error:
        reason = _reason(error, secrets)
        raise StorageError(f"{where} is not a usable PostgreSQL URL: {reason}") from None
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    try:
        return psycopg.Connection.connect(url, autocommit=True, **options)
    except psycopg.Error as error:
        reason = _reason(error, secrets)
        raise StorageError(f"cannot connect to the database at {where}: {reason}") from None


Params = Sequence[Any] | Mapping[str, Any] | None

Statement: TypeAlias = "str | sql.SQL | sql.Composed"


class PostgresConnection:
    """One connection to tokencli's schema in a PostgreSQL database, and its queries.

    Use it from one thread at a time; `PostgresBackend.open_store` gives each thread its own.
    Every failure raises StorageError. After one that lost the connection (the server
    restarted, the network dropped), this store stays unusable and every call raises
    StorageError again: close it and open a new one (the server does).

    `transaction()` is BEGIN ... COMMIT; nested in another block (as inside `batch()`) it
    is a savepoint: its failure rolls back that block alone and re-raises, and its changes
    commit with the outermost block. `batch()` is the same block under the name the
    server uses for group commit. Unlike SQLite, PostgreSQL aborts the whole transaction
    when a statement fails: an error caught inside a block without letting it leave makes
    the COMMIT fail with StorageError. Nest a `transaction()` around a statement that may
    fail and go on (its savepoint is free: it rides with the next statement).
    """

    def __init__(self, connection: psycopg.Connection[Any], url: str, schema: str) -> None:
        self._connection = connection
        self._location = redact_url(url)
        self._secrets = _secrets_in(url)
        self._schema = schema
        self._depth = 0  # blocks open: 0 = autocommit
        # Statements waiting to leave with the next one: (statement, parameters).
        self._pending: list[tuple[str, Params]] = []
        self._flushes = 0  # times statements left for the server, to tell a block untouched

    @property
    def location(self) -> str:
        """The URL, its password shown as ***."""
        return self._location

    @property
    def schema(self) -> str:
        """The schema holding the tables."""
        return self._schema

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back by the server)."""
        self._connection.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as error:
            raise _storage_error(
                error, self._location, self._secrets, lost=self._connection.broken
            ) from None

    def _execute(self, query: Statement, params: Params = None) -> psycopg.Cursor[Any]:
        """Run one statement, preceded in the same round trip by whatever is pending."""
        with self._errors():
            cursor = self._connection.cursor()
            if self._pending:
                pending, self._pending = self._pending, []
                self._flushes += 1
                with self._connection.pipeline():
                    for statement, arguments in pending:
                        self._connection.execute(statement, arguments)
                    cursor.execute(query, params)
            else:
                self._flushes += 1
                cursor.execute(query, params)
        return cursor

    def _write(self, query: str, params: Params) -> int:
        return self._execute(query, params).rowcount

    def _rows(self, query: Statement, params: Params = None) -> list[Any]:
        cursor = self._execute(query, params)
        with self._errors():
            return cursor.fetchall()

    def _defer(self, query: str, params: Params) -> None:
        """Send a write with the next statement or the COMMIT, when nothing waits on it.

        Only in the outermost block: there a failure shows up at the COMMIT at the latest
        and rolls back the whole block anyway. Inside a savepoint, the write must fail
        inside the block it belongs to, so it is sent at once.
        """
        if self._depth == 1:
            self._pending.append((query, params))
        else:
            self._execute(query, params)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One transaction; inside another block (such as `batch()`), a savepoint."""
        return self._block()

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Group the transactions run in the block into one commit (serve's group commit)."""
        return self._block()

    def isolated(self) -> contextlib.AbstractContextManager[None]:
        """A savepoint: a failed statement aborts the whole transaction, so a request's
        own failure must roll back to here for the rest of the batch to go on."""
        return self._block()

    @contextlib.contextmanager
    def _block(self) -> Iterator[None]:
        savepoint = f"tokencli_{self._depth}" if self._depth else None
        if savepoint is None:
            self._pending = [(_BEGIN, None), (_SET_LOCK_TIMEOUT, None)]
        else:
            self._pending.append((f"SAVEPOINT {savepoint}", None))
        self._depth += 1
        flushes = self._flushes
        try:
            yield
        except BaseException:
            self._depth -= 1
            self._leave(savepoint, untouched=self._flushes == flushes, failed=True)
            raise
        self._depth -= 1
        self._leave(savepoint, untouched=self._flushes == flushes, failed=False)

    def _leave(self, savepoint: str | None, *, untouched: bool, failed: bool) -> None:
        if savepoint is not None:
            if untouched:  # its SAVEPOINT never left: nothing to release or undo
                self._pending.pop()
            elif failed:
                self._pending.append((f"ROLLBACK TO SAVEPOINT {savepoint}", None))
                self._pending.append((f"RELEASE SAVEPOINT {savepoint}", None))
            else:
                self._pending.append((f"RELEASE SAVEPOINT {savepoint}", None))
        elif failed:
            self._rollback()
        elif untouched and len(self._pending) == 2:  # only BEGIN and SET: nothing to do
            self._pending = []
        else:
            self._commit()

    def _commit(self) -> None:
        try:
            status = self._execute("COMMIT").statusmessage
        except StorageError:
            self._rollback()
            raise
        if status != "COMMIT":
            # PostgreSQL answers COMMIT with ROLLBACK when a statement of the transaction
            # failed and someone caught the error: nothing was saved, so say so.
            raise StorageError(
                f"database at {self._location}: the transaction was rolled back because a"
                " statement in it failed; nothing was saved"
            )

    def _rollback(self) -> None:
        """Roll back the open transaction; never raises (the first error is what matters)."""
        self._pending = []
        if self._connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return  # BEGIN never left: nothing to undo
        try:
            self._connection.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the connection is gone; the server rolls back on its own

    def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        self._execute("SELECT 1")
