"""How `serve` stays fair when crowded: deadlines, room at the connection cap, TLS slots.

Each is a policy over the table of connections that the server keeps (server.py); none
touches a socket except by closing a connection or starting its handshake. Limits are
in config.py, and docs/design.md ("How it serves") says why each exists.
"""

from __future__ import annotations

import itertools
import time

from tokencli.server.config import Limits
from tokencli.server.connection import Connection, TlsConnection

# A pass looks at a tenth of the connections per turn of the loop, at least this many.
SWEEP_MIN = 256
# At a cap, how many of the stalest connections one turn looks at.
EVICT_PER_TURN = 256


class Deadlines:
    """Close what overstayed, passing over every connection about once a second.

    Twenty thousand connections timing out together would otherwise close in one go and
    stall everyone else for a few hundred milliseconds; a slice per turn lets the
    well-behaved clients' requests through between slices.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._pending: list[Connection] = []  # still to look at in this pass
        self._slice = SWEEP_MIN
        self._next_pass = 0.0

    @property
    def under_way(self) -> bool:
        """A pass has connections left to look at (the loop should come back soon)."""
        return bool(self._pending)

    def step(self, table: dict[int, Connection], now: float) -> None:
        """Look at the next slice of connections, starting a pass once a second."""
        if not self._pending:
            if now < self._next_pass:
                return
            self._next_pass = now + 1.0
            self._pending = list(table.values())
            self._slice = max(SWEEP_MIN, len(self._pending) // 10)
        batch = self._pending[-self._slice :]
        del self._pending[-self._slice :]
        self._close_overdue(batch, now, crowded=len(table) >= self._limits.max_connections)

    def _close_overdue(self, connections: list[Connection], now: float, *, crowded: bool) -> None:
        """Close what overstayed: handshakes, requests, unread output, idle keep-alives."""
        limits = self._limits
        idle_limit = limits.idle_under_pressure if crowded else limits.idle_timeout
        for connection in connections:
            connection.expire(now, limits.request_timeout, idle_limit)


def make_room(table: dict[int, Connection], limits: Limits) -> bool:
    """At the connection cap, close what has been quiet for `idle_under_pressure`; True
    if there is room now.

    The table is kept in order of the last bytes received, stalest first (the server
    moves a connection to the end when it reads): idle keep-alives and requests trickling
    in (slowloris) go first; connections waiting for or sending their answers stay. Room
    is made without accepting anything new: the clients waiting meanwhile do so in the
    kernel's backlog, at no cost to the loop.
    """
    quiet_since = time.monotonic() - limits.idle_under_pressure
    for connection in list(itertools.islice(table.values(), EVICT_PER_TURN)):
        if connection.heard_since(quiet_since):
            break  # the rest have been heard from more recently
        if connection.evictable:
            connection.close()
    return len(table) < limits.max_connections


class HandshakeSlots:
    """At most `max_handshakes` TLS handshakes under way: each holds tens of KiB of state.

    When all slots are taken, handshakes quiet for `idle_under_pressure` make way (a real
    one takes milliseconds), and the newest waiting connection goes first: clients that
    stall keep piling up at the back, where the request timeout ends them. A connection
    that closes leaves its slot or its place in the queue at once (`done`).
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # Both by descriptor, oldest first (dicts keep insertion order).
        self._running: dict[int, TlsConnection] = {}
        self._waiting: dict[int, TlsConnection] = {}

    def __len__(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        """Connections waiting for a slot."""
        return len(self._waiting)

    @property
    def waiting(self) -> bool:
        """Connections wait for a slot."""
        return bool(self._waiting)

    def ask(self, connection: TlsConnection) -> None:
        """Queue a connection whose first TLS record has arrived; start what may start."""
        self._waiting[connection.fd] = connection
        self.run()

    def run(self) -> None:
        """Free the slots of stalled handshakes, and start waiting ones, newest first."""
        limits = self._limits
        if len(self._running) >= limits.max_handshakes:
            quiet_since = time.monotonic() - limits.idle_under_pressure
            for running in list(itertools.islice(self._running.values(), EVICT_PER_TURN)):
                if running.heard_since(quiet_since):
                    break
                running.close()
        while self._waiting and len(self._running) < limits.max_handshakes:
            _, connection = self._waiting.popitem()  # the newest
            self._running[connection.fd] = connection
            connection.start_tls()

    def done(self, fileno: int) -> None:
        """The handshake on this descriptor finished, or its connection closed."""
        self._running.pop(fileno, None)
        self._waiting.pop(fileno, None)
