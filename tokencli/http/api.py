"""The HTTP application: routes and handlers, request in, answer out. No sockets here.

The server frames bytes into requests, routes them (`route_request`: what each needs
of the store decides where it is answered) and hands a batch of them to `answer_batch`,
inside one store transaction (group commit). Each request is answered alone: a bad body,
a refused key or a bug in one handler is that request's 4xx or 500, never its
neighbours'. Consecutive validations in a batch are judged together
(`TokenService.check_many`), so a batch costs a constant number of queries.

Routes are data (`ROUTES`): method, path pattern, handler, what it needs of the store
(nothing, a read, a write), which key it needs, and for validations how to read the
presented token.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from enum import IntEnum
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import unquote

from tokencli.domain import tokens
from tokencli.domain.durations import DurationError, parse_duration
from tokencli.domain.errors import InvalidRequestError, NotFoundError, StorageError, TokencliError
from tokencli.domain.model import (
    DEFAULT_TTL_SECONDS,
    MAX_SCOPES,
    CheckResult,
    TokenState,
)
from tokencli.domain.rules import validate_scopes
from tokencli.http import openapi, viewers
from tokencli.http.bodies import MAX_JSON_DEPTH as MAX_JSON_DEPTH  # re-exported
from tokencli.http.bodies import parse_json_body
from tokencli.http.http11 import HttpError, Request
from tokencli.http.metrics import Counters
from tokencli.service import listing, views
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


# A request with the route that answers it and the path's parameters, or with the
# routing error (404, 405) that answers it. A plain tuple: one is made per request.
Routed = tuple[Request, Route | None, dict[str, str], HttpError | None]


def json_answer(status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    """A JSON answer."""
    return Answer(status, json.dumps(payload).encode(), JSON, headers)


def error_answer(status: HTTPStatus, detail: str, headers: dict[str, str] | None = None) -> Answer:
    """The JSON error every failure gets: {"status_code": N, "detail": "..."}."""
    return json_answer(status, {"status_code": int(status), "detail": detail}, headers)


def _json_object(body: bytes, allowed: set[str]) -> dict[str, Any]:
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    unknown = set(payload) - allowed
    if unknown:
        names = ", ".join(sorted(views.literal(str(name))[:40] for name in unknown))
        raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {names}")
    return payload


def _scope_list(value: object, *, limit: int | None) -> tuple[str, ...]:
    """A body's "scopes": held by a new token (at most `limit`) or required by a check
    (any number: more than a token holds is simply insufficient_scope)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequestError("scopes must be an array of scope names")
    return validate_scopes(value, limit=limit)


# -- key checks --------------------------------------------------------------------------


def _presented_key(request: Request) -> bytes | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return presented.strip().encode("latin-1")


def _matches(presented: bytes | None, key: str | None) -> bool:
    return (
        presented is not None and key is not None and tokens.compare_digest(presented, key.encode())
    )


def authorize(route: Route, request: Request, keys: Keys) -> None:
    """Raise 401 unless the request carries the key its route needs (if one is set)."""
    if route.key is None:
        return
    if route.key == "admin":
        if keys.admin is None or _matches(_presented_key(request), keys.admin):
            return
        what = "admin key"
    else:
        if keys.validate is None:
            return
        presented = _presented_key(request)
        if _matches(presented, keys.validate) or _matches(presented, keys.admin):
            return
        what = "validate key"
    raise HttpError(
        HTTPStatus.UNAUTHORIZED,
        f"missing or wrong {what}; send Authorization: Bearer KEY",
        {"WWW-Authenticate": 'Bearer realm="tokencli"'},
    )


# -- handlers ----------------------------------------------------------------------------


def _ttl_seconds(ttl: object) -> int:
    if ttl is None:
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        return ttl
    if isinstance(ttl, str):
        try:
            return parse_duration(ttl)
        except DurationError as error:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(error)) from None
    raise HttpError(HTTPStatus.BAD_REQUEST, "ttl must be a duration such as 15m")


def issue_options(body: bytes) -> dict[str, Any]:
    """The options of POST /app/token from its optional JSON body (absent: defaults)."""
    if not body:
        return {}
    payload = _json_object(body, {"ttl", "label", "uses", "scopes"})
    label = payload.get("label")
    if label is not None and not isinstance(label, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, "label must be a string")
    uses = payload.get("uses")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)):
        raise HttpError(HTTPStatus.BAD_REQUEST, "uses must be a whole number")
    return {
        "ttl_seconds": _ttl_seconds(payload.get("ttl")),
        "label": label,
        "uses": uses,
        "scopes": _scope_list(payload.get("scopes"), limit=MAX_SCOPES),
    }


def _issue(call: Call) -> Answer:
    issued = call.service.issue(**issue_options(call.request.body))
    if call.config.counters is not None:
        call.config.counters.issued += 1
    return issued_answer(issued.token)


def issued_answer(token: str) -> Answer:
    """The original service's answer to an issue, written directly (as json.dumps would:
    a token is ID:SECRET in URL-safe characters, which need no escaping)."""
    return Answer(HTTPStatus.OK, f'{{"status_code": 200, "token": "{token}"}}'.encode(), JSON)


def refuse_unknown_parameters(request: Request, known: set[str]) -> None:
    """400 for a query parameter the route does not take: a typo such as `?scopes=admin`
    must not silently drop a requirement."""
    unknown = set(request.query) - known
    if unknown:
        names = ", ".join(sorted(views.literal(name)[:40] for name in unknown))
        raise InvalidRequestError(f"unknown query parameter(s): {names}")


def _query_scopes(request: Request) -> tuple[str, ...]:
    refuse_unknown_parameters(request, {"scope"})
    return validate_scopes(request.query.get("scope", ()), limit=None)


def _presented_in_path(request: Request, params: dict[str, str]) -> Presented:
    token = unquote(params["token"], errors="replace")
    # The hot path: most validations carry no query string at all.
    scopes = _query_scopes(request) if "?" in request.target else ()
    if request.method == "POST" and request.body:
        payload = _json_object(request.body, {"token", "scopes"})
        body_token = payload.get("token")
        if body_token is not None and body_token != token:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the body's token differs from the path's")
        scopes = tuple(sorted({*scopes, *_scope_list(payload.get("scopes"), limit=None)}))
    return Presented(token, scopes)


def _presented_in_body(request: Request, params: dict[str, str]) -> Presented:
    payload = _json_object(request.body, {"token", "scopes"})
    token = payload.get("token")
    if not isinstance(token, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, 'send {"token": "ID:SECRET"} in the body')
    scopes = tuple(
        sorted({*_query_scopes(request), *_scope_list(payload.get("scopes"), limit=None)})
    )
    return Presented(token, scopes)


# Verdicts on tokens we know nothing about: the same bytes every time.
_BARE_VERDICTS = {
    state: json.dumps(
        {"status_code": 200, "status": state is TokenState.VALID, "state": state.value}
    ).encode()
    for state in TokenState
}


@functools.lru_cache(maxsize=4096)
def _iso(epoch_seconds: int) -> str:
    # Many checks share few expiry instants (tokens issued in bulk): format each once.
    return views.iso_time(epoch_seconds)


def verdict_answer(result: CheckResult, template: str) -> Answer:
    """The original service's answer, with the verdict and the token's public fields.

    Validation is the hot path, so the JSON is written directly: every value in it is
    either fixed text or of a shape that needs no escaping (IDs are a-z2-7, scope names
    a-z0-9:._-, times ISO 8601, uses a number), which `test_api` checks against json.
    """
    info = result.info
    if info is None:
        body = _BARE_VERDICTS[result.state]
    else:
        status = "true" if result.state is TokenState.VALID else "false"
        uses = "null" if info.uses_left is None else str(int(info.uses_left))
        scopes = ", ".join(f'"{name}"' for name in info.scopes)
        body = (
            f'{{"status_code": 200, "status": {status}, "state": "{result.state}", '
            f'"id": "{info.id}", "expires_at": "{_iso(info.expires_at)}", '
            f'"uses_left": {uses}, "scopes": [{scopes}]}}'
        ).encode()
    # A StrEnum is its value wherever a string goes (and reading .value costs a lookup).
    return Answer(HTTPStatus.OK, body, JSON, None, template, result.state)


def _purge(call: Call) -> Answer:
    purged = call.service.purge().purged
    if call.config.counters is not None:
        call.config.counters.purged += purged
    return json_answer(HTTPStatus.OK, {"status_code": 200, "status": True, "purged": purged})


def _list(call: Call) -> Answer:
    refuse_unknown_parameters(call.request, listing.PAGE_PARAMETERS)
    asked = listing.page_query(call.request.query, call.service.now())
    page = call.service.list_page(asked.selector, asked.after, asked.size)
    # Written directly (token_json_text is checked against json.dumps): a page is the
    # biggest answer the loop renders, and this halves its cost.
    rows = ", ".join(views.token_json_text(token) for token in page.tokens)
    following = "null" if page.next is None else f'"{page.next}"'  # an ID: a-z2-7
    body = f'{{"status_code": 200, "tokens": [{rows}], "next": {following}}}'
    return Answer(HTTPStatus.OK, body.encode(), JSON)


def _token_id(params: dict[str, str]) -> str:
    token_id = params["id"]
    if not tokens.is_token_id(token_id):
        raise NotFoundError("no token with that ID")
    return token_id


def _show(call: Call) -> Answer:
    info = call.service.show(_token_id(call.params))
    return json_answer(HTTPStatus.OK, {"status_code": 200, **views.token_json(info)})


def _revoke(call: Call) -> Answer:
    token_id = call.service.revoke(_token_id(call.params))
    return json_answer(HTTPStatus.OK, {"status_code": 200, "status": True, "id": token_id})


def _health(call: Call) -> Answer:
    call.service.ping()
    return json_answer(HTTPStatus.OK, {"status_code": 200, "status": "ok"})


def _metrics(call: Call) -> Answer:
    page = call.config.metrics_page
    if page is None:
        raise HttpError(HTTPStatus.NOT_FOUND, "metrics are off (serve --no-metrics)")
    return Answer(HTTPStatus.OK, page(), METRICS_TYPE)


def _openapi(call: Call) -> Answer:
    return json_answer(HTTPStatus.OK, openapi.document())


def _docs(call: Call) -> Answer:
    policy = {"Content-Security-Policy": viewers.DOCS_POLICY, **viewers.PAGE_HEADERS}
    return Answer(HTTPStatus.OK, viewers.SWAGGER_PAGE.encode(), HTML, policy)


def _redoc(call: Call) -> Answer:
    policy = {"Content-Security-Policy": viewers.REDOC_POLICY, **viewers.PAGE_HEADERS}
    return Answer(HTTPStatus.OK, viewers.REDOC_PAGE.encode(), HTML, policy)


def _asset(call: Call) -> Answer:
    asset = viewers.ASSETS_BY_PATH[call.request.path]
    accepted = call.request.headers.get("accept-encoding")
    body, headers = viewers.asset_body(asset, accepted, call.config.asset_budget)
    return Answer(HTTPStatus.OK, body, asset.content_type, headers)


def _route(method: str, template: str, regex: str, handler: Any, **options: Any) -> Route:
    return Route(
        method,
        template,
        re.compile(regex),
        handler,
        options.get("need", Need.NOTHING),
        options.get("key"),
        options.get("presents"),
    )


_ID = r"(?P<id>[^/]*)"
# Validation first: it is most of the traffic, and routes are tried in order.
ROUTES: tuple[Route, ...] = (
    *(
        _route(
            method,
            "/app/valid/{token}",
            r"/app/valid/(?P<token>[^/]*)",
            None,
            need=Need.WRITE,
            key="validate",
            presents=_presented_in_path,
        )
        for method in ("GET", "POST")
    ),
    _route(
        "POST",
        "/app/valid",
        r"/app/valid",
        None,
        need=Need.WRITE,
        key="validate",
        presents=_presented_in_body,
    ),
    _route("POST", "/app/token", r"/app/token", _issue, need=Need.WRITE, key="admin"),
    _route(
        "DELETE",
        "/app/clear/all/tokens",
        r"/app/clear/all/tokens",
        _purge,
        need=Need.WRITE,
        key="admin",
    ),
    _route("GET", "/app/tokens", r"/app/tokens", _list, need=Need.READ, key="admin"),
    _route("GET", "/app/tokens/{id}", rf"/app/tokens/{_ID}", _show, need=Need.READ, key="admin"),
    _route(
        "DELETE", "/app/tokens/{id}", rf"/app/tokens/{_ID}", _revoke, need=Need.WRITE, key="admin"
    ),
    _route("GET", "/health", r"/health", _health, need=Need.READ),
    _route("GET", "/metrics", r"/metrics", _metrics, key="admin"),
    _route("GET", "/openapi.json", r"/openapi\.json", _openapi),
    _route("GET", "/docs", r"/docs", _docs),
    _route("GET", "/redoc", r"/redoc", _redoc),
    *(_route("GET", asset.path, re.escape(asset.path), _asset) for asset in viewers.ASSETS),
)


def route_request(request: Request) -> Routed:
    """The request with its route (or the 404/405 that answers it)."""
    try:
        route, params = find_route(request)
    except HttpError as error:
        return request, None, {}, error
    return request, route, params, None


class WrongMethod(HttpError):
    """405 for a path that a route answers with other methods; `template` is that route's,
    so metrics count the request against the route, not as `unmatched`."""

    def __init__(self, template: str, detail: str, allow: str) -> None:
        super().__init__(HTTPStatus.METHOD_NOT_ALLOWED, detail, {"Allow": allow})
        self.template = template


def find_route(request: Request) -> tuple[Route, dict[str, str]]:
    """The route answering this method and path; 404 or 405 (with Allow) otherwise."""
    path = request.path
    allowed: list[Route] = []
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        if match is None:
            continue
        if route.method == request.method:
            return route, match.groupdict()
        allowed.append(route)
    if allowed:
        methods = ", ".join(dict.fromkeys(route.method for route in allowed))
        raise WrongMethod(
            allowed[0].template,
            f"{views.literal(request.method[:16])} is not allowed here; use {methods}",
            methods,
        )
    raise HttpError(HTTPStatus.NOT_FOUND, "no such endpoint; see /openapi.json")


def _failure(error: Exception, template: str, config: ApiConfig) -> Answer:
    """The answer to a request whose handling raised."""
    if isinstance(error, HttpError):
        answer = error_answer(error.status, error.detail, error.headers)
    elif isinstance(error, InvalidRequestError):
        answer = error_answer(HTTPStatus.BAD_REQUEST, str(error))
    elif isinstance(error, NotFoundError):
        answer = error_answer(HTTPStatus.NOT_FOUND, str(error))
    elif isinstance(error, StorageError):
        config.storage_failed(str(error))
        answer = error_answer(HTTPStatus.SERVICE_UNAVAILABLE, UNAVAILABLE)
    elif isinstance(error, TokencliError):
        answer = error_answer(HTTPStatus.BAD_REQUEST, str(error))
    else:
        # A bug: this request's 500 alone. The log names the kind, never the request.
        config.report(f"internal error answering {template}: {type(error).__name__}")
        answer = error_answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
    return answer.with_route(template)


def _handle(route: Route, call: Call) -> Answer:
    """Run a route's handler; one that needs the store runs isolated (a savepoint on
    PostgreSQL, where a failing statement aborts the whole transaction), so its failure
    costs this request alone, never the batch it was answered in."""
    assert route.handler is not None
    if route.need is Need.NOTHING:
        return route.handler(call)
    with call.service.store.isolated():
        return route.handler(call)


def answer_requests(
    service: TokenService | None, requests: Sequence[Request], config: ApiConfig
) -> list[Answer]:
    """Route and answer requests, in order (see `answer_batch`)."""
    return answer_batch(service, [route_request(request) for request in requests], config)


def answer_batch(
    service: TokenService | None, routed: Sequence[Routed], config: ApiConfig
) -> list[Answer]:
    """Answer routed requests in order. With no service, what needs the store gets 503.

    Runs inside the caller's store batch: a handler's writes are a savepoint of it.
    Consecutive validations are judged together in one `check_many`.
    """
    keys = config.keys  # read once: a key reload applies from the next batch on
    answers: list[Answer | None] = [None] * len(routed)
    group: list[tuple[int, str, Presented]] = []

    def judge_group() -> None:
        if not group:
            return
        assert service is not None
        judged = group.copy()
        group.clear()  # first: whatever happens below, these are never judged again
        try:
            results = service.check_many([presented for _, _, presented in judged])
        except Exception as error:  # every check in the group shares one statement
            for index, template, _ in judged:
                answers[index] = _failure(error, template, config)
            return
        for (index, template, _), result in zip(judged, results, strict=True):
            try:  # rendered one by one: a fault in one answer is that request's alone
                answers[index] = verdict_answer(result, template)
                if config.counters is not None:
                    config.counters.count_verdict(result.state)
            except Exception as error:
                answers[index] = _failure(error, template, config)

    for index, (request, route, params, error) in enumerate(routed):
        template = "unmatched"
        try:
            if route is None:
                assert error is not None
                raise error
            template = route.template
            authorize(route, request, keys)
            if route.need and service is None:
                raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, UNAVAILABLE)
            if route.presents is not None:
                group.append((index, template, route.presents(request, params)))
                continue
            judge_group()  # keep the order of a client's pipelined requests
            call = Call(service, request, params, config)  # type: ignore[arg-type]
            answers[index] = _handle(route, call).with_route(template)
        except Exception as failure:
            if isinstance(failure, WrongMethod):
                template = failure.template
            answers[index] = _failure(failure, template, config)
    judge_group()
    # Every request has its answer, in its place: the server pairs them by position.
    return [
        answer if answer is not None else _failure(AssertionError(), "unmatched", config)
        for answer in answers
    ]
