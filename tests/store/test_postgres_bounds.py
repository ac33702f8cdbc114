"""Every wait on PostgreSQL ends: a backend that stops answering, a network that drops
packets silently, and what happens once they come back.

A stopped backend (SIGSTOP) never answers, and never cancels its own statement either:
only the client's own deadline ends the wait. A cut link is made for real: PostgreSQL in
a network namespace of the test's own, reached over a veth pair whose far end is then
set down (packets vanish without an error, as on a dropped network).

Each wait is run on a thread joined with a generous timeout, so a regression fails the
test instead of hanging the suite; the time each took is printed for the record.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tokencli.domain.errors import StorageError
from tokencli.service.service import TokenService
from tokencli.store.postgres.backend import PostgresBackend, open_postgres

from pg_cluster import PgCluster, find_bindir

STATEMENT_TIMEOUT = 1  # seconds, from the URL's options; the client waits 2 s more
BOUND = STATEMENT_TIMEOUT + 2
OPTIONS = f"options=-c%20statement_timeout%3D{STATEMENT_TIMEOUT}s"
GENEROUS = 60  # a hang, not a slow machine, is what fails the test


def bounded(action: Callable[[], Any]) -> tuple[BaseException | Any, float]:
    """What `action` returned or raised, and how long it took; fails if it never ends."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as error:  # the outcome under test
            outcome.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GENEROUS)
    assert not thread.is_alive(), f"still waiting after {GENEROUS}s: the wait is unbounded"
    return outcome[0], time.monotonic() - started


def backend_pid(admin_url: str, application_name: str, besides: list[int]) -> int:
    """The server process of the one session with this application_name, besides those."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> ALL(%s)",
            (application_name, besides),
        ).fetchall()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def test_a_stopped_backend_is_a_storage_error_within_the_bound(
    postgres_cluster: PgCluster, postgres_url: str
) -> None:
    name = f"stopped-{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(f"{postgres_url}&application_name={name}&{OPTIONS}")
    store = backend.open_store()
    token = TokenService(store).issue(uses=100).token
    stopped: list[int] = []
    try:
        for attempt, action in enumerate(("check", "issue")):
            service = TokenService(store)
            pid = backend_pid(postgres_cluster.url(), name, stopped)
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
            if action == "check":
                outcome, took = bounded(lambda s=service: s.check(token))
            else:
                outcome, took = bounded(lambda s=service: s.issue())
            print(f"stopped backend, {action}: StorageError after {took:.2f}s (bound {BOUND}s)")
            assert isinstance(outcome, StorageError), outcome
            assert f"no answer from the database at {backend.location} within {BOUND}s" in str(
                outcome
            )
            assert took >= BOUND  # the client waited its bound, no less
            assert backend.gauges() == {"available": 0.0, "reconnects_total": float(attempt)}
            # A given-up store stays given up, at once; a new one works at once, though
            # the old backend is still stopped (it held nothing).
            again, took = bounded(lambda s=service: s.check(token))
            assert isinstance(again, StorageError) and took < BOUND
            store = backend.open_store()
            assert TokenService(store).show(token).state == "valid"
            assert backend.gauges() == {"available": 1.0, "reconnects_total": attempt + 1.0}
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    # Continued, each old backend finds its client gone and ends; whatever it had been
    # sent was never committed, so the check that got no answer took no use.
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        deadline = time.monotonic() + GENEROUS
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (stopped,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the stopped backends never ended"
            time.sleep(0.05)
    result = TokenService(store).check(token)
    assert result.valid and result.info is not None and result.info.uses_left == 99
    store.close()


# -- a dropped network ---------------------------------------------------------------------


class Link:
    """PostgreSQL in a network namespace, reached over a veth pair from here."""

    def __init__(self, name: str, near: str, far: str, url: str) -> None:
        self.url = url
        # tc on each end of the pair: here, and inside the namespace.
        self._ends = [["tc"], ["ip", "netns", "exec", name, "tc"]]
        self._devices = [near, far]

    def cut(self) -> None:
        """Drop every packet either way, silently: no reset, no unreachable, no carrier
        lost (a `blackhole` queue on both ends of the veth pair)."""
        for tc, device in zip(self._ends, self._devices, strict=True):
            run(*tc, "qdisc", "add", "dev", device, "root", "blackhole")

    def mend(self) -> None:
        for tc, device in zip(self._ends, self._devices, strict=True):
            run(*tc, "qdisc", "del", "dev", device, "root")


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


def ip(*args: str) -> None:
    run("ip", *args)


@pytest.fixture
def link(postgres_schema: str) -> Iterator[Link]:
    """A namespace with PostgreSQL listening on its end of a veth pair (needs root)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found")
    tag = uuid.uuid4().hex[:6]
    name, near, far = f"tkc{tag}", f"tkc{tag}h", f"tkc{tag}n"
    subnet = f"10.251.{random.randrange(256)}"
    try:
        ip("netns", "add", name)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        message = f"cannot make a network namespace here (needs root and iproute2): {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    cluster: PgCluster | None = None
    try:
        ip("link", "add", near, "type", "veth", "peer", "name", far)
        ip("link", "set", far, "netns", name)
        ip("addr", "add", f"{subnet}.1/30", "dev", near)
        ip("link", "set", near, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/30", "dev", far)
        ip("netns", "exec", name, "ip", "link", "set", far, "up")
        cluster = PgCluster(
            bindir,
            settings={"listen_addresses": f"'{subnet}.2'"},
            hba=[f"host all all {subnet}.0/30 trust"],
            netns=name,
        )
        cluster.start()
        url = f"postgresql://postgres@{subnet}.2:5432/postgres?connect_timeout=2&{OPTIONS}"
        yield Link(name, near, far, url)
    finally:
        if cluster is not None:
            cluster.stop()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", near], capture_output=True, timeout=30)


@pytest.mark.slow
def test_a_dropped_network_is_a_storage_error_within_the_bound(link: Link) -> None:
    store = open_postgres(link.url, create=True)
    assert store is not None
    token = TokenService(store).issue(uses=10).token
    # libpq set up the socket as tokencli asked: keepalives and a bound on unacknowledged data.
    tcp = socket.socket(fileno=os.dup(store._connection.fileno()))
    try:
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
    finally:
        tcp.close()  # a duplicate: the connection stays open
    link.cut()
    outcome, took = bounded(lambda: TokenService(store).check(token))
    print(f"dropped network, check: StorageError after {took:.2f}s (bound {BOUND}s)")
    assert isinstance(outcome, StorageError), outcome
    assert "no answer from the database" in str(outcome)
    assert took >= BOUND
    # A new connection meanwhile waits connect_timeout (2 s here) for each host, no more.
    refused, took = bounded(lambda: open_postgres(link.url, create=False))
    print(f"dropped network, connect: StorageError after {took:.2f}s (connect_timeout 2s)")
    assert isinstance(refused, StorageError), refused
    assert "cannot connect to the database" in str(refused)
    link.mend()
    again = open_postgres(link.url, create=False)
    assert again is not None
    result = TokenService(again).check(token)
    assert result.valid and result.info is not None and result.info.uses_left == 9
    again.close()
    store.close()


def test_a_slow_statement_is_cancelled_by_the_server_and_the_connection_goes_on(
    postgres_url: str, postgres_cluster: PgCluster
) -> None:
    # lock_timeout off: the read waits for the table lock until statement_timeout ends it.
    url = f"{postgres_url}&options=-c%20statement_timeout%3D300ms%20-c%20lock_timeout%3D0"
    store = open_postgres(url, create=True)
    assert store is not None
    token = TokenService(store).issue().token
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin, admin.transaction():
        admin.execute(f'LOCK TABLE "{store.schema}".tokens IN ACCESS EXCLUSIVE MODE')
        outcome, took = bounded(lambda: TokenService(store).check(token))
    assert isinstance(outcome, StorageError), outcome
    assert "ran past statement_timeout (300ms) and was cancelled" in str(outcome)
    assert took < GENEROUS
    # The server ended the statement itself: the same connection answers again.
    assert TokenService(store).check(token).valid
    store.close()
