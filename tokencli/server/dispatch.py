"""Who answers the requests the event loop has framed, and when.

A request that needs nothing of the store (an error, /metrics, /openapi.json, /docs) is
answered at once, on the loop. The rest are answered in batches, one store transaction
each (group commit): one commit for many checks, and the answers leave only after it, so
no client hears of a change that was not stored. Jobs that write (validations take a use
and write an audit event; issue, revoke, purge) go in a write batch; the others (/health,
listings, show) in a read batch, which on SQLite never waits for the write lock.

Where the batches run depends on the store (`Backend.inline`):

- SQLite, a local file: on the loop itself, between two polls (measured fastest,
  docs/benchmarks.md). The loop waits for the write lock at most `lock_wait`: when
  another process holds it (a long `tokencli import`), the write batch is tried again on
  later turns, backing off, while reads and store-free requests are answered as usual; a
  write that could not start within `store_wait` is answered 503.
- PostgreSQL, across a network: on one store thread, so a database that stops answering
  holds up only what needs it; the store bounds each of its own waits.

A store that fails is closed and the next batch opens a fresh one; if the database
cannot be reached, opening is tried again at most every half second, and meanwhile what
needs it gets 503. A database that went away and came back is used again without a
restart.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from tokencli.domain.errors import StorageError
from tokencli.http import api
from tokencli.http.answers import BUSY, UNAVAILABLE, Answer, ApiConfig, Need, error_answer
from tokencli.http.api import Routed, find_route
from tokencli.http.http11 import HttpError, Request
from tokencli.server.config import Limits
from tokencli.service.service import TokenService
from tokencli.store.base import Backend, Store, StoreBusy

REOPEN_SECONDS = 0.5
# Retrying a write batch that found the write lock taken: first after this long, then
# twice as long each time, at most RETRY_MAX_SECONDS apart.
RETRY_FIRST_SECONDS = 0.005
RETRY_MAX_SECONDS = 0.05


class Job:
    """Requests of one connection, answered together, in order."""

    __slots__ = ("connection", "requests", "routed", "need", "answers", "since")

    def __init__(self, connection: Any, requests: list[Request]) -> None:
        self.connection = connection
        self.requests = requests
        self.routed: list[Routed] = []
        self.need = Need.NOTHING
        self.answers: list[Answer] = []
        self.since = 0.0  # when it was handed to the dispatcher (monotonic)

    def route(self, now: float) -> None:
        """Route its requests; what the job needs is what its neediest request needs."""
        routed: list[Routed] = []
        need = Need.NOTHING
        for request in self.requests:  # api.route_request, inlined: once per request
            try:
                route, params = find_route(request)
            except HttpError as error:
                routed.append((request, None, {}, error))
                continue
            routed.append((request, route, params, None))
            if route.need > need:
                need = route.need
        self.routed = routed
        self.need = need
        self.since = now


class Answerer:
    """Answers batches, one transaction each, on one store; reopens it after a failure."""

    def __init__(
        self,
        backend: Backend,
        config: ApiConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._config = config
        self._clock = clock
        self._service: TokenService | None = None
        self._retry_at = 0.0

    def _open(self) -> TokenService | None:
        if self._service is not None:
            return self._service
        now = time.monotonic()
        if now < self._retry_at:
            return None
        try:
            store: Store = self._backend.open_store()
        except StorageError as error:
            self._config.storage_failed(str(error))
            self._retry_at = now + REOPEN_SECONDS
            return None
        self._service = TokenService(store, self._clock, source="http")
        return self._service

    def _drop(self) -> None:
        if self._service is not None:
            try:
                self._service.store.close()
            except Exception:  # a broken connection may fail to close; it is gone anyway
                pass
        self._service = None
        # The next batch opens a fresh store at once; only if that fails are the
        # following ones answered without a store, for REOPEN_SECONDS at a time.
        self._retry_at = 0.0

    def answer(self, routed: list[Routed], need: Need, lock_wait: float | None) -> list[Answer]:
        """Answer the requests in one transaction (503 for all if it cannot commit).

        A write batch that cannot have the write lock within `lock_wait` raises
        StoreBusy before anything ran: the caller tries it again later.
        """
        service = self._open()
        if service is None:
            return api.answer_batch(None, routed, self._config)
        store = service.store
        try:
            block = store.batch(wait=lock_wait) if need is Need.WRITE else store.reading()
            with block:
                answers = api.answer_batch(service, routed, self._config)
        except StoreBusy:
            raise
        except StorageError as error:
            # Nothing in the batch was committed: no client may hear otherwise.
            self._config.storage_failed(str(error))
            self._drop()
            failed = error_answer(HTTPStatus.SERVICE_UNAVAILABLE, UNAVAILABLE)
            return [failed] * len(routed)
        except Exception as error:  # the batch machinery itself: its 500s, not the loop
            self._config.report(f"internal error in a batch: {type(error).__name__}")
            self._drop()
            failed = error_answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            return [failed] * len(routed)
        self._config.storage_recovered()
        counters = self._config.counters
        if counters is not None:
            counters.batches.observe(len(routed))
        return answers

    def close(self) -> None:
        """Close the store."""
        self._drop()


class StoreWork:
    """Answers jobs that need the store, in batches of at most `max_batch` requests:
    writes first (then reads see them), each job whole in one batch."""

    def __init__(self, answerer: Answerer, limits: Limits, *, lock_wait: float | None) -> None:
        self._answerer = answerer
        self._limits = limits
        self._lock_wait = lock_wait

    def run(self, jobs: list[Job], now: float) -> list[Job]:
        """Answer the jobs; return those whose write batch found the lock taken (their
        answers still to come), after answering 503 to any that waited too long."""
        writes: list[Job] = []
        reads: list[Job] = []
        for job in jobs:
            (writes if job.need is Need.WRITE else reads).append(job)
        waiting: list[Job] = []
        for chunk in self._chunks(writes):
            try:
                self._answer(chunk, Need.WRITE)
            except StoreBusy:
                waiting.extend(chunk)
        for chunk in self._chunks(reads):
            try:
                self._answer(chunk, Need.READ)
            except StoreBusy:
                waiting.extend(chunk)
        deferred = []
        for job in waiting:
            if now - job.since > self._limits.store_wait:
                busy = error_answer(HTTPStatus.SERVICE_UNAVAILABLE, BUSY)
                job.answers = [busy] * len(job.requests)
            else:
                deferred.append(job)
        return deferred

    def _chunks(self, jobs: list[Job]) -> list[list[Job]]:
        if not jobs:
            return []
        if len(jobs) * self._limits.max_pipelined <= self._limits.max_batch:
            return [jobs]  # the usual turn: one batch, whatever each job holds
        chunks: list[list[Job]] = []
        size = 0
        for job in jobs:
            if not chunks or size + len(job.requests) > self._limits.max_batch:
                chunks.append([])
                size = 0
            chunks[-1].append(job)
            size += len(job.requests)
        return chunks

    def _answer(self, chunk: list[Job], need: Need) -> None:
        routed = [item for job in chunk for item in job.routed]
        answers = self._answerer.answer(routed, need, self._lock_wait)
        position = 0
        for job in chunk:
            job.answers = answers[position : position + len(job.requests)]
            position += len(job.requests)

    def close(self) -> None:
        """Close the store."""
        self._answerer.close()


class Dispatcher:
    """Takes jobs from the event loop and gives them back answered.

    Store-free jobs are answered in `submit`; the store's share goes to `_store_jobs`,
    on the loop (InlineDispatcher) or on a thread (ThreadDispatcher).
    """

    def __init__(self, config: ApiConfig) -> None:
        self._config = config
        self._finished: list[Job] = []

    def submit(self, jobs: list[Job]) -> None:
        """Answer these jobs: the store-free ones now, the rest as the store allows."""
        now = time.monotonic()
        needing: list[Job] = []
        for job in jobs:
            job.route(now)
            if job.need is Need.NOTHING:
                job.answers = api.answer_batch(None, job.routed, self._config)
                self._finished.append(job)
            else:
                needing.append(job)
        if needing:
            self._store_jobs(needing)

    def _store_jobs(self, jobs: list[Job]) -> None:
        raise NotImplementedError

    def take_finished(self) -> list[Job]:
        """The jobs answered since the last call."""
        finished, self._finished = self._finished, []
        return finished

    def next_turn(self, now: float) -> float | None:
        """Seconds until the dispatcher wants the loop back (None: no wish)."""
        return None

    def step(self, now: float) -> None:
        """A turn of the loop passed: retry what waits, if its time has come."""

    def stop(self) -> None:
        """Release the store (what was submitted has been answered or given up)."""


class InlineDispatcher(Dispatcher):
    """Answers on the event loop itself, between two polls; a write batch that finds the
    write lock taken waits for a later turn."""

    def __init__(
        self, backend: Backend, config: ApiConfig, clock: Callable[[], float], limits: Limits
    ) -> None:
        super().__init__(config)
        answerer = Answerer(backend, config, clock)
        self._work = StoreWork(answerer, limits, lock_wait=limits.lock_wait)
        self._waiting: list[Job] = []
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_SECONDS

    def _store_jobs(self, jobs: list[Job]) -> None:
        if self._waiting:
            # The lock was taken a moment ago: these wait their turn behind the others,
            # except reads, which never need the lock.
            reads = [job for job in jobs if job.need is not Need.WRITE]
            self._waiting.extend(job for job in jobs if job.need is Need.WRITE)
            jobs = reads
        if jobs:
            self._run(jobs, time.monotonic())

    def _run(self, jobs: list[Job], now: float) -> None:
        deferred = self._work.run(jobs, now)
        if not deferred:
            self._finished.extend(jobs)
            self._backoff = RETRY_FIRST_SECONDS
            return
        waiting = set(map(id, deferred))
        self._finished.extend(job for job in jobs if id(job) not in waiting)
        self._waiting.extend(deferred)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_SECONDS)

    def next_turn(self, now: float) -> float | None:
        """While writes wait for the lock: how long until the next try."""
        return max(0.0, self._retry_at - now) if self._waiting else None

    def step(self, now: float) -> None:
        """Try the waiting writes again once their time has come."""
        if self._waiting and now >= self._retry_at:
            waiting, self._waiting = self._waiting, []
            self._run(waiting, now)

    def stop(self) -> None:
        """Close the store; writes still waiting were never stored, so none is lost."""
        self._waiting.clear()
        self._work.close()


class ThreadDispatcher(Dispatcher):
    """Answers on one store thread, so the loop never waits on the network; `wake`
    brings the loop back when answers are ready."""

    def __init__(
        self,
        backend: Backend,
        config: ApiConfig,
        clock: Callable[[], float],
        limits: Limits,
        wake: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._work = StoreWork(Answerer(backend, config, clock), limits, lock_wait=None)
        self._wake = wake
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._done: list[Job] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="store", daemon=True)
        self._thread.start()

    def _store_jobs(self, jobs: list[Job]) -> None:
        with self._lock:
            self._queue.extend(jobs)
            self._ready.notify()

    def take_finished(self) -> list[Job]:
        """The jobs answered on the loop and on the store thread since the last call."""
        finished = super().take_finished()
        if self._done:
            with self._lock:
                done, self._done = self._done, []
            finished.extend(done)
        return finished

    def stop(self) -> None:
        """Let the store thread finish the queue (each call bounded by the store), then
        close the store."""
        with self._lock:
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._stopping:
                        self._ready.wait()
                    if not self._queue:
                        return
                    jobs = list(self._queue)
                    self._queue.clear()
                deferred = self._work.run(jobs, time.monotonic())
                answered = [job for job in jobs if job not in deferred]
                with self._lock:
                    self._done.extend(answered)
                    self._queue.extendleft(reversed(deferred))
                self._wake()
                if deferred:
                    time.sleep(RETRY_MAX_SECONDS)
        finally:
            self._work.close()


def dispatcher_for(
    backend: Backend,
    config: ApiConfig,
    clock: Callable[[], float],
    limits: Limits,
    wake: Callable[[], None],
) -> Dispatcher:
    """On the loop for a store whose waits are short (a local file), else on a thread."""
    if backend.inline:
        return InlineDispatcher(backend, config, clock, limits)
    return ThreadDispatcher(backend, config, clock, limits, wake)
