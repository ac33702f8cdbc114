"""The token service: every rule about tokens lives here, and only here.

The CLI and the HTTP server are thin adapters over `TokenService`; neither knows SQL nor
decides what a valid token is. The clock is a parameter (`clock`, returning UTC epoch
seconds), so tests move time by hand instead of sleeping or patching.

Times are whole seconds. A token issued at second T with TTL N is valid while
now < T + N and expired from T + N on; purge deletes at the same boundary.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import NamedTuple

from tokencli import tokens
from tokencli.errors import InvalidRequestError, NotFoundError
from tokencli.store import AuditEvent, IdCollisionError, Store, TokenRecord

DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 3650 * 86_400
MAX_COUNT = 1_000_000
MAX_USES = 1_000_000_000
MAX_LABEL_LENGTH = 200
# Tokens are committed (and only then shown) in batches this large, so a huge --count
# neither holds every plaintext in memory nor prints a token that was never stored.
ISSUE_BATCH_SIZE = 50_000
_ID_COLLISION_RETRIES = 3
# Bidirectional overrides can make a label display as something it is not.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class TokenState(StrEnum):
    """What a token is at a given moment; `check` answers with one of these."""

    VALID = "valid"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    USED_UP = "used_up"


class TokenInfo(NamedTuple):
    """The public face of a token: everything but its secret."""

    id: str
    label: str | None
    created_at: int
    expires_at: int
    uses_left: int | None
    state: TokenState


class IssuedToken(NamedTuple):
    """A token just issued: its public info and the plaintext, shown this once."""

    info: TokenInfo
    token: str


class CheckResult(NamedTuple):
    """The verdict on a presented token, with its info when the token is known."""

    state: TokenState
    info: TokenInfo | None = None

    @property
    def valid(self) -> bool:
        """True only for a token that was valid and whose use (if limited) was taken."""
        return self.state is TokenState.VALID


class PurgeResult(NamedTuple):
    """How many tokens purge deleted (or would delete, on a dry run)."""

    purged: int
    dry_run: bool
    audit_events_dropped: int = 0


def state_at(record: TokenRecord, now: int) -> TokenState:
    """The state of a stored token at `now`; revocation outranks expiry, expiry use-up."""
    if record.revoked_at is not None:
        return TokenState.REVOKED
    if now >= record.expires_at:
        return TokenState.EXPIRED
    if record.uses_left is not None and record.uses_left <= 0:
        return TokenState.USED_UP
    return TokenState.VALID


def _info(record: TokenRecord, state: TokenState) -> TokenInfo:
    return TokenInfo(
        record.id, record.label, record.created_at, record.expires_at, record.uses_left, state
    )


def validate_label(label: str | None) -> str | None:
    """Return the label to store (None for none), or raise InvalidRequestError."""
    if label is None or label == "":
        return None
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidRequestError(
            f"label is {len(label)} characters long; the limit is {MAX_LABEL_LENGTH}"
        )
    for character in label:
        if unicodedata.category(character) in ("Cc", "Cs") or character in _BIDI_CONTROLS:
            raise InvalidRequestError(
                f"label holds a control character ({character!r}); use printable text"
            )
    return label


def validate_ttl(ttl_seconds: int) -> int:
    """Return the TTL if it is within (0, 3650 days], else raise InvalidRequestError."""
    if ttl_seconds <= 0:
        raise InvalidRequestError("TTL must be positive, e.g. 15m")
    if ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidRequestError("TTL is too large; the limit is 3650d (about 10 years)")
    return ttl_seconds


def _validate_positive(name: str, value: int | None, limit: int) -> None:
    if value is None:
        return
    if value <= 0:
        raise InvalidRequestError(f"{name} must be a positive whole number, not {value}")
    if value > limit:
        raise InvalidRequestError(f"{name} is too large ({value}); the limit is {limit:,}")


class Stats(NamedTuple):
    """What `stats` reports: counts by condition, the next expiry, where the file is."""

    live: int
    expired: int
    used_up: int
    revoked: int
    next_expiry: int | None
    database: str | None
    size_bytes: int


class TokenService:
    """Issue, check, revoke, renew, rotate, list and purge tokens in one store, by one clock.

    Every action appends one audit event per token it touches, in the same transaction
    as the change, tagged with `source` ("cli" or "http"). Events hold IDs and
    outcomes, never a secret.
    """

    def __init__(
        self, store: Store, clock: Callable[[], float] = time.time, *, source: str = "cli"
    ) -> None:
        self._store = store
        self._clock = clock
        self._source = source

    @property
    def store(self) -> Store:
        """The store this service writes to."""
        return self._store

    def now(self) -> int:
        """The current time in whole UTC epoch seconds."""
        return int(self._clock())

    def _event(
        self,
        now: int,
        action: str,
        token_id: str | None,
        outcome: str,
        detail: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(now, action, token_id, outcome, self._source, detail)

    # -- issue ---------------------------------------------------------------------------

    def issue_batches(
        self,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        label: str | None = None,
        uses: int | None = None,
        count: int = 1,
        batch_size: int = ISSUE_BATCH_SIZE,
    ) -> Iterator[list[IssuedToken]]:
        """Issue `count` tokens, yielding each batch once it is committed.

        All arguments are checked before anything is written.
        """
        validate_ttl(ttl_seconds)
        stored_label = validate_label(label)
        _validate_positive("uses", uses, MAX_USES)
        _validate_positive("count", count, MAX_COUNT)
        remaining = count
        while remaining > 0:
            size = min(remaining, batch_size)
            yield self._issue_batch(size, ttl_seconds, stored_label, uses)
            remaining -= size

    def issue(
        self,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        label: str | None = None,
        uses: int | None = None,
    ) -> IssuedToken:
        """Issue one token."""
        batches = self.issue_batches(ttl_seconds=ttl_seconds, label=label, uses=uses)
        return next(batches)[0]

    def _issue_batch(
        self,
        size: int,
        ttl_seconds: int,
        label: str | None,
        uses: int | None,
        *,
        replaces: str | None = None,
        grace_seconds: int = 0,
    ) -> list[IssuedToken]:
        for attempt in range(_ID_COLLISION_RETRIES):
            now = self.now()
            expires_at = now + ttl_seconds
            fresh = [tokens.generate() for _ in range(size)]
            try:
                with self._store.transaction():
                    self._store.insert_tokens(
                        (new.id, new.secret_hash, label, now, expires_at, uses) for new in fresh
                    )
                    if replaces is not None:
                        self._store.cut_expiry(replaces, now + grace_seconds)
                        self._store.record(
                            [self._event(now, "rotate", replaces, "rotated", f"by {fresh[0].id}")]
                        )
                    self._store.record(
                        self._event(now, "issue", new.id, "issued", f"replaces {replaces}")
                        if replaces
                        else self._event(now, "issue", new.id, "issued")
                        for new in fresh
                    )
            except IdCollisionError:
                if attempt == _ID_COLLISION_RETRIES - 1:
                    raise
                continue
            return [
                IssuedToken(
                    TokenInfo(new.id, label, now, expires_at, uses, TokenState.VALID),
                    new.plaintext,
                )
                for new in fresh
            ]
        raise AssertionError("unreachable")  # pragma: no cover

    # -- check ---------------------------------------------------------------------------

    def check(self, text: str) -> CheckResult:
        """Judge a presented token; a valid one uses up one use, an expired one is deleted."""
        try:
            token_id = tokens.parse(text)
        except tokens.MalformedTokenError:
            token_id = None
        with self._store.transaction():
            now = self.now()
            result = self._judge(text, token_id, now)
            known_id = result.info.id if result.info else None
            self._store.record_one(self._event(now, "check", known_id, result.state.value))
        return result

    def _judge(self, text: str, token_id: str | None, now: int) -> CheckResult:
        if token_id is None:
            return CheckResult(TokenState.MALFORMED)
        record = self._store.get(token_id)
        if record is None or not tokens.matches(text, record.secret_hash):
            return CheckResult(TokenState.UNKNOWN)
        state = state_at(record, now)
        if state is TokenState.EXPIRED:
            self._store.delete_expired(token_id, now)
        if state is not TokenState.VALID or record.uses_left is None:
            return CheckResult(state, _info(record, state))
        if not self._store.consume_use(token_id, now):
            used_up = TokenState.USED_UP
            return CheckResult(used_up, _info(record, used_up)._replace(uses_left=0))
        return CheckResult(state, _info(record, state)._replace(uses_left=record.uses_left - 1))

    # -- revoke, renew, rotate -------------------------------------------------------------

    def resolve_id(self, id_or_token: str) -> str:
        """Return the token ID named by a bare ID or a full token, or raise NotFoundError."""
        candidate = id_or_token.strip()
        if tokens.is_token_id(candidate):
            return candidate
        try:
            token_id = tokens.parse(candidate)
        except tokens.MalformedTokenError:
            raise NotFoundError(f"{_shown(candidate)} is neither a token ID nor a token") from None
        record = self._store.get(token_id)
        if record is None or not tokens.matches(candidate, record.secret_hash):
            raise NotFoundError(f"no token {token_id}")
        return token_id

    def revoke(self, id_or_token: str) -> str:
        """Revoke one token by ID or full token; return its ID or raise NotFoundError."""
        token_id = self.resolve_id(id_or_token)
        with self._store.transaction():
            now = self.now()
            found = self._store.revoke(token_id, now)
            self._store.record(
                [self._event(now, "revoke", token_id, "revoked" if found else "not_found")]
            )
        if not found:
            raise NotFoundError(f"no token {token_id}")
        return token_id

    def _live_record(self, action: str, token_id: str, now: int) -> TokenRecord:
        """The record of a live token, or NotFoundError (with its audit event recorded)."""
        record = self._store.get(token_id)
        state = state_at(record, now) if record is not None else TokenState.UNKNOWN
        if record is None or state is not TokenState.VALID:
            self._store.record([self._event(now, action, token_id, f"refused: {state}")])
            if record is None:
                raise NotFoundError(f"no token {token_id}")
            raise NotFoundError(f"token {token_id} is {state}; only a live token can be {action}ed")
        return record

    def renew(self, id_or_token: str, ttl_seconds: int) -> TokenInfo:
        """Give a live token a new expiry `ttl_seconds` from now (like `vault token renew`)."""
        validate_ttl(ttl_seconds)
        token_id = self.resolve_id(id_or_token)
        refused: NotFoundError | None = None
        with self._store.transaction():
            now = self.now()
            try:
                record = self._live_record("renew", token_id, now)
            except NotFoundError as error:
                refused = error  # commit the refusal's audit event, then raise
            else:
                self._store.set_expiry(token_id, now + ttl_seconds)
                self._store.record(
                    [self._event(now, "renew", token_id, "renewed", f"ttl {ttl_seconds}s")]
                )
        if refused is not None:
            raise refused
        return _info(record, TokenState.VALID)._replace(expires_at=now + ttl_seconds)

    def rotate(
        self, id_or_token: str, *, grace_seconds: int = 0, ttl_seconds: int | None = None
    ) -> IssuedToken:
        """Issue a successor with the same label and use limit; the old token lives on
        for `grace_seconds` at most. The TTL defaults to the old token's own lifetime."""
        if grace_seconds < 0:
            raise InvalidRequestError("grace must not be negative")
        if grace_seconds > MAX_TTL_SECONDS:
            raise InvalidRequestError("grace is too large; the limit is 3650d")
        if ttl_seconds is not None:
            validate_ttl(ttl_seconds)
        token_id = self.resolve_id(id_or_token)
        refused: NotFoundError | None = None
        with self._store.transaction():
            try:
                record = self._live_record("rotate", token_id, self.now())
            except NotFoundError as error:
                refused = error
        if refused is not None:
            raise refused
        ttl = ttl_seconds if ttl_seconds is not None else record.expires_at - record.created_at
        uses = record.uses_limit if record.uses_limit is not None else record.uses_left
        batch = self._issue_batch(
            1, validate_ttl(ttl), record.label, uses, replaces=token_id, grace_seconds=grace_seconds
        )
        return batch[0]

    # -- list, purge, stats, audit ---------------------------------------------------------

    def list_tokens(self, *, include_ended: bool = False) -> list[TokenInfo]:
        """Live tokens, oldest first; with `include_ended`, the not-yet-purged dead ones too."""
        now = self.now()
        return [
            _info(record, state_at(record, now))
            for record in self._store.list_tokens(now, include_ended=include_ended)
        ]

    def live_ids(self, prefix: str = "", limit: int = 200) -> list[tuple[str, str | None]]:
        """(ID, label) of live tokens starting with `prefix`, for shell completion."""
        return self._store.live_ids(self.now(), prefix, limit)

    def purge(
        self, *, dry_run: bool = False, audit_retention_seconds: int | None = None
    ) -> PurgeResult:
        """Delete every expired, used-up or revoked token (or count them, on a dry run);
        with a retention, also drop audit events older than it."""
        if audit_retention_seconds is not None and audit_retention_seconds <= 0:
            raise InvalidRequestError("audit retention must be positive, e.g. 90d")
        now = self.now()
        if dry_run:
            return PurgeResult(self._store.count_ended(now), dry_run=True)
        with self._store.transaction():
            now = self.now()
            purged = self._store.purge(now)
            dropped = 0
            if audit_retention_seconds is not None:
                dropped = self._store.drop_events_before(now - audit_retention_seconds)
            detail = f"{purged} tokens" + (f", {dropped} audit events" if dropped else "")
            self._store.record([self._event(now, "purge", None, "purged", detail)])
        return PurgeResult(purged, dry_run=False, audit_events_dropped=dropped)

    def ping(self) -> None:
        """Raise StorageError unless the database can be read."""
        self._store.ping()

    def stats(self) -> Stats:
        """Counts by condition, the next expiry, the database path and size."""
        counts = self._store.counts(self.now())
        path = self._store.path
        return Stats(
            counts.live,
            counts.expired,
            counts.used_up,
            counts.revoked,
            counts.next_expiry,
            str(path) if path is not None else None,
            self._store.size_bytes(),
        )

    def audit(
        self, *, since_seconds: int | None = None, token_id: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The newest `limit` audit events, oldest first, optionally within `since_seconds`
        and for one token."""
        _validate_positive("limit", limit, MAX_COUNT)
        since = None if since_seconds is None else self.now() - since_seconds
        return self._store.events(since=since, token_id=token_id, limit=limit)


def _shown(text: str) -> str:
    """Text safe to echo in an error: never a whole would-be secret, never escapes."""
    clipped = text if len(text) <= 16 else text[:12] + "..."
    return repr(clipped)
