"""The vocabulary of the HTTP layer: answers, routes, and what the application is given.

Shared by the handlers (routes.py) and the machinery that routes and answers requests
(api.py), so neither imports the other's internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import IntEnum
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from tokencli.http import viewers
from tokencli.http.http11 import Request
from tokencli.http.metrics import Counters

if TYPE_CHECKING:
    import re

    from tokencli.service.checking import Presented
    from tokencli.service.service import TokenService

JSON = "application/json"
HTML = "text/html; charset=utf-8"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# What a 503 says: the reason (a host, a file, a user) goes to the server log only.
UNAVAILABLE = "the database is unavailable; the server log has the reason"
BUSY = "the database is busy (another process holds its write lock); try again"


class Answer(NamedTuple):
    """A response before it is framed, with what the log and metrics say about it."""

    status: HTTPStatus
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] | None = None
    route: str = "unmatched"  # the route's template, never the path (it may hold a token)
    verdict: str | None = None

    def with_route(self, template: str) -> Answer:
        """The same answer, credited to a route (what `_replace` does, at half the cost)."""
        status, body, content_type, headers, _, verdict = self
        return Answer(status, body, content_type, headers, template, verdict)


class Keys(NamedTuple):
    """The bearer keys in force: admin (issue, purge, administer) and validate."""

    admin: str | None = None
    validate: str | None = None


class ApiConfig:
    """What the application needs beside a request; `keys` is swapped whole on reload."""

    __slots__ = ("keys", "counters", "metrics_page", "report", "asset_budget", "_down")

    def __init__(
        self,
        keys: Keys | None = None,
        *,
        counters: Counters | None = None,
        metrics_page: Callable[[], bytes] | None = None,
        report: Callable[[str], None] = lambda message: None,
        asset_budget: viewers.AssetBudget | None = None,
    ) -> None:
        self.keys = keys if keys is not None else Keys()
        self.counters = counters
        self.metrics_page = metrics_page
        self.report = report
        self.asset_budget = asset_budget if asset_budget is not None else viewers.AssetBudget()
        self._down: str | None = None

    def storage_failed(self, reason: str) -> None:
        """Log why the database is unusable: once, and again only when the reason changes
        (retries must not flood the log). A 503's body never says why: the reason may name
        a host, a file or a user."""
        if reason != self._down:
            self.report(f"database unavailable: {reason}")
        self._down = reason

    def storage_recovered(self) -> None:
        """The database answered again after a failure: say so, once."""
        if self._down is not None:
            self._down = None
            self.report("database available again")


class Call(NamedTuple):
    """One request as a handler sees it."""

    service: TokenService
    request: Request
    params: dict[str, str]
    config: ApiConfig


class Need(IntEnum):
    """What answering a request needs of the store; a batch needs the most of its own."""

    NOTHING = 0  # errors, /metrics, /openapi.json, /docs: answered at once
    READ = 1  # /health, listings, show: never waits for a writer
    WRITE = 2  # validations (a use, an audit event), issue, revoke, purge


class Route(NamedTuple):
    """A method and path pattern, and how to answer them."""

    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Callable[[Call], Answer] | None
    need: Need
    key: str | None  # "admin", "validate" or None
    presents: Callable[[Request, dict[str, str]], Presented] | None = None


def json_answer(status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    """A JSON answer."""
    return Answer(status, json.dumps(payload).encode(), JSON, headers)


def error_answer(status: HTTPStatus, detail: str, headers: dict[str, str] | None = None) -> Answer:
    """The JSON error every failure gets: {"status_code": N, "detail": "..."}."""
    return json_answer(status, {"status_code": int(status), "detail": detail}, headers)
