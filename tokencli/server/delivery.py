"""Answers on their way out: framed with their request IDs, counted, logged.

The event loop (server.py) hands each answered job here, then flushes the access log,
then sends: a client that has its answer finds its line in the log. Nothing here
touches a socket; the connection queues the framed bytes (`Connection.answered`).
"""

from __future__ import annotations

import time

from tokencli.http import http11
from tokencli.http.answers import Answer
from tokencli.http.forwarded import Networks, client_address
from tokencli.http.metrics import Counters
from tokencli.server.accesslog import AccessLog, Entry, RequestIds
from tokencli.server.connection import Connection
from tokencli.server.dispatch import Job

_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})


class Delivery:
    """Frames answers for their connections, and counts and logs each request."""

    def __init__(
        self,
        access_log: AccessLog | None,
        counters: Counters | None,
        trusted_proxies: Networks = (),
    ) -> None:
        self._access_log = access_log
        self._counters = counters
        self._trusted_proxies = trusted_proxies
        self._request_ids = RequestIds()

    def deliver(self, job: Job, *, stopping: bool) -> None:
        """Frame a job's answers, in order, on its connection (sent after `flush`).

        While the server stops, every answer of the job still goes out (they were
        committed), the last one saying `Connection: close`.
        """
        connection: Connection = job.connection
        if not connection.open:
            return  # closed while its requests were being answered
        last = len(job.requests) - 1
        frames = []
        close = False
        for position, (request, answer) in enumerate(zip(job.requests, job.answers, strict=True)):
            request_id = self._request_ids.take(request.headers.get("x-request-id"))
            close = not request.keep_alive or (stopping and position == last)
            frames.append(
                http11.response(
                    answer.status,
                    answer.body,
                    answer.content_type,
                    close=close,
                    headers=answer.headers,
                    extra=f"X-Request-Id: {request_id}\r\n",
                )
            )
            self._log(
                connection,
                request.method,
                request.target,
                int(answer.status),
                request_id,
                answer,
                request.headers,
            )
            if close:
                break
        connection.answered(frames, close=close)

    def refused(self, connection: Connection, status: int) -> None:
        """Count and log a request refused before framing; its line goes out at once."""
        self._log(connection, None, None, status, None, None)
        self.flush()  # rare, and its line should be out before the answer

    def flush(self) -> None:
        """Write the access-log lines of what was delivered since the last flush."""
        if self._access_log is not None:
            self._access_log.flush()

    def _log(
        self,
        connection: Connection,
        method: str | None,
        target: str | None,
        status: int,
        request_id: str | None,
        answer: Answer | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        started = connection.request_perf
        seconds = time.perf_counter() - started if started else 0.0
        counters = self._counters
        if counters is not None:
            label = method if method in _METHODS else "other"
            route = answer.route if answer is not None else "unmatched"
            counters.count_request(route, label, status, seconds)
        if self._access_log is not None:
            verdict = answer.verdict if answer is not None else None
            client = connection.peer
            if headers is not None and self._trusted_proxies:
                # Only a trusted proxy's word is taken for who the client is.
                client = client_address(client, headers, self._trusted_proxies)
            self._access_log.add(
                Entry(client, method, target, status, seconds * 1000, request_id, verdict)
            )
