"""One client connection of `serve`: its socket, framing, output buffer and deadlines.

Everything here is non-blocking and bounded: a read takes what the socket has, a write
sends what the socket takes and keeps the rest, a TLS handshake advances one step when
the socket is ready. The event loop (server.py) owns the selector and the table of
connections and calls these methods when a socket is ready; a connection reports back
through its `Hub` (new work, closing, log lines).

Bounds: a request must arrive whole within the request timeout from its first byte; at
most `max_pipelined` requests are taken at once, and a busy connection is not read past
one maximal request buffered; past `output_high_water` unsent bytes it is not read at
all (back-pressure), and output that does not drain within the timeout drops it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from http import HTTPStatus
from typing import Protocol

from tokencli.http import http11
from tokencli.http.answers import error_answer
from tokencli.http.http11 import HttpError, Request, RequestParser
from tokencli.server.config import Limits
from tokencli.server.dispatch import Job
from tokencli.server.poller import READ, WRITE, Poller
from tokencli.server.tls import TlsFailure, TlsSession

# Nothing to do now on a non-blocking socket.
WANT = (BlockingIOError, InterruptedError)


class Hub(Protocol):
    """What a connection needs from the event loop that owns it."""

    limits: Limits
    selector: Poller

    def submit(self, job: Job) -> None:
        """Queue whole requests for answering."""

    def closed(self, fileno: int) -> None:
        """Forget the connection that had this descriptor: it has just closed."""

    def log_refusal(self, connection: Connection, status: int) -> None:
        """Log a request refused before it was framed (no method, no path)."""

    def may_handshake(self, connection: TlsConnection) -> None:
        """Queue a TLS handshake; the hub calls `start_tls` when a slot is free."""

    def handshake_done(self, connection: TlsConnection) -> None:
        """A TLS handshake has finished."""

    def touched(self, connection: Connection) -> None:
        """Bytes arrived: the connection is among the most recently heard from."""


class Outbox:
    """Bytes queued for a client and not yet sent, sent as the socket takes them."""

    __slots__ = ("data", "position", "since")

    def __init__(self) -> None:
        self.data = bytearray()
        self.position = 0  # how much of `data` has been sent
        self.since = 0.0  # when output became pending; 0 when none is

    @property
    def pending(self) -> int:
        """Bytes queued and not yet sent."""
        return len(self.data) - self.position

    def add(self, data: bytes) -> None:
        """Queue bytes after what is already queued."""
        if len(self.data) == self.position:
            self.since = time.monotonic()
        self.data += data

    def send(self, sock: socket.socket) -> bool:
        """Send what the socket takes now, never waiting; False if the socket failed."""
        out = self.data
        while len(out) > self.position:
            try:
                if not self.position:
                    sent = sock.send(out)  # the usual case: all of it, no view needed
                else:
                    with memoryview(out) as view, view[self.position :] as chunk:
                        sent = sock.send(chunk)
            except WANT:
                break
            except OSError:
                return False
            if sent <= 0:
                break
            self.position += sent
        if len(out) == self.position:
            out.clear()
            self.position = 0
            self.since = 0.0
        elif self.position > 65536 and self.position * 2 > len(out):
            del out[: self.position]  # rarely: keep the copy cost linear
            self.position = 0
        return True


class Connection:
    """One client connection as the event loop sees it."""

    __slots__ = (
        "hub",
        "sock",
        "peer",
        "parser",
        "outbox",
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
        "open",
        "fd",
        "_high_water",
        "_max_pipelined",
    )

    def __init__(self, hub: Hub, sock: socket.socket, peer: str, now: float) -> None:
        self.hub = hub
        self.sock = sock
        self.peer = peer
        self.parser = RequestParser()
        self.outbox = Outbox()
        self.accepted = now
        self.request_started = 0.0  # first byte of the request being received; 0 if none
        self.request_perf = 0.0
        self.last_active = now
        self.busy = False  # requests handed to the dispatcher, not yet answered
        self.close_after = False  # close once the output is sent
        self.draining_until = 0.0  # after an error answer: reading and dropping until then
        self.drained = 0
        self.handshaking = False  # a TLS connection until its handshake is done
        self.continued = False
        self.events = 0
        self.open = True  # False once closed (hot: cheaper than asking the socket)
        self.fd = sock.fileno()  # the table's key, also after the socket is closed
        self._high_water = hub.limits.output_high_water
        self._max_pipelined = hub.limits.max_pipelined

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet sent."""
        return self.outbox.pending

    @property
    def is_idle(self) -> bool:
        """Nothing received, pending, in flight or draining: safe to close."""
        return not (self.busy or self.pending_output or self.parser.buffer or self.draining_until)

    # -- reading --------------------------------------------------------------------------

    def _receive(self) -> bytes | None:
        """What the socket has now: bytes, b"" at end of stream, None if nothing yet."""
        try:
            return self.sock.recv(self.hub.limits.recv_bytes)
        except WANT:
            return None
        except OSError:
            return b""

    def read(self) -> None:
        """Take what the client sent and frame whole requests from it."""
        data = self._receive()
        if data is None:
            return
        if not data:
            self.close()
            return
        if self.draining_until:
            self.drained += len(data)
            if self.drained > self.hub.limits.max_drain_bytes:
                self.close()
            return
        self.last_active = time.monotonic()
        self.hub.touched(self)
        data = self._plaintext(data)
        if data:
            self._take_plaintext(data)
        self.update_events()

    def _plaintext(self, received: bytes) -> bytes:
        """The request bytes in what the socket read (TlsConnection decrypts)."""
        return received

    def _take_plaintext(self, data: bytes) -> None:
        if not self.request_started and not self.parser.buffer:
            self.request_started = time.monotonic()  # a request's clock starts at its first byte
            self.request_perf = time.perf_counter()
        self.parser.feed(data)
        if not self.busy:
            self.advance()

    def advance(self) -> None:
        """Hand the buffered whole requests to the dispatcher, if there are any."""
        requests: list[Request] = []
        parser = self.parser
        try:
            while len(requests) < self._max_pipelined:
                request = parser.next_request()
                if request is None:
                    break
                requests.append(request)
                if not request.keep_alive:
                    break  # nothing after a request that closes is answered, or run
        except HttpError as error:
            if not requests:
                self.refuse(error)
                return
            # Answer the whole requests first; the broken one is met again next time.
        if requests:
            self.busy = True
            self.continued = False
            if not self.request_started:
                self.request_started = time.monotonic()
                self.request_perf = time.perf_counter()
            self.hub.submit(Job(self, requests))
            return
        waiting = parser.waiting_for_body
        if waiting is not None and waiting.expects_continue and not self.continued:
            self.continued = True
            self.queue(http11.CONTINUE)

    def take_next(self) -> None:
        """Frame the next buffered requests, unless answers are piling up unread."""
        if self.busy or self.close_after or self.draining_until:
            return
        if self.pending_output > self.hub.limits.output_high_water:
            return  # resumed by flush() once the client reads
        if self.parser.buffer:
            if not self.request_started:
                self.request_started = time.monotonic()
                self.request_perf = time.perf_counter()
            self.advance()

    def answered(self, frames: list[bytes], *, close: bool) -> None:
        """The answers to the requests handed over, framed: queue them (the server sends
        them once their log lines are out), and close after them if `close`."""
        self.busy = False
        for frame in frames:
            self.queue(frame, send=False)
        self.close_after = close
        self.request_started = 0.0
        self.last_active = time.monotonic()

    def refuse(self, error: HttpError) -> None:
        """A request that broke framing or a limit: answer it, then hang up gracefully."""
        answer = error_answer(error.status, error.detail, error.headers)
        data = http11.response(
            answer.status, answer.body, answer.content_type, close=True, headers=answer.headers
        )
        self.hub.log_refusal(self, int(error.status))
        self.parser = RequestParser()  # the rest of the bytes are not requests
        self.close_after = True
        self.queue(data)

    def time_out(self) -> None:
        """A request that did not arrive whole in time: 408, then close."""
        seconds = self.hub.limits.request_timeout
        self.refuse(
            HttpError(HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive within {seconds:g}s")
        )
        if self.open and self.pending_output:
            self.close()  # a client this slow gets no second chance to read

    # -- writing --------------------------------------------------------------------------

    def queue(self, data: bytes, *, send: bool = True) -> None:
        """Add an answer's bytes; unless told not to yet, try to send them at once."""
        self._queue_raw(data, send=send)

    def _queue_raw(self, data: bytes, *, send: bool = True) -> None:
        self.outbox.add(data)
        if send:
            self.flush()

    def flush(self) -> None:
        """Send what the socket takes now; never wait for it."""
        outbox = self.outbox
        if not outbox.send(self.sock):
            self.close()
            return
        if not outbox.data and self.close_after and not self.busy:
            self.hang_up()
            return
        if self.parser.buffer and not self.busy:
            self.take_next()  # requests held back while answers piled up
        self.update_events()

    def hang_up(self) -> None:
        """Close after the last answer, reading and dropping what still comes for a moment.

        Closing with unread bytes makes the kernel reset the connection, and the client
        might then never read the answer (a "lingering close").
        """
        if self.draining_until or not self.open:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self.close()
            return
        self.draining_until = time.monotonic() + self.hub.limits.drain_seconds
        self.set_events(READ)

    # -- deadlines and crowding ---------------------------------------------------------

    def expire(self, now: float, request_timeout: float, idle_limit: float) -> None:
        """Close, or answer 408, if this connection overstayed what it is doing: a
        handshake, a request arriving, answers not read, lingering, or idling."""
        if not self.open:
            return
        if self.draining_until:
            if now > self.draining_until:
                self.close()
        elif self.handshaking:
            if now - self.accepted > request_timeout:
                self.close()
        elif self.outbox.pending and now - self.outbox.since > request_timeout:
            self.close()  # a client that does not read its answers
        elif self.busy:
            return  # its answers are being made; the store bounds that wait
        elif self.request_started:
            if now - self.request_started > request_timeout:
                self.time_out()
        elif not self.pending_output and now - self.last_active > idle_limit:
            self.close()

    def heard_since(self, moment: float) -> bool:
        """Bytes arrived (or a handshake began) after `moment`."""
        return self.last_active > moment

    @property
    def evictable(self) -> bool:
        """Nothing owed to the client: no answer being made or waiting to be sent."""
        return not self.busy and not self.pending_output

    # -- selector interest and closing -----------------------------------------------------

    def update_events(self) -> None:
        """Watch for what this connection can use now: output room, more input, or both.

        Read on unless output is piling up (back-pressure), or a whole request already
        waits while this connection is busy; always while draining after an error.
        """
        if not self.open:
            return
        pending = self.outbox.pending
        if self.draining_until:
            events = READ
        elif self.close_after or pending > self._high_water:
            events = 0
        elif not self.busy or len(self.parser.buffer) < http11.MAX_REQUEST_BYTES:
            events = READ
        else:
            events = 0
        if pending:
            events |= WRITE
        if events != self.events:
            self.set_events(events)

    def set_events(self, events: int) -> None:
        """Register, modify or drop this socket in the selector (no syscall if unchanged)."""
        if events == self.events:
            return
        selector = self.hub.selector
        try:
            if self.events and events:
                selector.modify(self.sock, events, self)
            elif events:
                selector.register(self.sock, events, self)
            else:
                selector.unregister(self.sock)
        except (KeyError, ValueError, OSError):
            self.close()
            return
        self.events = events

    def close(self) -> None:
        """Close the socket and tell the loop."""
        if not self.open:
            return
        self.open = False
        if self.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.hub.selector.unregister(self.sock)
            self.events = 0
        with contextlib.suppress(OSError):
            self.sock.close()
        self.hub.closed(self.fd)


class TlsConnection(Connection):
    """A connection speaking TLS over memory buffers (tls.py).

    No TLS session exists until the client's whole first record has arrived; then the
    hub starts the handshake when one of its slots is free (crowding.HandshakeSlots).
    """

    __slots__ = ("tls", "waiting_for_tls_slot")

    def __init__(
        self, hub: Hub, sock: socket.socket, peer: str, now: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(hub, sock, peer, now)
        self.tls = TlsSession(context)
        self.handshaking = True
        self.waiting_for_tls_slot = False

    def _plaintext(self, received: bytes) -> bytes:
        """Give TLS what the socket read; the plaintext it yields (closes if broken)."""
        tls = self.tls
        try:
            tls.receive(received)
            if not tls.started:
                if tls.hello_complete() and not self.waiting_for_tls_slot:
                    self.waiting_for_tls_slot = True
                    self.hub.may_handshake(self)  # calls start_tls() when a slot is free
                return b""
            plain = self._advance_tls()
        except TlsFailure:
            self.close()
            return b""
        return plain if self.open else b""

    def start_tls(self) -> None:
        """Begin the handshake on the first record already received."""
        self.last_active = time.monotonic()  # a slot's stall clock starts now
        try:
            self.tls.start()
            plain = self._advance_tls()
        except TlsFailure:
            self.close()
            return
        if plain:
            self._take_plaintext(plain)
        self.update_events()

    def _advance_tls(self) -> bytes:
        tls = self.tls
        plain = tls.advance()
        if self.handshaking and not tls.handshaking:
            self.handshaking = False
            self.hub.handshake_done(self)
        output = tls.take_output()
        if output:
            self._queue_raw(output)
        return plain

    def queue(self, data: bytes, *, send: bool = True) -> None:
        """Encrypt an answer's bytes, then queue them (and try to send them)."""
        try:
            self.tls.encrypt(data)
        except TlsFailure:
            self.close()
            return
        self._queue_raw(self.tls.take_output(), send=send)
