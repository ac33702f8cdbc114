"""tokencli's schema in PostgreSQL: its name, its migrations, and the checks before them.

Imported only by queries.py, once psycopg is known to be installed.

- The tables live in one schema, `tokencli` unless $TOKENCLI_PG_SCHEMA names another;
  every statement names it explicitly, so the connection's search_path never matters.
- A schema is ours when it holds our `schema_version` row. A schema that is not ours but
  holds anything is refused untouched, and so is one whose version is newer than this code.
- Migrations are ordered and append-only. Each runs with its version bump in one
  transaction under an advisory lock, and re-reads the version once it holds the lock, so
  replicas starting together migrate once and never see a half-made schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from tokencli.domain.errors import StorageError

SCHEMA_ENV_VAR = "TOKENCLI_PG_SCHEMA"
DEFAULT_SCHEMA = "tokencli"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)
APPLICATION = "tokencli"
# "tknc" as in the SQLite file's application_id: one key for every schema, because
# migrations are rare and serialising them all costs nothing.
ADVISORY_LOCK_KEY = 0x746B6E63
# While migrating, DDL waits this long for a table lock before giving up: a pending
# ACCESS EXCLUSIVE request stalls every query queued behind it.
MIGRATION_LOCK_TIMEOUT = "10s"
# Kinds of relation that count as someone's data in a schema (indexes follow their table).
_RELATION_KINDS = ("r", "p", "v", "m", "f", "S")


def schema_from_env() -> str:
    """The schema to use: $TOKENCLI_PG_SCHEMA if set, else `tokencli`; StorageError if bad."""
    name = os.environ.get(SCHEMA_ENV_VAR) or DEFAULT_SCHEMA
    # pg_ is reserved for PostgreSQL's own schemas; CREATE SCHEMA would refuse it anyway.
    if not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_"):
        raise StorageError(
            f"{SCHEMA_ENV_VAR}={name!r} is not a usable schema name: use lowercase letters,"
            " digits and _, at most 63, not starting with a digit or pg_"
        )
    return name


def _m001_tokens_and_audit(connection: psycopg.Connection[Any], schema: str) -> None:
    tokens = sql.Identifier(schema, "tokens")
    audit = sql.Identifier(schema, "audit")
    # id and scopes compare byte by byte ("C"): ordering matches the SQLite store and
    # Python whatever the database's collation, and an ID prefix search can use the key.
    # fillfactor 90 leaves room on each page, so taking a use is mostly a HOT update.
    connection.execute(
        sql.SQL(
            """
            CREATE TABLE {tokens} (
                id text COLLATE "C" PRIMARY KEY,
                secret_hash bytea NOT NULL,
                label text,
                created_at bigint NOT NULL,
                expires_at bigint NOT NULL,
                uses_left bigint,
                uses_limit bigint,
                revoked_at bigint,
                ends_at bigint NOT NULL,
                scopes text[] COLLATE "C" NOT NULL DEFAULT ARRAY[]::text[]
            ) WITH (fillfactor = 90)
            """
        ).format(tokens=tokens)
    )
    # Purge is one indexed DELETE on ends_at, and "live" is ends_at > now. No GIN index on
    # scopes: only admin listings filter on them, and it would tax every issue and purge.
    connection.execute(
        sql.SQL("CREATE INDEX {name} ON {tokens} (ends_at)").format(
            name=sql.Identifier("tokens_ends_at"), tokens=tokens
        )
    )
    connection.execute(
        sql.SQL(
            """
            CREATE TABLE {audit} (
                id bigserial PRIMARY KEY,
                at bigint NOT NULL,
                action text NOT NULL,
                token_id text,
                outcome text NOT NULL,
                source text NOT NULL,
                detail text
            )
            """
        ).format(audit=audit)
    )
    # (at, id) rather than (at): every read of the trail orders by both, so the newest N
    # events are an index walk backwards and export an index walk forwards.
    connection.execute(
        sql.SQL("CREATE INDEX {name} ON {audit} (at, id)").format(
            name=sql.Identifier("audit_at"), audit=audit
        )
    )


# Ordered and append-only: never edit a migration that has shipped, add the next one.
Migration = Callable[["psycopg.Connection[Any]", str], None]
MIGRATIONS: list[Migration] = [_m001_tokens_and_audit]
SCHEMA_VERSION = len(MIGRATIONS)


class Found(NamedTuple):
    """What a schema holds: whether it exists, its relations, and our version if ours."""

    exists: bool
    relations: frozenset[str]
    version: int | None


def current_version(connection: psycopg.Connection[Any], schema: str) -> int | None:
    """Our schema's version in one query, or None when that query cannot tell.

    The common case (the schema is ours and current) costs one round trip; anything else
    is left to `inspect`. Runs outside a transaction, so a failure here poisons nothing.
    """
    try:
        rows = connection.execute(
            sql.SQL("SELECT application, version FROM {}").format(
                sql.Identifier(schema, "schema_version")
            )
        ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    except psycopg.errors.UndefinedColumn:  # someone else's schema_version
        return None
    if len(rows) != 1 or rows[0][0] != APPLICATION:
        return None
    return int(rows[0][1])


def inspect(connection: psycopg.Connection[Any], schema: str) -> Found:
    """Read what the schema holds from the catalog (safe inside a transaction)."""
    exists, relations = connection.execute(
        """
        SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s),
               ARRAY(SELECT c.relname::text
                     FROM pg_catalog.pg_class AS c
                     JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE n.nspname = %(schema)s AND c.relkind = ANY(%(kinds)s::"char"[]))
        """,
        {"schema": schema, "kinds": list(_RELATION_KINDS)},
    ).fetchone() or (False, [])
    version = None
    if "schema_version" in relations:
        columns = connection.execute(
            """
            SELECT array_agg(attname::text ORDER BY attname::text)
            FROM pg_catalog.pg_attribute
            WHERE attrelid = pg_catalog.to_regclass(%s) AND attnum > 0 AND NOT attisdropped
            """,
            (sql.Identifier(schema, "schema_version").as_string(connection),),
        ).fetchone()
        if columns is not None and columns[0] == ["application", "version"]:
            row = connection.execute(
                sql.SQL("SELECT application, version FROM {}").format(
                    sql.Identifier(schema, "schema_version")
                )
            ).fetchall()
            if len(row) == 1 and row[0][0] == APPLICATION:
                version = int(row[0][1])
    return Found(bool(exists), frozenset(relations), version)


def refuse_unless_usable(found: Found, schema: str, where: str) -> None:
    """StorageError for a schema we must not touch: someone else's, or newer than us."""
    if found.version is None and found.relations:
        names = ", ".join(sorted(found.relations)[:5])
        more = ", ..." if len(found.relations) > 5 else ""
        raise StorageError(
            f"schema {schema} in the database at {where} holds tables that are not"
            f" tokencli's ({names}{more}); refusing to touch it. Set {SCHEMA_ENV_VAR} to"
            " use another schema"
        )
    if found.version is not None and found.version > SCHEMA_VERSION:
        raise StorageError(newer_message(found.version, schema, where))


def newer_message(version: int, schema: str, where: str) -> str:
    return (
        f"database at {where} (schema {schema}) has schema version {version}, newer than"
        f" this tokencli understands ({SCHEMA_VERSION}); upgrade tokencli"
    )


def migrate(connection: psycopg.Connection[Any], schema: str, where: str) -> None:
    """Bring the schema to SCHEMA_VERSION, one migration per transaction, under the lock.

    `connection` is in autocommit mode; each step is BEGIN ... COMMIT of its own.
    """
    version_table = sql.Identifier(schema, "schema_version")
    while True:
        with connection.transaction():
            # Wait for any other migrating process without a time limit (it holds no
            # table lock anyone else waits on); only then bound the waits of our DDL.
            connection.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            connection.execute(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'")
            found = inspect(connection, schema)  # again: another process may have migrated
            refuse_unless_usable(found, schema, where)
            version = found.version if found.version is not None else 0
            if version >= SCHEMA_VERSION:
                return
            if version == 0:
                if not found.exists:
                    # Only when missing: on a managed server the operator may have made
                    # the schema for us, and we may lack the right to create one.
                    connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                connection.execute(
                    sql.SQL(
                        "CREATE TABLE {} (application text PRIMARY KEY"
                        " CHECK (application = {}), version integer NOT NULL)"
                    ).format(version_table, sql.Literal(APPLICATION))
                )
                connection.execute(
                    sql.SQL("INSERT INTO {} VALUES ({}, 0)").format(
                        version_table, sql.Literal(APPLICATION)
                    )
                )
            MIGRATIONS[version](connection, schema)
            connection.execute(
                sql.SQL("UPDATE {} SET version = %s").format(version_table), (version + 1,)
            )
