"""`tokencli serve`: the original token service's HTTP API over the same TokenService.

A thin adapter: it frames requests, calls the service, and writes JSON. Its shape was
chosen by the benchmark (docs/benchmarks.md), not by habit:

- One thread watches every connection with `selectors` and reads without blocking; a
  request goes to the worker pool only once it has fully arrived. A client that sends
  half a request and stalls costs a buffer, never a thread, and is dropped after a
  timeout. A thousand open connections cost a thousand sockets, not a thousand threads.
- A small, bounded pool of worker threads, each with its own SQLite connection, answers
  the requests. A worker takes every request waiting in the queue and runs them in one
  transaction (`Store.batch`), so under load one commit serves many checks; answers go
  out only after that commit. Thread-per-connection lost both ways on one core: the GIL
  hands 64 threads the CPU so unevenly that the tail latency ran to 50-150 ms even with
  no database at all.
- Each answer leaves in one `send`, with Nagle's algorithm off.
- Every answer is JSON, errors included; the access log never shows a token's secret.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import queue
import re
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TextIO
from urllib.parse import unquote

from tokencli import http11, openapi
from tokencli.durations import DurationError, parse_duration
from tokencli.errors import InvalidRequestError, StorageError, TokencliError
from tokencli.http11 import HttpError, Pending, Request
from tokencli.output import literal
from tokencli.service import DEFAULT_TTL_SECONDS, TokenService

LISTEN_BACKLOG = 1024
WORKERS = 0
# The most requests one worker answers in one transaction.
MAX_BATCH = 256
# A client has this long to finish a request it has started sending.
REQUEST_TIMEOUT_SECONDS = 10.0
# An idle keep-alive connection is closed after this long.
IDLE_TIMEOUT_SECONDS = 60.0
_RECV_BYTES = 65536
# After an error answer, how long and how much of the rest of a request is read and dropped.
DRAIN_SECONDS = 2.0
MAX_DRAIN_BYTES = 16 * 1024 * 1024
CHECKPOINT_SECONDS = 0.5

_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Route:
    """A path pattern and the handler name for each HTTP method it answers."""

    template: str
    pattern: re.Pattern[str]
    methods: dict[str, str]


ROUTES: tuple[Route, ...] = (
    Route("/app/token", re.compile(r"/app/token"), {"POST": "issue"}),
    Route(
        "/app/valid/{token}",
        re.compile(r"/app/valid/(?P<token>[^/]*)"),
        {"GET": "validate", "POST": "validate"},
    ),
    Route("/app/clear/all/tokens", re.compile(r"/app/clear/all/tokens"), {"DELETE": "purge"}),
    Route("/health", re.compile(r"/health"), {"GET": "health"}),
    Route("/openapi.json", re.compile(r"/openapi\.json"), {"GET": "openapi"}),
    Route("/docs", re.compile(r"/docs"), {"GET": "docs"}),
    Route("/redoc", re.compile(r"/redoc"), {"GET": "redoc"}),
)
_NEEDS_STORE = frozenset({"issue", "validate", "purge", "health"})
_VALID_PREFIX = "/app/valid/"
_ID_SHAPE = re.compile(r"[a-z2-7]{12}")


def redact_path(path: str) -> str:
    """The request target as the access log may show it: no secret, no query, no escapes."""
    bare = path.split("?", 1)[0]
    if bare.startswith(_VALID_PREFIX):
        token = bare[len(_VALID_PREFIX) :]
        token_id, colon, _ = unquote(token).partition(":")
        shown = f"{token_id}:***" if colon and _ID_SHAPE.fullmatch(token_id) else "***"
        bare = _VALID_PREFIX + shown
    if "?" in path:
        bare += "?***"
    return literal(bare[:200])


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Answer:
    """A response before it is framed."""

    status: HTTPStatus
    body: bytes
    content_type: str = _JSON
    headers: dict[str, str] | None = None


def _json_answer(status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(payload).encode(), _JSON, headers)


def _error_answer(status: HTTPStatus, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return _json_answer(status, {"status_code": int(status), "detail": detail}, headers)


# The busiest answers, built once.
_VALID = _json_answer(HTTPStatus.OK, {"status_code": 200, "status": True})
_NOT_VALID = _json_answer(HTTPStatus.OK, {"status_code": 200, "status": False})


class _Connection:
    """One client connection as the event loop sees it."""

    __slots__ = (
        "sock",
        "peer",
        "buffer",
        "last_active",
        "started",
        "continued",
        "close_after",
        "draining_until",
        "drained",
    )

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.last_active = time.monotonic()
        self.started = 0.0
        self.continued = False
        self.close_after = False
        self.draining_until = 0.0  # after an error answer: reading and dropping until then
        self.drained = 0


class TokenHTTPServer:
    """The token API on one listening socket: an event loop plus a bounded worker pool."""

    def __init__(
        self,
        address: tuple[str, int],
        open_service: Callable[[], TokenService],
        *,
        admin_key: str | None,
        access_log: TextIO | None,
        workers: int = WORKERS,
    ) -> None:
        self.open_service = open_service
        self.admin_key = admin_key
        self.access_log = access_log
        self._log_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(LISTEN_BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._connections: dict[int, _Connection] = {}
        self._busy = 0  # requests handed to workers and not yet answered
        self._jobs: queue.SimpleQueue[tuple[_Connection, Request] | None] = queue.SimpleQueue()
        self._finished: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._worker_count = workers
        # workers=0: the event loop answers requests itself, between two selects.
        self._inline = workers == 0
        self._ready: list[tuple[_Connection, Request]] = []
        self._inline_service: TokenService | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._accepting = True

    @property
    def url(self) -> str:
        """http://HOST:PORT of the bound socket (the real port when asked for port 0)."""
        host, port = self.server_address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    # -- life cycle ---------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the event loop and the workers until `stop` is called."""
        workers = [
            threading.Thread(target=self._work, name=f"worker-{index}", daemon=True)
            for index in range(self._worker_count)
        ]
        checkpointer = threading.Thread(target=self._checkpoint_regularly, daemon=True)
        checkpointer.start()
        for worker in workers:
            worker.start()
        try:
            self._loop(poll_interval)
        finally:
            for _ in range(self._worker_count):
                self._jobs.put(None)
            for worker in workers:
                worker.join(timeout=REQUEST_TIMEOUT_SECONDS)
            checkpointer.join(timeout=REQUEST_TIMEOUT_SECONDS)
            for connection in list(self._connections.values()):
                self._close(connection)
            if self._inline_service is not None:
                self._inline_service.store.close()
            self._selector.close()
            self._listener.close()
            self._wake_reader.close()
            self._wake_writer.close()
            self._stopped.set()

    def stop(self, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        """Stop accepting, finish the requests in flight, then close every connection."""
        self._stopping.set()
        self._wake()
        self._stopped.wait(timeout + 1)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    # -- event loop ---------------------------------------------------------------------

    def _loop(self, poll_interval: float) -> None:
        stop_deadline: float | None = None
        next_sweep = 0.0
        while True:
            for key, _ in self._selector.select(timeout=poll_interval):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wake_reader:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(4096)
                else:
                    self._on_readable(key.data)
            if self._ready:
                batch, self._ready = self._ready, []
                self._answer_inline(batch)
            self._take_back_finished()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0  # once a second: a sweep costs a pass over every connection
                self._drop_stalled(now)
            if self._stopping.is_set():
                if stop_deadline is None:
                    stop_deadline = now + REQUEST_TIMEOUT_SECONDS
                    self._stop_accepting()
                self._close_idle()
                if (self._busy == 0 and not self._connections) or now > stop_deadline:
                    return

    def _accept(self) -> None:
        while self._accepting:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of file descriptors: stop accepting until a connection closes,
                # rather than spin on a listener that stays readable.
                self._selector.unregister(self._listener)
                self._accepting = False
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, str(peer[0]))
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._listener.close()

    def _on_readable(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        if connection.draining_until:
            connection.drained += len(data)
            if connection.drained > MAX_DRAIN_BYTES:
                self._close(connection)
            return
        connection.buffer += data
        connection.last_active = time.monotonic()
        self._advance(connection)

    def _advance(self, connection: _Connection) -> None:
        """Hand the connection's next whole request to the workers, if it has one."""
        if not connection.buffer:
            return
        if not connection.started:
            connection.started = time.perf_counter()
        try:
            item = http11.take_request(connection.buffer)
        except HttpError as error:
            self._answer_and_close(connection, error)
            return
        if item is None:
            return
        if isinstance(item, Pending):
            if "100-continue" in item.request.headers.get("expect", "").lower():
                if not connection.continued:
                    connection.continued = True
                    with contextlib.suppress(OSError):
                        connection.sock.send(http11.CONTINUE)
            return
        connection.continued = False
        self._busy += 1
        if self._inline:
            self._ready.append((connection, item))
            return
        self._selector.unregister(connection.sock)
        self._jobs.put((connection, item))

    def _answer_and_close(self, connection: _Connection, error: HttpError) -> None:
        """A request that broke framing or a limit: answer it, then hang up."""
        answer = _error_answer(error.status, error.detail, error.headers)
        data = http11.response(
            answer.status, answer.body, _JSON, close=True, headers=answer.headers
        )
        self._log(connection, None, int(error.status))
        try:
            connection.sock.send(data)
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        # Closing now, with the rest of an oversized request unread, would make the kernel
        # reset the connection and the client might never read the answer; read and drop
        # what still comes for a moment instead (a "lingering close").
        connection.buffer.clear()
        connection.draining_until = time.monotonic() + DRAIN_SECONDS

    def _answer_inline(self, batch: list[tuple[_Connection, Request]]) -> None:
        if self._inline_service is None:
            try:
                self._inline_service = self._open_serving_service()
            except TokencliError as error:
                self._answer_without_store(batch, error)
                return
        self._answer_batch(self._inline_service, batch)

    def _answer_without_store(
        self, batch: list[tuple[_Connection, Request]], error: TokencliError
    ) -> None:
        """The database cannot be opened: 503 for what needs it, the rest as usual."""
        for connection, request in batch:
            self._reply(connection, request, self._answer(None, request, str(error)))

    def _open_serving_service(self) -> TokenService:
        service = self.open_service()
        # A checkpoint fsyncs, which can take many milliseconds on a busy disk; the
        # checkpointer thread does it so the event loop never waits for one.
        service.store.set_autocheckpoint(0)
        return service

    def _checkpoint_regularly(self) -> None:
        """Keep the WAL short while serving."""
        service: TokenService | None = None
        failing = False
        try:
            while not self._stopping.wait(CHECKPOINT_SECONDS):
                try:
                    if service is None:
                        service = self.open_service()
                    service.store.checkpoint()
                    failing = False
                except TokencliError as error:
                    if not failing:
                        self._report(f"checkpoint failed: {error}")
                    failing = True
        finally:
            if service is not None:
                with contextlib.suppress(TokencliError):
                    service.store.checkpoint()
                service.store.close()

    def _finish_inline(self, connection: _Connection) -> None:
        self._busy -= 1
        connection.started = 0.0
        connection.last_active = time.monotonic()
        if connection.close_after or self._stopping.is_set():
            self._close(connection)
        else:
            self._advance(connection)  # a pipelined request may already be buffered

    def _take_back_finished(self) -> None:
        while True:
            try:
                connection = self._finished.get_nowait()
            except queue.Empty:
                return
            self._busy -= 1
            connection.started = 0.0
            connection.last_active = time.monotonic()
            if connection.close_after or self._stopping.is_set():
                self._close(connection)
                continue
            self._selector.register(connection.sock, selectors.EVENT_READ, connection)
            self._advance(connection)  # a pipelined request may already be buffered

    def _drop_stalled(self, now: float) -> None:
        for connection in list(self._connections.values()):
            if connection.draining_until:
                if now > connection.draining_until:
                    self._close(connection)
                continue
            if connection.started and self._is_waiting(connection):
                limit = REQUEST_TIMEOUT_SECONDS
            elif self._is_waiting(connection):
                limit = IDLE_TIMEOUT_SECONDS
            else:
                continue
            if now - connection.last_active > limit:
                self._close(connection)

    def _is_waiting(self, connection: _Connection) -> bool:
        """True if the connection waits for its client (not for a worker)."""
        try:
            self._selector.get_key(connection.sock)
        except (KeyError, ValueError):
            return False
        return True

    def _close_idle(self) -> None:
        for connection in list(self._connections.values()):
            if self._is_waiting(connection) and not connection.buffer:
                self._close(connection)

    def _close(self, connection: _Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        self._connections.pop(connection.sock.fileno(), None)
        connection.sock.close()
        if not self._accepting and not self._stopping.is_set():
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._accepting = True

    # -- workers ------------------------------------------------------------------------

    def _work(self) -> None:
        """Answer queued requests in batches, one transaction and one commit per batch."""
        service: TokenService | None = None
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self._jobs.put(None)  # leave the stop signal for this worker's next turn
                        break
                    batch.append(job)
                if service is None:
                    try:
                        service = self._open_serving_service()
                    except TokencliError as error:
                        self._answer_without_store(batch, error)
                        continue
                self._answer_batch(service, batch)
        finally:
            if service is not None:
                service.store.close()

    def _answer_batch(
        self, service: TokenService, batch: list[tuple[_Connection, Request]]
    ) -> None:
        answers: list[Answer] = []
        try:
            with service.store.batch():
                answers = [self._answer(service, request) for _, request in batch]
        except StorageError as error:
            # Nothing in the batch was committed: no client may hear otherwise.
            self._reply_all(batch, _error_answer(HTTPStatus.SERVICE_UNAVAILABLE, str(error)))
            return
        except Exception as error:  # a bug must cost one batch, never the worker thread
            self._report(f"internal error: {type(error).__name__}")
            self._reply_all(
                batch, _error_answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            )
            return
        for (connection, request), answer in zip(batch, answers, strict=True):
            self._reply(connection, request, answer)

    def _reply_all(self, batch: list[tuple[_Connection, Request]], answer: Answer) -> None:
        for connection, request in batch:
            self._reply(connection, request, answer)

    def _reply(self, connection: _Connection, request: Request, answer: Answer) -> None:
        close = not request.keep_alive or self._stopping.is_set()
        data = http11.response(
            answer.status, answer.body, answer.content_type, close=close, headers=answer.headers
        )
        self._log(connection, request, int(answer.status))
        if not _send_all(connection.sock, data):
            close = True
        connection.close_after = close
        if self._inline:
            self._finish_inline(connection)
            return
        self._finished.put(connection)
        self._wake()

    # -- routing and endpoints ----------------------------------------------------------

    def _answer(
        self, service: TokenService | None, request: Request, unavailable: str = ""
    ) -> Answer:
        """Route one request; with no service, what needs the store gets 503."""
        try:
            path = request.path
            for route in ROUTES:
                match = route.pattern.fullmatch(path)
                if match is None:
                    continue
                handler_name = route.methods.get(request.method)
                if handler_name is None:
                    allowed = ", ".join(route.methods)
                    raise HttpError(
                        HTTPStatus.METHOD_NOT_ALLOWED,
                        f"{literal(request.method[:16])} is not allowed here; use {allowed}",
                        {"Allow": allowed},
                    )
                if service is None and handler_name in _NEEDS_STORE:
                    raise StorageError(unavailable)
                handler: Callable[..., Answer] = getattr(self, f"_handle_{handler_name}")
                return handler(service, request, **match.groupdict())
            raise HttpError(HTTPStatus.NOT_FOUND, "no such endpoint; see /openapi.json")
        except HttpError as error:
            return _error_answer(error.status, error.detail, error.headers)
        except InvalidRequestError as error:
            return _error_answer(HTTPStatus.BAD_REQUEST, str(error))
        except StorageError as error:
            return _error_answer(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
        except TokencliError as error:
            return _error_answer(HTTPStatus.BAD_REQUEST, str(error))

    def _require_admin(self, request: Request) -> None:
        key = self.admin_key
        if key is None:
            return
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("latin-1"), key.encode("utf-8")
        ):
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong admin key; send Authorization: Bearer KEY",
                {"WWW-Authenticate": 'Bearer realm="tokencli"'},
            )

    def _handle_issue(self, service: TokenService, request: Request) -> Answer:
        self._require_admin(request)
        issued = service.issue(**_issue_options(request.body))
        return _json_answer(HTTPStatus.OK, {"status_code": 200, "token": issued.token})

    def _handle_validate(self, service: TokenService, request: Request, token: str) -> Answer:
        result = service.check(unquote(token, errors="replace"))
        return _VALID if result.valid else _NOT_VALID

    def _handle_purge(self, service: TokenService, request: Request) -> Answer:
        self._require_admin(request)
        purged = service.purge().purged
        return _json_answer(HTTPStatus.OK, {"status_code": 200, "status": True, "purged": purged})

    def _handle_health(self, service: TokenService, request: Request) -> Answer:
        service.ping()
        return _json_answer(HTTPStatus.OK, {"status_code": 200, "status": "ok"})

    def _handle_openapi(self, service: TokenService, request: Request) -> Answer:
        return _json_answer(HTTPStatus.OK, openapi.document())

    def _handle_docs(self, service: TokenService, request: Request) -> Answer:
        return Answer(HTTPStatus.OK, openapi.SWAGGER_PAGE.encode(), _HTML)

    def _handle_redoc(self, service: TokenService, request: Request) -> Answer:
        return Answer(HTTPStatus.OK, openapi.REDOC_PAGE.encode(), _HTML)

    # -- access log ---------------------------------------------------------------------

    def _report(self, message: str) -> None:
        with self._log_lock:
            sys.stderr.write(f"tokencli serve: {message}\n")
            sys.stderr.flush()

    def _log(self, connection: _Connection, request: Request | None, status: int) -> None:
        if self.access_log is None:
            return
        elapsed_ms = (time.perf_counter() - connection.started) * 1000 if connection.started else 0
        if request is None:
            line = f'{connection.peer} "-" {status} {elapsed_ms:.1f}ms'
        else:
            method = literal(request.method[:16])
            line = (
                f'{connection.peer} "{method} {redact_path(request.target)}" '
                f"{status} {elapsed_ms:.1f}ms"
            )
        with self._log_lock:
            self.access_log.write(line + "\n")
            self.access_log.flush()


def _send_all(sock: socket.socket, data: bytes) -> bool:
    """Send everything on a non-blocking socket, waiting for room up to the timeout."""
    view = memoryview(data)
    deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([], [sock], [], remaining)
            continue
        except OSError:
            return False
        view = view[sent:]
    return True


def _issue_options(body: bytes) -> dict[str, Any]:
    """The options of POST /app/token from its optional JSON body (absent: defaults)."""
    if not body:
        return {}
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    unknown = set(payload) - {"ttl", "label", "uses"}
    if unknown:
        names = ", ".join(sorted(literal(str(name))[:40] for name in unknown))
        raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {names}")
    options: dict[str, Any] = {"ttl_seconds": _ttl_seconds(payload.get("ttl"))}
    label = payload.get("label")
    if label is not None and not isinstance(label, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, "label must be a string")
    options["label"] = label
    uses = payload.get("uses")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)):
        raise HttpError(HTTPStatus.BAD_REQUEST, "uses must be a whole number")
    options["uses"] = uses
    return options


def _ttl_seconds(ttl: object) -> int:
    if ttl is None:
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl, bool):
        raise HttpError(HTTPStatus.BAD_REQUEST, "ttl must be a duration such as 15m")
    if isinstance(ttl, int):
        return ttl
    if isinstance(ttl, str):
        try:
            return parse_duration(ttl)
        except DurationError as error:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(error)) from None
    raise HttpError(HTTPStatus.BAD_REQUEST, "ttl must be a duration such as 15m")


def make_server(
    open_service: Callable[[], TokenService],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    admin_key: str | None = None,
    access_log: TextIO | None = sys.stderr,
    workers: int = WORKERS,
) -> TokenHTTPServer:
    """Bind a server (port 0: any free port); call `serve_forever`, then `stop`."""
    return TokenHTTPServer(
        (host, port), open_service, admin_key=admin_key, access_log=access_log, workers=workers
    )
