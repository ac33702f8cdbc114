"""`tokencli serve`: the event loop that moves bytes between clients and the application.

One thread watches every connection with `selectors`; it never blocks on one client:

- Reads are non-blocking and framed by `http11.RequestParser`; a request is handed on
  only once it has fully arrived, and it must arrive whole within the request timeout
  from its first byte, however slowly it trickles (slowloris costs a buffer for 10 s).
- Writes go to a per-connection output buffer, sent when the socket is writable. A
  connection whose unsent output passes a bound is not read (back-pressure), and one
  that does not drain within the timeout is dropped: a client that never reads holds
  nobody else up.
- A connection answers at most a bounded number of pipelined requests per batch and is
  not read further while more than one whole request is buffered: memory per connection
  is bounded, and at most `max_connections` are open (the rest wait in the backlog).
- TLS handshakes advance only when the socket is ready, like reads and writes.
- Framed requests go to a dispatcher (dispatch.py), which answers them in one store
  transaction, on the loop or on a pool; answers leave only after the commit.
- One request's fault is that request's alone: a bug while handling a connection closes
  that connection, logged without secrets; if the loop itself fails, `serve_forever`
  raises and `tokencli serve` exits non-zero, so a supervisor restarts it.

Routing and handlers are in api.py; limits in config.py; the log in accesslog.py.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

from tokencli import http11
from tokencli.accesslog import AccessLog, Entry, RequestIds
from tokencli.api import Answer, ApiConfig, error_answer
from tokencli.config import ServerConfig
from tokencli.dispatch import Dispatcher, InlineDispatcher, Job, PoolDispatcher
from tokencli.http11 import HttpError, Request, RequestParser
from tokencli.metrics import Counters
from tokencli.store import Backend

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_ACCEPTS_PER_TURN = 256
_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})
_WANT = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Connection:
    """One client connection: its socket, parser, output buffer and deadlines."""

    __slots__ = (
        "sock",
        "peer",
        "parser",
        "out",
        "out_position",
        "out_since",
        "accepted",
        "request_started",
        "request_perf",
        "last_active",
        "busy",
        "close_after",
        "draining_until",
        "drained",
        "handshaking",
        "continued",
        "events",
    )

    def __init__(self, sock: socket.socket, peer: str, now: float, handshaking: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.parser = RequestParser()
        self.out = bytearray()
        self.out_position = 0
        self.out_since = 0.0  # when output became pending; 0 when none is
        self.accepted = now
        self.request_started = 0.0  # first byte of the request being received; 0 if none
        self.request_perf = 0.0
        self.last_active = now
        self.busy = False  # requests handed to the dispatcher, not yet answered
        self.close_after = False  # close once the output is sent
        self.draining_until = 0.0  # after an error answer: reading and dropping until then
        self.drained = 0
        self.handshaking = handshaking
        self.continued = False
        self.events = 0

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet sent."""
        return len(self.out) - self.out_position


class TokenHTTPServer:
    """The token API on one listening socket."""

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
        self.access_log = (
            AccessLog(config.access_log, config.access_log_format)
            if config.access_log is not None
            else None
        )
        self._request_ids = RequestIds()
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
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, _READ)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, _READ)
        self._connections: dict[int, Connection] = {}
        self._ready: list[Job] = []
        self._accepting = True
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._dispatcher: Dispatcher | None = None

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

    def report(self, message: str) -> None:
        """One line on stderr (errors of the server, never a request's content)."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"tokencli serve: {message}\n")
            sys.stderr.flush()

    # -- life cycle -----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the event loop until `stop` is called; raises if the loop itself fails."""
        limits = self.limits
        if self.config.workers:
            self._dispatcher = PoolDispatcher(
                self.backend,
                self.api_config,
                self._clock,
                limits.max_batch,
                self.config.workers,
                self._wake,
            )
        else:
            self._dispatcher = InlineDispatcher(
                self.backend, self.api_config, self._clock, limits.max_batch
            )
        self.backend.start_upkeep(self.report)
        try:
            self._loop(poll_interval)
        finally:
            self._dispatcher.stop()
            self.backend.stop_upkeep()
            for connection in list(self._connections.values()):
                self._close(connection)
            if self.access_log is not None:
                self.access_log.flush()
            self._selector.close()
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
        assert self._dispatcher is not None
        stop_deadline: float | None = None
        next_sweep = 0.0
        while True:
            # Requests framed but not yet answered (pipelined ones, after a delivery) must
            # not wait for the poll interval.
            timeout = 0 if self._ready else poll_interval
            for key, mask in self._selector.select(timeout=timeout):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wake_reader:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(4096)
                else:
                    self._on_event(key.data, mask)
            if self._ready:
                jobs, self._ready = self._ready, []
                self._dispatcher.submit(jobs)
            finished = self._dispatcher.take_finished()
            for job in finished:
                self._deliver(job)
            # The log lines of these answers are written before the answers leave, so a
            # client that has its answer finds its line in the log.
            if self.access_log is not None:
                self.access_log.flush()
            for job in finished:
                self._send_answers(job.connection)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0  # a sweep passes over every connection: once a second
                self._sweep(now)
            if self._stopping.is_set():
                if stop_deadline is None:
                    stop_deadline = now + self.limits.request_timeout
                    self._stop_accepting()
                self._close_idle()
                if not self._connections or now > stop_deadline:
                    return

    def _on_event(self, connection: Connection, mask: int) -> None:
        """Handle one connection's readiness; a failure closes that connection alone."""
        try:
            if connection.handshaking:
                self._handshake(connection)
                return
            if mask & _WRITE:
                self._flush(connection)
            if mask & _READ and connection.sock.fileno() >= 0:
                self._read(connection)
        except Exception as error:  # a bug must cost one connection, never the loop
            self.report(f"internal error on a connection: {type(error).__name__}")
            self._close(connection)

    def _accept(self) -> None:
        limits = self.limits
        for _ in range(_ACCEPTS_PER_TURN):
            if len(self._connections) >= limits.max_connections:
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
            now = time.monotonic()
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.config.tls is not None:
                    sock = self.config.tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
            except OSError:
                sock.close()
                continue
            connection = Connection(sock, str(address[0]), now, self.config.tls is not None)
            self._connections[sock.fileno()] = connection
            connection.events = _READ
            self._selector.register(sock, _READ, connection)
            if self.counters is not None:
                self.counters.open_connections = len(self._connections)

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False

    def _stop_accepting(self) -> None:
        self._pause_accepting()
        self._listener.close()

    def _handshake(self, connection: Connection) -> None:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(connection, _READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(connection, _WRITE)
            return
        except (ssl.SSLError, OSError):
            self._close(connection)
            return
        connection.handshaking = False
        connection.last_active = time.monotonic()
        self._set_events(connection, _READ)
        if sock.pending():
            self._read(connection)

    # -- reading ----------------------------------------------------------------------------

    def _receive(self, connection: Connection) -> bytes | None:
        """What the socket has now: bytes, b"" at end of stream, None if nothing yet."""
        sock = connection.sock
        try:
            data = sock.recv(self.limits.recv_bytes)
        except _WANT:
            return None
        except OSError:
            return b""
        if data and isinstance(sock, ssl.SSLSocket):
            # Decrypted bytes already buffered by TLS never wake the selector: take them.
            with contextlib.suppress(*_WANT):
                while sock.pending() and len(data) < self.limits.recv_bytes * 4:
                    data += sock.recv(sock.pending())
        return data

    def _read(self, connection: Connection) -> None:
        data = self._receive(connection)
        if data is None:
            return
        if not data:
            self._close(connection)
            return
        if connection.draining_until:
            connection.drained += len(data)
            if connection.drained > self.limits.max_drain_bytes:
                self._close(connection)
            return
        now = time.monotonic()
        connection.last_active = now
        if not connection.request_started and not connection.parser.buffer:
            connection.request_started = now
            connection.request_perf = time.perf_counter()
        connection.parser.feed(data)
        if not connection.busy:
            self._advance(connection)
        self._update_events(connection)

    def _advance(self, connection: Connection) -> None:
        """Hand the connection's whole buffered requests to the dispatcher, if any."""
        requests: list[Request] = []
        parser = connection.parser
        try:
            while len(requests) < self.limits.max_pipelined:
                request = parser.next_request()
                if request is None:
                    break
                requests.append(request)
        except HttpError as error:
            if not requests:
                self._answer_and_close(connection, error)
                return
            # Answer the whole requests first; the broken one is met again next time.
        if requests:
            connection.busy = True
            connection.continued = False
            if not connection.request_started:
                connection.request_started = time.monotonic()
                connection.request_perf = time.perf_counter()
            self._ready.append(Job(connection, requests))
            return
        waiting = parser.waiting_for_body
        if waiting is not None and waiting.expects_continue and not connection.continued:
            connection.continued = True
            self._queue(connection, http11.CONTINUE)

    def _answer_and_close(self, connection: Connection, error: HttpError) -> None:
        """A request that broke framing or a limit: answer it, then hang up gracefully."""
        answer = error_answer(error.status, error.detail, error.headers)
        data = http11.response(
            answer.status, answer.body, answer.content_type, close=True, headers=answer.headers
        )
        self._log(connection, None, None, int(error.status), None, None)
        if self.access_log is not None:
            self.access_log.flush()  # rare, and its line should be out before the answer
        connection.parser = RequestParser()  # the rest of the bytes are not requests
        connection.close_after = True
        self._queue(connection, data)

    # -- answering --------------------------------------------------------------------------

    def _deliver(self, job: Job) -> None:
        """Queue a job's answers, in order, on its connection."""
        connection: Connection = job.connection
        connection.busy = False
        if connection.sock.fileno() < 0:
            return  # closed while its requests were being answered
        stopping = self._stopping.is_set()
        for request, answer in zip(job.requests, job.answers, strict=True):
            request_id = self._request_ids.take(request.headers.get("x-request-id"))
            close = not request.keep_alive or stopping
            headers = (
                {**answer.headers, "X-Request-Id": request_id}
                if answer.headers
                else {"X-Request-Id": request_id}
            )
            data = http11.response(
                answer.status, answer.body, answer.content_type, close=close, headers=headers
            )
            self._log(
                connection, request.method, request.target, int(answer.status), request_id, answer
            )
            connection.close_after = close
            self._queue(connection, data, send=False)  # sent by _send_answers
            if close:
                break
        connection.request_started = 0.0
        connection.last_active = time.monotonic()

    def _send_answers(self, connection: Connection) -> None:
        """Send a delivered job's answers, then take the connection's next requests."""
        if connection.sock.fileno() < 0:
            return
        self._flush(connection)
        if connection.sock.fileno() < 0:
            return
        self._take_next(connection)
        self._update_events(connection)

    def _take_next(self, connection: Connection) -> None:
        """Frame the connection's next buffered requests, unless its answers pile up."""
        if connection.busy or connection.close_after or connection.draining_until:
            return
        if connection.pending_output > self.limits.output_high_water:
            return  # resumed by _flush once the client reads
        if connection.parser.buffer:
            if not connection.request_started:
                connection.request_started = time.monotonic()
                connection.request_perf = time.perf_counter()
            self._advance(connection)

    def _queue(self, connection: Connection, data: bytes, *, send: bool = True) -> None:
        """Add output and (unless told not to yet) try to send it at once."""
        if not connection.pending_output:
            connection.out_since = time.monotonic()
        connection.out += data
        if send:
            self._flush(connection)

    def _flush(self, connection: Connection) -> None:
        """Send what the socket takes now; never wait for it."""
        sock = connection.sock
        while connection.pending_output:
            try:
                with memoryview(connection.out) as view:
                    chunk = view[connection.out_position :]
                    try:
                        sent = sock.send(chunk)
                    finally:
                        chunk.release()
            except _WANT:
                break
            except OSError:
                self._close(connection)
                return
            if sent <= 0:
                break
            connection.out_position += sent
        if not connection.pending_output:
            connection.out.clear()
            connection.out_position = 0
            connection.out_since = 0.0
            if connection.close_after and not connection.busy:
                self._hang_up(connection)
                return
        elif connection.out_position > 65536 and connection.out_position * 2 > len(connection.out):
            del connection.out[: connection.out_position]  # rarely: keep the copy cost linear
            connection.out_position = 0
        if connection.parser.buffer and not connection.busy:
            self._take_next(connection)  # requests held back while answers piled up
        self._update_events(connection)

    def _hang_up(self, connection: Connection) -> None:
        """Close after the last answer, reading and dropping what still comes for a moment.

        Closing with unread bytes makes the kernel reset the connection, and the client
        might then never read the answer (a "lingering close").
        """
        if connection.draining_until or connection.sock.fileno() < 0:
            return
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close(connection)
            return
        connection.draining_until = time.monotonic() + self.limits.drain_seconds
        self._set_events(connection, _READ)

    # -- selector interest ------------------------------------------------------------------

    def _update_events(self, connection: Connection) -> None:
        if connection.sock.fileno() < 0 or connection.handshaking:
            return
        events = 0
        if connection.pending_output:
            events |= _WRITE
        if connection.draining_until or self._wants_input(connection):
            events |= _READ
        self._set_events(connection, events)

    def _wants_input(self, connection: Connection) -> bool:
        """Read on unless output is piling up or a whole request already waits."""
        if connection.close_after or connection.pending_output > self.limits.output_high_water:
            return False
        return not connection.busy or len(connection.parser.buffer) < http11.MAX_REQUEST_BYTES

    def _set_events(self, connection: Connection, events: int) -> None:
        if events == connection.events:
            return
        try:
            if connection.events and events:
                self._selector.modify(connection.sock, events, connection)
            elif events:
                self._selector.register(connection.sock, events, connection)
            else:
                self._selector.unregister(connection.sock)
        except (KeyError, ValueError, OSError):
            self._close(connection)
            return
        connection.events = events

    # -- time -----------------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Close what overstayed: handshakes, requests, unread output, idle keep-alives."""
        limits = self.limits
        crowded = len(self._connections) >= limits.max_connections
        idle_limit = limits.idle_under_pressure if crowded else limits.idle_timeout
        for connection in list(self._connections.values()):
            if connection.draining_until:
                if now > connection.draining_until:
                    self._close(connection)
            elif connection.handshaking:
                if now - connection.accepted > limits.request_timeout:
                    self._close(connection)
            elif connection.pending_output and now - connection.out_since > limits.request_timeout:
                self._close(connection)  # a client that does not read its answers
            elif connection.busy:
                continue
            elif connection.request_started:
                if now - connection.request_started > limits.request_timeout:
                    self._time_out(connection)
            elif not connection.pending_output and now - connection.last_active > idle_limit:
                self._close(connection)

    def _time_out(self, connection: Connection) -> None:
        """A request that did not arrive whole in time: 408, then close."""
        self._answer_and_close(
            connection,
            HttpError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request did not arrive within {self.limits.request_timeout:g}s",
            ),
        )
        if connection.sock.fileno() >= 0 and connection.pending_output:
            self._close(connection)  # a client this slow gets no second chance to read

    def _close_idle(self) -> None:
        for connection in list(self._connections.values()):
            if (
                not connection.busy
                and not connection.pending_output
                and not connection.parser.buffer
                and not connection.draining_until
            ):
                self._close(connection)

    def _close(self, connection: Connection) -> None:
        sock = connection.sock
        fileno = sock.fileno()
        if fileno < 0:
            return
        if connection.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            connection.events = 0
        self._connections.pop(fileno, None)
        with contextlib.suppress(OSError):
            sock.close()
        if self.counters is not None:
            self.counters.open_connections = len(self._connections)
        if (
            not self._accepting
            and not self._stopping.is_set()
            and len(self._connections) < self.limits.max_connections
        ):
            self._selector.register(self._listener, _READ)
            self._accepting = True

    # -- log and metrics --------------------------------------------------------------------

    def _log(
        self,
        connection: Connection,
        method: str | None,
        target: str | None,
        status: int,
        request_id: str | None,
        answer: Answer | None,
    ) -> None:
        started = connection.request_perf
        seconds = time.perf_counter() - started if started else 0.0
        if self.counters is not None:
            label = method if method in _METHODS else "other"
            route = answer.route if answer is not None else "unmatched"
            self.counters.count_request(route, label, status, seconds)
        if self.access_log is not None:
            verdict = answer.verdict if answer is not None else None
            self.access_log.add(
                Entry(connection.peer, method, target, status, seconds * 1000, request_id, verdict)
            )
