"""The PostgreSQL store: several stateless `serve` replicas (and the CLI) share one database.

The connection, transactions and errors are postgres/connection.py; the schema and its
migrations postgres/schema.py; this module is the queries. Batches of rows travel as
arrays in one statement (unnest), not a statement per row, so a batch of checks costs
three round trips whatever its size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from tokencli.domain.errors import StorageError
from tokencli.domain.model import (
    AuditEvent,
    Counts,
    TokenFilter,
    TokenRecord,
    TokenState,
    ends_at,
)
from tokencli.store.base import (
    EventKey,
    EventPage,
    TokenPage,
    events_in_pages,
    finish_page,
    tokens_in_pages,
)
from tokencli.store.postgres.connection import INSTALLED, PostgresConnection

if INSTALLED:
    from psycopg import sql

    from tokencli.store.postgres import conninfo
    from tokencli.store.postgres import schema as schema_module
    from tokencli.store.postgres.connection import _BoundedConnection

_TOKEN_COLUMNS = (
    "id, label, created_at, expires_at, uses_left, revoked_at, secret_hash, uses_limit, scopes"
)

_EVENT_COLUMNS = "at, action, token_id, outcome, source, detail"

# Every operator, function, aggregate and type below is named with its schema: the search
# path is pinned too (connection.py), but a name looked up through it could find another
# role's look-alike, e.g. an `@>(text[], text[])` in public beats the catalog's `anyarray`
# one. (`bigint` is a keyword, not a name looked up.)
EQ, LT, GT, LE, GE = (f"OPERATOR(pg_catalog.{op})" for op in ("=", "<", ">", "<=", ">="))
MINUS = "OPERATOR(pg_catalog.-)"
CONTAINS = "OPERATOR(pg_catalog.@>)"
LIKE = "OPERATOR(pg_catalog.~~)"  # LIKE, with backslash escapes
TEXT = "pg_catalog.text"

# Live: `ends_at > now` picks the rows through the index; the rest keeps out a token
# revoked or used up "in the future" of a clock that stepped back.
_LIVE_OF = (
    f"(@ends_at {GT} %(now)s AND @revoked_at IS NULL AND @expires_at {GT} %(now)s"
    f" AND (@uses_left IS NULL OR @uses_left {GT} 0))"
)

_LIVE = _LIVE_OF.replace("@", "")

# The stored states as SQL (base.py and model.py define them).
_STATE_SQL = {
    TokenState.VALID: _LIVE,
    TokenState.REVOKED: "revoked_at IS NOT NULL",
    TokenState.EXPIRED: f"(revoked_at IS NULL AND expires_at {LE} %(now)s)",
    TokenState.USED_UP: (f"(revoked_at IS NULL AND expires_at {GT} %(now)s AND uses_left {LE} 0)"),
}

# Statements; {tokens} and {audit} become schema-qualified identifiers (see _queries).
_SQL = {
    "get": f"SELECT {_TOKEN_COLUMNS} FROM {{tokens}} WHERE id {EQ} %s",
    "get_many": (f"SELECT {_TOKEN_COLUMNS} FROM {{tokens}} WHERE id {EQ} ANY(%s::{TEXT}[])"),
    "existing_ids": f"SELECT id FROM {{tokens}} WHERE id {EQ} ANY(%s::{TEXT}[])",
    # One statement for any number of rows. Scopes differ in length, and arrays of arrays
    # cannot be unnested row by row, so they travel flat as (row number, name) pairs and
    # are gathered back in the order given. (ROWS FROM spells out what a many-argument
    # unnest() means, since that shorthand only exists unqualified.)
    "insert": f"""
        INSERT INTO {{tokens}} (id, secret_hash, label, created_at, expires_at, uses_left,
                                uses_limit, revoked_at, ends_at, scopes)
        SELECT r.id, r.secret_hash, r.label, r.created_at, r.expires_at, r.uses_left,
               r.uses_limit, r.revoked_at, r.ends_at,
               coalesce(s.scopes, ARRAY[]::{TEXT}[])
        FROM ROWS FROM (pg_catalog.unnest(%(id)s::{TEXT}[]),
                        pg_catalog.unnest(%(secret_hash)s::pg_catalog.bytea[]),
                        pg_catalog.unnest(%(label)s::{TEXT}[]),
                        pg_catalog.unnest(%(created_at)s::bigint[]),
                        pg_catalog.unnest(%(expires_at)s::bigint[]),
                        pg_catalog.unnest(%(uses_left)s::bigint[]),
                        pg_catalog.unnest(%(uses_limit)s::bigint[]),
                        pg_catalog.unnest(%(revoked_at)s::bigint[]),
                        pg_catalog.unnest(%(ends_at)s::bigint[]))
             WITH ORDINALITY AS r(id, secret_hash, label, created_at, expires_at, uses_left,
                                  uses_limit, revoked_at, ends_at, n)
        LEFT JOIN (SELECT x.n, pg_catalog.array_agg(x.scope ORDER BY x.position) AS scopes
                   FROM ROWS FROM (pg_catalog.unnest(%(scope_row)s::bigint[]),
                                   pg_catalog.unnest(%(scope)s::{TEXT}[]))
                        WITH ORDINALITY AS x(n, scope, position)
                   GROUP BY x.n) AS s ON s.n {EQ} r.n
        """,
    # One statement for the whole batch. The FROM subquery locks each row (in ID order, so
    # replicas never deadlock on each other) and reads its uses left after any concurrent
    # update committed; RETURNING shows only new values, so the grant is computed there.
    # The condition is in the statement: under READ COMMITTED a row another transaction
    # changed is re-read and re-checked, so a last use is granted once, whoever races.
    "consume": f"""
        UPDATE {{tokens}} AS t
        SET uses_left = t.uses_left {MINUS} g.granted,
            ends_at = CASE WHEN t.uses_left {LE} g.granted THEN %(now)s ELSE t.ends_at END
        FROM (SELECT k.id, LEAST(w.n, k.uses_left) AS granted
              FROM ROWS FROM (pg_catalog.unnest(%(ids)s::{TEXT}[]),
                              pg_catalog.unnest(%(counts)s::bigint[])) AS w(id, n)
              JOIN {{tokens}} AS k ON k.id {EQ} w.id
              WHERE k.uses_left {GT} 0 AND k.revoked_at IS NULL AND k.expires_at {GT} %(now)s
              ORDER BY k.id
              FOR UPDATE OF k) AS g
        WHERE t.id {EQ} g.id
        RETURNING t.id, g.granted, t.uses_left
        """,
    "revoke": f"""
        UPDATE {{tokens}} SET revoked_at = coalesce(revoked_at, %(now)s),
                              ends_at = LEAST(ends_at, %(now)s)
        WHERE id {EQ} %(id)s
        """,
    # Never revives a token: a revoked or used-up one keeps its expiry and its end.
    "set_expiry": f"""
        UPDATE {{tokens}} SET expires_at = %(at)s, ends_at = %(at)s
        WHERE id {EQ} %(id)s AND revoked_at IS NULL AND (uses_left IS NULL OR uses_left {GT} 0)
        """,
    "cut_expiry": f"""
        UPDATE {{tokens}}
        SET expires_at = LEAST(expires_at, GREATEST(%(latest)s, created_at)),
            ends_at = LEAST(ends_at, GREATEST(%(latest)s, created_at))
        WHERE id {EQ} %(id)s
        """,
    "live_ids": f"""
        SELECT id, label FROM {{tokens}}
        WHERE {_LIVE} AND id {LIKE} %(pattern)s
        ORDER BY id LIMIT %(limit)s
        """,
    "scopes_in_use": f"""
        SELECT DISTINCT s.name FROM {{tokens}} AS t, pg_catalog.unnest(t.scopes) AS s(name)
        WHERE {_LIVE_OF.replace("@", "t.")} AND s.name {LIKE} %(pattern)s
        ORDER BY s.name LIMIT %(limit)s
        """,
    "count_ended": f"SELECT pg_catalog.count(*) FROM {{tokens}} WHERE ends_at {LE} %s",
    "purge": f"DELETE FROM {{tokens}} WHERE ends_at {LE} %s",
    "counts": f"""
        SELECT pg_catalog.count(*) FILTER (WHERE {_LIVE}),
               pg_catalog.count(*) FILTER (WHERE {_STATE_SQL[TokenState.EXPIRED]}),
               pg_catalog.count(*) FILTER (WHERE {_STATE_SQL[TokenState.USED_UP]}),
               pg_catalog.count(*) FILTER (WHERE revoked_at IS NOT NULL),
               pg_catalog.min(expires_at) FILTER (WHERE {_LIVE}),
               (SELECT pg_catalog.count(*) FROM {{audit}}),
               (SELECT pg_catalog.min(at) FROM {{audit}})
        FROM {{tokens}}
        """,
    # ORDER BY n: the IDs (and so the order of events at the same second) follow the input.
    "record": f"""
        INSERT INTO {{audit}} ({_EVENT_COLUMNS})
        SELECT {_EVENT_COLUMNS}
        FROM ROWS FROM (pg_catalog.unnest(%s::bigint[]), pg_catalog.unnest(%s::{TEXT}[]),
                        pg_catalog.unnest(%s::{TEXT}[]), pg_catalog.unnest(%s::{TEXT}[]),
                        pg_catalog.unnest(%s::{TEXT}[]), pg_catalog.unnest(%s::{TEXT}[]))
             WITH ORDINALITY AS e({_EVENT_COLUMNS}, n)
        ORDER BY n
        """,
    # The audit trail in (at, id) order, a page at a time (ORDER BY uses the columns'
    # default btree order, which no search path can change).
    "events_at": f"SELECT {_EVENT_COLUMNS} FROM {{audit}} WHERE at {EQ} ANY(%s::bigint[])",
    "first_events": f"""
        SELECT at, id, {_EVENT_COLUMNS} FROM {{audit}} ORDER BY at, id LIMIT %(rows)s
        """,
    "next_events": f"""
        SELECT at, id, {_EVENT_COLUMNS} FROM {{audit}}
        WHERE at {GT} %(at)s OR (at {EQ} %(at)s AND id {GT} %(id)s)
        ORDER BY at, id LIMIT %(rows)s
        """,
    "scan_bound": f"""
        SELECT id FROM {{tokens}} WHERE id {GT} %(after)s ORDER BY id LIMIT 1 OFFSET %(skip)s
        """,
    "drop_events": f"DELETE FROM {{audit}} WHERE at {LT} %s",
    "size": f"""
        SELECT coalesce(pg_catalog.sum(pg_catalog.pg_total_relation_size(c.oid)), 0)
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid {EQ} c.relnamespace
        WHERE n.nspname {EQ} %s
          AND c.relname {EQ} ANY (ARRAY['tokens', 'audit']::pg_catalog.name[])
          AND c.relkind {EQ} 'r'
        """,
}

_query_cache: dict[str, dict[str, str]] = {}


def _queries(schema: str) -> dict[str, str]:
    """The statements for `schema`, with its names quoted by psycopg (built once)."""
    queries = _query_cache.get(schema)
    if queries is None:
        names = {
            "tokens": sql.Identifier(schema, "tokens"),
            "audit": sql.Identifier(schema, "audit"),
        }
        queries = {key: sql.SQL(text).format(**names).as_string(None) for key, text in _SQL.items()}
        _query_cache[schema] = queries
    return queries


def _record(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], tuple(row[8])
    )


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with `prefix`, taken literally."""
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


class PostgresStore(PostgresConnection):
    """tokencli's schema in a PostgreSQL database, and every query the service needs
    (store/base.py). One thread at a time; see PostgresConnection for transactions."""

    def __init__(
        self,
        connection: _BoundedConnection,
        info: conninfo.ConnInfo,
        schema: str,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(connection, info, schema, on_lost)
        self._sql = _queries(schema)

    def _prepare_schema(self, *, create: bool) -> bool:
        """Check the schema and who owns what is in it; make or upgrade it as
        `open_postgres` says. False: none of ours (and `create` is False)."""
        connection, schema, where = self._connection, self._schema, self.location
        trusted = schema_module.trusted_owners_from_env()
        with self._errors():
            quick = schema_module.quick_look(connection, schema, self._pin, trusted)
            if quick is not None:
                version, foreign = quick
                if foreign:
                    raise StorageError(schema_module.foreign_message(foreign, schema, where))
                if version == schema_module.SCHEMA_VERSION:
                    return True  # the common case: one round trip
            found = schema_module.look(connection, schema, self._pin, trusted)
            schema_module.refuse_unless_usable(found, schema, where)
            if found.version is None and not create:
                return False
            schema_module.migrate(connection, schema, where, trusted)
        return True

    def size_bytes(self) -> int:
        """Bytes the two tables take on disk, with their indexes and TOAST."""
        return int(self._rows(self._sql["size"], (self._schema,))[0][0])

    def insert_tokens(self, records: Iterable[TokenRecord]) -> None:
        """Insert new tokens in one statement; IdCollisionError if an ID is taken."""
        self._insert(self._sql["insert"], records)

    def insert_missing(self, records: Iterable[TokenRecord]) -> int:
        """Insert the tokens whose ID is not yet stored; return how many were inserted."""
        return self._insert(self._sql["insert"] + " ON CONFLICT (id) DO NOTHING", records)

    def _insert(self, query: str, records: Iterable[TokenRecord]) -> int:
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "id", "secret_hash", "label", "created_at", "expires_at", "uses_left",
                "uses_limit", "revoked_at", "ends_at", "scope_row", "scope",
            )
        }  # fmt: skip
        for row, record in enumerate(records, start=1):
            columns["id"].append(record.id)
            columns["secret_hash"].append(record.secret_hash)
            columns["label"].append(record.label)
            columns["created_at"].append(record.created_at)
            columns["expires_at"].append(record.expires_at)
            columns["uses_left"].append(record.uses_left)
            columns["uses_limit"].append(record.uses_limit)
            columns["revoked_at"].append(record.revoked_at)
            columns["ends_at"].append(ends_at(record))
            for scope in sorted(set(record.scopes)):
                columns["scope_row"].append(row)
                columns["scope"].append(scope)
        if not columns["id"]:
            return 0
        return self._write(query, columns)

    def existing_ids(self, ids: Collection[str]) -> set[str]:
        """The IDs among `ids` that are stored, in one query."""
        if not ids:
            return set()
        return {row[0] for row in self._rows(self._sql["existing_ids"], (list(ids),))}

    def get(self, token_id: str) -> TokenRecord | None:
        """The token with this ID, or None."""
        rows = self._rows(self._sql["get"], (token_id,))
        return _record(rows[0]) if rows else None

    def get_many(self, ids: Sequence[str]) -> dict[str, TokenRecord]:
        """The stored tokens among `ids`, by ID, in one query."""
        if not ids:
            return {}
        rows = self._rows(self._sql["get_many"], (list(ids),))
        return {row[0]: _record(row) for row in rows}

    def consume_uses(self, wanted: Mapping[str, int], now: int) -> dict[str, tuple[int, int]]:
        """Take up to `wanted[id]` uses of each use-limited live token: one statement.

        Returns (uses granted, uses left afterwards) per ID granted at least one.
        """
        asked = {token_id: count for token_id, count in wanted.items() if count > 0}
        if not asked:
            return {}
        rows = self._rows(
            self._sql["consume"], {"ids": list(asked), "counts": list(asked.values()), "now": now}
        )
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def revoke(self, token_id: str, now: int) -> bool:
        """Mark the token revoked at `now` (kept if already revoked); False if no such token."""
        return self._write(self._sql["revoke"], {"id": token_id, "now": now}) == 1

    def revoke_matching(self, selector: TokenFilter, now: int) -> list[str]:
        """Revoke every live token the filter selects (states, limit ignored); oldest first."""
        where, params = _where(selector._replace(states=frozenset({TokenState.VALID})), now, [])
        query = sql.SQL(
            "WITH revoked AS (UPDATE {tokens} SET revoked_at = coalesce(revoked_at, %(now)s),"
            " ends_at = LEAST(ends_at, %(now)s) {where} RETURNING id, created_at)"
            " SELECT id FROM revoked ORDER BY created_at, id"
        ).format(tokens=sql.Identifier(self._schema, "tokens"), where=where)
        return [row[0] for row in self._rows(query, params)]

    def set_expiry(self, token_id: str, expires_at: int) -> None:
        """Give a token a new expiry (renew); a revoked or used-up one is left as it is."""
        self._write(self._sql["set_expiry"], {"id": token_id, "at": expires_at})

    def cut_expiry(self, token_id: str, latest: int) -> None:
        """Make a token expire no later than `latest`, and never before its creation."""
        self._write(self._sql["cut_expiry"], {"id": token_id, "latest": latest})

    def page_tokens(
        self,
        selector: TokenFilter,
        now: int,
        after: str | None,
        size: int,
        scan: int | None = None,
    ) -> TokenPage:
        """The next `size` tokens the filter selects, by ID after `after` (base.py): two
        primary-key index reads, none longer than `scan` rows when `scan` is given."""
        extra = [f"id {GT} %(after)s"]
        params: dict[str, Any] = {"after": after or "", "rows": size + 1}
        bound = None
        if scan is not None:
            # The last of the next `scan` IDs bounds the page by range, not by count, so
            # tokens written between the two reads can neither be skipped nor repeated.
            found = self._rows(
                self._sql["scan_bound"], {"after": params["after"], "skip": scan - 1}
            )
            if found:
                bound = str(found[0][0])
                extra.append(f"id {LE} %(bound)s")
                params["bound"] = bound
        where, filtering = _where(selector, now, extra)
        query = sql.SQL("SELECT {columns} FROM {tokens} {where} ORDER BY id LIMIT %(rows)s")
        composed = query.format(
            columns=sql.SQL(_TOKEN_COLUMNS),
            tokens=sql.Identifier(self._schema, "tokens"),
            where=where,
        )
        rows = self._rows(composed, {**params, **filtering})
        return finish_page([_record(row) for row in rows], size, bound)

    def iter_tokens(self, selector: TokenFilter, now: int) -> Iterator[TokenRecord]:
        """The tokens the filter selects at `now`, by ID, a page (one short query) at a time."""
        return tokens_in_pages(self, selector, now)

    def live_ids(self, now: int, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        """(ID, label) of live tokens whose ID starts with `prefix`, by ID."""
        rows = self._rows(
            self._sql["live_ids"], {"now": now, "pattern": _like_prefix(prefix), "limit": limit}
        )
        return [(row[0], row[1]) for row in rows]

    def scopes_in_use(self, now: int, prefix: str, limit: int) -> list[str]:
        """Scope names held by live tokens, starting with `prefix`, sorted."""
        rows = self._rows(
            self._sql["scopes_in_use"],
            {"now": now, "pattern": _like_prefix(prefix), "limit": limit},
        )
        return [row[0] for row in rows]

    def count_ended(self, now: int) -> int:
        """How many tokens purge would delete at `now`."""
        return int(self._rows(self._sql["count_ended"], (now,))[0][0])

    def purge(self, now: int) -> int:
        """Delete every expired, used-up or revoked token in one indexed statement."""
        return self._write(self._sql["purge"], (now,))

    def counts(self, now: int) -> Counts:
        """Tokens by condition and the audit trail's size, in one query."""
        row = self._rows(self._sql["counts"], {"now": now})[0]
        live, expired, used_up, revoked = (int(value) for value in row[:4])
        return Counts(live, expired, used_up, revoked, row[4], int(row[5]), row[6])

    def record(self, events: Iterable[AuditEvent]) -> None:
        """Append audit events in one statement (sent with the COMMIT when it can wait)."""
        columns: list[list[Any]] = [[], [], [], [], [], []]
        for event in events:
            for column, value in zip(columns, event, strict=True):
                column.append(value)
        if not columns[0]:
            return
        if self._depth == 0:
            self._execute(self._sql["record"], columns)
        else:
            self._defer(self._sql["record"], columns)

    def events(self, *, since: int | None, token_id: str | None, limit: int) -> list[AuditEvent]:
        """The newest `limit` events matching the filters, oldest first."""
        conditions: list[sql.SQL] = []
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            conditions.append(sql.SQL(f"at {GE} %(since)s"))
            params["since"] = since
        if token_id is not None:
            conditions.append(sql.SQL(f"token_id {EQ} %(token_id)s"))
            params["token_id"] = token_id
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        query = sql.SQL(
            "SELECT {columns} FROM (SELECT id, {columns} FROM {audit} {where}"
            " ORDER BY at DESC, id DESC LIMIT %(limit)s) AS newest ORDER BY at, id"
        ).format(
            columns=sql.SQL(_EVENT_COLUMNS),
            audit=sql.Identifier(self._schema, "audit"),
            where=where,
        )
        return [AuditEvent(*row) for row in self._rows(query, params)]

    def existing_events(self, events: Sequence[AuditEvent]) -> set[AuditEvent]:
        """The events among `events` already stored: the rows at their seconds (one
        query through the (at, id) index), compared whole."""
        wanted = set(events)
        if not wanted:
            return set()
        moments = sorted({event.at for event in wanted})
        rows = self._rows(self._sql["events_at"], (moments,))
        return {event for event in map(AuditEvent._make, rows) if event in wanted}

    def page_events(self, after: EventKey | None, size: int) -> EventPage:
        """The next `size` audit events after the key `after`, oldest first: a walk of
        the (at, id) index."""
        if after is None:
            rows = self._rows(self._sql["first_events"], {"rows": size})
        else:
            rows = self._rows(
                self._sql["next_events"], {"at": after[0], "id": after[1], "rows": size}
            )
        events = [AuditEvent(*row[2:]) for row in rows]
        return EventPage(events, (rows[-1][0], rows[-1][1]) if len(rows) == size else None)

    def iter_events(self) -> Iterator[AuditEvent]:
        """Every audit event, oldest first, a page (one short query) at a time."""
        return events_in_pages(self)

    def drop_events_before(self, cutoff: int) -> int:
        """Delete audit events older than `cutoff`; return how many."""
        return self._write(self._sql["drop_events"], (cutoff,))


def _where(
    selector: TokenFilter, now: int, conditions: list[str]
) -> tuple[sql.SQL, dict[str, Any]]:
    """The WHERE clause and its parameters for a token filter, after the `conditions`
    given (all ANDed)."""
    conditions = list(conditions)
    params: dict[str, Any] = {"now": now}
    if selector.states is not None:
        # States that no stored token can be in (malformed, unknown...) select nothing.
        states = [_STATE_SQL[state] for state in sorted(selector.states) if state in _STATE_SQL]
        conditions.append(f"({' OR '.join(states)})" if states else "FALSE")
    if selector.label is not None and "\x00" in selector.label:
        # PostgreSQL text cannot hold NUL, so no stored label has one: nothing matches
        # (as in SQLite), where sending it would fail the whole statement.
        conditions.append("FALSE")
    elif selector.label is not None:
        conditions.append(f"label {EQ} %(label)s")
        params["label"] = selector.label
    if selector.scopes:
        conditions.append(f"scopes {CONTAINS} %(scopes)s::{TEXT}[]")
        params["scopes"] = sorted(set(selector.scopes))
    if selector.expires_by is not None:
        conditions.append(f"expires_at {LE} %(expires_by)s")
        params["expires_by"] = selector.expires_by
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL("WHERE " + " AND ".join(conditions)), params
