"""`list` filters and output, GET /app/tokens, and memory that stays flat however many rows
stream out (docs/design.md, "Command line" and "Listing in pages")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.model import (
    EVERY_TOKEN,
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    TokenRecord,
    TokenState,
)
from tokencli.http.answers import ApiConfig, Keys
from tokencli.http.http11 import Request
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import ADMIN_KEY, VALIDATE_KEY, Clock, Served, answer_one, needs_executable

JSON_KEYS = ["id", "label", "created_at", "expires_at", "uses_left", "state", "scopes"]


def listed(runner: CliRunner, *args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["list", "--json", *args])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def ids_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


def by_id(zoo: dict[str, str], *names: str) -> list[str]:
    """The IDs of these tokens of the zoo in the order listings give: by ID."""
    return sorted(zoo[name] for name in names)


def at(service: TokenService, seconds_ago: int) -> TokenService:
    """The same store, on a clock `seconds_ago` behind the wall clock."""
    return TokenService(service.store, Clock(time.time() - seconds_ago))


@pytest.fixture
def zoo(on_file: TokenService) -> dict[str, str]:
    """One token of each kind, created at different times (listings go by ID)."""
    made: dict[str, str] = {}
    made["expired"] = at(on_file, 9000).issue(ttl_seconds=60, label="ci").info.id
    used = at(on_file, 8000).issue(uses=1, label="ci", scopes=["a"], ttl_seconds=86_400)
    assert at(on_file, 7999).check(used.token).valid
    made["used_up"] = used.info.id
    made["revoked"] = at(on_file, 7000).issue(label="web", scopes=["a", "b"]).info.id
    on_file.revoke(made["revoked"])
    made["ci_ab"] = (
        at(on_file, 6000).issue(label="ci", scopes=["a", "b"], ttl_seconds=86_400).info.id
    )
    made["ci_a"] = at(on_file, 5000).issue(label="ci", scopes=["a"], ttl_seconds=6000).info.id
    made["web_b"] = (
        at(on_file, 4000).issue(label="web", scopes=["b"], ttl_seconds=7 * 86_400).info.id
    )
    made["plain"] = at(on_file, 3000).issue(ttl_seconds=30 * 86_400).info.id
    return made


# -- filters ---------------------------------------------------------------------------


def test_default_is_live_tokens_by_id(runner: CliRunner, zoo: dict[str, str]) -> None:
    assert ids_of(listed(runner)) == by_id(zoo, "ci_ab", "ci_a", "web_b", "plain")
    every = ids_of(listed(runner, "--all"))
    assert every == sorted(zoo.values())


def test_label_is_exact(runner: CliRunner, zoo: dict[str, str], on_file: TokenService) -> None:
    on_file.issue(label="ci-2")
    on_file.issue(label="CI")
    assert ids_of(listed(runner, "--label", "ci")) == by_id(zoo, "ci_ab", "ci_a")
    assert ids_of(listed(runner, "--label", "ci", "--all")) == by_id(
        zoo, "expired", "used_up", "ci_ab", "ci_a"
    )
    assert listed(runner, "--label", "c") == []
    assert listed(runner, "--label", "") == []


def test_scopes_are_anded(runner: CliRunner, zoo: dict[str, str]) -> None:
    assert ids_of(listed(runner, "--scope", "a")) == by_id(zoo, "ci_ab", "ci_a")
    assert ids_of(listed(runner, "--scope", "b", "--scope", "a")) == [zoo["ci_ab"]]
    assert ids_of(listed(runner, "--scope", "b", "--all")) == by_id(
        zoo, "revoked", "ci_ab", "web_b"
    )
    assert listed(runner, "--scope", "c") == []


def test_state_is_repeatable_and_works_without_all(runner: CliRunner, zoo: dict[str, str]) -> None:
    assert ids_of(listed(runner, "--state", "expired")) == [zoo["expired"]]
    assert ids_of(listed(runner, "--state", "revoked", "--state", "used_up")) == by_id(
        zoo, "used_up", "revoked"
    )
    assert len(listed(runner, "--state", "valid")) == 4
    assert listed(runner, "--state", "used_up", "--label", "web") == []
    rows = listed(runner, "--state", "expired", "--state", "revoked", "--all")
    assert {row["id"]: row["state"] for row in rows} == {
        zoo["expired"]: "expired",
        zoo["revoked"]: "revoked",
    }


def test_expiring_within(runner: CliRunner, zoo: dict[str, str]) -> None:
    # ci_a expires in about 1000 s, ci_ab in about 80,400 s, web_b in about 6.9 days;
    # used_up in about 78,400 s, but it is not live.
    assert ids_of(listed(runner, "--expiring-within", "1h")) == [zoo["ci_a"]]
    assert ids_of(listed(runner, "--expiring-within", "1d")) == by_id(zoo, "ci_ab", "ci_a")
    assert ids_of(listed(runner, "--expiring-within", "7d")) == by_id(zoo, "ci_ab", "ci_a", "web_b")
    assert zoo["expired"] in ids_of(listed(runner, "--expiring-within", "1h", "--all"))


def test_limit_keeps_the_first_by_id(runner: CliRunner, zoo: dict[str, str]) -> None:
    live = by_id(zoo, "ci_ab", "ci_a", "web_b", "plain")
    assert ids_of(listed(runner, "--limit", "2")) == live[:2]
    assert ids_of(listed(runner, "--limit", "1", "--all")) == sorted(zoo.values())[:1]
    assert len(listed(runner, "--limit", "1000")) == 4


def test_every_filter_together(runner: CliRunner, zoo: dict[str, str]) -> None:
    rows = listed(
        runner,
        "--label",
        "ci",
        "--scope",
        "a",
        "--state",
        "valid",
        "--state",
        "used_up",
        "--expiring-within",
        "2d",
        "--limit",
        "2",
    )
    assert ids_of(rows) == by_id(zoo, "used_up", "ci_ab", "ci_a")[:2]


# -- output ----------------------------------------------------------------------------


def test_json_is_one_array_and_empty_is_brackets(runner: CliRunner, on_file: TokenService) -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert (result.exit_code, result.stdout) == (0, "[]\n")
    for _ in range(3):
        on_file.issue(scopes=["x"])
    result = runner.invoke(app, ["list", "--json"])
    assert result.stdout.count("\n") == 1
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and all(list(row) == JSON_KEYS for row in rows)


def test_jsonl_is_one_object_per_line(runner: CliRunner, on_file: TokenService) -> None:
    assert runner.invoke(app, ["list", "--jsonl"]).stdout == ""
    issued = [on_file.issue(label='l\u00e9 "q"').info.id for _ in range(3)]
    lines = runner.invoke(app, ["list", "--jsonl"]).stdout.splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert sorted(ids_of(rows)) == sorted(issued)
    assert rows[0]["label"] == 'l\u00e9 "q"' and "\\u00e9" in lines[0]


def test_json_and_jsonl_together_is_a_usage_error(runner: CliRunner, on_file: TokenService) -> None:
    on_file.issue()
    result = runner.invoke(app, ["list", "--json", "--jsonl"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "--jsonl" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--limit", "0"],
        ["--limit", "-1"],
        ["--limit", "x"],
        ["--limit", str(2**64)],
        ["--state", "live"],
        ["--state", "VALID"],
        ["--state", ""],
        ["--expiring-within", "soon"],
        ["--expiring-within", "-1h"],
        ["--scope", "A"],
    ],
)
def test_bad_filter_values_are_usage_errors(
    runner: CliRunner, on_file: TokenService, args: list[str]
) -> None:
    on_file.issue()
    result = runner.invoke(app, ["list", *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_hostile_filters(runner: CliRunner, on_file: TokenService) -> None:
    on_file.issue(label="x" * 200, scopes=["a"])
    assert len(listed(runner, "--label", "x" * 200)) == 1
    assert listed(runner, "--label", "x" * 100_000) == []
    assert listed(runner, "--label", "\x00\x1b[2J\u202e") == []
    assert len(listed(runner, "--limit", str(2**62))) == 1


# -- GET /app/tokens -------------------------------------------------------------------


def get(
    service: TokenService, target: str, config: ApiConfig | None = None, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    answer = answer_one(service, Request("GET", target, "HTTP/1.1", headers), config or ApiConfig())
    return int(answer.status), json.loads(answer.body)


def test_http_list_has_the_same_filters(on_file: TokenService, zoo: dict[str, str]) -> None:
    def ids(target: str) -> list[str]:
        status, payload = get(on_file, target)
        assert status == 200, payload
        assert list(payload) == ["status_code", "tokens", "next"]
        assert all(list(row) == JSON_KEYS for row in payload["tokens"])
        return ids_of(payload["tokens"])

    assert ids("/app/tokens") == by_id(zoo, "ci_ab", "ci_a", "web_b", "plain")
    assert ids("/app/tokens?all=false") == ids("/app/tokens")
    assert ids("/app/tokens?all=true") == sorted(zoo.values())
    assert ids("/app/tokens?label=ci") == by_id(zoo, "ci_ab", "ci_a")
    assert ids("/app/tokens?scope=a&scope=b") == [zoo["ci_ab"]]
    assert ids("/app/tokens?state=expired&state=revoked") == by_id(zoo, "expired", "revoked")
    assert ids("/app/tokens?expiring_within=1h") == [zoo["ci_a"]]
    assert ids("/app/tokens?limit=1&all=true") == sorted(zoo.values())[:1]
    assert (
        ids("/app/tokens?label=ci&scope=a&state=used_up&state=valid&limit=2")
        == by_id(zoo, "used_up", "ci_ab", "ci_a")[:2]
    )
    assert ids("/app/tokens?label=nobody") == []
    assert ids("/app/tokens?label=c%69") == by_id(zoo, "ci_ab", "ci_a")  # decoded


def test_http_list_pages_by_id_and_ends_with_next_null(service: TokenService) -> None:
    issued = sorted(item.info.id for batch in service.issue_batches(count=25) for item in batch)
    status, payload = get(service, "/app/tokens")
    assert (status, ids_of(payload["tokens"]), payload["next"]) == (200, issued, None)
    status, payload = get(service, "/app/tokens?limit=10")
    assert (ids_of(payload["tokens"]), payload["next"]) == (issued[:10], issued[9])
    status, payload = get(service, f"/app/tokens?limit=10&after={issued[9]}")
    assert (ids_of(payload["tokens"]), payload["next"]) == (issued[10:20], issued[19])
    status, payload = get(service, f"/app/tokens?limit=10&after={issued[19]}")
    assert (ids_of(payload["tokens"]), payload["next"]) == (issued[20:], None)
    # `after` need not be a stored token: any ID is a place in the order.
    status, payload = get(service, "/app/tokens?after=zzzzzzzzzzzz")
    assert (status, payload["tokens"], payload["next"]) == (200, [], None)


def test_http_list_limit_is_a_page_of_at_most_the_maximum(service: TokenService) -> None:
    list(service.issue_batches(count=LIST_LIMIT_MAX + 5))
    status, payload = get(service, "/app/tokens")
    assert (status, len(payload["tokens"])) == (200, LIST_LIMIT_DEFAULT)
    assert LIST_LIMIT_DEFAULT == LIST_LIMIT_MAX and payload["next"] is not None
    status, payload = get(service, f"/app/tokens?limit={LIST_LIMIT_MAX}&after={payload['next']}")
    assert (status, len(payload["tokens"]), payload["next"]) == (200, 5, None)
    # More than a page is refused, not cut short: a client that asked for everything and
    # knows nothing of pages must not take the first page for the whole listing.
    for limit in (LIST_LIMIT_MAX + 1, 100_000):
        status, payload = get(service, f"/app/tokens?limit={limit}")
        assert status == 400
        assert f"1 to {LIST_LIMIT_MAX:,}" in payload["detail"] and "next" in payload["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        f"limit={LIST_LIMIT_MAX + 1}",
        "after=",
        "after=short",
        "after=AAAAAAAAAAAA",
        "after=aaaaaaaaaaaa&after=bbbbbbbbbbbb",
        "after=aaaaaaaaaaa1",
        "limit=99999999999999999999999",
        "limit=1.5",
        "limit=",
        "limit=%EF%BC%91",  # a fullwidth digit one
        "limit=1&limit=2",
        "all=yes",
        "all=TRUE",
        "all=",
        "all=true&all=false",
        "state=live",
        "state=",
        "expiring_within=0",
        "expiring_within=soon",
        "expiring_within=99999999999999999999",
        "scope=A",
        "scope=",
        "bogus=1",
        "Label=ci",
        "label=ci&label=web",
        "%00=1",
    ],
)
def test_http_list_refuses_bad_parameters_with_400(service: TokenService, query: str) -> None:
    service.issue(label="ci")
    status, payload = get(service, f"/app/tokens?{query}")
    assert status == 400, payload
    assert set(payload) == {"status_code", "detail"} and payload["status_code"] == 400
    assert "\x00" not in payload["detail"]


def test_http_list_needs_the_admin_key_when_set(service: TokenService) -> None:
    service.issue()
    config = ApiConfig(Keys(admin=ADMIN_KEY, validate=VALIDATE_KEY))
    assert get(service, "/app/tokens", config)[0] == 401
    assert get(service, "/app/tokens", config, VALIDATE_KEY)[0] == 401
    assert get(service, "/app/tokens", config, ADMIN_KEY)[0] == 200


def test_http_list_over_the_real_server(serve: Callable[..., Served], db_path: Path) -> None:
    store = SQLiteStore.open(db_path, create=True)
    try:
        service = TokenService(store)
        issued = service.issue(label="svc", scopes=["r"])
        others = [item.info.id for batch in service.issue_batches(count=30) for item in batch]
    finally:
        store.close()
    served = serve(admin_key=ADMIN_KEY)
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, payload = served.request("GET", "/app/tokens?scope=r&label=svc", headers=bearer)
    assert (status, ids_of(payload["tokens"]), payload["next"]) == (200, [issued.info.id], None)
    status, _, payload = served.request("GET", "/app/tokens?nope=1", headers=bearer)
    assert status == 400
    walked: list[str] = []
    target = "/app/tokens?limit=7"
    while True:
        status, _, payload = served.request("GET", target, headers=bearer)
        assert status == 200 and len(payload["tokens"]) <= 7
        walked += ids_of(payload["tokens"])
        if payload["next"] is None:
            break
        target = f"/app/tokens?limit=7&after={payload['next']}"
    assert walked == sorted([issued.info.id, *others])


# -- memory ------------------------------------------------------------------------------

ROWS = 200_000
PEAK_RSS = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as sink:
    done = subprocess.run(sys.argv[2:], stdout=sink, stderr=subprocess.DEVNULL)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kib(args: list[str], out: Path) -> int:
    """Run the installed tokencli with stdout into `out`; its peak resident set in KiB."""
    from support import EXECUTABLE

    assert EXECUTABLE is not None
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(out), EXECUTABLE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=True,
    )
    code, peak = done.stdout.split()
    assert code == "0", done.stderr
    return int(peak)


def synthetic_records(count: int, now: int) -> Iterator[TokenRecord]:
    """Rows as the store holds them, without hashing a secret for each."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for n in range(count):
        digits = []
        left = n
        for _ in range(12):
            left, rest = divmod(left, 32)
            digits.append(alphabet[rest])
        yield TokenRecord(
            "".join(reversed(digits)),
            f"label {n % 97}",
            now - 10,
            now + 86_400,
            None,
            None,
            bytes(32),
            None,
            ("deploy", "read:logs"),
        )


def fill(path: Path, count: int) -> None:
    store = SQLiteStore.open(path, create=True)
    try:
        records = synthetic_records(count, int(time.time()))
        while chunk := [record for _, record in zip(range(10_000), records, strict=False)]:
            with store.transaction():
                store.insert_tokens(chunk)
    finally:
        store.close()


@pytest.mark.slow
@needs_executable
def test_memory_stays_flat_however_many_rows_stream(tmp_path: Path) -> None:
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    fill(small, 1_000)
    fill(large, ROWS)
    out = tmp_path / "out"
    for output in (["--jsonl"], ["--json"], []):  # [] is the table, piped: tab-separated
        baseline = peak_rss_kib(["--db", str(small), "list", *output], out)
        peak = peak_rss_kib(["--db", str(large), "list", *output], out)
        assert out.stat().st_size > ROWS * 50
        # 200,000 rows held at once would be hundreds of MiB; streamed, a few at most.
        assert peak - baseline < 16 * 1024, (output, baseline, peak)
    with out.open() as table:
        assert sum(1 for _ in table) == ROWS + 1  # the header and a row per token


@pytest.mark.parametrize("command", ["list", "export"])
@pytest.mark.parametrize("within", ["0", "0s", "3651d", "99999999999999999999", "9" * 40])
def test_expiring_within_out_of_range_is_a_usage_error(
    runner: CliRunner, on_file: TokenService, command: str, within: str
) -> None:
    on_file.issue()
    result = runner.invoke(app, [command, "--expiring-within", within])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert "expiring" in result.stderr


def test_expiring_within_at_the_limit_is_fine(runner: CliRunner, on_file: TokenService) -> None:
    on_file.issue()
    assert len(listed(runner, "--expiring-within", "3650d")) == 1
    status, payload = get(on_file, "/app/tokens?expiring_within=3650d")
    assert (status, len(payload["tokens"])) == (200, 1)
    status, payload = get(on_file, "/app/tokens?expiring_within=3651d")
    assert status == 400 and "expiring_within" in payload["detail"]


def test_more_required_scopes_than_a_token_holds_match_nothing(
    runner: CliRunner, on_file: TokenService
) -> None:
    """A token holds at most 32 scopes, so a filter naming more matches nothing; it is
    not sent to the database as thousands of conditions (SQLite refuses an expression
    1000 deep: that was exit 3 and HTTP 503)."""
    issued = on_file.issue(scopes=[f"s{n}" for n in range(32)])
    held = [item for n in range(32) for item in ("--scope", f"s{n}")]
    assert ids_of(listed(runner, *held)) == [issued.info.id]
    many = [item for n in range(5_000) for item in ("--scope", f"s{n}")]
    assert listed(runner, *many) == []
    assert listed(runner, *held, "--scope", "other") == []
    for command in (["export"], ["revoke", "--dry-run"], ["revoke"]):
        result = runner.invoke(app, [*command, *many])
        assert (result.exit_code, result.stdout) == (0, ""), (command, result.output)
    query = "&".join(f"scope=s{n}" for n in range(5_000))
    status, payload = get(on_file, f"/app/tokens?{query}")
    assert (status, payload["tokens"]) == (200, [])
    assert on_file.show(issued.info.id).state.value == "valid"


def stepped_back(service: TokenService, clock: Clock) -> tuple[str, str]:
    """A revoked token and a used-up one, then the clock stepped back behind both."""
    revoked = service.issue(ttl_seconds=3600).info.id
    used = service.issue(uses=1, ttl_seconds=3600)
    clock.advance(100)
    service.revoke(revoked)
    assert service.check(used.token).valid
    clock.advance(-50)
    return revoked, used.info.id


def test_a_clock_stepped_back_lists_no_ended_token_as_live(
    service: TokenService, clock: Clock
) -> None:
    """NTP may step a clock back: a token revoked (or used up) "in the future" is still
    revoked (used up), and `list` must not show it among the live ones."""
    revoked, used = stepped_back(service, clock)
    assert list(service.list_tokens()) == []
    every = {info.id: info.state for info in service.list_tokens(EVERY_TOKEN)}
    assert every == {revoked: TokenState.REVOKED, used: TokenState.USED_UP}
    status, payload = get(service, "/app/tokens")
    assert (status, payload["tokens"]) == (200, [])
    assert service.would_revoke((), EVERY_TOKEN) == ([], [])


def test_stats_after_a_clock_stepped_back_counts_no_ended_token_as_live(
    service: TokenService, clock: Clock
) -> None:
    stepped_back(service, clock)
    counts = service.stats().counts
    assert (counts.live, counts.revoked, counts.used_up) == (0, 1, 1)


def test_revoke_all_after_a_clock_stepped_back_revokes_no_ended_token(
    service: TokenService, clock: Clock
) -> None:
    stepped_back(service, clock)
    assert service.revoke_many((), EVERY_TOKEN._replace(states=None)) == ([], [])
