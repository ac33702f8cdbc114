"""The HTTP application: routes and handlers, request in, answer out. No sockets here.

The server frames bytes into requests, routes them (`route_request`: what each needs
of the store decides where it is answered) and hands a batch of them to `answer_batch`,
inside one store transaction (group commit). Each request is answered alone: a bad body,
a refused key or a bug in one handler is that request's 4xx or 500, never its
neighbours'. Consecutive validations in a batch are judged together
(`TokenService.check_many`), so a batch costs a constant number of queries.

The routes and their handlers are routes.py; the types they share, answers.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from tokencli.domain import tokens
from tokencli.domain.errors import InvalidRequestError, NotFoundError, StorageError, TokencliError
from tokencli.http.answers import (
    UNAVAILABLE,
    Answer,
    ApiConfig,
    Call,
    Keys,
    Need,
    Route,
    error_answer,
)
from tokencli.http.http11 import HttpError, Request
from tokencli.http.routes import ROUTES, verdict_answer
from tokencli.service import views
from tokencli.service.checking import Presented
from tokencli.service.service import TokenService

# A request with the route that answers it and the path's parameters, or with the
# routing error (404, 405) that answers it. A plain tuple: one is made per request.
Routed = tuple[Request, Route | None, dict[str, str], HttpError | None]


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
