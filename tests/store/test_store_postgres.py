"""The PostgreSQL store against a real throwaway cluster: what only it does. Concurrency
across connections, server-side cursors, migrations, refusals, errors and round trips.

The Store contract both stores keep is tested on both in test_store_contract.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql

from tokencli.domain.errors import StorageError
from tokencli.domain.model import TokenFilter
from tokencli.store.base import IdCollisionError
from tokencli.store.postgres import connection as postgres_connection
from tokencli.store.postgres import conninfo
from tokencli.store.postgres.backend import PostgresBackend, open_postgres
from tokencli.store.postgres.connection import connect
from tokencli.store.postgres.queries import PostgresStore
from tokencli.store.postgres.schema import SCHEMA_VERSION

from pg_cluster import PASSWORD, PASSWORD_ROLE, PgCluster
from support import START, event, token

NOW = START  # the moment support.token and support.event are made around
HOUR = 3600
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    opened = open_postgres(postgres_url, create=True)
    assert opened is not None
    yield opened
    opened.close()


@pytest.fixture
def admin(postgres_cluster: PgCluster) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection beside the store, to look at what it did."""
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as connection:
        yield connection


def relations(admin: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = admin.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s ORDER BY 1",
        (schema,),
    ).fetchall()
    return [row[0] for row in rows]


def schema_exists(admin: psycopg.Connection[Any], schema: str) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
    ).fetchone()
    return row is not None and row[0] == 1


def round_trips(store: PostgresStore, action: Callable[[], object]) -> int:
    """How many times the client waited for the server while `action` ran.

    From libpq's protocol trace: each wait ends what the client sent with a Sync (the
    extended protocol, pipelined or not) or is a simple Query.
    """
    pgconn = store._connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            action()
        finally:
            pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines() if line.startswith("F\t")]
    return sum(1 for fields in sent if fields[2] in ("Sync", "Query"))


# -- schema -------------------------------------------------------------------------------


def test_new_schema_has_the_tables_indexes_and_version(
    store: PostgresStore, admin: psycopg.Connection[Any], postgres_schema: str
) -> None:
    assert store.schema == postgres_schema
    columns = admin.execute(
        "SELECT table_name, column_name, data_type, collation_name FROM information_schema.columns"
        " WHERE table_schema = %s ORDER BY table_name, ordinal_position",
        (postgres_schema,),
    ).fetchall()
    by_table: dict[str, dict[str, str]] = {}
    for table, column, data_type, _ in columns:
        by_table.setdefault(table, {})[column] = data_type
    assert by_table["tokens"] == {
        "id": "text",
        "secret_hash": "bytea",
        "label": "text",
        "created_at": "bigint",
        "expires_at": "bigint",
        "uses_left": "bigint",
        "uses_limit": "bigint",
        "revoked_at": "bigint",
        "ends_at": "bigint",
        "scopes": "ARRAY",
    }
    assert by_table["audit"] == {
        "id": "bigint",
        "at": "bigint",
        "action": "text",
        "token_id": "text",
        "outcome": "text",
        "source": "text",
        "detail": "text",
    }
    assert ("tokens", "id", "text", "C") in columns
    assert relations(admin, postgres_schema) == sorted(
        [
            "audit",
            "audit_at",
            "audit_id_seq",
            "audit_pkey",
            "schema_version",
            "schema_version_pkey",
            "tokens",
            "tokens_ends_at",
            "tokens_pkey",
        ]
    )
    version = admin.execute(
        sql.SQL("SELECT application, version FROM {}").format(
            sql.Identifier(postgres_schema, "schema_version")
        )
    ).fetchall()
    assert version == [("tokencli", SCHEMA_VERSION)]


def test_reopening_a_current_schema_costs_one_query(postgres_url: str) -> None:
    first = open_postgres(postgres_url, create=True)
    assert first is not None
    first.close()
    info = conninfo.parse(postgres_url)
    store = PostgresStore(connect(info), info, first.schema)
    try:
        assert round_trips(store, lambda: store._prepare_schema(create=False)) == 1
    finally:
        store.close()


def test_missing_schema_without_create_reads_as_nothing_and_creates_nothing(
    postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any]
) -> None:
    assert open_postgres(postgres_url, create=False) is None
    assert not schema_exists(admin, postgres_schema)
    # An empty schema (made by an operator) is nothing of ours either.
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(postgres_schema)))
    assert open_postgres(postgres_url, create=False) is None
    assert relations(admin, postgres_schema) == []


def test_a_newer_schema_is_refused_untouched(
    store: PostgresStore, postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any]
) -> None:
    store.insert_tokens([token("keep")])
    version_table = sql.Identifier(postgres_schema, "schema_version")
    admin.execute(sql.SQL("UPDATE {} SET version = 99").format(version_table))
    before = relations(admin, postgres_schema)
    for create in (False, True):
        with pytest.raises(StorageError) as caught:
            open_postgres(postgres_url, create=create)
        message = str(caught.value)
        assert "schema version 99" in message
        assert f"({SCHEMA_VERSION})" in message
        assert "upgrade tokencli" in message
        assert caught.value.exit_status == 3
    assert admin.execute(sql.SQL("SELECT version FROM {}").format(version_table)).fetchall() == [
        (99,)
    ]
    assert relations(admin, postgres_schema) == before
    assert store.get("keep") is not None


@pytest.mark.parametrize(
    "foreign",
    [
        "CREATE TABLE {schema}.notes (body text); INSERT INTO {schema}.notes VALUES ('keep me')",
        "CREATE TABLE {schema}.schema_version (version int); INSERT INTO {schema}.schema_version"
        " VALUES (1)",
    ],
    ids=["notes", "their-schema_version"],
)
def test_a_schema_holding_someone_elses_tables_is_refused_untouched(
    postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any], foreign: str
) -> None:
    quoted = sql.Identifier(postgres_schema).as_string(admin)
    admin.execute(f"CREATE SCHEMA {quoted}")
    for statement in foreign.format(schema=quoted).split(";"):
        admin.execute(statement)
    before = relations(admin, postgres_schema)
    for create in (True, False):
        with pytest.raises(StorageError) as caught:
            open_postgres(postgres_url, create=create)
        assert f"schema {postgres_schema} " in str(caught.value)
        assert "not tokencli's" in str(caught.value)
    assert relations(admin, postgres_schema) == before


def test_four_processes_opening_an_empty_database_at_once_make_one_schema(
    postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any]
) -> None:
    # Each child connects, says "ready" and waits for "go": they migrate together.
    child = (
        "import sys\n"
        "from tokencli.store.postgres.backend import open_postgres\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "store = open_postgres(sys.argv[1], create=True)\n"
        "print('opened', store.schema, flush=True)\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", child, postgres_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TOKENCLI_PG_SCHEMA": postgres_schema},
        )
        for _ in range(4)
    ]
    outcomes = []
    try:
        for process in children:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        for process in children:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
    finally:
        for process in children:
            out, err = process.communicate(timeout=30)
            outcomes.append((process.returncode, out, err))
    for returncode, out, err in outcomes:
        assert returncode == 0, err
        assert out == f"opened {postgres_schema}\n"
    version = admin.execute(
        sql.SQL("SELECT version FROM {}").format(sql.Identifier(postgres_schema, "schema_version"))
    ).fetchall()
    assert version == [(SCHEMA_VERSION,)]


def test_an_operator_made_schema_is_used_without_the_right_to_create_schemas(
    postgres_cluster: PgCluster,
    postgres_schema: str,
    admin: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        url = postgres_cluster.url(user=role)
        # A plain role may not create schemas (as on a managed server)...
        with pytest.raises(StorageError, match="permission denied"):
            open_postgres(url, create=True)
        # ...but works in one an operator made for it.
        admin.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(postgres_schema), sql.Identifier(role)
            )
        )
        store = open_postgres(url, create=True)
        assert store is not None
        store.insert_tokens([token("mine")])
        assert store.get("mine") is not None
        store.close()
    finally:
        admin.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(postgres_schema))
        )
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("name", ["Tokens", "1st", "a-b", "pg_mine", "x" * 64, "tok;drop"])
def test_a_bad_schema_name_is_refused_before_connecting(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENCLI_PG_SCHEMA", name)
    with pytest.raises(StorageError, match="TOKENCLI_PG_SCHEMA"):
        open_postgres("postgresql://nobody@/nowhere?host=/nonexistent", create=True)


# -- concurrency and streaming ----------------------------------------------------------


def test_racing_connections_take_each_last_use_exactly_once(postgres_url: str) -> None:
    setup = open_postgres(postgres_url, create=True)
    assert setup is not None
    singles = [f"single{i:03d}" for i in range(200)]
    triples = [f"triple{i:03d}" for i in range(50)]
    setup.insert_tokens([token(i, uses=1) for i in singles] + [token(i, uses=3) for i in triples])
    info = conninfo.parse(postgres_url)
    stores = [PostgresStore(connect(info), info, setup.schema) for _ in range(8)]
    granted: list[dict[str, tuple[int, int]]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores))

    def race(store: PostgresStore, seed: int) -> None:
        order = singles + triples
        random.Random(seed).shuffle(order)
        start.wait()
        for offset in range(0, len(order), 25):
            with store.transaction():
                # Each asks 1 use of a single-use token and 2 of a three-use one.
                chunk = {i: 2 if i.startswith("triple") else 1 for i in order[offset : offset + 25]}
                result = store.consume_uses(chunk, NOW)
            with lock:
                granted.append(result)

    threads = [
        threading.Thread(target=race, args=(store, seed)) for seed, store in enumerate(stores)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total: Counter[str] = Counter()
        steps: dict[str, list[tuple[int, int]]] = {}
        for result in granted:
            for token_id, (count, left) in result.items():
                total[token_id] += count
                steps.setdefault(token_id, []).append((count, left))
        assert len(granted) == len(stores) * 10  # every thread ran to its end
        assert sum(total[i] for i in singles) == 200
        assert all(total[i] == 1 for i in singles)
        assert all(total[i] == 3 for i in triples)
        # Each grant's "uses left afterwards" is exact: they chain from 3 down to 0.
        for token_id in triples:
            left = 3
            for count, after in sorted(steps[token_id], key=lambda step: -step[1]):
                assert after == left - count
                left = after
            assert left == 0
        left = setup.get_many(singles + triples)
        assert all(record.uses_left == 0 for record in left.values())
    finally:
        for store in [setup, *stores]:
            store.close()


def test_iter_tokens_holds_nothing_open_between_pages(store: PostgresStore) -> None:
    store.insert_tokens([token(f"t{i:05d}", created=NOW - 10_000 + i) for i in range(5000)])
    stream = store.iter_tokens(TokenFilter(states=None), NOW)
    first = next(stream)
    assert first.id == "t00000"
    # The client holds one page, not 5000 rows; the server holds nothing for it: no
    # cursor, no transaction, no snapshot that a slow reader would keep open.
    assert store._connection.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
    assert store._connection.info.transaction_status == pq.TransactionStatus.IDLE
    assert store.get("t04999") is not None
    rest = [record.id for record in stream]
    assert rest == [f"t{i:05d}" for i in range(1, 5000)]
    with store.transaction():  # pages read inside a block belong to its transaction
        assert len(list(store.iter_tokens(TokenFilter(states=None, limit=2500), NOW))) == 2500
        store.revoke("t00000", NOW)
    assert store.count_ended(NOW) == 1


def test_size_ping_and_location(
    store: PostgresStore, postgres_cluster: PgCluster, postgres_schema: str
) -> None:
    before = store.size_bytes()
    assert before > 0
    store.insert_tokens([token(f"s{i}", label="x" * 100) for i in range(2000)])
    assert store.size_bytes() > before
    store.ping()
    url = postgres_cluster.url(user=PASSWORD_ROLE, password=PASSWORD)
    info = conninfo.parse(url)
    backend_store = PostgresStore(connect(info), info, postgres_schema)
    assert backend_store.location == postgres_cluster.url(user=PASSWORD_ROLE, password="***")
    backend_store.close()
    with pytest.raises(StorageError):
        backend_store.ping()


# -- transactions and batches -------------------------------------------------------------


def test_an_error_caught_inside_a_transaction_fails_its_commit(store: PostgresStore) -> None:
    # PostgreSQL aborts the whole transaction on a failed statement: carrying on after
    # catching the error must not pass for a commit.
    store.insert_tokens([token("taken")])
    with pytest.raises(StorageError, match="rolled back"), store.transaction():
        store.insert_tokens([token("lost")])
        with pytest.raises(IdCollisionError):
            store.insert_tokens([token("taken")])
    assert store.get("lost") is None
    store.ping()  # and the store is fine afterwards


def test_round_trips_of_a_batch(store: PostgresStore) -> None:
    ids = [f"r{i:03d}" for i in range(100)]
    store.insert_tokens([token(i, uses=5) for i in ids])

    def set_based() -> None:
        with store.batch():
            records = store.get_many(ids)
            store.consume_uses(dict.fromkeys(records, 1), NOW)
            store.record([event(NOW, "check", i) for i in ids])

    def per_request(n: int) -> Callable[[], None]:
        def run() -> None:
            with store.batch():
                for i in ids[:n]:
                    with store.transaction():
                        store.get(i)
                        store.consume_uses({i: 1}, NOW)
                        store.record([event(NOW, "check", i)])

        return run

    # BEGIN rides with the first query, the events with the COMMIT.
    assert round_trips(store, set_based) == 3
    # Per request: SAVEPOINT rides with its first query, RELEASE with the next step's.
    # psycopg prepares a statement on its 5th run (on a direct connection), which costs
    # one more round trip once.
    assert not store._connection.pooled
    assert round_trips(store, per_request(10)) <= 3 * 10 + 1 + 3
    assert round_trips(store, per_request(10)) == 3 * 10 + 1

    def empty_blocks() -> None:
        with store.batch(), store.transaction():
            pass

    def read_in_transaction() -> None:
        with store.transaction():
            store.get("r000")

    assert round_trips(store, empty_blocks) == 0  # BEGIN and SAVEPOINT never leave
    assert round_trips(store, read_in_transaction) == 2
    assert round_trips(store, lambda: store.get("r000")) == 1
    assert store.get("r000") == token("r000", uses=5)._replace(uses_left=2)


# -- connections and errors ---------------------------------------------------------------


def test_connection_settings_come_from_the_url_with_tokencli_defaults(
    postgres_cluster: PgCluster, postgres_schema: str
) -> None:
    url = postgres_cluster.url()
    plain = connect(conninfo.parse(url))
    assert plain.info.get_parameters().get("connect_timeout") == "5"
    assert plain.execute("SHOW application_name").fetchone() == ("tokencli",)
    plain.close()
    own = connect(conninfo.parse(f"{url}&application_name=replica-7&connect_timeout=3"))
    assert own.info.get_parameters().get("connect_timeout") == "3"
    assert own.execute("SHOW application_name").fetchone() == ("replica-7",)
    own.close()


def test_a_wrong_password_is_a_storage_error_that_never_shows_it(
    postgres_cluster: PgCluster,
) -> None:
    secret = "wrong-horse-sesame"
    url = postgres_cluster.url(user=PASSWORD_ROLE, password=secret)
    with pytest.raises(StorageError) as caught:
        open_postgres(url, create=False)
    message = str(caught.value)
    assert "password authentication failed" in message
    assert secret not in message
    assert f"{PASSWORD_ROLE}:***@" in message
    assert caught.value.exit_status == 3


def test_a_lost_connection_is_a_storage_error_and_stays_one(
    store: PostgresStore, admin: psycopg.Connection[Any]
) -> None:
    store.insert_tokens([token("t")])
    pid = store._connection.info.backend_pid
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StorageError, match="lost the connection|cannot use the database"):
        store.get("t")
    with pytest.raises(StorageError), store.transaction():
        store.revoke("t", NOW)
    store.close()


def test_a_row_locked_past_the_timeout_is_a_storage_error(
    postgres_url: str, admin: psycopg.Connection[Any]
) -> None:
    # The bound comes from the URL's own options, as an operator would set it.
    store = open_postgres(f"{postgres_url}&options=-c%20lock_timeout%3D100ms", create=True)
    assert store is not None
    store.insert_tokens([token("busy")])
    tokens_table = sql.Identifier(store.schema, "tokens")
    with admin.transaction():
        admin.execute(sql.SQL("SELECT * FROM {} FOR UPDATE").format(tokens_table))
        with pytest.raises(StorageError, match="stayed locked for over 100ms"):
            with store.transaction():
                store.revoke("busy", NOW)
    assert store.revoke("busy", NOW)
    store.close()


def test_backend_migrates_once_and_opens_a_connection_per_store(
    postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any]
) -> None:
    backend = PostgresBackend(postgres_url)
    assert "tokens" in relations(admin, postgres_schema)
    first, second = backend.open_store(), backend.open_store()
    assert first._connection.info.backend_pid != second._connection.info.backend_pid
    first.insert_tokens([token("shared")])
    assert second.get("shared") is not None
    assert backend.location == postgres_url
    assert backend.gauges() == {"available": 1.0, "reconnects_total": 0.0}
    backend.start_upkeep(lambda line: None)
    backend.stop_upkeep()
    first.close()
    second.close()


def test_without_psycopg_the_package_imports_and_a_url_says_what_to_install() -> None:
    child = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if not installed\n"
        "import tokencli.cli.base, tokencli.service.service, tokencli.store.factory\n"
        "import tokencli.store.postgres.backend as pg\n"
        "from tokencli.domain.errors import StorageError\n"
        "try:\n"
        "    pg.open_postgres('postgresql://x@/y', create=True)\n"
        "except StorageError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout == f"{postgres_connection.NOT_INSTALLED}\n"


def test_only_the_postgres_modules_import_psycopg() -> None:
    postgres_package = REPO / "tokencli" / "store" / "postgres"
    assert any("import psycopg" in path.read_text() for path in postgres_package.glob("*.py"))
    for path in (REPO / "tokencli").rglob("*.py"):
        if path.parent == postgres_package:
            continue
        text = path.read_text()
        assert "import psycopg" not in text and "from psycopg" not in text, path
