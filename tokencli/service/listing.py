"""Which tokens a listing shows: the one filter `list`, `export` and GET /app/tokens build,
and the page GET /app/tokens answers.

A listing goes by token ID, the key both stores seek on (the primary key, which never
changes): a page is the tokens after one ID, and its `next` is the ID the following page
starts after. Pages never overlap, so however tokens are issued, used or revoked between
two pages, no token is listed twice, and every token stored from the first page to the
last is listed once (when it matches the filter as its page is read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from tokencli.domain import tokens
from tokencli.domain.durations import DurationError, parse_duration
from tokencli.domain.errors import InvalidRequestError
from tokencli.domain.model import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    STATE_NAMES,
    TokenFilter,
    TokenInfo,
    TokenState,
)
from tokencli.domain.rules import expiry_horizon, validate_positive, validate_scopes

# Stored tokens one page of GET /app/tokens looks at, at most: a filter that matches few
# tokens (a label, a state) then costs the server's loop a bounded read per request, and
# the client follows `next` through pages that may be short or empty.
PAGE_SCAN = 20 * LIST_LIMIT_MAX


class Page(NamedTuple):
    """One page of a listing: its tokens, and the ID to continue after (None: done)."""

    tokens: list[TokenInfo]
    next: str | None


def parse_states(names: Sequence[str]) -> frozenset[TokenState]:
    """States named by a user; a name that is not a stored state is refused."""
    states = set()
    for name in names:
        if name not in STATE_NAMES:
            raise InvalidRequestError(f"unknown state {name[:40]!r}; use {', '.join(STATE_NAMES)}")
        states.add(TokenState(name))
    return frozenset(states)


def list_filter(
    *,
    include_ended: bool,
    label: str | None,
    scopes: Sequence[str] | None,
    states: Sequence[str] | None,
    expiring_within: int | None,
    now: int,
    limit: int | None = None,
    expiring_name: str = "--expiring-within",
) -> TokenFilter:
    """The filter of `list`, `export` and GET /app/tokens: live tokens unless
    `include_ended` or `states` say more; `limit` caps a whole listing (the CLI's)."""
    validate_positive("limit", limit, 2**62)
    expires_by = (
        None if expiring_within is None else expiry_horizon(now, expiring_within, expiring_name)
    )
    chosen: frozenset[TokenState] | None
    if states:
        chosen = parse_states(states)
    elif include_ended:
        chosen = None
    else:
        chosen = frozenset({TokenState.VALID})
    return TokenFilter(
        states=chosen,
        label=label,
        scopes=validate_scopes(scopes or (), limit=None),
        expires_by=expires_by,
        limit=limit,
    )


def validate_page_size(size: int) -> int:
    """Refuse a page size outside 1..LIST_LIMIT_MAX, saying how to read on."""
    if not 1 <= size <= LIST_LIMIT_MAX:
        raise InvalidRequestError(
            f"limit is the number of tokens per page, 1 to {LIST_LIMIT_MAX:,}; for more,"
            ' pass each answer\'s "next" as after= to read the next page'
        )
    return size


# GET /app/tokens' query parameters.
PAGE_PARAMETERS = {"label", "scope", "state", "expiring_within", "limit", "all", "after"}


class PageQuery(NamedTuple):
    """What GET /app/tokens asks for: which tokens, how many per page, after which ID."""

    selector: TokenFilter
    size: int
    after: str | None


def page_query(query: Mapping[str, Sequence[str]], now: int) -> PageQuery:
    """GET /app/tokens' query parameters, decoded (unknown ones are refused before):
    the same filter as `list` (live tokens unless `all=true` or `state`), a page size
    and the ID to start after."""

    def one(name: str) -> str | None:
        values = query.get(name)
        if values and len(values) > 1:
            raise InvalidRequestError(f"give {name} once")
        return values[0] if values else None

    everything = one("all")
    if everything is not None and everything not in ("true", "false"):
        raise InvalidRequestError("all is true or false")
    limit = one("limit")
    size = LIST_LIMIT_DEFAULT
    if limit is not None:
        if not limit.isdecimal() or not limit.isascii() or len(limit) > 9:
            raise InvalidRequestError("limit must be a whole number")
        size = validate_page_size(int(limit))
    after = one("after")
    if after is not None and not tokens.is_token_id(after):
        raise InvalidRequestError('after must be a token ID, as given in "next"')
    within = one("expiring_within")
    try:
        within_seconds = None if within is None else parse_duration(within)
    except DurationError as error:
        raise InvalidRequestError(f"expiring_within: {error}") from None
    selector = list_filter(
        include_ended=everything == "true",
        label=one("label"),
        scopes=query.get("scope", ()),
        states=query.get("state", ()),
        expiring_within=within_seconds,
        now=now,
        expiring_name="expiring_within",
    )
    return PageQuery(selector, size, after)
