"""Another role in the same PostgreSQL database, as an attacker: look-alike functions and
operators on the search path, and schemas or objects of its own where tokencli looks.

Each test runs in a database of its module's own (so what the hostile role plants in
`public` reaches no other test), as two real login roles: `victim` (the role tokencli
connects as) and `mallory`, who may create objects in `public`, as every role could up to
PostgreSQL 14 (15 revokes it; the arena grants it back).
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tokencli.domain.errors import StorageError
from tokencli.domain.model import EVERY_TOKEN, TokenFilter
from tokencli.service.service import TokenService
from tokencli.service.transfer import export_objects, import_lines
from tokencli.store.postgres import conninfo
from tokencli.store.postgres.backend import PostgresBackend, open_postgres

from pg_cluster import PgCluster
from support import Clock, needs_executable, serve_process, tokencli

NOW = 1_790_000_000


@dataclass
class Arena:
    """A database with two roles in it; URLs to connect as each, and as the superuser."""

    cluster: PgCluster
    dbname: str
    victim: str
    mallory: str

    def url(self, role: str | None = None) -> str:
        return self.cluster.url(dbname=self.dbname, user=role or "postgres")

    def run(self, role: str | None, *statements: str | sql.Composable) -> None:
        """Run statements as `role` (None: the superuser), each in autocommit."""
        with psycopg.connect(self.url(role), autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            return connection.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def arena(postgres_cluster: PgCluster) -> Iterator[Arena]:
    tag = uuid.uuid4().hex[:10]
    arena = Arena(postgres_cluster, f"arena_{tag}", f"victim_{tag}", f"mallory_{tag}")
    ident = sql.Identifier
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(ident(arena.dbname)))
    arena.run(
        None,
        sql.SQL("CREATE ROLE {} LOGIN").format(ident(arena.victim)),
        sql.SQL("CREATE ROLE {} LOGIN").format(ident(arena.mallory)),
        # tokencli's role may make its schema; so may mallory (to squat one).
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}, {}").format(
            ident(arena.dbname), ident(arena.victim), ident(arena.mallory)
        ),
    )
    # PostgreSQL 14's default: every role may create objects in public.
    arena.run(None, "GRANT CREATE ON SCHEMA public TO PUBLIC")
    try:
        yield arena
    finally:
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident(arena.dbname)))
            admin.execute(
                sql.SQL("DROP ROLE {}, {}").format(ident(arena.victim), ident(arena.mallory))
            )


@pytest.fixture
def schema(arena: Arena, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """tokencli's schema for this test (TOKENCLI_PG_SCHEMA), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("TOKENCLI_PG_SCHEMA", name)
    monkeypatch.delenv("TOKENCLI_PG_TRUSTED_OWNERS", raising=False)
    yield name
    arena.run(None, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


# -- the search path -----------------------------------------------------------------------

# What the review planted: look-alikes that match our calls better than the catalog's own
# polymorphic ones (exact types beat anyarray / anynonarray), found first on the default
# search path ("$user", public). Each records its call, then tries what an attacker wants
# (the victim's tables granted to mallory), then does what the real one does, so nothing
# visibly breaks.
_PLANTED = """
CREATE TABLE public.hijacks (what text, by_role text DEFAULT current_user);

GRANT INSERT, SELECT ON public.hijacks TO PUBLIC;

CREATE FUNCTION public.steal(what text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
  INSERT INTO public.hijacks (what) VALUES (what);
  FOR s IN SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE 't\\_%' LOOP
    BEGIN
      EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA %I TO {mallory}', s);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END LOOP;
END $$;

CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.steal('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;

CREATE FUNCTION public.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.steal('unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;

CREATE FUNCTION public.unnest(a bytea[]) RETURNS SETOF bytea LANGUAGE plpgsql AS $$
BEGIN PERFORM public.steal('unnest(bytea[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;

CREATE FUNCTION public.gather(s text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN PERFORM public.steal('array_agg(text)'); RETURN pg_catalog.array_append(s, v); END $$;

CREATE AGGREGATE public.array_agg(text) (SFUNC = public.gather, STYPE = text[]);

CREATE FUNCTION public.holds(a text[], b text[]) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.steal('@>(text[], text[])'); RETURN pg_catalog.arraycontains(a, b); END $$;

CREATE OPERATOR public.@> (LEFTARG = text[], RIGHTARG = text[], FUNCTION = public.holds);
"""


@pytest.fixture(scope="module")
def planted(arena: Arena) -> Arena:
    """The look-alikes, made by mallory in public."""
    statements = _PLANTED.replace("{mallory}", arena.mallory).split(";\n\n")
    arena.run(arena.mallory, *(statement for statement in statements if statement.strip()))
    return arena


def test_the_planted_look_alikes_would_be_called_by_unqualified_sql(
    planted: Arena, schema: str
) -> None:
    # The bait works: the victim's own unqualified SQL, on its default search path, runs
    # mallory's functions (as the SQL tokencli sent before it qualified every name).
    with psycopg.connect(planted.url(planted.victim), autocommit=True) as victim:
        victim.execute("SELECT * FROM unnest(%s::text[])", (["a"],))
        victim.execute("SELECT * FROM unnest(%s::bigint[])", ([1],))
        victim.execute("SELECT * FROM unnest(%s::bytea[])", ([b"a"],))
        victim.execute("SELECT array_agg(x ORDER BY x) FROM unnest(%s::text[]) AS x", (["a"],))
        victim.execute("SELECT ARRAY['a']::text[] @> %s::text[]", (["a"],))
    called = planted.rows("DELETE FROM public.hijacks RETURNING what, by_role")
    assert {what for what, _ in called} == {
        "unnest(text[])",
        "unnest(bigint[])",
        "unnest(bytea[])",
        "array_agg(text)",
        "@>(text[], text[])",
    }
    assert {role for _, role in called} == {planted.victim}


@needs_executable
@pytest.mark.slow
def test_look_alikes_on_the_search_path_are_never_called(
    planted: Arena, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = planted.url(planted.victim)
    monkeypatch.setenv("TOKENCLI_DB", url)

    def run(*args: str, stdin: str | None = None) -> str:
        result = tokencli(*args, stdin=stdin)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    tokens = run("issue", "--count", "3", "--scope", "admin", "--scope", "deploy").split()
    other = run("issue", "--scope", "read", "--uses", "5").strip()
    assert json.loads(run("check", "--json", "--scope", "admin", tokens[0]))["valid"] is True
    listed = json.loads(run("list", "--json", "--scope", "deploy"))
    assert sorted(token["id"] for token in listed) == sorted(t.split(":")[0] for t in tokens)
    exported = run("export", "--audit", "--scope", "admin")
    with serve_process("--quiet") as (process, client):
        status, _, body = client.request(
            "POST", "/app/token", body='{"ttl": "1h", "scopes": ["admin", "ops"]}'
        )
        assert status == 200, body
        status, _, verdict = client.request("GET", f"/app/valid/{body['token']}?scope=ops")
        assert (status, verdict["status"]) == (200, True)
        status, _, verdict = client.request("GET", f"/app/valid/{other}?scope=admin")
        assert (status, verdict["status"]) == (200, False)
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log
    assert run("revoke", "--scope", "deploy").count("\n") == 3
    monkeypatch.setenv("TOKENCLI_PG_SCHEMA", f"{schema}_copy")
    try:
        assert run("import", stdin=exported).startswith("imported 3 tokens")
    finally:
        planted.run(None, f"DROP SCHEMA IF EXISTS {schema}_copy CASCADE")

    assert planted.rows("SELECT what, by_role FROM public.hijacks") == []
    for table in ("tokens", "audit", "schema_version"):
        granted = planted.rows(
            "SELECT has_table_privilege(%s, %s, 'SELECT')", planted.mallory, f"{schema}.{table}"
        )
        assert granted == [(False,)], table


def _shadows(arena: Arena) -> list[str]:
    """Statements making, in schema `evil`, a twin of every catalog function, aggregate,
    operator, type and collation tokencli's SQL could name, with the same signature: each
    raises when called (or, for a type, fails any cast to it)."""
    functions = arena.rows(
        """
        SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
               pg_catalog.pg_get_function_result(p.oid), p.prokind, p.proretset
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND p.proname IN ('unnest', 'array_agg', 'count', 'min', 'max', 'sum', 'set_config',
                            'pg_total_relation_size', 'to_regclass', 'pg_advisory_xact_lock',
                            'pg_describe_object', 'pg_get_userbyid', 'array_append',
                            'arraycontains', 'current_setting')
          AND NOT EXISTS (SELECT FROM unnest(p.proargtypes) AS t(oid)
                          WHERE t.oid IN ('"any"'::regtype, 'internal'::regtype,
                                          'anycompatiblearray'::regtype,
                                          'anycompatible'::regtype))
        """
    )
    statements = ["CREATE SCHEMA evil", "GRANT USAGE ON SCHEMA evil TO PUBLIC"]
    for number, (name, arguments, result, kind, returns_set) in enumerate(functions):
        if kind == "a":
            # An aggregate twin: its step function raises.
            state = "bigint" if name == "count" else (result if "any" not in result else "anyarray")
            step_arguments = state if arguments in ("", "*") else f"{state}, {arguments}"
            statements.append(
                f"CREATE FUNCTION evil.step_{number}({step_arguments}) RETURNS {state}"
                f" LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'hijacked: {name}'; END$$"
            )
            signature = "*" if arguments == "" else arguments
            statements.append(
                f"CREATE AGGREGATE evil.{name}({signature})"
                f" (SFUNC = evil.step_{number}, STYPE = {state})"
            )
        elif kind == "f":
            returns = f"SETOF {result.removeprefix('SETOF ')}" if returns_set else result
            statements.append(
                f"CREATE FUNCTION evil.{name}({arguments}) RETURNS {returns} LANGUAGE plpgsql"
                f" AS $$BEGIN RAISE EXCEPTION 'hijacked: {name}'; END$$"
            )
    operators = arena.rows(
        """
        SELECT o.oprname, o.oprleft::regtype::text, o.oprright::regtype::text,
               o.oprresult::regtype::text
        FROM pg_catalog.pg_operator AS o
        WHERE o.oprnamespace = 'pg_catalog'::regnamespace
          AND o.oprname IN ('=', '<>', '<', '>', '<=', '>=', '-', '+', '@>', '~~')
          AND o.oprleft <> 0 AND o.oprright <> 0
          AND o.oprleft::regtype::text IN ('bigint', 'integer', 'smallint', 'text', 'name',
              'oid', '"char"', 'bytea', 'boolean', 'anyarray', 'numeric')
          AND o.oprright::regtype::text IN ('bigint', 'integer', 'smallint', 'text', 'name',
              'oid', '"char"', 'bytea', 'boolean', 'anyarray', 'numeric')
        """
    )
    for number, (name, left, right, result) in enumerate(operators):
        statements.append(
            f"CREATE FUNCTION evil.op_{number}({left}, {right}) RETURNS {result}"
            f" LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'hijacked: {name}'; END$$"
        )
        statements.append(
            f"CREATE OPERATOR evil.{name} (LEFTARG = {left}, RIGHTARG = {right},"
            f" FUNCTION = evil.op_{number})"
        )
    for type_name in ("text", "bytea", "name", '"char"', "oid", "regclass", "int8"):
        statements.append(f"CREATE TYPE evil.{type_name} AS (hijacked integer)")
    statements.append("CREATE COLLATION evil.\"C\" (provider = libc, locale = 'C')")
    return statements


@pytest.fixture
def shadowed(arena: Arena, monkeypatch: pytest.MonkeyPatch) -> Iterator[Arena]:
    """Twins of every catalog name, ahead of pg_catalog on tokencli's search path."""
    arena.run(arena.mallory, *_shadows(arena))
    # As if the pin were lost and the search path put another role's schema first.
    monkeypatch.setattr(conninfo, "SEARCH_PATH", "evil, pg_catalog, pg_temp")
    try:
        yield arena
    finally:
        arena.run(None, "DROP SCHEMA evil CASCADE")


def test_every_name_in_our_sql_is_qualified(shadowed: Arena, schema: str) -> None:
    url = shadowed.url(shadowed.victim)
    assert open_postgres(url, create=False) is None  # the catalog look, no schema yet
    store = open_postgres(url, create=True)  # the migrations
    assert store is not None
    # The twins are there and on the path: an unqualified name would have hit one.
    with pytest.raises(StorageError, match="hijacked"), store.transaction():
        store._execute("SELECT count(*) FROM pg_catalog.pg_class")
    clock = Clock(NOW)
    service = TokenService(store, clock)
    issued = [service.issue(ttl_seconds=3600, scopes=["admin", "ops"], label="a") for _ in range(3)]
    single = service.issue(ttl_seconds=3600, uses=1, scopes=["read"])
    assert service.check(issued[0].token, ["admin"]).valid
    assert service.check(single.token, ["read"]).valid
    assert not service.check(single.token).valid
    assert service.show(issued[1].info.id).state == "valid"
    service.renew(issued[1].info.id, 7200)
    rotated = service.rotate(issued[2].info.id)
    assert service.check(rotated.token).valid
    # The rotated one has ended (no grace): two of the first three, and their successor.
    assert len(list(service.list_tokens(TokenFilter(scopes=("ops",), label="a")))) == 3
    assert service.live_ids("")
    assert service.scopes_in_use("o") == ["ops"]
    revoked, _ = service.revoke_many([], TokenFilter(scopes=("admin",), label="a"))
    assert len(revoked) == 3
    service.revoke(single.info.id)
    stats = service.stats()
    assert stats.counts.revoked == 4 and stats.size_bytes
    assert service.audit(limit=100)
    exported = [json.dumps(line) for line in export_objects(service, EVERY_TOKEN, audit=True)]
    # Pages of GET /app/tokens (their scan bound) and of the audit trail after a key.
    page = service.list_page(EVERY_TOKEN, None, 2)
    assert len(page.tokens) == 2 and page.next is not None
    assert service.list_page(EVERY_TOKEN, page.next, 2).tokens
    assert store.page_events((0, 0), 3).events
    with store.transaction():  # a stream inside a block: a cursor in the transaction
        assert len(list(store.iter_tokens(EVERY_TOKEN, NOW))) == 5
    clock.advance(10_000)
    assert service.purge().purged == 5
    store.ping()
    store.close()
    again = open_postgres(url, create=False)  # the quick look at a current schema
    assert again is not None
    import_lines(TokenService(again, clock), exported, skip_existing=True)
    again.close()
    backend = PostgresBackend(url)
    backend.open_store().close()


def test_the_search_path_is_pinned_in_every_transaction(arena: Arena, schema: str) -> None:
    arena.run(
        None, sql.SQL("ALTER ROLE {} SET search_path = public").format(sql.Identifier(arena.victim))
    )
    try:
        store = open_postgres(arena.url(arena.victim), create=True)
        assert store is not None
        pinned = [("pg_catalog, pg_temp", "5s", "3s")]
        query = (
            "SELECT current_setting('search_path'), current_setting('statement_timeout'),"
            " current_setting('lock_timeout')"
        )
        assert store._rows(query) == pinned  # a statement of its own
        with store.transaction():
            assert store._rows(query) == pinned
        # Between transactions the session keeps whatever the server gave it: a pooler
        # may hand over any server connection, so nothing relies on it.
        assert store._connection.execute("SHOW search_path").fetchone() == ("public",)
        store.close()
    finally:
        arena.run(
            None, sql.SQL("ALTER ROLE {} RESET search_path").format(sql.Identifier(arena.victim))
        )


# -- who owns the schema -------------------------------------------------------------------


@needs_executable
def test_a_schema_another_role_made_first_is_refused_until_trusted(
    arena: Arena, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mallory squats the name and lets everyone in: tokencli would make its tables there,
    # and mallory, owning the schema, could swap them for its own at any time.
    arena.run(
        arena.mallory,
        f"CREATE SCHEMA {schema}",
        f"GRANT ALL ON SCHEMA {schema} TO PUBLIC",
    )
    monkeypatch.setenv("TOKENCLI_DB", arena.url(arena.victim))
    for args in (["issue"], ["list"], ["check", "x:y"], ["serve", "--port", "0"]):
        result = tokencli(*args, timeout=60)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"schema {schema} is owned by {arena.mallory}" in result.stderr
        assert f"give them to {arena.victim}" in result.stderr
        assert f"TOKENCLI_PG_TRUSTED_OWNERS={arena.mallory}" in result.stderr
    assert arena.rows(
        "SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace", schema
    ) == [(0,)]  # nothing made there
    # The operator says otherwise, explicitly: then it is used.
    monkeypatch.setenv("TOKENCLI_PG_TRUSTED_OWNERS", f"someone, {arena.mallory}")
    issued = tokencli("issue")
    assert issued.returncode == 0, issued.stderr
    assert tokencli("check", issued.stdout.strip()).returncode == 0


def test_objects_another_role_put_in_our_schema_are_refused(
    arena: Arena, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = arena.url(arena.victim)
    store = open_postgres(url, create=True)
    assert store is not None
    store.close()
    # A careless grant lets mallory create in tokencli's schema: a function and a table.
    arena.run(None, f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {arena.mallory}")
    arena.run(
        arena.mallory,
        f"CREATE FUNCTION {schema}.lookalike() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        f"CREATE TABLE {schema}.notes (body text)",
    )
    for create in (False, True):
        with pytest.raises(StorageError) as caught:
            open_postgres(url, create=create)
        message = str(caught.value)
        assert f"function {schema}.lookalike() is owned by {arena.mallory}" in message
        assert f"table {schema}.notes is owned by {arena.mallory}" in message
        assert caught.value.exit_status == 3
    with pytest.raises(StorageError, match="lookalike"):
        PostgresBackend(url)
    # Objects of a superuser are trusted (one could do anything anyway).
    arena.run(None, f"DROP FUNCTION {schema}.lookalike()", f"DROP TABLE {schema}.notes")
    arena.run(
        None,
        f"CREATE FUNCTION {schema}.audited() RETURNS trigger LANGUAGE plpgsql"
        " AS $$BEGIN RETURN NEW; END$$",
        f"CREATE TRIGGER audited BEFORE INSERT ON {schema}.audit"
        f" FOR EACH ROW EXECUTE FUNCTION {schema}.audited()",
    )
    reopened = open_postgres(url, create=False)
    assert reopened is not None
    reopened.close()
    # A trigger on our table whose function another role owns is refused too.
    arena.run(None, f"GRANT TRIGGER ON {schema}.audit TO {arena.mallory}")
    arena.run(
        arena.mallory,
        "CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql"
        " AS $$BEGIN RETURN NEW; END$$",
        f"CREATE TRIGGER spy BEFORE INSERT ON {schema}.audit"
        " FOR EACH ROW EXECUTE FUNCTION public.spy()",
    )
    try:
        with pytest.raises(StorageError, match=f"trigger spy on table {schema}.audit is owned by"):
            open_postgres(url, create=False)
    finally:
        arena.run(None, f"DROP TRIGGER spy ON {schema}.audit", "DROP FUNCTION public.spy()")
