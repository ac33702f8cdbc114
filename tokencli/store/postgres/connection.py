"""One connection to tokencli's schema in a PostgreSQL database: transactions, savepoints,
the group-commit batch, deferred statements, bounded waits, and psycopg's errors
turned into messages for the operator (never holding a password).

The queries are in queries.py (`PostgresStore` extends `PostgresConnection`); the schema
and migrations in postgres/schema.py; the location and its bounds in conninfo.py. These
are the only modules that import psycopg; tokencli imports them only for a postgresql://
location, and without psycopg it says how to install it.

Nothing here relies on session state, so a pooler in transaction mode (PgBouncer) may
hand each transaction to another server connection:

- Every statement runs in a transaction that starts by pinning the search path and the
  timeouts (`set_config(..., true)`, i.e. SET LOCAL): a statement outside any block
  travels as BEGIN, the settings, the statement and COMMIT in one pipeline.
- No server-side prepared statements behind a pooler (`connect` tells), and savepoints
  only inside the explicit transaction of a block.

Round trips decide the speed here, not the statements: every statement the client waits
for costs a network round trip. So BEGIN, the settings, SAVEPOINT and RELEASE are not
sent when asked for; they wait in `_pending` and leave in one pipeline with the next
statement (or the COMMIT). A block that runs no statement costs nothing. Audit events
recorded in the outermost block also wait, and leave with the COMMIT.

Every wait on the server is bounded on the client too (`_BoundedConnection`): a stopped
backend or a silently dropped network never answers, and statement_timeout is the
server's own clock. Past the bound the connection is given up and closed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from tokencli.domain.errors import StorageError
from tokencli.store.base import IdCollisionError

try:
    import psycopg
    from psycopg import sql
    from psycopg.abc import PQGen

    from tokencli.store.postgres import conninfo
except ImportError:  # the optional extra is not installed: say so when a URL is used
    INSTALLED = False
else:
    INSTALLED = True
    # psycopg logs what it ignores while cleaning up after a lost connection ("error
    # ignored terminating <psycopg.Pipeline ...>"); tokencli configures no logging, so
    # Python would print those lines raw on stderr, beside the access log. The error that
    # matters is raised as StorageError and reported in tokencli's own words.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())


NOT_INSTALLED = (
    "PostgreSQL support is not installed: run pip install '.[postgres]' in tokencli's "
    "checkout (or pip install 'psycopg[binary]>=3.2' where tokencli is installed)"
)

PREPARE_THRESHOLD = 5  # psycopg's default: prepare a statement on its 5th run

RV = TypeVar("RV")

_BEGIN = "BEGIN"
# One statement pins what a transaction relies on; SET LOCAL lasts until its end.
_PIN = (
    "SELECT pg_catalog.set_config('search_path', {}, true),"
    " pg_catalog.set_config('statement_timeout', {}, true),"
    " pg_catalog.set_config('lock_timeout', {}, true)"
)


def _require_psycopg() -> None:
    if not INSTALLED:
        raise StorageError(NOT_INSTALLED)


def pin_statement(search_path: str, statement_timeout: str, lock_timeout: str) -> str:
    """The statement that starts every transaction: search path and timeouts, SET LOCAL."""
    return (
        sql.SQL(_PIN)
        .format(sql.Literal(search_path), sql.Literal(statement_timeout), sql.Literal(lock_timeout))
        .as_string(None)
    )


if INSTALLED:

    class Unanswered(psycopg.OperationalError):
        """The server sent nothing back within the client's deadline."""

    class _BoundedConnection(psycopg.Connection[Any]):
        """A connection whose every wait on the server ends within `patience` seconds.

        psycopg runs each operation as a generator and waits on the socket between its
        steps, waking every 0.1 s when nothing arrives; the generator is wrapped so that
        each step checks the deadline. After one wait ran out, the protocol state is
        unknown: every later wait fails at once, and the owner closes the connection.
        """

        patience: float | None = None
        gave_up = False
        pooled = False  # a pooler between us and the server (see `connect`)

        def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
            if self.gave_up:
                raise Unanswered("the connection was given up")
            if self.patience is None:
                return super().wait(gen, *args, **kwargs)
            return super().wait(_within(gen, self), *args, **kwargs)

    def _within(gen: PQGen[RV], connection: _BoundedConnection) -> PQGen[RV]:
        """`gen`, failing once `connection.patience` seconds have passed without its end."""
        assert connection.patience is not None
        deadline = time.monotonic() + connection.patience
        try:
            state = next(gen)
            while True:
                ready = yield state
                state = gen.send(ready)
                if time.monotonic() >= deadline:
                    connection.gave_up = True
                    raise Unanswered(f"no answer within {connection.patience:g}s")
        except StopIteration as done:
            result: RV = done.value
            return result


def _storage_error(
    error: psycopg.Error, info: conninfo.ConnInfo, *, lost: bool, unanswered: bool = False
) -> StorageError:
    """An operator's message for a psycopg error (never holding a password)."""
    where = info.shown
    reason = _reason(error, info.secrets)
    state = error.sqlstate or ""
    if state == "23505" and error.diag.constraint_name == "tokens_pkey":
        # Only insert_tokens can break the key: insert_missing says ON CONFLICT DO NOTHING.
        return IdCollisionError("a generated token ID is already taken")
    if unanswered or isinstance(error, Unanswered):
        return StorageError(
            f"no answer from the database at {where} within {info.deadline_seconds or 0:g}s"
            " (statement_timeout and a grace): gave up on that connection"
        )
    if state == "55P03":
        return StorageError(
            f"database at {where} stayed locked for over {info.lock_timeout} (lock_timeout);"
            " another process holds it (try again)"
        )
    if state == "57014":
        return StorageError(
            f"database at {where}: a statement ran past statement_timeout"
            f" ({info.statement_timeout}) and was cancelled; if the data is that large,"
            " raise it in the URL: options=-c%20statement_timeout%3D60s"
        )
    if state == "34000":
        return StorageError(
            f"database at {where} lost the cursor this listing reads ({reason}): behind a"
            " pooler in transaction mode, run list and export against the database itself"
            " or a session-mode pool"
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


def _reason(error: BaseException, secrets: Sequence[str]) -> str:
    """The error's own words on one line, with any password replaced by ***."""
    diag = getattr(error, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(error)
    text = conninfo.scrub(text, tuple(secrets))
    lines = [line.strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line) or type(error).__name__


def connect(info: conninfo.ConnInfo) -> _BoundedConnection:
    """A new autocommit connection; libpq reads the URL, PG* variables and .pgpass itself.

    connect_timeout bounds each host tried (psycopg keeps that clock itself). Statements
    are prepared on the server (psycopg's default: from a statement's 5th run) only when
    nothing stands between us and the server: a pooler in transaction mode may run the
    next transaction on another server connection, where the statement does not exist.
    A pooler shows itself by answering the startup with a cancel key of its own, whose
    process ID is not the server's.
    """
    _require_psycopg()
    try:
        connection = _BoundedConnection.connect(
            info.url, autocommit=True, prepare_threshold=None, **info.connect_options
        )
    except psycopg.Error as error:
        reason = _reason(error, info.secrets)
        raise StorageError(f"cannot connect to the database at {info.shown}: {reason}") from None
    connection.patience = info.deadline_seconds
    try:
        row = connection.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
    except psycopg.Error as error:
        connection.close()
        reason = _reason(error, info.secrets)
        raise StorageError(f"cannot connect to the database at {info.shown}: {reason}") from None
    connection.pooled = row is None or row[0] != connection.info.backend_pid
    if not connection.pooled:
        connection.prepare_threshold = PREPARE_THRESHOLD
    return connection


Params = Sequence[Any] | Mapping[str, Any] | None

Statement: TypeAlias = "str | sql.SQL | sql.Composed"


class PostgresConnection:
    """One connection to tokencli's schema in a PostgreSQL database, and its queries.

    Use it from one thread at a time; `PostgresBackend.open_store` gives each thread its own.
    Every failure raises StorageError. After one that lost the connection (the server
    restarted, the network dropped, no answer within the bound), this store stays unusable
    and every call raises StorageError again: close it and open a new one (the server does).
    `on_lost`, when given, is called once then (the backend counts it).

    `transaction()` is BEGIN ... COMMIT; nested in another block (as inside `batch()`) it
    is a savepoint: its failure rolls back that block alone and re-raises, and its changes
    commit with the outermost block. `batch()` is the same block under the name the
    server uses for group commit. Unlike SQLite, PostgreSQL aborts the whole transaction
    when a statement fails: an error caught inside a block without letting it leave makes
    the COMMIT fail with StorageError. Nest a `transaction()` around a statement that may
    fail and go on (its savepoint is free: it rides with the next statement).
    """

    def __init__(
        self,
        connection: _BoundedConnection,
        info: conninfo.ConnInfo,
        schema: str,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._connection = connection
        self._info = info
        self._schema = schema
        self._on_lost = on_lost
        self._pin = pin_statement(*info.transaction_settings())
        self._depth = 0  # blocks open: 0 = none
        # Statements waiting to leave with the next one: (statement, parameters).
        self._pending: list[tuple[str, Params]] = []
        self._flushes = 0  # times statements left for the server, to tell a block untouched

    @property
    def location(self) -> str:
        """The URL as it may be printed (rebuilt by libpq's reading, secrets as ***)."""
        return self._info.shown

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
            unanswered = self._connection.gave_up
            lost = self._connection.broken or unanswered
            if lost:
                # After a wait ran out nobody knows where the protocol stands: close it so
                # the server (once it answers again) rolls back whatever was open.
                self._connection.close()
                if self._on_lost is not None:
                    on_lost, self._on_lost = self._on_lost, None
                    on_lost()
            raise _storage_error(error, self._info, lost=lost, unanswered=unanswered) from None

    def _execute(self, query: Statement, params: Params = None) -> psycopg.Cursor[Any]:
        """Run one statement: in the open block, after whatever is pending there; outside
        any block, in a pinned transaction of its own. One round trip either way."""
        if self._depth == 0:
            return self._alone(query, params)
        return self._send(query, params)

    def _send(self, query: Statement, params: Params = None) -> psycopg.Cursor[Any]:
        """Send what is pending and this statement in one pipeline; wait for the answers."""
        with self._errors():
            cursor = self._connection.cursor()
            self._flushes += 1
            if self._pending:
                pending, self._pending = self._pending, []
                with self._connection.pipeline():
                    for statement, arguments in pending:
                        self._connection.execute(statement, arguments)
                    cursor.execute(query, params)
            else:
                cursor.execute(query, params)
        return cursor

    def _alone(self, query: Statement, params: Params) -> psycopg.Cursor[Any]:
        """BEGIN, the pin, the statement and COMMIT in one pipeline: one round trip."""
        with self._errors():
            cursor = self._connection.cursor()
            self._flushes += 1
            try:
                with self._connection.pipeline():
                    self._connection.execute(_BEGIN)
                    self._connection.execute(self._pin)
                    cursor.execute(query, params)
                    self._connection.execute("COMMIT")
            except psycopg.Error:
                self._rollback()  # the statement failed after BEGIN: end the transaction
                raise
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

    def batch(self, *, wait: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Group the transactions run in the block into one commit (serve's group commit).
        `wait` is for SQLite's write lock; row locks here wait at most lock_timeout."""
        return self._block()

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """A transaction for a block that only reads."""
        return self._block()

    def isolated(self) -> contextlib.AbstractContextManager[None]:
        """A savepoint: a failed statement aborts the whole transaction, so a request's
        own failure must roll back to here for the rest of the batch to go on."""
        return self._block()

    @contextlib.contextmanager
    def _block(self) -> Iterator[None]:
        savepoint = f"tokencli_{self._depth}" if self._depth else None
        if savepoint is None:
            self._pending = [(_BEGIN, None), (self._pin, None)]
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
        elif untouched and len(self._pending) == 2:  # only BEGIN and the pin: nothing to do
            self._pending = []
        else:
            self._commit()

    def _commit(self) -> None:
        try:
            status = self._send("COMMIT").statusmessage
        except StorageError:
            self._rollback()
            raise
        if status != "COMMIT":
            # PostgreSQL answers COMMIT with ROLLBACK when a statement of the transaction
            # failed and someone caught the error: nothing was saved, so say so.
            raise StorageError(
                f"database at {self.location}: the transaction was rolled back because a"
                " statement in it failed; nothing was saved"
            )

    def _rollback(self) -> None:
        """Roll back the open transaction; never raises (the first error is what matters)."""
        self._pending = []
        if self._connection.closed:
            return  # given up or lost: the server rolls back on its own
        if self._connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return  # BEGIN never left: nothing to undo
        try:
            self._connection.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the connection is gone; the server rolls back on its own

    def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        self._execute("SELECT 1")
