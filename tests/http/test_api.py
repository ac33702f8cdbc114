"""The HTTP application (tokencli.http.api) called directly: requests in, answers out, no
sockets. Every route, every error, the key rules, batches and their order, and a bug in
one handler staying that request's 500."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokencli.domain import tokens
from tokencli.domain.model import TokenState
from tokencli.http import answers, api, openapi, routes
from tokencli.http.answers import Answer, ApiConfig, Keys
from tokencli.http.bodies import MAX_JSON_DEPTH, parse_json_body
from tokencli.http.http11 import HttpError, Request
from tokencli.http.metrics import Counters
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import ADMIN_KEY, VALIDATE_KEY, Clock, answer_all, answer_one

FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def http_service(service: TokenService) -> TokenService:
    """The test's service as the server makes it: same store and clock, source "http"."""
    return TokenService(service.store, service._clock, source="http")


def request(
    method: str,
    target: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> Request:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["authorization"] = f"Bearer {key}"
    return Request(method, target, "HTTP/1.1", all_headers, raw)


def payload(answer: Answer) -> Any:
    assert answer.content_type == answers.JSON
    return json.loads(answer.body)


# -- every route -------------------------------------------------------------------------


def test_an_issue_answer_is_the_bytes_json_dumps_gives(http_service: TokenService) -> None:
    # The answer is written without json.dumps (hot path); it must not differ by a byte.
    for _ in range(50):
        answer = answer_one(http_service, request("POST", "/app/token"), ApiConfig())
        token = payload(answer)["token"]
        assert answer.body == json.dumps({"status_code": 200, "token": token}).encode()
        assert tokens.parse(token) == token.split(":")[0]


def test_every_route_answers(http_service: TokenService, clock: Clock) -> None:
    metrics_page = b"# HELP tokencli_up 1\n"
    config = ApiConfig(counters=Counters(), metrics_page=lambda: metrics_page)
    issued = payload(
        answer_one(
            http_service, request("POST", "/app/token", {"uses": 3, "scopes": ["a"]}), config
        )
    )
    token = issued["token"]
    token_id = token.split(":")[0]
    expired = http_service.issue(ttl_seconds=1)
    clock.advance(1)
    cases: list[tuple[Request, str, int, Any]] = [
        (
            request("GET", f"/app/valid/{token}"),
            "/app/valid/{token}",
            200,
            {"state": "valid", "uses_left": 2},
        ),
        (
            request("POST", f"/app/valid/{token}"),
            "/app/valid/{token}",
            200,
            {"state": "valid", "uses_left": 1},
        ),
        (
            request("POST", "/app/valid", {"token": token, "scopes": ["b"]}),
            "/app/valid",
            200,
            {"state": "insufficient_scope", "uses_left": 1},
        ),
        (request("GET", "/app/tokens"), "/app/tokens", 200, None),
        (
            request("GET", f"/app/tokens/{token_id}"),
            "/app/tokens/{id}",
            200,
            {"id": token_id, "uses_left": 1},
        ),
        (
            request("DELETE", f"/app/tokens/{token_id}"),
            "/app/tokens/{id}",
            200,
            {"status": True, "id": token_id},
        ),
        (
            request("DELETE", "/app/clear/all/tokens"),
            "/app/clear/all/tokens",
            200,
            {"status": True, "purged": 2},
        ),
        (request("GET", "/health"), "/health", 200, {"status_code": 200, "status": "ok"}),
        (request("GET", "/openapi.json"), "/openapi.json", 200, None),
    ]
    for sent, template, status, expected in cases:
        answer = answer_one(http_service, sent, config)
        assert (int(answer.status), answer.route) == (status, template), answer.body
        body = payload(answer)
        for key, value in (expected or {}).items():
            assert body[key] == value, (template, body)
    assert expired.info.id not in [info.id for info in http_service.list_tokens()]
    assert config.counters is not None
    assert config.counters.issued == 1 and config.counters.purged == 2
    assert config.counters.verdicts == {"valid": 2, "insufficient_scope": 1}
    for target, content_type in (
        ("/docs", answers.HTML),
        ("/redoc", answers.HTML),
        ("/metrics", answers.METRICS_TYPE),
    ):
        answer = answer_one(http_service, request("GET", target), config)
        assert (int(answer.status), answer.content_type, answer.route) == (
            200,
            content_type,
            target,
        )
    assert answer_one(http_service, request("GET", "/metrics"), config).body == metrics_page
    assert (
        payload(answer_one(http_service, request("GET", "/openapi.json"), config))
        == openapi.document()
    )


def test_every_route_in_the_table_is_documented_and_reachable() -> None:
    documented = {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert {(route.method, route.template) for route in routes.ROUTES} == documented


def test_validation_answers_say_what_happened(http_service: TokenService) -> None:
    answer = answer_one(http_service, request("GET", "/app/valid/nonsense"), ApiConfig())
    assert (answer.verdict, answer.route) == ("malformed", "/app/valid/{token}")
    assert payload(answer) == {"status_code": 200, "status": False, "state": "malformed"}


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b"nope", b"[1,]", b"\xff\xfe", b'{"ttl": 1e999999}', b" ", b"\x00", b'{"a":1}{"b":2}'],
)
def test_malformed_json_is_400(http_service: TokenService, body: bytes) -> None:
    answer = answer_one(http_service, request("POST", "/app/token", body), ApiConfig())
    assert int(answer.status) == 400, answer.body
    assert set(payload(answer)) == {"status_code", "detail"}
    assert list(http_service.list_tokens()) == []


@pytest.mark.parametrize("route", ["/app/token", "/app/valid", "/app/valid/{token}"])
def test_json_nested_too_deep_is_400_whichever_route(
    http_service: TokenService, route: str
) -> None:
    token = http_service.issue(uses=1).token
    deep = b"[" * 20_000 + b"]" * 20_000
    answer = answer_one(
        http_service, request("POST", route.replace("{token}", token), deep), ApiConfig()
    )
    assert int(answer.status) == 400
    assert "deeper" in payload(answer)["detail"]
    assert http_service.show(token).uses_left == 1


def test_unknown_path_is_404_and_wrong_method_405_with_allow(http_service: TokenService) -> None:
    for target in (
        "/",
        "/app",
        "/app/tokens/a/b",
        "/health/",
        "/APP/TOKEN",
        "/%2e%2e/",
        "/app/valid/a/b",
    ):
        answer = answer_one(http_service, request("GET", target), ApiConfig())
        assert (int(answer.status), answer.route) == (404, "unmatched"), target
        assert payload(answer) == {
            "status_code": 404,
            "detail": "no such endpoint; see /openapi.json",
        }
    for method, target, allow in (
        ("GET", "/app/token", "POST"),
        ("PUT", "/app/valid/x", "GET, POST"),
        ("GET", "/app/valid", "POST"),
        ("POST", "/app/tokens", "GET"),
        ("PATCH", "/app/tokens/abc", "GET, DELETE"),
        ("GET", "/app/clear/all/tokens", "DELETE"),
        ("\x1b[31mPOST", "/health", "GET"),
    ):
        answer = answer_one(http_service, request(method, target), ApiConfig())
        assert int(answer.status) == 405
        assert answer.headers == {"Allow": allow}
        assert "\x1b" not in payload(answer)["detail"]


def test_without_a_service_what_needs_the_store_is_503_and_the_rest_answers() -> None:
    config = ApiConfig(metrics_page=lambda: b"m\n")
    needs_store = [
        request("POST", "/app/token"),
        request("GET", "/app/valid/x"),
        request("POST", "/app/valid/x"),
        request("POST", "/app/valid", {"token": "x"}),
        request("DELETE", "/app/clear/all/tokens"),
        request("GET", "/app/tokens"),
        request("GET", "/app/tokens/aaaaaaaaaaaa"),
        request("DELETE", "/app/tokens/aaaaaaaaaaaa"),
        request("GET", "/health"),
    ]
    for refused in api.answer_requests(None, needs_store, config):
        assert int(refused.status) == 503
        assert payload(refused) == {"status_code": 503, "detail": answers.UNAVAILABLE}
    for target in ("/openapi.json", "/docs", "/redoc", "/metrics"):
        assert int(answer_one(None, request("GET", target), config).status) == 200
    assert int(answer_one(None, request("GET", "/nope"), config).status) == 404


def test_metrics_off_is_404(http_service: TokenService) -> None:
    answer = answer_one(http_service, request("GET", "/metrics"), ApiConfig())
    assert int(answer.status) == 404


# -- keys ------------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("POST", "/app/token"),
    ("DELETE", "/app/clear/all/tokens"),
    ("GET", "/app/tokens"),
    ("GET", "/app/tokens/aaaaaaaaaaaa"),
    ("DELETE", "/app/tokens/aaaaaaaaaaaa"),
    ("GET", "/metrics"),
]
VALIDATE_ROUTES = [("GET", "/app/valid/x"), ("POST", "/app/valid/x"), ("POST", "/app/valid")]
OPEN_ROUTES = [("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
KEY_CONFIGS = {
    "none": Keys(),
    "admin": Keys(admin=ADMIN_KEY),
    "validate": Keys(validate=VALIDATE_KEY),
    "both": Keys(admin=ADMIN_KEY, validate=VALIDATE_KEY),
}
PRESENTED = {"nothing": None, "admin": ADMIN_KEY, "validate": VALIDATE_KEY, "wrong": "wrong"}


def expected_refusal(kind: str, keys: Keys, presented: str | None) -> bool:
    if kind == "admin":
        return keys.admin is not None and presented != keys.admin
    if kind == "validate":
        accepted = {key for key in (keys.validate, keys.admin) if key is not None}
        return keys.validate is not None and presented not in accepted
    return False


@pytest.mark.parametrize("config_name", list(KEY_CONFIGS))
@pytest.mark.parametrize("presented_name", list(PRESENTED))
def test_the_key_rules(http_service: TokenService, config_name: str, presented_name: str) -> None:
    keys = KEY_CONFIGS[config_name]
    presented = PRESENTED[presented_name]
    config = ApiConfig(keys, metrics_page=lambda: b"m\n")
    for kind, table in (
        ("admin", ADMIN_ROUTES),
        ("validate", VALIDATE_ROUTES),
        ("open", OPEN_ROUTES),
    ):
        for method, target in table:
            body = {"token": "x"} if target == "/app/valid" else None
            answer = answer_one(http_service, request(method, target, body, key=presented), config)
            refused = expected_refusal(kind, keys, presented)
            assert (int(answer.status) == 401) is refused, (kind, method, target, answer.body)
            if refused:
                assert answer.headers == {"WWW-Authenticate": 'Bearer realm="tokencli"'}
                assert "Bearer" in payload(answer)["detail"]


def test_the_validate_key_does_not_administer(http_service: TokenService) -> None:
    config = ApiConfig(Keys(admin=ADMIN_KEY, validate=VALIDATE_KEY))
    answer = answer_one(http_service, request("POST", "/app/token", key=VALIDATE_KEY), config)
    assert int(answer.status) == 401 and list(http_service.list_tokens()) == []


@pytest.mark.parametrize(
    "header",
    [
        f"bearer {ADMIN_KEY}",
        f"BEARER {ADMIN_KEY}",
        f"Bearer  {ADMIN_KEY} ",
    ],
)
def test_the_bearer_scheme_is_case_insensitive(http_service: TokenService, header: str) -> None:
    config = ApiConfig(Keys(admin=ADMIN_KEY))
    answer = answer_one(
        http_service, request("GET", "/app/tokens", headers={"authorization": header}), config
    )
    assert int(answer.status) == 200


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        f"Basic {ADMIN_KEY}",
        ADMIN_KEY,
        f"Bearer {ADMIN_KEY}x",
        f"Bearer\t{ADMIN_KEY}",
        "Bearer \xff",
    ],
)
def test_near_miss_authorization_is_401(http_service: TokenService, header: str) -> None:
    config = ApiConfig(Keys(admin=ADMIN_KEY))
    answer = answer_one(
        http_service, request("GET", "/app/tokens", headers={"authorization": header}), config
    )
    assert int(answer.status) == 401


# -- batches ---------------------------------------------------------------------------


def test_the_same_single_use_token_twice_in_a_batch_is_valid_once(
    http_service: TokenService,
) -> None:
    token = http_service.issue(uses=1).token
    answers = answer_all(
        http_service,
        request("GET", f"/app/valid/{token}"),
        request("POST", "/app/valid", {"token": token}),
        request("POST", f"/app/valid/{token}"),
    )
    assert [payload(answer)["state"] for answer in answers] == ["valid", "used_up", "used_up"]
    assert [payload(answer)["uses_left"] for answer in answers] == [0, 0, 0]


def test_uses_are_handed_out_in_order_within_a_batch(http_service: TokenService) -> None:
    token = http_service.issue(uses=3).token
    answers = answer_all(http_service, *(request("GET", f"/app/valid/{token}") for _ in range(5)))
    assert [(payload(a)["state"], payload(a)["uses_left"]) for a in answers] == [
        ("valid", 2),
        ("valid", 1),
        ("valid", 0),
        ("used_up", 0),
        ("used_up", 0),
    ]


def test_the_order_of_pipelined_requests_is_kept(http_service: TokenService) -> None:
    token = http_service.issue(uses=5).token
    token_id = token.split(":")[0]
    answers = answer_all(
        http_service,
        request("GET", f"/app/valid/{token}"),
        request("GET", f"/app/tokens/{token_id}"),
        request("GET", f"/app/valid/{token}"),
        request("DELETE", f"/app/tokens/{token_id}"),
        request("GET", f"/app/valid/{token}"),
        request("GET", f"/app/tokens/{token_id}"),
    )
    bodies = [payload(answer) for answer in answers]
    assert (bodies[0]["state"], bodies[0]["uses_left"]) == ("valid", 4)
    assert (bodies[1]["state"], bodies[1]["uses_left"]) == ("valid", 4)
    assert (bodies[2]["state"], bodies[2]["uses_left"]) == ("valid", 3)
    assert bodies[3]["status"] is True
    assert bodies[4]["state"] == "revoked"
    assert (bodies[5]["state"], bodies[5]["uses_left"]) == ("revoked", 3)


def test_issue_then_validate_in_one_batch(http_service: TokenService) -> None:
    first = answer_all(http_service, request("POST", "/app/token", {"uses": 1}))
    token = payload(first[0])["token"]
    answers = answer_all(
        http_service,
        request("GET", f"/app/valid/{token}"),
        request("DELETE", "/app/clear/all/tokens"),
        request("GET", f"/app/valid/{token}"),
    )
    assert payload(answers[0])["state"] == "valid"
    assert payload(answers[1])["purged"] == 1
    assert payload(answers[2])["state"] == "unknown"


@pytest.mark.stores("sqlite", reason="counts the statements SQLite's trace callback reports")
def test_a_batch_of_validations_costs_a_constant_number_of_queries(
    http_service: TokenService,
) -> None:
    """For tokens of unlimited use; a use-limited one costs its own UPDATE (store contract)."""
    assert isinstance(http_service.store, SQLiteStore)
    issued = [item.token for chunk in http_service.issue_batches(count=200) for item in chunk]
    statements: list[str] = []
    connection = http_service.store._connection
    # The audit events are one executemany, which the trace reports row by row.
    connection.set_trace_callback(
        lambda statement: (
            None if statement.startswith("INSERT INTO audit") else statements.append(statement)
        )
    )
    try:
        few = answer_all(http_service, *(request("GET", f"/app/valid/{t}") for t in issued[:2]))
        few_count = len(statements)
        statements.clear()
        many = answer_all(http_service, *(request("GET", f"/app/valid/{t}") for t in issued[2:]))
    finally:
        connection.set_trace_callback(None)
    assert all(payload(answer)["status"] for answer in [*few, *many])
    assert len(statements) == few_count, statements


def test_a_bad_request_in_a_batch_spoils_only_itself(http_service: TokenService) -> None:
    token = http_service.issue(uses=2).token
    answers = answer_all(
        http_service,
        request("GET", f"/app/valid/{token}"),
        request("POST", "/app/valid", b"{"),
        request("GET", f"/app/valid/{token}?scope=BAD"),
        request("GET", "/nowhere"),
        request("POST", "/app/token", {"ttl": "0s"}),
        request("GET", f"/app/valid/{token}"),
    )
    assert [int(answer.status) for answer in answers] == [200, 400, 400, 404, 400, 200]
    assert [payload(answers[i])["uses_left"] for i in (0, 5)] == [1, 0]


def test_a_handler_bug_is_that_requests_500_alone(
    http_service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = http_service.issue(uses=2, label="secret-ish label").token
    token_id = token.split(":")[0]

    def broken(call: answers.Call) -> Answer:
        raise RuntimeError(f"bug while showing {call.request.target} {token}")

    patched = tuple(
        route._replace(handler=broken)
        if (route.method, route.template) == ("GET", "/app/tokens/{id}")
        else route
        for route in routes.ROUTES
    )
    monkeypatch.setattr(api, "ROUTES", patched)
    reported: list[str] = []
    config = ApiConfig(report=reported.append)
    answers = answer_all(
        http_service,
        request("POST", "/app/token"),
        request("GET", f"/app/valid/{token}"),
        request("GET", f"/app/tokens/{token_id}"),
        request("GET", f"/app/valid/{token}"),
        request("GET", "/health"),
        config=config,
    )
    assert [int(answer.status) for answer in answers] == [200, 200, 500, 200, 200]
    assert payload(answers[2]) == {"status_code": 500, "detail": "internal error"}
    assert answers[2].route == "/app/tokens/{id}"
    assert [payload(answers[i])["state"] for i in (1, 3)] == ["valid", "valid"]
    # The neighbours' writes were kept: both uses taken, one token issued.
    assert http_service.show(token_id).state is TokenState.USED_UP
    assert len(list(http_service.list_tokens())) == 1
    assert reported == ["internal error answering /app/tokens/{id}: RuntimeError"]
    assert token_id not in reported[0] and token not in reported[0]


def test_unmatched_and_refused_requests_never_reach_a_handler(
    http_service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(call: answers.Call) -> Answer:
        raise AssertionError("reached")

    monkeypatch.setattr(
        api,
        "ROUTES",
        tuple(route._replace(handler=boom) if route.handler else route for route in routes.ROUTES),
    )
    config = ApiConfig(Keys(admin=ADMIN_KEY))
    for sent in (request("POST", "/app/token"), request("GET", "/app/tokens")):
        assert int(answer_one(http_service, sent, config).status) == 401


# -- parse_json_body ---------------------------------------------------------------------


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ a\u00e9\u2028'), max_size=10)
JSON_TREES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(TRICKY_TEXT, children, max_size=3)
    ),
    max_leaves=60,
)


def nest(value: Any, levels: int) -> Any:
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@FAST
@given(value=JSON_TREES, extra=st.integers(0, 40), ascii_only=st.booleans())
@example(value=None, extra=MAX_JSON_DEPTH, ascii_only=True)
@example(value=None, extra=MAX_JSON_DEPTH + 1, ascii_only=True)
@example(value="[[[[", extra=MAX_JSON_DEPTH, ascii_only=False)
@example(value='"\\]]]]', extra=MAX_JSON_DEPTH, ascii_only=True)
def test_parse_json_body_refuses_exactly_what_nests_too_deep(
    value: Any, extra: int, ascii_only: bool
) -> None:
    tree = nest(value, extra)
    body = json.dumps(tree, ensure_ascii=ascii_only).encode()
    if depth_of(tree) <= MAX_JSON_DEPTH:
        assert parse_json_body(body) == tree
    else:
        with pytest.raises(HttpError) as refused:
            parse_json_body(body)
        assert refused.value.status == HTTPStatus.BAD_REQUEST
        assert "deeper" in refused.value.detail


@FAST
@given(
    raw=st.binary(max_size=200)
    | st.text(alphabet=st.sampled_from('[]{}"\\,:1 '), max_size=200).map(str.encode)
)
def test_parse_json_body_on_any_bytes_is_a_value_or_a_400(raw: bytes) -> None:
    try:
        parse_json_body(raw)
    except HttpError as error:
        assert error.status == HTTPStatus.BAD_REQUEST


def test_deep_json_in_other_encodings_is_still_a_clean_400() -> None:
    deep = "[" * 5_000 + "]" * 5_000
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        with pytest.raises(HttpError) as refused:
            parse_json_body(deep.encode(encoding))
        assert refused.value.status == HTTPStatus.BAD_REQUEST


def test_tokens_module_is_the_only_judge_of_a_token(http_service: TokenService) -> None:
    """A stranger's well-formed token is unknown over HTTP too, with nothing else said."""
    stranger = tokens.generate().plaintext
    answer = answer_one(http_service, request("GET", f"/app/valid/{stranger}"), ApiConfig())
    assert payload(answer) == {"status_code": 200, "status": False, "state": "unknown"}


def test_a_bug_answering_one_validation_is_that_validations_500_alone(
    http_service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdicts of a group are rendered one by one; one failing spoils no other."""
    real = routes.verdict_answer

    def fragile(result: Any, template: str) -> Answer:
        if result.state is TokenState.INSUFFICIENT_SCOPE:
            raise KeyError("a rendering bug")
        return real(result, template)

    monkeypatch.setattr(api, "verdict_answer", fragile)
    first = http_service.issue(uses=3, scopes=["a"]).token
    reported: list[str] = []
    answers = answer_all(
        http_service,
        request("GET", f"/app/valid/{first}"),
        request("GET", f"/app/valid/{first}?scope=b"),
        request("GET", "/health"),
        request("GET", f"/app/valid/{first}"),
        request("GET", f"/app/valid/{first}?scope=b"),
        config=ApiConfig(report=reported.append),
    )
    assert [int(answer.status) for answer in answers] == [200, 500, 200, 200, 500]
    assert [payload(answers[i])["uses_left"] for i in (0, 3)] == [2, 1]
    assert answers[1].route == "/app/valid/{token}"
    assert reported == ["internal error answering /app/valid/{token}: KeyError"] * 2
    assert http_service.show(first).uses_left == 1
