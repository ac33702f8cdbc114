"""Duplicate keys in a JSON body are refused (400) at every depth (issue 18 item 16): with
the last one winning, `"scopes": [...], "scopes": []` dropped a requirement behind a
proxy that reads the first. Hypothesis writes bodies as text, objects as lists of members
that may repeat a key (also spelled differently: `"a"` and `"\\u0061"` are one key)."""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencli.http.bodies import parse_json_body
from tokencli.http.http11 import HttpError

from support import ADMIN_KEY, Served


class Obj(NamedTuple):
    """A JSON object as written: members in order, keys possibly repeated."""

    members: list[tuple[str, Any]]


def spell_key(key: str, escaped: bool) -> str:
    """A key as JSON text, plain or with every character \\u-escaped."""
    if not escaped:
        return json.dumps(key)
    return '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"'


def write(value: Any, draw_escape: Callable[[], bool]) -> str:
    if isinstance(value, Obj):
        members = ",".join(
            f"{spell_key(key, draw_escape())}:{write(item, draw_escape)}"
            for key, item in value.members
        )
        return "{" + members + "}"
    if isinstance(value, list):
        return "[" + ",".join(write(item, draw_escape) for item in value) + "]"
    return json.dumps(value)


def repeats_a_key(value: Any) -> bool:
    if isinstance(value, Obj):
        keys = [key for key, _ in value.members]
        return len(set(keys)) != len(keys) or any(repeats_a_key(v) for _, v in value.members)
    if isinstance(value, list):
        return any(repeats_a_key(item) for item in value)
    return False


def as_python(value: Any) -> Any:
    if isinstance(value, Obj):
        return {key: as_python(item) for key, item in value.members}
    if isinstance(value, list):
        return [as_python(item) for item in value]
    return value


KEYS = st.sampled_from(["a", "b", "scopes", "token", "ttl", "é", ""])
SCALARS = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=5)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.lists(st.tuples(KEYS, inner), max_size=4).map(Obj)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(value=VALUES, escapes=st.data())
def test_a_body_is_refused_exactly_when_some_object_repeats_a_key(
    value: Any, escapes: st.DataObject
) -> None:
    text = write(value, lambda: escapes.draw(st.booleans()))
    if repeats_a_key(value):
        with pytest.raises(HttpError) as refused:
            parse_json_body(text.encode())
        assert refused.value.status == HTTPStatus.BAD_REQUEST
        assert "repeats the key" in refused.value.detail
    else:
        assert parse_json_body(text.encode()) == as_python(value)


def test_the_refusal_names_the_key_escaped() -> None:
    with pytest.raises(HttpError) as refused:
        parse_json_body(b'{"x": {"\\u001b[2J": 1, "\\u001b[2J": 2}}')
    assert refused.value.detail == "body repeats the key '\\\\x1b[2J'"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/app/token", '{"scopes": ["deploy"], "scopes": []}'),
        ("POST", "/app/token", '{"ttl": "1h", "label": "a", "\\u0074tl": "9w"}'),
        ("POST", "/app/valid", '{"token": "a", "scopes": ["admin"], "scopes": []}'),
        ("POST", "/app/valid", '{"token": "x", "scopes": [], "extra": {"k": 1, "k": 2}}'),
    ],
)
def test_the_real_server_answers_400_to_a_repeated_key(
    serve: Callable[..., Served], method: str, path: str, body: str
) -> None:
    served = serve(admin_key=ADMIN_KEY)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    status, _, payload = served.request(method, path, body=body, headers=headers)
    assert (status, payload["status_code"]) == (400, 400)
    assert "repeats the key" in payload["detail"]
    listed = served.request("GET", "/app/tokens", headers=headers)[2]["tokens"]
    assert listed == []  # nothing issued on a refused body
