"""Looking at tokens without changing anything: the reading half of the token service.

`TokenReader` shows, lists, counts, reads the audit trail and previews what a purge or a
revoke would do; it never writes, so `show` of a single-use token leaves it valid and the
read-only commands work on a database the user may only read. Those commands open a
`TokenReader` (`TokenReader.open`), which opens the database read-only and has no method
that writes: a read-only command cannot call a write by mistake.

`TokenChecker` (checking.py) adds checks, `TokenService` (service.py) every other action
that changes something; each class's `open` opens the database as that role needs.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Self

from tokencli.domain import tokens
from tokencli.domain.errors import InvalidRequestError, NotFoundError
from tokencli.domain.location import Location
from tokencli.domain.model import (
    DEFAULT_AUDIT_RETENTION_SECONDS,
    LIVE,
    MAX_COUNT,
    AuditEvent,
    PurgeResult,
    Stats,
    TokenFilter,
    TokenInfo,
    TokenRecord,
)
from tokencli.domain.rules import info, matches_nothing, state_at, validate_positive
from tokencli.service.listing import PAGE_SCAN, Page, validate_page_size
from tokencli.store.base import Store, token_pages
from tokencli.store.factory import open_store


def parse_presented(text: str) -> str | None:
    """The token ID of a well-formed token, or None for a malformed one."""
    try:
        return tokens.parse(text)
    except tokens.MalformedTokenError:
        return None


class TokenReader:
    """Show, list, count and audit the tokens of one store, by one clock; writes nothing."""

    # How `open` opens the database for this role: a reader creates nothing and opens
    # the file read-only; the subclasses that write say so.
    CREATES_DATABASE = False
    WRITES = False

    def __init__(
        self, store: Store, clock: Callable[[], float] = time.time, *, source: str = "cli"
    ) -> None:
        self._store = store
        self._clock = clock
        self._source = source

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        location: Location,
        *,
        clock: Callable[[], float] = time.time,
        source: str = "cli",
    ) -> Iterator[Self]:
        """This role over the database at `location`, closed when the block ends.

        A reader opens it read-only (a file the user may only read is fine) and a missing
        database reads as empty; `TokenService` creates a missing one.
        """
        store = open_store(location, create=cls.CREATES_DATABASE, read_only=not cls.WRITES)
        try:
            yield cls(store, clock, source=source)
        finally:
            store.close()

    @property
    def store(self) -> Store:
        """The store this service works on."""
        return self._store

    @property
    def database_exists(self) -> bool:
        """False when there is no database yet and this service reads an empty one."""
        return self._store.location is not None

    @property
    def source(self) -> str:
        """Where this service's actions come from in the audit trail ("cli" or "http")."""
        return self._source

    def now(self) -> int:
        """The current time in whole UTC epoch seconds."""
        return int(self._clock())

    def resolve_id(self, id_or_token: str) -> str:
        """Return the token ID named by a bare ID or a full token, or raise NotFoundError."""
        candidate = tokens.strip(id_or_token)
        if tokens.is_token_id(candidate):
            return candidate
        token_id = parse_presented(candidate)
        if token_id is None:
            raise NotFoundError(f"{_shown(candidate)} is neither a token ID nor a token")
        record = self._store.get(token_id)
        if record is None or not tokens.matches(candidate, record.secret_hash):
            raise NotFoundError(f"no token {token_id}")
        return token_id

    def show(self, id_or_token: str) -> TokenInfo:
        """A token's public fields and state; takes no use and writes nothing."""
        token_id = self.resolve_id(id_or_token)
        record = self._store.get(token_id)
        if record is None:
            raise NotFoundError(f"no token {token_id}")
        return info(record, state_at(record, self.now()))

    def list_tokens(self, selector: TokenFilter = LIVE) -> Iterator[TokenInfo]:
        """The tokens the selector matches, by ID, read from the store a page at a time."""
        return itertools.chain.from_iterable(self._info_pages(selector, self.now()))

    def _info_pages(self, selector: TokenFilter, now: int) -> Iterator[list[TokenInfo]]:
        # A page at a time, each made in one comprehension: a listing of a million
        # tokens costs no generator step per token (docs/benchmarks.md, list).
        if selector.limit is not None:
            validate_positive("limit", selector.limit, 2**62)
        if matches_nothing(selector):
            return
        states = selector.states
        for records in token_pages(self._store, selector, now):
            page = [info(record, state_at(record, now)) for record in records]
            # As in _in_states: a token's state is what state_at says.
            yield page if states is None else [item for item in page if item.state in states]

    def records(self, selector: TokenFilter, now: int) -> Iterator[TokenRecord]:
        """The stored tokens the selector matches at `now`, by ID, a page at a time: no
        read stays open between pages (service/listing.py says what a reader sees)."""
        if selector.limit is not None:
            validate_positive("limit", selector.limit, 2**62)
        if matches_nothing(selector):
            return iter(())
        return _in_states(self._store.iter_tokens(selector, now), selector, now)

    def list_page(self, selector: TokenFilter, after: str | None, size: int) -> Page:
        """One page of a listing (GET /app/tokens): at most `size` tokens by ID after
        `after`, found among at most PAGE_SCAN stored ones, and where the next page starts.

        A page may be short, even empty, and still have a `next`: read on until `next`
        is None.
        """
        validate_page_size(size)
        now = self.now()
        if matches_nothing(selector):
            return Page([], None)
        page = self._store.page_tokens(selector, now, after, size, scan=PAGE_SCAN)
        records = _in_states(iter(page.records), selector, now)
        return Page([info(record, state_at(record, now)) for record in records], page.next)

    def would_revoke(
        self, names: Sequence[str], selector: TokenFilter | None = None
    ) -> tuple[list[str], list[NotFoundError]]:
        """What `TokenService.revoke_many(names, selector)` would revoke, changing nothing:
        the IDs (the named first, then the selected, oldest first, each once) and a
        NotFoundError per name that is not there."""
        missing: list[NotFoundError] = []
        named = self._resolve_all(names, missing)
        now = self.now()
        found = self._store.get_many(named) if named else {}
        chosen = [token_id for token_id in named if token_id in found]
        missing.extend(NotFoundError(f"no token {i}") for i in named if i not in found)
        live = live_selection(selector)
        if live is not None:
            # Listings go by ID; revoke says what it did oldest first (as the store's
            # revoke_matching returns it), dry run or not.
            oldest_first = sorted(
                (record.created_at, record.id)
                for record in self.records(live, now)
                if record.id not in found
            )
            chosen.extend(token_id for _, token_id in oldest_first)
        return chosen, missing

    def _resolve_all(self, names: Sequence[str], missing: list[NotFoundError]) -> list[str]:
        """The IDs the names stand for, each once, in order; a NotFoundError in `missing`
        for each name that is neither."""
        named: list[str] = []
        for name in names:
            try:
                named.append(self.resolve_id(name))
            except NotFoundError as error:
                missing.append(error)
        return list(dict.fromkeys(named))

    def would_purge(
        self, *, audit_retention_seconds: int | None = DEFAULT_AUDIT_RETENTION_SECONDS
    ) -> PurgeResult:
        """How many tokens `TokenService.purge()` would delete now; deletes nothing."""
        check_retention(audit_retention_seconds)
        return PurgeResult(self._store.count_ended(self.now()), dry_run=True)

    def live_ids(self, prefix: str = "", limit: int = 200) -> list[tuple[str, str | None]]:
        """(ID, label) of live tokens starting with `prefix`, for shell completion."""
        return self._store.live_ids(self.now(), prefix, limit)

    def scopes_in_use(self, prefix: str = "", limit: int = 200) -> list[str]:
        """Scope names held by live tokens, starting with `prefix`, for shell completion."""
        return self._store.scopes_in_use(self.now(), prefix, limit)

    def ping(self) -> None:
        """Raise StorageError unless the database can be read."""
        self._store.ping()

    def stats(self) -> Stats:
        """Counts by condition, the next expiry, the audit trail, the database and size."""
        return Stats(self._store.counts(self.now()), self._store.location, self._store.size_bytes())

    def audit(
        self, *, since_seconds: int | None = None, token_id: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The newest `limit` audit events, oldest first, optionally within `since_seconds`
        and for one token."""
        validate_positive("limit", limit, MAX_COUNT)
        since = None if since_seconds is None else self.now() - since_seconds
        return self._store.events(since=since, token_id=token_id, limit=limit)


def check_retention(seconds: int | None) -> None:
    """Refuse an audit retention that is not positive (None keeps every event)."""
    if seconds is not None and seconds <= 0:
        raise InvalidRequestError("audit retention must be positive, e.g. 90d")


def live_selection(selector: TokenFilter | None) -> TokenFilter | None:
    """The live tokens a revoke selector names, however many (None: no selection)."""
    if selector is None:
        return None
    live = selector._replace(states=LIVE.states, limit=None)
    return None if matches_nothing(live) else live


def _in_states(
    rows: Iterator[TokenRecord], selector: TokenFilter, now: int
) -> Iterator[TokenRecord]:
    """The rows whose state at `now` is one the selector asks for.

    The store selects "live" by the moment a token ended; behind a clock stepped back past
    a revocation or a last use, that moment is still to come. A token's state is what
    state_at says, so that is what the rows are held to.
    """
    states = selector.states
    if states is None:
        return rows
    return (record for record in rows if state_at(record, now) in states)


def _shown(text: str) -> str:
    """Text safe to echo in an error: never a whole would-be secret, never escapes."""
    clipped = text if len(text) <= 16 else text[:12] + "..."
    return repr(clipped)
