"""Who answers the requests the event loop has framed: the loop itself, or a pool.

Both answer a batch of requests in one store transaction (`Answerer`, the group commit):
one commit for many checks, and the answers go back only after that commit, so no
client hears of a change that was not stored. The inline dispatcher (the default, and
the faster on one core: docs/benchmarks.md) answers between two selects; the pool hands
batches to worker threads, each with its own store, for stores where a batch waits on
the network.

A store that fails is closed, and the next batch opens a fresh one; if the database
cannot be reached, opening is tried again at most every half second, and meanwhile what
needs it gets 503 and the rest is answered as usual. A database that went away and came
back is used again without a restart.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

from tokencli.domain.errors import StorageError
from tokencli.http import api
from tokencli.http.api import Answer, ApiConfig
from tokencli.http.http11 import Request
from tokencli.service.service import TokenService
from tokencli.store.base import Backend, Store

REOPEN_SECONDS = 0.5


class Job:
    """Requests of one connection, answered together, in order."""

    __slots__ = ("connection", "requests", "answers")

    def __init__(self, connection: Any, requests: list[Request]) -> None:
        self.connection = connection
        self.requests = requests
        self.answers: list[Answer] = []


class Answerer:
    """Answers batches in one transaction on one store; reopens the store after a failure."""

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
        self._unavailable = "the database is unavailable"
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
            self._unavailable = str(error)
            self._retry_at = now + REOPEN_SECONDS
            return None
        self._service = TokenService(store, self._clock, source="http")
        return self._service

    def _drop(self, reason: str) -> None:
        if self._service is not None:
            try:
                self._service.store.close()
            except Exception:  # a broken connection may fail to close; it is gone anyway
                pass
        self._service = None
        self._unavailable = reason
        # The next batch opens a fresh store at once; only if that fails are the
        # following ones answered without a store, for REOPEN_SECONDS at a time.
        self._retry_at = 0.0

    def answer(self, requests: list[Request]) -> list[Answer]:
        """Answer the requests in one transaction (503 for all if it cannot commit)."""
        service = self._open()
        if service is None:
            return api.answer_batch(None, requests, self._config, self._unavailable)
        try:
            with service.store.batch():
                answers = api.answer_batch(service, requests, self._config)
        except StorageError as error:
            # Nothing in the batch was committed: no client may hear otherwise.
            self._drop(str(error))
            failed = api.error_answer(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
            return [failed] * len(requests)
        except Exception as error:  # the batch machinery itself: its 500s, not the loop
            self._config.report(f"internal error in a batch: {type(error).__name__}")
            self._drop("internal error")
            failed = api.error_answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            return [failed] * len(requests)
        counters = self._config.counters
        if counters is not None:
            counters.batches.observe(len(requests))
        return answers

    def close(self) -> None:
        """Close the store."""
        self._drop("closed")


def answer_jobs(answerer: Answerer, jobs: list[Job], max_batch: int) -> None:
    """Fill each job's answers, `max_batch` requests per transaction at most."""
    start = 0
    while start < len(jobs):
        chunk: list[Job] = []
        size = 0
        while start < len(jobs) and (not chunk or size + len(jobs[start].requests) <= max_batch):
            chunk.append(jobs[start])
            size += len(jobs[start].requests)
            start += 1
        answers = answerer.answer([request for job in chunk for request in job.requests])
        position = 0
        for job in chunk:
            job.answers = answers[position : position + len(job.requests)]
            position += len(job.requests)


class Dispatcher(Protocol):
    """Takes jobs from the event loop and gives them back answered."""

    def submit(self, jobs: list[Job]) -> None:
        """Answer these jobs (now, or on another thread)."""

    def take_finished(self) -> list[Job]:
        """The jobs answered since the last call."""
        ...

    def stop(self) -> None:
        """Finish what was submitted, then release every store."""


class InlineDispatcher:
    """Answers on the event loop itself, between two selects."""

    def __init__(
        self, backend: Backend, config: ApiConfig, clock: Callable[[], float], max_batch: int
    ) -> None:
        self._answerer = Answerer(backend, config, clock)
        self._max_batch = max_batch
        self._finished: list[Job] = []

    def submit(self, jobs: list[Job]) -> None:
        """Answer the jobs now."""
        answer_jobs(self._answerer, jobs, self._max_batch)
        self._finished.extend(jobs)

    def take_finished(self) -> list[Job]:
        """The jobs answered by the last submit."""
        finished, self._finished = self._finished, []
        return finished

    def stop(self) -> None:
        """Close the store."""
        self._answerer.close()


class PoolDispatcher:
    """A bounded pool of worker threads, each answering whole batches on its own store."""

    def __init__(
        self,
        backend: Backend,
        config: ApiConfig,
        clock: Callable[[], float],
        max_batch: int,
        workers: int,
        wake: Callable[[], None],
    ) -> None:
        self._backend = backend
        self._config = config
        self._clock = clock
        self._max_batch = max_batch
        self._wake = wake
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._finished: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"worker-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue the jobs for the workers."""
        for job in jobs:
            self._jobs.put(job)

    def take_finished(self) -> list[Job]:
        """The jobs the workers have answered."""
        finished = []
        while True:
            try:
                finished.append(self._finished.get_nowait())
            except queue.Empty:
                return finished

    def stop(self) -> None:
        """Let the workers finish the queue, then stop them."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=15)

    def _work(self) -> None:
        answerer = Answerer(self._backend, self._config, self._clock)
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                size = len(first.requests)
                while size < self._max_batch:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self._jobs.put(None)  # leave the stop signal for this worker's next turn
                        break
                    batch.append(job)
                    size += len(job.requests)
                answer_jobs(answerer, batch, self._max_batch)
                for job in batch:
                    self._finished.put(job)
                self._wake()
        finally:
            answerer.close()
