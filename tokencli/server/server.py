"""`tokencli serve`: the event loop that moves bytes between clients and the application.

One thread watches every connection (epoll, or `selectors`) and never blocks on one client:
reads, writes and TLS handshakes happen only when a socket is ready, and each
connection's bounds and deadlines are in connection.py. This module owns the listener,
the table of connections and the loop:

- accept, up to `max_connections` open; past it the listener pauses and new connections
  wait in the backlog, and idle keep-alive connections are closed sooner;
- hand framed requests to a dispatcher (dispatch.py), which answers a turn's requests in
  one store transaction, on the loop (SQLite) or on a store thread (PostgreSQL); deliver
  the answers, in order, after the commit, with their access-log lines written first;
- once a second, close what overstayed (handshakes, requests, unread output, idle);
- one request's fault is that request's alone: a bug while handling a connection closes
  that connection, logged without secrets; if the loop itself fails, `serve_forever`
  raises and `tokencli serve` exits non-zero, so a supervisor restarts it.

Routing and handlers are in http/ (api.py, routes.py); who answers in dispatch.py; limits
in config.py; deadlines, room at the cap and the TLS handshake slots in crowding.py;
framing answers and the access log in delivery.py.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable

from tokencli.http.answers import ApiConfig
from tokencli.http.metrics import Counters
from tokencli.server.accesslog import AccessLog
from tokencli.server.config import ServerConfig
from tokencli.server.connection import Connection, TlsConnection
from tokencli.server.crowding import Deadlines, HandshakeSlots, make_room
from tokencli.server.delivery import Delivery
from tokencli.server.dispatch import Dispatcher, Job, dispatcher_for
from tokencli.server.poller import READ, WRITE, Poller
from tokencli.store.base import Backend

_ACCEPTS_PER_TURN = 256
_SWEEP_TURN = 0.1  # seconds between turns while a pass is under way and nothing else is


class TokenHTTPServer:
    """The token API on one listening socket (the `Hub` of its connections)."""

    def __init__(
        self,
        backend: Backend,
        config: ServerConfig,
        api_config: ApiConfig,
        *,
        clock: Callable[[], float] = time.time,
        counters: Counters | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.limits = config.limits
        self.api_config = api_config
        self.counters = counters
        access_log = (
            AccessLog(config.access_log, config.access_log_format)
            if config.access_log is not None
            else None
        )
        self.delivery = Delivery(access_log, counters, config.trusted_proxies)
        self._clock = clock
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((config.host, config.port))
            self._listener.listen(self.limits.listen_backlog)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self.selector = Poller()
        self.selector.register(self._listener, READ, self._listener)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.selector.register(self._wake_reader, READ, self._wake_reader)
        self._connections: dict[int, Connection] = {}
        self._ready: list[Job] = []
        self._accepting = True
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._dispatcher: Dispatcher | None = None
        self._deadlines = Deadlines(self.limits)
        self._handshakes = HandshakeSlots(self.limits)

    @property
    def url(self) -> str:
        """http(s)://HOST:PORT of the bound socket (the real port when asked for port 0)."""
        host, port = self.server_address
        shown = f"[{host}]" if ":" in host else host
        return f"{self.config.scheme}://{shown}:{port}"

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def handshakes_under_way(self) -> int:
        """TLS handshakes begun and not finished (each holds TLS state)."""
        return len(self._handshakes)

    def connections(self) -> list[Connection]:
        """The open connections (a copy)."""
        return list(self._connections.values())

    def report(self, message: str) -> None:
        """One line on stderr (errors of the server, never a request's content)."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"tokencli serve: {message}\n")
            sys.stderr.flush()

    # -- life cycle -----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the event loop until `stop` is called; raises if the loop itself fails."""
        self._dispatcher = dispatcher_for(
            self.backend, self.api_config, self._clock, self.limits, self._wake
        )
        self.backend.start_upkeep(self.report)
        try:
            self._loop(poll_interval)
        finally:
            self._dispatcher.stop()
            self.backend.stop_upkeep()
            for connection in self.connections():
                connection.close()
            self.delivery.flush()
            self.selector.close()
            self._listener.close()
            self._wake_reader.close()
            self._wake_writer.close()
            self._stopped.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, finish the requests in flight, then close every connection."""
        self._stopping.set()
        self._wake()
        self._stopped.wait((timeout or self.limits.request_timeout) + 5)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self, poll_interval: float) -> None:
        stop_deadline: float | None = None
        while True:
            self._poll(self._poll_timeout(poll_interval))
            if not self._accepting and not self._stopping.is_set() and self._make_room():
                self._resume_accepting()
            if self._handshakes.waiting:
                self._handshakes.run()
            self._dispatch()
            now = time.monotonic()
            self._deadlines.step(self._connections, now)
            if self._stopping.is_set():
                if stop_deadline is None:
                    stop_deadline = now + self.limits.request_timeout
                    self._stop_accepting()
                if self._stopped_enough(now, stop_deadline):
                    return

    def _poll_timeout(self, poll_interval: float) -> float:
        """How long the next poll may wait: not at all when framed requests wait, a
        moment while a sweep or a retry of the dispatcher is due."""
        if self._ready:
            return 0.0
        timeout = _SWEEP_TURN if self._deadlines.under_way else poll_interval
        assert self._dispatcher is not None
        wanted = self._dispatcher.next_turn(time.monotonic())
        return timeout if wanted is None else min(timeout, wanted)

    def _poll(self, timeout: float) -> None:
        for ready, mask in self.selector.poll(timeout):
            if ready is self._listener:
                self._accept()
            elif ready is self._wake_reader:
                with contextlib.suppress(OSError):
                    self._wake_reader.recv(4096)
            else:
                self._on_event(ready, mask)

    def _dispatch(self) -> None:
        """Hand over the framed requests; deliver what has been answered."""
        dispatcher = self._dispatcher
        assert dispatcher is not None
        if self._ready:
            jobs, self._ready = self._ready, []
            dispatcher.submit(jobs)
        dispatcher.step(time.monotonic())
        finished = dispatcher.take_finished()
        stopping = self._stopping.is_set()
        for job in finished:
            self.delivery.deliver(job, stopping=stopping)
        # The log lines of these answers are written before the answers leave, so a
        # client that has its answer finds its line in the log.
        self.delivery.flush()
        for job in finished:
            if job.connection.open:
                job.connection.flush()  # which also takes the connection's next requests

    def _stopped_enough(self, now: float, deadline: float) -> bool:
        """While stopping: close what is idle; True once nothing is left (or too late).

        A connection whose answers are being made or sent stays until they are out:
        a committed answer is delivered (within the deadline), never dropped.
        """
        for connection in self.connections():
            if connection.is_idle:
                connection.close()
        return not self._connections or now > deadline

    def _on_event(self, connection: Connection, mask: int) -> None:
        """Handle one connection's readiness; a failure closes that connection alone."""
        try:
            if mask & WRITE:
                connection.flush()
            if mask & READ and connection.open:
                connection.read()
        except Exception as error:  # a bug must cost one connection, never the loop
            self.report(f"internal error on a connection: {type(error).__name__}")
            connection.close()

    def _accept(self) -> None:
        tls = self.config.tls
        for _ in range(_ACCEPTS_PER_TURN):
            if not self._has_room() and not self._make_room():
                self._pause_accepting()  # the rest wait in the listen backlog
                return
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of file descriptors: stop accepting until a connection closes,
                # rather than spin on a listener that stays readable.
                self._pause_accepting()
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            peer, now = str(address[0]), time.monotonic()
            connection = (
                Connection(self, sock, peer, now)
                if tls is None
                else TlsConnection(self, sock, peer, now, tls)
            )
            self._connections[connection.fd] = connection
            connection.set_events(READ)
            if self.counters is not None:
                self.counters.open_connections = len(self._connections)

    def _has_room(self) -> bool:
        """Below the cap of open connections."""
        return len(self._connections) < self.limits.max_connections

    def _make_room(self) -> bool:
        """At the cap, close connections quiet for a second (crowding.make_room)."""
        return make_room(self._connections, self.limits)

    def touched(self, connection: Connection) -> None:
        """Bytes arrived on a connection: move it to the recent end of the table."""
        connections = self._connections
        if connections.pop(connection.fd, None) is not None:
            connections[connection.fd] = connection

    def may_handshake(self, connection: TlsConnection) -> None:
        """Start a TLS handshake when a slot is free (crowding.HandshakeSlots)."""
        self._handshakes.ask(connection)

    def handshake_done(self, connection: TlsConnection) -> None:
        """A TLS handshake finished: its slot goes to a waiting connection, if any."""
        self._handshakes.done(connection.fd)

    def _pause_accepting(self) -> None:
        if self._accepting:
            self.selector.unregister(self._listener)
            self._accepting = False

    def _stop_accepting(self) -> None:
        self._pause_accepting()
        self._listener.close()

    # -- what connections call ---------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue whole requests of a connection for the next dispatch."""
        self._ready.append(job)

    def closed(self, fileno: int) -> None:
        """Forget a closed connection; accept again if the cap had paused accepting."""
        self._connections.pop(fileno, None)
        self._handshakes.done(fileno)
        if self.counters is not None:
            self.counters.open_connections = len(self._connections)
        if not self._accepting and not self._stopping.is_set() and self._has_room():
            self._resume_accepting()

    def _resume_accepting(self) -> None:
        if not self._accepting:
            self.selector.register(self._listener, READ, self._listener)
            self._accepting = True

    def log_refusal(self, connection: Connection, status: int) -> None:
        """Count and log a request refused before framing; its line goes out at once."""
        self.delivery.refused(connection, status)
