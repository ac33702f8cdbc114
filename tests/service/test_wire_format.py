"""The hand-written JSON of the hot path equals what json.dumps would write, and its
hand-built ISO times what strftime writes."""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from tokencli.domain.model import SCOPE_PATTERN, CheckResult, TokenInfo, TokenState
from tokencli.http.routes import verdict_answer
from tokencli.service import views

IDS = st.from_regex(r"[a-z2-7]{12}", fullmatch=True)
SCOPES = st.lists(st.from_regex(SCOPE_PATTERN, fullmatch=True), max_size=5, unique=True)
INFOS = st.builds(
    TokenInfo,
    id=IDS,
    label=st.none() | st.text(max_size=20),
    created_at=st.integers(0, 2**33),
    expires_at=st.integers(0, 2**33),
    uses_left=st.none() | st.integers(0, 10**9),
    state=st.sampled_from(list(TokenState)),
    scopes=SCOPES.map(lambda names: tuple(sorted(names))),
)


@given(state=st.sampled_from(list(TokenState)), info=st.none() | INFOS)
def test_verdict_bodies_are_the_json_of_their_fields(
    state: TokenState, info: TokenInfo | None
) -> None:
    answer = verdict_answer(CheckResult(state, info), "/app/valid/{token}")
    expected: dict[str, object] = {
        "status_code": 200,
        "status": state is TokenState.VALID,
        "state": state.value,
    }
    if info is not None:
        public = views.token_json(info)
        expected.update({key: public[key] for key in ("id", "expires_at", "uses_left", "scopes")})
    assert json.loads(answer.body) == expected
    assert list(json.loads(answer.body)) == list(expected)  # the original keys first
    assert answer.verdict == state.value and answer.status == 200


@given(info=INFOS, label=st.none() | st.text(max_size=40))
def test_listing_lines_are_the_json_of_token_json(info: TokenInfo, label: str | None) -> None:
    info = info._replace(label=label)
    assert views.token_json_text(info) == json.dumps(views.token_json(info))


@given(st.integers(min_value=-(2**34), max_value=253402300799))
def test_iso_time_is_what_strftime_writes(epoch_seconds: int) -> None:
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))
    assert views.iso_time(epoch_seconds) == expected
