"""Routes and their handlers: what each endpoint of `tokencli serve` answers.

Routes are data (`ROUTES`): method, path pattern, handler, what it needs of the store
(nothing, a read, a write), which key it needs, and for validations how to read the
presented token (validations have no handler: api.py judges consecutive ones together).
Validation is the hot path: its answer is written directly (`verdict_answer`).
"""

from __future__ import annotations

import functools
import json
import re
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from tokencli.domain import tokens
from tokencli.domain.durations import DurationError, parse_duration
from tokencli.domain.errors import InvalidRequestError, NotFoundError
from tokencli.domain.model import DEFAULT_TTL_SECONDS, MAX_SCOPES, CheckResult, TokenState
from tokencli.domain.rules import validate_scopes
from tokencli.http import openapi, viewers
from tokencli.http.answers import (
    HTML,
    JSON,
    METRICS_TYPE,
    Answer,
    Call,
    Need,
    Route,
    json_answer,
)
from tokencli.http.bodies import parse_json_body
from tokencli.http.http11 import HttpError, Request
from tokencli.service import listing, views
from tokencli.service.checking import Presented


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
