"""Listings read in pages by token ID, on both stores (service/listing.py; issue 18 items
5 and 6): GET /app/tokens hands out a page and the ID to go on after, `list` and `export`
read a page at a time. Whatever is issued, revoked or purged between two pages, no token
is listed twice, and every token stored from the first page to the last is listed once.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tokencli.domain.model import EVERY_TOKEN, LIST_LIMIT_MAX, TokenRecord, TokenState
from tokencli.http.answers import ApiConfig
from tokencli.http.http11 import Request
from tokencli.service.listing import PAGE_SCAN
from tokencli.service.service import TokenService
from tokencli.store.base import PAGE_ROWS

from support import Clock, answer_one

pytestmark = pytest.mark.stores("sqlite", "postgres")


def get(service: TokenService, target: str) -> dict[str, Any]:
    answer = answer_one(service, Request("GET", target, "HTTP/1.1", {}), ApiConfig())
    assert int(answer.status) == 200, answer.body
    payload: dict[str, Any] = json.loads(answer.body)
    return payload


def walk(service: TokenService, query: str, between: Any = None) -> tuple[list[str], list[int]]:
    """Every ID GET /app/tokens hands out following `next`, and the size of each page;
    `between(page_number)` runs after each page but the last."""
    ids: list[str] = []
    sizes: list[int] = []
    target = f"/app/tokens?{query}"
    while True:
        payload = get(service, target)
        ids += [row["id"] for row in payload["tokens"]]
        sizes.append(len(payload["tokens"]))
        if payload["next"] is None:
            return ids, sizes
        if between is not None:
            between(len(sizes))
        target = f"/app/tokens?{query}&after={payload['next']}"


def test_http_pages_list_every_token_once_whatever_happens_between_them(
    service: TokenService, clock: Clock
) -> None:
    before = sorted(item.info.id for batch in service.issue_batches(count=95) for item in batch)
    issued: list[str] = []
    revoked: list[str] = []

    def between(page: int) -> None:
        issued.extend(service.issue().info.id for _ in range(3))
        victim = before[(page * 37) % len(before)]
        if victim not in revoked:
            service.revoke(victim)
            revoked.append(victim)
        clock.advance(1)

    every, sizes = walk(service, "all=true&limit=10", between)
    assert len(sizes) >= 10 and max(sizes) == 10
    assert len(every) == len(set(every)) and every == sorted(every)
    assert set(before) <= set(every)  # revoked or not, each once
    assert set(every) - set(before) <= set(issued)
    live, _ = walk(service, "limit=10")
    assert set(live) == (set(before) | set(issued)) - set(revoked)


def test_a_live_listing_shows_each_token_as_its_page_found_it(
    service: TokenService, clock: Clock
) -> None:
    before = sorted(item.info.id for batch in service.issue_batches(count=40) for item in batch)
    first = get(service, "/app/tokens?limit=20")
    shown = [row["id"] for row in first["tokens"]]
    service.revoke(before[0])  # behind the cursor: already listed as live
    service.revoke(before[-1])  # ahead of it: never listed
    rest = get(service, f"/app/tokens?limit=20&after={first['next']}")
    shown += [row["id"] for row in rest["tokens"]]
    assert rest["next"] is None
    assert shown == before[:-1]


def test_a_selective_filter_costs_a_bounded_read_per_page(service: TokenService) -> None:
    """With a filter few tokens meet, a page looks at PAGE_SCAN stored tokens at most: it
    may come back short or empty, with a `next` to go on from, and the walk is whole."""
    total = 3 * PAGE_SCAN + 10
    records = [
        TokenRecord(
            _id(n),
            "rare" if n % 2000 == 7 else None,
            1_790_000_000 - 10,
            1_790_000_000 + 86_400,
            None,
            None,
            bytes(32),
            None,
        )
        for n in range(total)
    ]
    with service.store.transaction():
        service.store.insert_tokens(records)
    rare = sorted(record.id for record in records if record.label == "rare")
    ids, sizes = walk(service, f"label=rare&limit={LIST_LIMIT_MAX}")
    assert ids == rare
    # Every page looked at PAGE_SCAN tokens at most: one page could have held them all.
    assert len(sizes) >= -(-total // PAGE_SCAN) and len(rare) < LIST_LIMIT_MAX


def _id(n: int) -> str:
    digits, left = [], n
    for _ in range(12):
        left, rest = divmod(left, 32)
        digits.append("abcdefghijklmnopqrstuvwxyz234567"[rest])
    return "".join(reversed(digits))


def test_a_cli_listing_read_in_pages_lists_every_token_there_throughout_once(
    service: TokenService, clock: Clock
) -> None:
    before = sorted(
        item.info.id for batch in service.issue_batches(count=2 * PAGE_ROWS + 500) for item in batch
    )
    rows = service.list_tokens(EVERY_TOKEN)
    listed = [next(rows) for _ in range(PAGE_ROWS + 10)]
    new = [service.issue().info.id for _ in range(50)]
    service.revoke(before[5])  # listed already
    service.revoke(before[-5])  # not yet
    listed += list(rows)
    ids = Counter(info.id for info in listed)
    assert all(count == 1 for count in ids.values())
    assert set(before) <= set(ids) and set(ids) - set(before) <= set(new)
    states = {info.id: info.state for info in listed}
    assert states[before[5]] is TokenState.VALID  # as its page found it
    assert states[before[-5]] is TokenState.REVOKED
