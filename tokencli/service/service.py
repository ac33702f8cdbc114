"""The token service: every rule about tokens lives here (and in rules.py), and only here.

The CLI and the HTTP API are thin adapters over `TokenService`; neither knows SQL nor
decides what a valid token is. The clock is a parameter (`clock`, returning UTC epoch
seconds), so tests move time by hand instead of sleeping or patching.

Times are whole seconds. A token issued at second T with TTL N is valid while
now < T + N and expired from T + N on; purge deletes at the same boundary. Nothing but
purge deletes a token: a clock that jumps forward makes tokens read `expired`, and a
corrected clock brings them back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tokencli.domain import tokens
from tokencli.domain.errors import InvalidRequestError, NotFoundError
from tokencli.domain.model import (
    DEFAULT_AUDIT_RETENTION_SECONDS,
    DEFAULT_TTL_SECONDS,
    LIVE,
    MAX_COUNT,
    MAX_TTL_SECONDS,
    MAX_USES,
    AuditEvent,
    IssuedToken,
    PurgeResult,
    TokenFilter,
    TokenInfo,
    TokenRecord,
    TokenState,
)
from tokencli.domain.rules import (
    info,
    lifetime,
    matches_nothing,
    renewed_expiry,
    state_at,
    validate_label,
    validate_positive,
    validate_scopes,
    validate_ttl,
)
from tokencli.service.checking import TokenChecker
from tokencli.store.base import IdCollisionError

# Tokens are committed (and only then shown) in batches this large, so a huge --count
# neither holds every plaintext in memory nor prints a token that was never stored.
ISSUE_BATCH_SIZE = 50_000
_ID_COLLISION_RETRIES = 3


def _issue_template(
    ttl_seconds: int, label: str | None, uses: int | None, scopes: Sequence[object]
) -> TokenRecord:
    """The fields every token of an issue shares, each checked (InvalidRequestError)."""
    validate_ttl(ttl_seconds)
    stored_label = validate_label(label)
    validate_positive("uses", uses, MAX_USES)
    return TokenRecord("", stored_label, 0, 0, uses, None, b"", uses, validate_scopes(scopes))


class TokenService(TokenChecker):
    """Issue, revoke, renew, rotate and purge tokens in one store (and, as a TokenChecker,
    check them; as a TokenReader, show, list, count and audit them).

    Every action that changes something appends one audit event per token it touches, in
    the same transaction as the change, tagged with `source` ("cli" or "http"). Events
    hold IDs and outcomes, never a secret. Looking (`show`, `list`) writes nothing.
    """

    # -- issue ---------------------------------------------------------------------------

    def issue_batches(
        self,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        label: str | None = None,
        uses: int | None = None,
        scopes: Sequence[object] = (),
        count: int = 1,
        batch_size: int = ISSUE_BATCH_SIZE,
    ) -> Iterator[list[IssuedToken]]:
        """Issue `count` tokens, yielding each batch once it is committed.

        All arguments are checked before anything is written.
        """
        template = _issue_template(ttl_seconds, label, uses, scopes)
        validate_positive("count", count, MAX_COUNT)
        remaining = count
        while remaining > 0:
            size = min(remaining, batch_size)
            yield self._issue_batch(size, ttl_seconds, template)
            remaining -= size

    def issue(
        self,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        label: str | None = None,
        uses: int | None = None,
        scopes: Sequence[object] = (),
    ) -> IssuedToken:
        """Issue one token."""
        return self._issue_batch(1, ttl_seconds, _issue_template(ttl_seconds, label, uses, scopes))[
            0
        ]

    def _issue_batch(
        self,
        size: int,
        ttl_seconds: int,
        template: TokenRecord,
        *,
        replaces: str | None = None,
        grace_seconds: int = 0,
    ) -> list[IssuedToken]:
        """Store `size` new tokens with the label, uses and scopes of `template`."""
        for attempt in range(_ID_COLLISION_RETRIES):
            now = self.now()
            fresh = [tokens.generate() for _ in range(size)]
            # Built whole rather than by template._replace: a third of the cost per token.
            label, uses, limit = template.label, template.uses_left, template.uses_limit
            scopes = template.scopes
            expires = now + ttl_seconds
            records = [
                TokenRecord(new.id, label, now, expires, uses, None, new.secret_hash, limit, scopes)
                for new in fresh
            ]
            try:
                with self._store.transaction():
                    self._store.insert_tokens(records)
                    if replaces is not None:
                        self._store.cut_expiry(replaces, now + grace_seconds)
                        self._store.record(
                            [self._event(now, "rotate", replaces, "rotated", f"by {fresh[0].id}")]
                        )
                    detail = f"replaces {replaces}" if replaces else None
                    self._store.record(
                        [self._event(now, "issue", new.id, "issued", detail) for new in fresh]
                    )
            except IdCollisionError:
                if attempt == _ID_COLLISION_RETRIES - 1:
                    raise
                continue
            return [
                IssuedToken(info(record, TokenState.VALID), new.plaintext)
                for record, new in zip(records, fresh, strict=True)
            ]
        raise AssertionError("unreachable")  # pragma: no cover

    # -- show, revoke, renew, rotate ------------------------------------------------------

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

    def revoke_selected(self, selector: TokenFilter, *, dry_run: bool = False) -> list[str]:
        """Revoke every live token the selector matches, in one transaction; their IDs.

        A dry run returns the IDs it would revoke and changes nothing.
        """
        return self.revoke_many((), selector, dry_run=dry_run)[0]

    def revoke_many(
        self,
        names: Sequence[str],
        selector: TokenFilter | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[list[str], list[NotFoundError]]:
        """Revoke the named tokens (IDs or whole tokens) and every live token the selector
        matches, all in one transaction, one audit event per token.

        Returns the IDs revoked, each once (the named first, then the selected, oldest
        first), and a NotFoundError per name that is not there; the others are revoked
        regardless. A dry run returns what it would do and changes nothing.
        """
        missing: list[NotFoundError] = []
        named: list[str] = []
        for name in names:
            try:
                named.append(self.resolve_id(name))
            except NotFoundError as error:
                missing.append(error)
        named = list(dict.fromkeys(named))
        live = None if selector is None else selector._replace(states=LIVE.states, limit=None)
        if live is not None and matches_nothing(live):
            live = None
        if dry_run:
            now = self.now()
            found = self._store.get_many(named) if named else {}
            chosen = [token_id for token_id in named if token_id in found]
            missing.extend(NotFoundError(f"no token {i}") for i in named if i not in found)
            if live is not None:
                # Listings go by ID; revoke says what it did oldest first (as
                # revoke_matching returns it), dry run or not.
                oldest_first = sorted(
                    (record.created_at, record.id)
                    for record in self.records(live, now)
                    if record.id not in found
                )
                chosen.extend(token_id for _, token_id in oldest_first)
            return chosen, missing
        with self._store.transaction():
            now = self.now()
            revoked: list[str] = []
            events: list[AuditEvent] = []
            for token_id in named:
                if self._store.revoke(token_id, now):
                    revoked.append(token_id)
                    events.append(self._event(now, "revoke", token_id, "revoked"))
                else:
                    missing.append(NotFoundError(f"no token {token_id}"))
                    events.append(self._event(now, "revoke", token_id, "not_found"))
            if live is not None:
                # The named ones are revoked already, so no longer live: none comes twice.
                selected = self._store.revoke_matching(live, now)
                revoked.extend(selected)
                events.extend(self._event(now, "revoke", i, "revoked") for i in selected)
            self._store.record(events)
        return revoked, missing

    def _live_record(self, action: str, token_id: str, now: int) -> TokenRecord:
        """The record of a live token, or NotFoundError (with its audit event recorded)."""
        record = self._store.get(token_id)
        state = state_at(record, now) if record is not None else TokenState.UNKNOWN
        if record is None or state is not TokenState.VALID:
            self._store.record([self._event(now, action, token_id, f"refused: {state}")])
            if record is None:
                raise NotFoundError(f"no token {token_id}")
            done = {"renew": "renewed", "rotate": "rotated"}.get(action, action)
            raise NotFoundError(f"token {token_id} is {state}; only a live token can be {done}")
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
                expires_at = renewed_expiry(record, now, ttl_seconds)
                self._store.set_expiry(token_id, expires_at)
                self._store.record(
                    [self._event(now, "renew", token_id, "renewed", f"ttl {ttl_seconds}s")]
                )
        if refused is not None:
            raise refused
        return info(record, TokenState.VALID)._replace(expires_at=expires_at)

    def rotate(
        self, id_or_token: str, *, grace_seconds: int = 0, ttl_seconds: int | None = None
    ) -> IssuedToken:
        """Issue a successor with the same label, use limit and scopes; the old token lives
        on for `grace_seconds` at most. The TTL defaults to the old token's own lifetime."""
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
        ttl = ttl_seconds if ttl_seconds is not None else min(lifetime(record), MAX_TTL_SECONDS)
        uses = record.uses_limit if record.uses_limit is not None else record.uses_left
        template = record._replace(uses_left=uses, uses_limit=uses, revoked_at=None)
        return self._issue_batch(1, ttl, template, replaces=token_id, grace_seconds=grace_seconds)[
            0
        ]

    # -- list, purge, stats, audit ---------------------------------------------------------

    def purge(
        self,
        *,
        dry_run: bool = False,
        audit_retention_seconds: int | None = DEFAULT_AUDIT_RETENTION_SECONDS,
    ) -> PurgeResult:
        """Delete every expired, used-up or revoked token (or count them, on a dry run),
        and drop audit events older than the retention (None keeps every event)."""
        if audit_retention_seconds is not None and audit_retention_seconds <= 0:
            raise InvalidRequestError("audit retention must be positive, e.g. 90d")
        if dry_run:
            return PurgeResult(self._store.count_ended(self.now()), dry_run=True)
        with self._store.transaction():
            now = self.now()
            purged = self._store.purge(now)
            dropped = 0
            if audit_retention_seconds is not None:
                dropped = self._store.drop_events_before(now - audit_retention_seconds)
            detail = f"{purged} tokens" + (f", {dropped} audit events" if dropped else "")
            self._store.record([self._event(now, "purge", None, "purged", detail)])
        return PurgeResult(purged, dry_run=False, audit_events_dropped=dropped)
