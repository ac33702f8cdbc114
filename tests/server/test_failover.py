"""PostgreSQL failover under load: a primary with a synchronous streaming standby, two
`tokencli serve` replicas given both hosts (`target_session_attrs=read-write`), the primary
crashed mid-load and the standby promoted.

What must hold: the replicas find the new primary by themselves; meanwhile what needs the
database is 503, never a wrong verdict; no token whose issue was answered 200 is missing
afterwards, and no single-use token is valid twice across the failover. The window (from
the crash, and from the promotion, to each replica's first answer again) is printed.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from typing import Any

import psycopg
import pytest
from psycopg import sql
from replicas import Replica, check_json, exchange, wait_for

from pg_cluster import PgCluster
from support import needs_executable, tokencli

pytestmark = [needs_executable, pytest.mark.slow]


class Pair:
    """A primary and its synchronous standby, and the URL naming both."""

    def __init__(self, primary: PgCluster, standby: PgCluster) -> None:
        self.primary = primary
        self.standby = standby
        self.url = (
            f"postgresql://postgres@/postgres?host={primary.folder},{standby.folder}"
            "&target_session_attrs=read-write"
        )


@pytest.fixture
def pair(make_cluster: Callable[..., PgCluster], monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    monkeypatch.setenv("TOKENCLI_PG_SCHEMA", f"t_{uuid.uuid4().hex[:12]}")
    primary = make_cluster(settings={"synchronous_commit": "on"})
    standby = make_cluster(standby_of=primary, name="standby1")
    with psycopg.connect(primary.url(), autocommit=True) as admin:
        # Only now: before its standby exists, every commit would wait for it.
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
        admin.execute("SELECT pg_reload_conf()")

        def synchronous() -> bool:
            row = admin.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
            ).fetchone()
            return row == ("sync",)

        wait_for(synchronous, 60, "the standby to stream synchronously")
    yield Pair(primary, standby)


def test_failover_under_load_loses_no_acknowledged_token_and_spends_none_twice(
    pair: Pair, replicas: Callable[..., Replica]
) -> None:
    url = pair.url
    singles = tokencli("--db", url, "issue", "--count", "1500", "--uses", "1").stdout.split()
    unlimited = tokencli("--db", url, "issue", "--count", "20").stdout.split()
    revoked = tokencli("--db", url, "issue").stdout.strip()
    assert tokencli("--db", url, "revoke", revoked).returncode == 0
    assert len(singles) == 1500 and len(unlimited) == 20
    first, second = replicas(url, "--quiet"), replicas(url, "--quiet")
    # Three clients per replica. Each single-use token is presented twice, by a client
    # of each replica, the two walking the same order: they race, before, during and
    # after the failover.
    clients = [first] * 3 + [second] * 3
    lock = threading.Lock()
    answers: list[tuple[float, int, str, int, Any]] = []  # (when, replica, kind, status, body)
    issued: list[str] = []  # tokens whose issue was answered 200
    failures: list[BaseException] = []
    stop = threading.Event()

    def load(number: int) -> None:
        replica = clients[number]
        rng = random.Random(number)
        mine = iter(singles[(number % 3) :: 3])
        connection = HTTPConnection("127.0.0.1", replica.port, timeout=60)
        try:
            while not stop.is_set():
                token = next(mine, None)
                for kind, method, path, body in (
                    ("single", "GET", f"/app/valid/{token}", None),
                    ("unlimited", "GET", f"/app/valid/{rng.choice(unlimited)}", None),
                    ("revoked", "GET", f"/app/valid/{revoked}", None),
                    ("issue", "POST", "/app/token", b'{"ttl": "1h", "uses": 3}'),
                ):
                    if (kind == "single" and token is None) or (
                        kind == "issue" and rng.random() < 0.7
                    ):
                        continue
                    status, answer = exchange(connection, method, path, body)
                    with lock:
                        answers.append((time.monotonic(), replica.port, kind, status, answer))
                        if kind == "single" and status == 200 and answer["status"] is True:
                            answers.append((0.0, replica.port, "granted", 200, token))
                        if kind == "issue" and status == 200:
                            issued.append(answer["token"])
        except BaseException as error:  # reported below: a thread must not die silently
            failures.append(error)
        finally:
            connection.close()

    def answered(port: int, after: float = 0.0) -> int:
        with lock:
            return sum(1 for when, p, _, s, _ in answers if p == port and s == 200 and when > after)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(len(clients))]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: failures or min(answered(first.port), answered(second.port)) >= 200,
            60,
            "load on both replicas",
        )
        assert not failures, failures
        crashed = time.monotonic()
        pair.primary.crash()
        pair.standby.promote()
        promoted = time.monotonic()
        back = {}
        for replica in (first, second):
            wait_for(
                lambda r=replica: failures or answered(r.port, promoted) >= 1,
                60,
                f"replica {replica.port} to answer again",
            )
            with lock:
                back[replica.port] = min(
                    when
                    for when, p, _, s, _ in answers
                    if p == replica.port and s == 200 and when > promoted
                )
        wait_for(
            lambda: failures or min(answered(p, promoted) for p in back) >= 200,
            60,
            "load after the failover",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures
    for port, when in back.items():
        print(
            f"replica {port}: answering again {when - crashed:.2f}s after the crash,"
            f" {when - promoted:.2f}s after the promotion (which took {promoted - crashed:.2f}s)"
        )

    statuses = Counter((kind, status) for _, _, kind, status, _ in answers if kind != "granted")
    print("answers:", dict(statuses))
    assert {status for _, status in statuses} <= {200, 503}
    assert statuses[("single", 503)] + statuses[("issue", 503)] > 0  # the outage was real
    # Never a wrong verdict: 503 or the truth.
    for _, _, kind, status, body in answers:
        if status == 200 and kind == "unlimited":
            assert body["status"] is True, body
        if status == 200 and kind == "revoked":
            assert body["status"] is False, body
        if status == 503:
            assert body["status_code"] == 503 and "Traceback" not in str(body)
    # No single-use token valid twice, on either replica, before or after the promotion.
    granted = Counter(token for _, _, kind, _, token in answers if kind == "granted")
    assert granted and max(granted.values()) == 1
    # Every use granted is stored on the new primary (synchronous commit), and every token
    # whose issue was answered 200 is there, live: read from the promoted standby itself.
    assert issued
    with psycopg.connect(pair.standby.url(), autocommit=True) as promoted_db:
        tokens_table = sql.Identifier(os.environ["TOKENCLI_PG_SCHEMA"], "tokens")
        rows = dict(
            promoted_db.execute(
                sql.SQL("SELECT id, uses_left FROM {} WHERE id = ANY(%s)").format(tokens_table),
                ([token.split(":")[0] for token in [*granted, *issued]],),
            ).fetchall()
        )
    assert [token for token in granted if rows.get(token.split(":")[0]) != 0] == []
    missing = [token for token in issued if token.split(":")[0] not in rows]
    assert missing == []
    # And end to end, a few of each through the CLI.
    for token in random.Random(0).sample(sorted(granted), 3):
        assert check_json(url, token)["state"] == "used_up"
    for token in random.Random(1).sample(issued, 3):
        assert check_json(url, token)["valid"] is True
    # What the operator sees: the replicas reconnected by themselves, and say so.
    for replica in (first, second):
        status, _, page = replica.client.request("GET", "/metrics")
        assert status == 200
        text = page.decode() if isinstance(page, bytes) else str(page)
        assert re.search(r"^tokencli_store_available 1\.0$", text, re.MULTILINE), text
        reconnects = re.search(r"^tokencli_store_reconnects_total (\S+)$", text, re.MULTILINE)
        assert reconnects is not None and float(reconnects.group(1)) >= 1
        assert replica.stop() == 0
