"""tokencli's schema in PostgreSQL: its name, its migrations, and the checks before them.

Imported only by the other postgres modules, once psycopg is known to be installed.

- The tables live in one schema, `tokencli` unless $TOKENCLI_PG_SCHEMA names another;
  every statement names it explicitly, and every function, aggregate, operator, type and
  collation is written with its schema (`pg_catalog.`), so the search path decides
  nothing even where it is not pinned.
- A schema is ours when it holds our `schema_version` row. A schema that is not ours but
  holds anything is refused untouched, and so is one whose version is newer than this code.
- Whoever owns the schema or an object in it decides what our queries do (they can swap
  a table, add a trigger, plant a function): everything there must belong to the role
  tokencli connects as, or to a superuser, or to a role the operator names in
  $TOKENCLI_PG_TRUSTED_OWNERS; anything else is refused (exit 3) before it is used.
- Migrations are ordered and append-only. Each runs with its version bump in one
  transaction under an advisory lock, and re-reads the version once it holds the lock, so
  replicas starting together migrate once and never see a half-made schema.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from tokencli.domain.errors import StorageError
from tokencli.store.postgres import conninfo
from tokencli.store.postgres.connection import _BoundedConnection, pin_statement

SCHEMA_ENV_VAR = "TOKENCLI_PG_SCHEMA"
OWNERS_ENV_VAR = "TOKENCLI_PG_TRUSTED_OWNERS"
DEFAULT_SCHEMA = "tokencli"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)
APPLICATION = "tokencli"
# "tknc" as in the SQLite file's application_id: one key for every schema, because
# migrations are rare and serialising them all costs nothing.
ADVISORY_LOCK_KEY = 0x746B6E63
# A migration waits this long for another process's migration (the advisory lock) and
# for its own statements; its DDL waits at most MIGRATION_LOCK_TIMEOUT for a table lock,
# since a pending ACCESS EXCLUSIVE request stalls every query queued behind it.
MIGRATION_SECONDS = 60
MIGRATION_LOCK_TIMEOUT = "10s"
_MIGRATION_LOCKS = f"SELECT pg_catalog.set_config('lock_timeout', '{MIGRATION_LOCK_TIMEOUT}', true)"
# Kinds of relation that count as someone's data in a schema (indexes follow their table).
_RELATION_KINDS = ("r", "p", "v", "m", "f", "S")
_SHOWN_OWNED = 5  # objects named in a refusal

# What may decide what our queries do, and who owns it: the schema, every relation, routine,
# type, operator and collation in it, and the function of every trigger on its tables.
# Rows: (description, owner), for owners that are neither the current role, nor a
# superuser, nor among those trusted (%(trusted)s).
_FOREIGN_OWNERS = """
    WITH s AS (SELECT n.oid, n.nspowner FROM pg_catalog.pg_namespace AS n
               WHERE n.nspname OPERATOR(pg_catalog.=) %(schema)s),
    owned (classid, objid, owner) AS (
        SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass, s.oid, s.nspowner FROM s
        UNION ALL
        SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, c.relowner
        FROM pg_catalog.pg_class AS c, s WHERE c.relnamespace OPERATOR(pg_catalog.=) s.oid
        UNION ALL
        SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner
        FROM pg_catalog.pg_proc AS p, s WHERE p.pronamespace OPERATOR(pg_catalog.=) s.oid
        UNION ALL
        SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid, t.typowner
        FROM pg_catalog.pg_type AS t, s
        WHERE t.typnamespace OPERATOR(pg_catalog.=) s.oid
          AND t.typrelid OPERATOR(pg_catalog.=) 0::pg_catalog.oid
        UNION ALL
        SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid, o.oprowner
        FROM pg_catalog.pg_operator AS o, s WHERE o.oprnamespace OPERATOR(pg_catalog.=) s.oid
        UNION ALL
        SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, l.oid, l.collowner
        FROM pg_catalog.pg_collation AS l, s
        WHERE l.collnamespace OPERATOR(pg_catalog.=) s.oid
        UNION ALL
        SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, g.oid, p.proowner
        FROM pg_catalog.pg_trigger AS g
        JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid
        JOIN pg_catalog.pg_proc AS p ON p.oid OPERATOR(pg_catalog.=) g.tgfoid, s
        WHERE c.relnamespace OPERATOR(pg_catalog.=) s.oid AND NOT g.tgisinternal
    )
    SELECT pg_catalog.pg_describe_object(o.classid, o.objid, 0),
           pg_catalog.pg_get_userbyid(o.owner)::pg_catalog.text, current_user::pg_catalog.text
    FROM owned AS o JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) o.owner
    WHERE r.rolname OPERATOR(pg_catalog.<>) current_user AND NOT r.rolsuper
      AND NOT (r.rolname::pg_catalog.text
               OPERATOR(pg_catalog.=) ANY (%(trusted)s::pg_catalog.text[]))
    ORDER BY 1
"""


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


def trusted_owners_from_env() -> tuple[str, ...] | None:
    """Roles whose objects are trusted besides our own ($TOKENCLI_PG_TRUSTED_OWNERS, comma
    separated); None when it is `*` (trust every owner: the check is off)."""
    names = tuple(
        name.strip() for name in os.environ.get(OWNERS_ENV_VAR, "").split(",") if name.strip()
    )
    return None if "*" in names else names


def _m001_tokens_and_audit(connection: psycopg.Connection[Any], schema: str) -> None:
    tokens = sql.Identifier(schema, "tokens")
    audit = sql.Identifier(schema, "audit")
    # id and scopes compare byte by byte ("C"): ordering matches the SQLite store and
    # Python whatever the database's collation, and an ID prefix search can use the key.
    # fillfactor 90 leaves room on each page, so taking a use is mostly a HOT update.
    # (Types and the collation carry pg_catalog: the search path is pinned while migrating
    # anyway, so a schema made before they did is the same schema.)
    connection.execute(
        sql.SQL(
            """
            CREATE TABLE {tokens} (
                id pg_catalog.text COLLATE pg_catalog."C" PRIMARY KEY,
                secret_hash pg_catalog.bytea NOT NULL,
                label pg_catalog.text,
                created_at bigint NOT NULL,
                expires_at bigint NOT NULL,
                uses_left bigint,
                uses_limit bigint,
                revoked_at bigint,
                ends_at bigint NOT NULL,
                scopes pg_catalog.text[] COLLATE pg_catalog."C" NOT NULL
                    DEFAULT ARRAY[]::pg_catalog.text[]
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
                action pg_catalog.text NOT NULL,
                token_id pg_catalog.text,
                outcome pg_catalog.text NOT NULL,
                source pg_catalog.text NOT NULL,
                detail pg_catalog.text
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
    """What a schema holds: whether it exists, its relations, our version if ours, and
    what in it is owned by a role we do not trust: (description, owner, current role)."""

    exists: bool
    relations: frozenset[str]
    version: int | None
    foreign: list[tuple[str, str, str]]


def _version_query(schema: str) -> sql.Composed:
    return sql.SQL("SELECT application, version FROM {}").format(
        sql.Identifier(schema, "schema_version")
    )


def _our_version(rows: list[tuple[Any, ...]]) -> int | None:
    if len(rows) != 1 or rows[0][0] != APPLICATION:
        return None
    return int(rows[0][1])


def quick_look(
    connection: psycopg.Connection[Any], schema: str, pin: str, trusted: tuple[str, ...] | None
) -> tuple[int | None, list[tuple[str, str, str]]] | None:
    """Our version and what is owned by an untrusted role, in one round trip; None when
    that cannot tell (no schema_version of ours) and `inspect` must decide."""
    owners = connection.cursor()
    version = connection.cursor()
    try:
        with connection.pipeline():
            connection.execute("BEGIN")
            connection.execute(pin)
            if trusted is not None:
                owners.execute(_FOREIGN_OWNERS, {"schema": schema, "trusted": list(trusted)})
            version.execute(_version_query(schema))
            connection.execute("COMMIT")
    except (
        psycopg.errors.UndefinedTable,
        psycopg.errors.InvalidSchemaName,
        psycopg.errors.UndefinedColumn,  # someone else's schema_version
    ):
        connection.execute("ROLLBACK")
        return None
    foreign = owners.fetchall() if trusted is not None else []
    return _our_version(version.fetchall()), foreign


def inspect(
    connection: psycopg.Connection[Any], schema: str, trusted: tuple[str, ...] | None
) -> Found:
    """Read what the schema holds from the catalog (inside a pinned transaction)."""
    exists, relations = connection.execute(
        """
        SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace
                       WHERE nspname OPERATOR(pg_catalog.=) %(schema)s),
               ARRAY(SELECT c.relname::pg_catalog.text
                     FROM pg_catalog.pg_class AS c
                     JOIN pg_catalog.pg_namespace AS n
                       ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                     WHERE n.nspname OPERATOR(pg_catalog.=) %(schema)s
                       AND c.relkind OPERATOR(pg_catalog.=)
                           ANY (%(kinds)s::pg_catalog."char"[]))
        """,
        {"schema": schema, "kinds": list(_RELATION_KINDS)},
    ).fetchone() or (False, [])
    foreign: list[tuple[str, str, str]] = []
    if trusted is not None:
        foreign = connection.execute(
            _FOREIGN_OWNERS, {"schema": schema, "trusted": list(trusted)}
        ).fetchall()
    version = None
    if "schema_version" in relations and not foreign:
        columns = connection.execute(
            """
            SELECT pg_catalog.array_agg(attname::pg_catalog.text ORDER BY attname::pg_catalog.text)
            FROM pg_catalog.pg_attribute
            WHERE attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s)
              AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped
            """,
            (sql.Identifier(schema, "schema_version").as_string(connection),),
        ).fetchone()
        if columns is not None and columns[0] == ["application", "version"]:
            version = _our_version(connection.execute(_version_query(schema)).fetchall())
    return Found(bool(exists), frozenset(relations), version, foreign)


def look(
    connection: psycopg.Connection[Any], schema: str, pin: str, trusted: tuple[str, ...] | None
) -> Found:
    """`inspect` in a pinned transaction of its own."""
    with connection.transaction():
        connection.execute(pin)
        return inspect(connection, schema, trusted)


def refuse_unless_usable(found: Found, schema: str, where: str) -> None:
    """StorageError for a schema we must not touch: another role's, someone else's data,
    or newer than us."""
    if found.foreign:
        raise StorageError(foreign_message(found.foreign, schema, where))
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


def foreign_message(foreign: list[tuple[str, str, str]], schema: str, where: str) -> str:
    """Why a schema with objects of an untrusted owner is refused, and what to do."""
    me = foreign[0][2]
    owners = sorted({owner for _, owner, _ in foreign})
    listed = "; ".join(f"{what} is owned by {owner}" for what, owner, _ in foreign[:_SHOWN_OWNED])
    more = f" (and {len(foreign) - _SHOWN_OWNED} more)" if len(foreign) > _SHOWN_OWNED else ""
    return (
        f"schema {schema} in the database at {where} holds what another role owns:"
        f" {listed}{more}. Whoever owns them decides what tokencli's queries do, so they are"
        f" not used: as a superuser, give them to {me} (ALTER ... OWNER TO {me}) or drop"
        f" them; or, if you trust {', '.join(owners)}, set"
        f" {OWNERS_ENV_VAR}={','.join(owners)}"
    )


def newer_message(version: int, schema: str, where: str) -> str:
    return (
        f"database at {where} (schema {schema}) has schema version {version}, newer than"
        f" this tokencli understands ({SCHEMA_VERSION}); upgrade tokencli"
    )


@contextlib.contextmanager
def _patience(connection: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Let the client wait up to `seconds` (+ grace) on this connection for the block."""
    if not isinstance(connection, _BoundedConnection) or connection.patience is None:
        yield
        return
    before = connection.patience
    connection.patience = max(before, seconds + conninfo.GRACE_SECONDS)
    try:
        yield
    finally:
        connection.patience = before


def migrate(
    connection: psycopg.Connection[Any], schema: str, where: str, trusted: tuple[str, ...] | None
) -> None:
    """Bring the schema to SCHEMA_VERSION, one migration per transaction, under the lock.

    `connection` is in autocommit mode; each step is BEGIN ... COMMIT of its own.
    """
    version_table = sql.Identifier(schema, "schema_version")
    while True:
        with _patience(connection, MIGRATION_SECONDS), connection.transaction():
            # Wait for any other migrating process (it holds no table lock anyone else
            # waits on), then bound the waits of our DDL by MIGRATION_LOCK_TIMEOUT.
            connection.execute(pin_statement(conninfo.SEARCH_PATH, f"{MIGRATION_SECONDS}s", "0"))
            connection.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            connection.execute(_MIGRATION_LOCKS)
            found = inspect(connection, schema, trusted)  # again: another may have migrated
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
                        "CREATE TABLE {} (application pg_catalog.text PRIMARY KEY"
                        " CHECK (application OPERATOR(pg_catalog.=) {}), version integer NOT NULL)"
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
