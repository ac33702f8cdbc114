"""What every store offers the service: the `Store` protocol, and `Backend` for `serve`.

Two implementations keep this contract: SQLite (`sqlite/`, the embedded default) and
PostgreSQL (`postgres/`, for several hosts). The test suite runs the same store, service
and CLI tests against both, so the suite is the contract; this file is its summary.

Rules every implementation keeps:
- Every write runs inside `transaction()` (a savepoint when inside `batch()`), so a change
  and its audit events commit together or not at all.
- `consume_uses` is one conditional write per token (never read-then-write across a
  transaction boundary), with revocation and expiry in its condition, so two processes or
  replicas racing for a token's last use never both get it.
- Every failure of the database is raised as `StorageError` with a message for the
  operator; a password in a location is never part of a message.
- Nothing brings a revoked or used-up token back: no method clears `revoked_at` or raises
  `uses_left`, and `set_expiry` leaves such a token as it is.

Rules every caller keeps (the stores differ where these are broken):
- A `StorageError` raised inside `transaction()` must leave it (let it propagate out of
  the block, or catch it only outside). PostgreSQL aborts the whole transaction on a
  failed statement: an error caught inside the block makes its COMMIT fail with
  StorageError and nothing is saved, where SQLite would have committed the rest. To go on
  after a statement that may fail, wrap it in a nested `transaction()` (a savepoint) and
  catch outside that.
- Listings are read in pages by key (`page_tokens` by token ID, `page_events` by time
  and event ID), each page one short query: outside a block no read transaction (no
  SQLite snapshot, no PostgreSQL cursor) stays open between pages, so a slow reader
  (`list | less`) never holds back a WAL checkpoint. `iter_tokens` and `iter_events`
  walk the pages; they may be read at leisure and the connection used meanwhile.
- Scopes handed to `insert_tokens` and `insert_missing` are sorted and each given once
  (`rules.validate_scopes` makes them so); stores keep them as given.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

from tokencli.domain.errors import StorageError
from tokencli.domain.model import AuditEvent, Counts, TokenFilter, TokenRecord

# Rows per page when a listing or an export walks a store: one short read each.
PAGE_ROWS = 1000


class IdCollisionError(StorageError):
    """A freshly generated ID already exists (about one in 10^12 per token)."""


class StoreBusy(StorageError):
    """The write lock was not had within the wait asked for; nothing ran, try later."""


class TokenPage(NamedTuple):
    """One page of tokens in ID order, and where the next page starts.

    `next` is the ID to continue after (pass it as `after`), or None when no stored token
    lies past this page. The page covers the IDs after `after` up to `next`: pages never
    overlap, so a token is read at most once however the tokens change between pages.
    """

    records: list[TokenRecord]
    next: str | None


EventKey = tuple[int, int]  # (time, event ID): the order of the audit trail


class EventPage(NamedTuple):
    """One page of audit events, oldest first, and the key to continue after (None: done)."""

    events: list[AuditEvent]
    next: EventKey | None


class Store(Protocol):
    """One connection to a tokencli database and every query the service needs."""

    @property
    def location(self) -> str | None:
        """Where the data is, safe to print (a URL's password shown as ***); None when
        there is no database yet and the store reads as empty."""
        ...

    def close(self) -> None:
        """Close the connection."""

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction; inside `batch()`, a savepoint that commits with the batch.

        An exception leaving the block rolls it back (to its savepoint when nested) and
        goes on up. A StorageError must not be caught inside the block (module docstring).
        """
        ...

    def batch(self, *, wait: float | None = None) -> AbstractContextManager[None]:
        """Group the transactions run in the block into one commit (serve's group commit).

        `wait`: how long to wait for the write lock at most (None: the store's own
        timeout); past it StoreBusy is raised before anything ran. Only SQLite has a
        database-wide write lock; PostgreSQL bounds its row locks with lock_timeout.
        """
        ...

    def reading(self) -> AbstractContextManager[None]:
        """One read transaction for blocks that only read: on SQLite it never waits for
        the write lock (WAL readers do not block on a writer)."""
        ...

    def isolated(self) -> AbstractContextManager[None]:
        """A block whose failure must cost only itself inside a `batch()` (one request).

        A savepoint where a failed statement spoils the whole transaction (PostgreSQL);
        nothing where it does not (SQLite), since every change already runs in a
        `transaction()` of its own and rolls back alone.
        """
        ...

    def ping(self) -> None:
        """Raise StorageError unless the database answers."""

    def size_bytes(self) -> int | None:
        """Bytes the data takes on disk (None when the store cannot tell)."""
        ...

    # -- tokens --------------------------------------------------------------------------

    def insert_tokens(self, records: Iterable[TokenRecord]) -> None:
        """Insert new tokens; IdCollisionError (rolling back nothing itself) if an ID is taken."""

    def insert_missing(self, records: Iterable[TokenRecord]) -> int:
        """Insert the tokens whose ID is not yet stored; return how many were inserted."""
        ...

    def existing_ids(self, ids: Collection[str]) -> set[str]:
        """The IDs among `ids` that are stored."""
        ...

    def get(self, token_id: str) -> TokenRecord | None:
        """The token with this ID, or None."""
        ...

    def get_many(self, ids: Sequence[str]) -> dict[str, TokenRecord]:
        """The stored tokens among `ids`, by ID, in one query."""
        ...

    def consume_uses(self, wanted: Mapping[str, int], now: int) -> dict[str, tuple[int, int]]:
        """Take up to `wanted[id]` uses of each use-limited token still live at `now`.

        Returns (uses granted, uses left afterwards) per ID that was granted at least one
        (others may be absent). Tokens with unlimited uses are not touched and get nothing.
        """
        ...

    def revoke(self, token_id: str, now: int) -> bool:
        """Mark the token revoked at `now` (kept if already revoked); False if no such token."""
        ...

    def revoke_matching(self, selector: TokenFilter, now: int) -> list[str]:
        """Revoke every live token the filter selects; return their IDs, oldest first.

        Only the filter's label, scopes and expiry bound select: its `states` and `limit`
        are ignored (every live match is revoked; a dry run lists with `iter_tokens`).
        """
        ...

    def set_expiry(self, token_id: str, expires_at: int) -> None:
        """Give a token a new expiry (renew), in one conditional UPDATE.

        Only renew of a live token calls it, but a revoked or used-up token is left as it
        is whoever calls: its expiry and its end stay, so it is never revived.
        """

    def cut_expiry(self, token_id: str, latest: int) -> None:
        """Make a token expire no later than `latest`, and never before its creation."""

    def page_tokens(
        self,
        selector: TokenFilter,
        now: int,
        after: str | None,
        size: int,
        scan: int | None = None,
    ) -> TokenPage:
        """The next `size` tokens (at most) the filter selects at `now`, by ID after `after`.

        With `scan`, only the first `scan` stored IDs after `after` are looked at, so a
        filter that matches few tokens costs a bounded read: the page may then hold fewer
        than `size` tokens (even none) and still have a `next`. The filter's `limit` is
        the caller's to apply.
        """
        ...

    def iter_tokens(self, selector: TokenFilter, now: int) -> Iterator[TokenRecord]:
        """The tokens the filter selects at `now`, by ID, read a page at a time
        (`tokens_in_pages`): flat memory, and nothing held open between pages."""
        ...

    def live_ids(self, now: int, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        """(ID, label) of live tokens whose ID starts with `prefix`, for shell completion."""
        ...

    def scopes_in_use(self, now: int, prefix: str, limit: int) -> list[str]:
        """Scope names held by live tokens, starting with `prefix`, for shell completion."""
        ...

    def count_ended(self, now: int) -> int:
        """How many tokens purge would delete at `now`."""
        ...

    def purge(self, now: int) -> int:
        """Delete every expired, used-up or revoked token in one statement."""
        ...

    def counts(self, now: int) -> Counts:
        """Tokens by condition, and the audit trail's size and oldest event."""
        ...

    # -- audit trail ---------------------------------------------------------------------

    def record(self, events: Iterable[AuditEvent]) -> None:
        """Append audit events (inside the `transaction()` of the change they record)."""

    def events(self, *, since: int | None, token_id: str | None, limit: int) -> list[AuditEvent]:
        """The newest `limit` events matching the filters, oldest first."""
        ...

    def existing_events(self, events: Sequence[AuditEvent]) -> set[AuditEvent]:
        """The events among `events` that are stored already: a row with the same time,
        action, token, outcome, source and detail (import --skip-existing)."""
        ...

    def page_events(self, after: EventKey | None, size: int) -> EventPage:
        """The next `size` audit events (at most) after the key `after`, oldest first."""
        ...

    def iter_events(self) -> Iterator[AuditEvent]:
        """Every audit event, oldest first, a page at a time (`events_in_pages`)."""
        ...

    def drop_events_before(self, cutoff: int) -> int:
        """Delete audit events older than `cutoff`; return how many."""
        ...


class Backend(Protocol):
    """A database location opened for `serve`: stores for its threads, and upkeep.

    The server never branches on the kind of database: whatever a backend needs beside
    the requests (SQLite's WAL checkpoints, its watch on the file's identity) runs
    between `start_upkeep` and `stop_upkeep`.
    """

    @property
    def location(self) -> str:
        """Where the data is, safe to print."""
        ...

    @property
    def inline(self) -> bool:
        """True when every wait of a store call is short (a local file): the event loop
        may answer on it directly. False for a database across a network, whose waits
        are bounded but can last seconds: the server answers on a thread of its own."""
        ...

    def open_store(self) -> Store:
        """A new store (one connection) for one thread; StorageError if unreachable."""
        ...

    def start_upkeep(self, report: Callable[[str], None]) -> None:
        """Start background upkeep; `report` takes one-line error messages."""

    def stop_upkeep(self) -> None:
        """Stop background upkeep and wait for it."""

    def gauges(self) -> dict[str, float]:
        """Backend figures for metrics, e.g. {"wal_bytes": 123.0}; empty when none. A name
        ending in `_total` is a count that only grows (exposed as a counter)."""
        ...


def token_pages(
    store: Store, selector: TokenFilter, now: int, size: int = PAGE_ROWS
) -> Iterator[list[TokenRecord]]:
    """Every token the filter selects, by ID, one page (one short query) at a time, up
    to the filter's `limit`. A token is listed at most once, in its state when its page
    was read; one stored from before the first page to after the last is listed once."""
    left = selector.limit
    after: str | None = None
    while left is None or left > 0:
        page = store.page_tokens(selector, now, after, size if left is None else min(size, left))
        yield page.records
        if left is not None:
            left -= len(page.records)
        if page.next is None:
            return
        after = page.next


def tokens_in_pages(
    store: Store, selector: TokenFilter, now: int, size: int = PAGE_ROWS
) -> Iterator[TokenRecord]:
    """`token_pages`, a token at a time (flattened in C: a listing of millions pays no
    generator step per token)."""
    return itertools.chain.from_iterable(token_pages(store, selector, now, size))


def events_in_pages(store: Store, size: int = PAGE_ROWS) -> Iterator[AuditEvent]:
    """Every audit event, oldest first, one page (one short query) at a time."""
    after: EventKey | None = None
    while True:
        page = store.page_events(after, size)
        yield from page.events
        if page.next is None:
            return
        after = page.next


def finish_page(rows: list[TokenRecord], size: int, bound: str | None) -> TokenPage:
    """A page from up to `size + 1` rows read in ID order within the IDs up to `bound`
    (None: to the end): a row past `size` means more follow the page's last."""
    if len(rows) > size:
        del rows[size:]
        return TokenPage(rows, rows[-1].id)
    return TokenPage(rows, bound)
