"""Scopes: issued with a token, required by a check, validated wherever a name appears.

docs/design.md, "Command line" and "HTTP (tokencli serve)": names are
`[a-z0-9:._-]{1,64}`, at most 32 per token, stored once each and shown sorted; a check
lacking a required scope is `insufficient_scope` and takes no use; a bad name anywhere is
exit 2 or HTTP 400 and takes no use.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain import tokens
from tokencli.domain.errors import InvalidRequestError
from tokencli.domain.model import MAX_SCOPES, TokenState
from tokencli.domain.rules import validate_scope, validate_scopes
from tokencli.http.answers import ApiConfig
from tokencli.http.http11 import Request
from tokencli.service.checking import Presented
from tokencli.service.service import TokenService
from tokencli.service.views import iso_time
from tokencli.store.sqlite.queries import SQLiteStore

from support import Clock, Served, answer_one, api_call

SCOPE_CHARACTERS = string.ascii_lowercase + string.digits + ":._-"
BAD_NAMES = [
    "",
    "A",
    "Deploy",
    "a b",
    "a,b",
    "a/b",
    "x" * 65,
    "caf\u00e9",
    "\uff41",  # fullwidth a
    "\u212a",  # Kelvin sign: lower() of it is an ASCII k
    "\u0661",  # Arabic-Indic digit one: a Unicode digit, not 0-9
    "a\x00",
    "a\n",
    "\x1b[31mred",
    "a\u202e",
    "ok\t",
]
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args))


def issue_json(runner: CliRunner, *args: str) -> dict[str, Any]:
    result = invoke(runner, "issue", "--json", *args)
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def check_json(runner: CliRunner, token: str, *scopes: str) -> tuple[int, dict[str, Any]]:
    args = [item for scope in scopes for item in ("--scope", scope)]
    result = invoke(runner, "check", "--json", *args, token)
    return result.exit_code, json.loads(result.stdout)


def stored_count(runner: CliRunner) -> int:
    result = invoke(runner, "list", "--all", "--json")
    assert result.exit_code == 0, result.output
    return len(json.loads(result.stdout))


# -- issue -----------------------------------------------------------------------------


def test_issue_scope_is_repeatable_stored_once_and_shown_sorted(runner: CliRunner) -> None:
    issued = issue_json(runner, "--scope", "b", "--scope", "read:logs", "--scope", "b")
    assert issued["scopes"] == ["b", "read:logs"]
    listed = json.loads(invoke(runner, "list", "--json").stdout)
    assert listed[0]["scopes"] == ["b", "read:logs"]
    shown = json.loads(invoke(runner, "show", "--json", issued["id"]).stdout)
    assert shown["scopes"] == ["b", "read:logs"]
    assert check_json(runner, issued["token"])[1]["scopes"] == ["b", "read:logs"]


def test_a_token_without_scopes_shows_an_empty_array_everywhere(
    runner: CliRunner, on_file: TokenService
) -> None:
    issued = issue_json(runner)
    assert issued["scopes"] == []
    assert json.loads(invoke(runner, "list", "--json").stdout)[0]["scopes"] == []
    assert json.loads(invoke(runner, "list", "--jsonl").stdout)["scopes"] == []
    assert json.loads(invoke(runner, "show", "--json", issued["id"]).stdout)["scopes"] == []
    assert check_json(runner, issued["token"])[1]["scopes"] == []
    assert api_call(on_file, "GET", f"/app/valid/{issued['token']}")[2]["scopes"] == []
    assert api_call(on_file, "GET", f"/app/tokens/{issued['id']}")[2]["scopes"] == []


def test_edges_of_a_good_name_are_accepted(runner: CliRunner) -> None:
    names = ["a", "0", ":", ".", "_", "-", "x" * 64, "read:logs.v2_x-y"]
    issued = issue_json(runner, *[item for name in names for item in ("--scope", name)])
    assert issued["scopes"] == sorted(names)


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_scope_at_issue_is_a_usage_error_and_stores_nothing(
    runner: CliRunner, name: str
) -> None:
    result = invoke(runner, "issue", "--scope", "fine", "--scope", name)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "bad scope name" in result.stderr
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr
    assert stored_count(runner) == 0


def test_thirty_two_scopes_are_fine_and_thirty_three_are_refused(runner: CliRunner) -> None:
    def scopes(count: int) -> list[str]:
        return [item for n in range(count) for item in ("--scope", f"s{n:02d}")]

    assert len(issue_json(runner, *scopes(MAX_SCOPES))["scopes"]) == MAX_SCOPES
    result = invoke(runner, "issue", *scopes(MAX_SCOPES + 1))
    assert result.exit_code == 2
    assert "at most 32" in result.stderr
    assert stored_count(runner) == 1
    # Thirty-three given, thirty-two different: the limit is on what is stored.
    again = issue_json(runner, *scopes(MAX_SCOPES), "--scope", "s00")
    assert len(again["scopes"]) == MAX_SCOPES


# -- check -----------------------------------------------------------------------------


def test_check_requires_every_scope_named(runner: CliRunner) -> None:
    token = issue_json(runner, "--scope", "a", "--scope", "b")["token"]
    assert check_json(runner, token)[0] == 0
    assert check_json(runner, token, "a")[0] == 0
    assert check_json(runner, token, "b", "a")[0] == 0
    assert check_json(runner, token, "a", "a")[0] == 0
    code, payload = check_json(runner, token, "a", "c")
    assert (code, payload["state"], payload["valid"]) == (1, "insufficient_scope", False)
    result = invoke(runner, "check", "--scope", "c", token)
    assert (result.exit_code, result.stdout) == (1, "insufficient_scope\n")


def test_insufficient_scope_takes_no_use(runner: CliRunner) -> None:
    issued = issue_json(runner, "--uses", "1", "--scope", "read")
    for _ in range(3):
        code, payload = check_json(runner, issued["token"], "write")
        assert (code, payload["state"], payload["uses_left"]) == (1, "insufficient_scope", 1)
    code, payload = check_json(runner, issued["token"], "read")
    assert (code, payload["state"], payload["uses_left"]) == (0, "valid", 0)
    assert check_json(runner, issued["token"], "read")[1]["state"] == "used_up"
    outcomes = [
        line.split("\t")[3]
        for line in invoke(runner, "audit", "--token", issued["id"]).stdout.splitlines()[1:]
    ]
    assert outcomes == ["issued", *["insufficient_scope"] * 3, "valid", "used_up"]


@pytest.mark.parametrize("name", ["BAD", "", "a b", "x" * 65, "\x1b"], ids=repr)
def test_a_bad_scope_at_check_is_a_usage_error_and_takes_no_use(
    runner: CliRunner, name: str
) -> None:
    issued = issue_json(runner, "--uses", "1", "--scope", "read")
    result = invoke(runner, "check", "--scope", "read", "--scope", name, issued["token"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert check_json(runner, issued["token"], "read") == (0, check_json_expected(issued))


def check_json_expected(issued: dict[str, Any]) -> dict[str, Any]:
    """What `check --json` says of a single-use token on its one valid check."""
    return {
        **{key: issued[key] for key in ("id", "label", "created_at", "expires_at", "scopes")},
        "uses_left": 0,
        "state": "valid",
        "valid": True,
    }


def test_check_with_ten_thousand_required_scopes(runner: CliRunner) -> None:
    token = issue_json(runner, "--scope", "s1")["token"]
    many = [item for n in range(10_000) for item in ("--scope", f"s{n}")]
    result = invoke(runner, "check", *many, token)
    assert (result.exit_code, result.stdout) == (1, "insufficient_scope\n")


def test_verdict_order_when_several_apply(service: TokenService, clock: Clock) -> None:
    """malformed, unknown, revoked, expired, used_up, insufficient_scope, valid."""

    def spent(ttl: int) -> str:
        token = service.issue(ttl_seconds=ttl, uses=1, scopes=["a"]).token
        assert service.check(token).valid
        return token

    revoked_expired_spent_lacking = spent(60)
    service.revoke(revoked_expired_spent_lacking)
    expired_spent_lacking = spent(60)
    spent_lacking = spent(3600)
    lacking = service.issue(ttl_seconds=3600, uses=1, scopes=["a"]).token
    fine = service.issue(ttl_seconds=3600, scopes=["a", "b"]).token
    clock.advance(120)
    cases = {
        "not a token": TokenState.MALFORMED,
        revoked_expired_spent_lacking[:-1] + "?": TokenState.MALFORMED,
        tokens.generate().plaintext: TokenState.UNKNOWN,
        revoked_expired_spent_lacking: TokenState.REVOKED,
        expired_spent_lacking: TokenState.EXPIRED,
        spent_lacking: TokenState.USED_UP,
        lacking: TokenState.INSUFFICIENT_SCOPE,
        fine: TokenState.VALID,
    }
    for token, expected in cases.items():
        assert service.check(token, ["a", "b"]).state is expected, token
    # Judged together in one batch, the verdicts are the same.
    batch = service.check_many([Presented(token, ("a", "b")) for token in cases])
    assert [result.state for result in batch] == list(cases.values())
    assert service.show(lacking).uses_left == 1


def forged_with_id_of(token: str) -> str:
    """A well-formed token (checksum and all) with `token`'s ID and another secret."""
    body = token.split(":")[0] + ":" + tokens.generate().plaintext.split(":")[1][:24]
    forged = body + tokens._checksum(body)
    assert tokens.parse(forged) == token.split(":")[0] and forged != token
    return forged


def test_a_known_id_with_a_wrong_secret_is_unknown_and_reveals_nothing(
    service: TokenService, runner: CliRunner, on_file: TokenService
) -> None:
    issued = service.issue(scopes=["a"], label="secret project", uses=3)
    service.revoke(issued.info.id)
    result = service.check(forged_with_id_of(issued.token), ["zzz"])
    assert (result.state, result.info) == (TokenState.UNKNOWN, None)
    # Whoever holds only the public ID learns nothing of the token from a check.
    other = on_file.issue(scopes=["a"], label="secret project", uses=3).token
    code, payload = check_json(runner, forged_with_id_of(other))
    assert (code, payload) == (1, {"valid": False, "state": "unknown"})
    status, _, payload = api_call(on_file, "GET", f"/app/valid/{forged_with_id_of(other)}")
    assert payload == {"status_code": 200, "status": False, "state": "unknown"}
    assert on_file.show(other).uses_left == 3


def test_rotate_carries_the_scopes_to_the_successor(
    runner: CliRunner, on_file: TokenService
) -> None:
    old = on_file.issue(scopes=["deploy", "read:logs"], uses=3, label="ci")
    result = invoke(runner, "rotate", old.info.id, "--json")
    assert result.exit_code == 0, result.output
    new = json.loads(result.stdout)
    assert new["scopes"] == ["deploy", "read:logs"]
    assert (new["label"], new["uses_left"]) == ("ci", 3)
    assert check_json(runner, new["token"], "deploy", "read:logs")[0] == 0
    assert check_json(runner, new["token"], "admin")[1]["state"] == "insufficient_scope"


# -- the other places a name appears ------------------------------------------------------


@pytest.mark.parametrize("command", ["list", "revoke", "export"])
def test_a_bad_scope_selector_is_a_usage_error(runner: CliRunner, command: str) -> None:
    issue_json(runner, "--scope", "deploy")
    result = invoke(runner, command, "--scope", "Deploy")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert json.loads(invoke(runner, "list", "--json").stdout)[0]["state"] == "valid"


# -- HTTP ------------------------------------------------------------------------------


def test_http_issue_takes_scopes(service: TokenService) -> None:
    status, _, payload = api_call(service, "POST", "/app/token", {"scopes": ["b", "a", "b"]})
    assert status == 200, payload
    assert list(payload) == ["status_code", "token"]
    info = service.show(payload["token"])
    assert info.scopes == ("a", "b")
    assert api_call(service, "POST", "/app/token", {"scopes": None})[0] == 200
    assert api_call(service, "POST", "/app/token", {"scopes": []})[0] == 200


@pytest.mark.parametrize(
    "scopes",
    [
        "a",
        ["A"],
        [1],
        [None],
        [["a"]],
        {"a": 1},
        [""],
        ["x" * 65],
        [f"s{n}" for n in range(MAX_SCOPES + 1)],
        True,
    ],
    ids=repr,
)
def test_http_issue_with_bad_scopes_is_400_and_stores_nothing(
    service: TokenService, scopes: object
) -> None:
    status, _, payload = api_call(service, "POST", "/app/token", {"scopes": scopes})
    assert status == 400, payload
    assert payload["status_code"] == 400 and payload["detail"]
    assert list(service.list_tokens()) == []


def test_http_validation_requires_query_scopes(service: TokenService) -> None:
    token = service.issue(uses=5, scopes=["a", "b"]).token
    status, _, payload = api_call(service, "GET", f"/app/valid/{token}?scope=a&scope=b")
    assert (status, payload["state"], payload["uses_left"]) == (200, "valid", 4)
    status, _, payload = api_call(service, "GET", f"/app/valid/{token}?scope=a&scope=c")
    assert payload == {
        "status_code": 200,
        "status": False,
        "state": "insufficient_scope",
        "id": token[:12],
        "expires_at": payload["expires_at"],
        "uses_left": 4,  # no use taken
        "scopes": ["a", "b"],
    }
    status, _, payload = api_call(service, "POST", f"/app/valid/{token}?scope=b")
    assert (payload["state"], payload["uses_left"]) == ("valid", 3)


def test_http_validation_body_scopes_and_the_bodys_token(service: TokenService) -> None:
    token = service.issue(uses=1, scopes=["a"]).token
    for body in (
        {"token": token, "scopes": ["b"]},
        {"scopes": ["a", "b"]},
    ):
        target = "/app/valid" if "token" in body else f"/app/valid/{token}"
        assert api_call(service, "POST", target, body)[2]["state"] == "insufficient_scope"
    # A body token that differs from the path's: 400, and the token keeps its use.
    other = service.issue().token
    for differing in (other, token.upper(), token + " ", token[:-1], 5, [token], ""):
        status, _, payload = api_call(service, "POST", f"/app/valid/{token}", {"token": differing})
        assert status == 400, (differing, payload)
    status, _, payload = api_call(service, "POST", f"/app/valid/{token}", {"token": token})
    assert (status, payload["state"], payload["uses_left"]) == (200, "valid", 0)


def test_post_app_valid_takes_the_token_from_the_body(service: TokenService) -> None:
    token = service.issue(uses=2, scopes=["a"]).token
    status, _, payload = api_call(service, "POST", "/app/valid", {"token": token, "scopes": ["a"]})
    assert (status, payload["status"], payload["uses_left"]) == (200, True, 1)
    status, _, payload = api_call(service, "POST", "/app/valid?scope=b", {"token": token})
    assert payload["state"] == "insufficient_scope"
    for body in (b"", b"{}", b"[]", b'{"token": 5}', b'{"token": null}', b"nope"):
        status, _, payload = api_call(service, "POST", "/app/valid", body)
        assert status == 400, body
    status, _, payload = api_call(service, "POST", "/app/valid", {"token": token, "extra": 1})
    assert status == 400 and "extra" in payload["detail"]
    assert service.show(token).uses_left == 1


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", "/app/valid/{token}?scope=A", None),
        ("GET", "/app/valid/{token}?scope=", None),
        ("GET", "/app/valid/{token}?scope", None),
        ("GET", "/app/valid/{token}?scope=a+b", None),
        ("GET", "/app/valid/{token}?scope=%1b%5b31m", None),
        ("GET", "/app/valid/{token}?scope=%ff", None),
        ("GET", "/app/valid/{token}?scope=a&scope=" + "x" * 65, None),
        ("POST", "/app/valid/{token}", {"scopes": ["A"]}),
        ("POST", "/app/valid/{token}", {"scopes": "a"}),
        ("POST", "/app/valid/{token}?scope=BAD", {"scopes": ["a"]}),
        ("POST", "/app/valid", {"token": "{token}", "scopes": ["a", 7]}),
        ("POST", "/app/valid?scope=%00", {"token": "{token}"}),
    ],
)
def test_a_bad_scope_in_a_validation_is_400_and_takes_no_use(
    service: TokenService, method: str, target: str, body: dict[str, Any] | None
) -> None:
    token = service.issue(uses=1, scopes=["a"]).token
    if body is not None and body.get("token") == "{token}":
        body = {**body, "token": token}
    status, _, payload = api_call(service, method, target.replace("{token}", token), body)
    assert status == 400, payload
    assert set(payload) == {"status_code", "detail"}
    assert "\x1b" not in payload["detail"]
    assert service.show(token).uses_left == 1
    assert service.check(token, ["a"]).valid


def test_a_bad_scope_in_the_admin_list_is_400(service: TokenService) -> None:
    service.issue(scopes=["a"])
    assert api_call(service, "GET", "/app/tokens?scope=A")[0] == 400
    assert api_call(service, "GET", "/app/tokens?scope=a&scope=")[0] == 400
    status, _, payload = api_call(service, "GET", "/app/tokens?scope=a")
    assert status == 200 and len(payload["tokens"]) == 1


def test_validation_answers_carry_the_verdict_and_public_fields_when_known(
    service: TokenService, clock: Clock
) -> None:
    known = service.issue(ttl_seconds=60, uses=2, scopes=["z", "a"])
    expected_keys = ["status_code", "status", "state", "id", "expires_at", "uses_left", "scopes"]
    status, _, payload = api_call(service, "GET", f"/app/valid/{known.token}")
    assert list(payload) == expected_keys
    # uses_left is what is left after this validation, as `check --json` says.
    assert (payload["uses_left"], payload["scopes"], payload["id"]) == (
        1,
        ["a", "z"],
        known.info.id,
    )
    assert payload["expires_at"] == iso_time(int(clock.now) + 60)
    clock.advance(60)
    status, _, payload = api_call(service, "GET", f"/app/valid/{known.token}")
    assert (payload["state"], payload["status"], payload["uses_left"]) == ("expired", False, 1)
    assert list(payload) == expected_keys
    for text, state in (("garbage", "malformed"), (tokens.generate().plaintext, "unknown")):
        status, _, payload = api_call(service, "GET", f"/app/valid/{text}")
        assert payload == {"status_code": 200, "status": False, "state": state}


def test_scopes_over_the_real_server(serve: Callable[..., Served], db_path: Path) -> None:
    served = serve()
    status, _, payload = served.request(
        "POST", "/app/token", json.dumps({"uses": 1, "scopes": ["deploy"]})
    )
    assert status == 200, payload
    token = payload["token"]
    status, _, payload = served.request("GET", f"/app/valid/{token}?scope=deploy&scope=admin")
    assert (status, payload["state"], payload["uses_left"]) == (200, "insufficient_scope", 1)
    status, _, payload = served.request("GET", f"/app/valid/{quote(token)}?scope=Deploy")
    assert status == 400
    status, _, payload = served.request("GET", f"/app/valid/{token}?scope=deploy")
    assert (payload["state"], payload["uses_left"]) == ("valid", 0)


# -- the name validator and query parsing, any input --------------------------------------


def reference_is_good(name: object) -> bool:
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 64
        and all(character in SCOPE_CHARACTERS for character in name)
    )


NAMES = st.text(
    alphabet=st.sampled_from(SCOPE_CHARACTERS) | st.characters(codec="utf-8"), max_size=70
)


@FAST
@given(NAMES | st.text(max_size=80) | st.integers() | st.none() | st.binary(max_size=10))
@example("a" * 64)
@example("a" * 65)
@example("a\n")  # `$` in a regex matches before a final newline: fullmatch must not
@example("\u212a")
def test_validate_scope_accepts_exactly_the_documented_names(name: object) -> None:
    if reference_is_good(name):
        assert validate_scope(name) == name
        return
    with pytest.raises(InvalidRequestError) as refused:
        validate_scope(name)
    message = str(refused.value)
    assert message.startswith("bad scope name") and len(message) < 200
    assert message.isprintable()


@FAST
@given(st.lists(NAMES, max_size=40))
def test_validate_scopes_is_sorted_unique_and_bounded(names: list[str]) -> None:
    unique = set(names)
    if all(reference_is_good(name) for name in names) and len(unique) <= MAX_SCOPES:
        assert validate_scopes(names) == tuple(sorted(unique))
    else:
        with pytest.raises(InvalidRequestError):
            validate_scopes(names)


QUERY_NAMES = st.sampled_from(["a", "b:c", "d", "read.x_y-z", "zz"]) | NAMES


@FAST
@given(required=st.lists(QUERY_NAMES, max_size=12))
def test_query_scopes_are_parsed_and_judged(service: TokenService, required: list[str]) -> None:
    token = service.issue(scopes=["a", "b:c", "read.x_y-z"]).token
    query = urlencode([("scope", name) for name in required])
    status, _, payload = api_call(service, "GET", f"/app/valid/{token}?{query}")
    if not all(reference_is_good(name) for name in required):
        assert status == 400, payload
        assert set(payload) == {"status_code", "detail"}
        return
    assert status == 200, payload
    holds = set(required) <= {"a", "b:c", "read.x_y-z"}
    assert payload["state"] == ("valid" if holds else "insufficient_scope")


@FAST
@given(raw=st.text(alphabet=st.sampled_from("scope=&;+%2Fa:b0Z\x00é#?"), max_size=60))
def test_any_query_string_is_answered_200_or_400(service: TokenService, raw: str) -> None:
    token = service.issue(uses=1).token
    answer = answer_one(
        service, Request("GET", f"/app/valid/{token}?{raw}", "HTTP/1.1"), ApiConfig()
    )
    assert int(answer.status) in (200, 400), answer.body
    if int(answer.status) == 400:
        assert service.show(token).uses_left == 1


def test_checks_judged_together_agree_with_checks_one_by_one(service: TokenService) -> None:
    """After a use taken earlier in the same batch, a check lacking a scope sees what is
    left: `used_up` once nothing is (it comes before insufficient_scope), and the uses
    left after the earlier checks, not before them."""
    single = service.issue(uses=1, scopes=["a"]).token
    triple = service.issue(uses=3, scopes=["a"]).token
    batch = [
        Presented(single),
        Presented(single, ("b",)),
        Presented(triple),
        Presented(triple, ("b",)),
        Presented(triple),
        Presented(triple, ("b",)),
    ]
    together = [(r.state, r.info.uses_left if r.info else None) for r in service.check_many(batch)]
    assert together == [
        (TokenState.VALID, 0),
        (TokenState.USED_UP, 0),
        (TokenState.VALID, 2),
        (TokenState.INSUFFICIENT_SCOPE, 2),
        (TokenState.VALID, 1),
        (TokenState.INSUFFICIENT_SCOPE, 1),
    ]
    # The same checks one by one, on fresh tokens, say the same.
    single = service.issue(uses=1, scopes=["a"]).token
    triple = service.issue(uses=3, scopes=["a"]).token
    one_by_one = []
    for item in batch:
        text = single if item.text == batch[0].text else triple
        result = service.check(text, item.scopes)
        one_by_one.append((result.state, result.info.uses_left if result.info else None))
    assert one_by_one == together


def test_required_scopes_are_unbounded_in_a_body_as_in_a_query(service: TokenService) -> None:
    """A token holds at most 32 scopes; requiring more is insufficient_scope, wherever the
    requirement is written (it was 400 in a body, 200 in a query)."""
    token = service.issue(uses=1, scopes=["s0"]).token
    many = [f"s{n}" for n in range(MAX_SCOPES + 8)]
    query = urlencode([("scope", name) for name in many])
    for method, target, body in (
        ("GET", f"/app/valid/{token}?{query}", None),
        ("POST", f"/app/valid/{token}", {"scopes": many}),
        ("POST", "/app/valid", {"token": token, "scopes": many}),
    ):
        status, _, payload = api_call(service, method, target, body)
        assert (status, payload["state"]) == (200, "insufficient_scope"), target
    assert service.show(token).uses_left == 1


def test_rotate_and_renew_of_an_ended_token_say_so_in_words(
    runner: CliRunner, on_file: TokenService
) -> None:
    token_id = on_file.issue(scopes=["a"]).info.id
    on_file.revoke(token_id)
    for command, verb in (("rotate", "rotated"), ("renew", "renewed")):
        result = invoke(runner, command, token_id)
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: token {token_id} is revoked; only a live token can be {verb}\n"
        )


def test_ten_thousand_scopes_in_a_query_string(
    service: TokenService, serve: Callable[..., Served], db_path: Path
) -> None:
    token = service.issue(uses=1, scopes=["s1"]).token
    query = "&".join(f"scope=s{n}" for n in range(10_000))
    status, _, payload = api_call(service, "GET", f"/app/valid/{token}?{query}")
    assert (status, payload["state"], payload["uses_left"]) == (200, "insufficient_scope", 1)
    status, _, payload = api_call(service, "GET", f"/app/valid/{token}?{query}&scope=BAD")
    assert status == 400
    # Over the wire the request line is limited to 8 KiB: 414, and the token keeps its use.
    store = SQLiteStore.open(db_path, create=True)
    try:
        on_disk = TokenService(store).issue(uses=1, scopes=["s1"]).token
        served = serve()
        assert served.request("GET", f"/app/valid/{on_disk}?{query}")[0] == 414
        assert TokenService(store).show(on_disk).uses_left == 1
    finally:
        store.close()


@pytest.mark.parametrize("query", ["scopes=admin", "Scope=admin", "scope=admin&x=1"])
def test_a_mistyped_scope_parameter_is_refused_not_ignored(
    serve: Callable[..., Served], query: str
) -> None:
    served = serve()
    token = served.request("POST", "/app/token", body='{"uses": 1}')[2]["token"]
    status, _, payload = served.request("GET", f"/app/valid/{token}?{query}")
    assert status == 400 and "unknown query parameter" in payload["detail"]
    # The single use is still there: the refused request took nothing.
    assert served.request("GET", f"/app/valid/{token}")[2]["state"] == "valid"
