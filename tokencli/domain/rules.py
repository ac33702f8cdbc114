"""The token rules that need no database: states, verdict order, and what input is valid.

Pure functions, so the service (which applies them to stored tokens) and the adapters
(which refuse bad input before a batch starts) share one definition of each rule.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from tokencli.domain.errors import InvalidRequestError
from tokencli.domain.model import (
    BIDI_CONTROLS,
    MAX_LABEL_LENGTH,
    MAX_SCOPES,
    MAX_TTL_SECONDS,
    SCOPE_PATTERN,
    TokenFilter,
    TokenInfo,
    TokenRecord,
    TokenState,
)


def state_at(record: TokenRecord, now: int) -> TokenState:
    """The state of a stored token at `now`: revoked, then expired, then used up."""
    if record.revoked_at is not None:
        return TokenState.REVOKED
    if now >= record.expires_at:
        return TokenState.EXPIRED
    if record.uses_left is not None and record.uses_left <= 0:
        return TokenState.USED_UP
    return TokenState.VALID


def info(record: TokenRecord, state: TokenState) -> TokenInfo:
    """The public face of a stored token."""
    # tuple.__new__ rather than TokenInfo(...): no Python frame, and listings make millions.
    return _new(TokenInfo, (*record[:5], state, record.scopes))


_new = tuple.__new__


def validate_label(label: str | None) -> str | None:
    """Return the label to store (None for none), or raise InvalidRequestError."""
    if label is None or label == "":
        return None
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidRequestError(
            f"label is {len(label)} characters long; the limit is {MAX_LABEL_LENGTH}"
        )
    return validate_printable(label, "label")


def validate_printable(text: str, name: str) -> str:
    """Return `text` if it holds no control, surrogate or bidi character; else refuse it.

    Such text would display as something it is not (or not be storable at all).
    """
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cs") or character in BIDI_CONTROLS:
            raise InvalidRequestError(
                f"{name} holds a control character ({character!r}); use printable text"
            )
    return text


def validate_ttl(ttl_seconds: int) -> int:
    """Return the TTL if it is within (0, 3650 days], else raise InvalidRequestError."""
    if ttl_seconds <= 0:
        raise InvalidRequestError("TTL must be positive, e.g. 15m")
    if ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidRequestError("TTL is too large; the limit is 3650d (about 10 years)")
    return ttl_seconds


def expiry_horizon(now: int, within_seconds: int, name: str = "--expiring-within") -> int:
    """The latest expiry a list filter keeps: `within_seconds` from now, which must be
    positive and at most 3650 days (no token lives longer), else InvalidRequestError."""
    if within_seconds <= 0:
        raise InvalidRequestError(f"{name} must be positive, e.g. 1d")
    if within_seconds > MAX_TTL_SECONDS:
        raise InvalidRequestError(f"{name} is too large; the limit is 3650d")
    return now + within_seconds


def validate_positive(name: str, value: int | None, limit: int) -> None:
    """Refuse a count, limit or number of uses that is not in 1..limit (None passes)."""
    if value is None:
        return
    if value <= 0:
        raise InvalidRequestError(f"{name} must be a positive whole number, not {value}")
    if value > limit:
        raise InvalidRequestError(f"{name} is too large ({value}); the limit is {limit:,}")


def validate_scope(name: object) -> str:
    """Return a scope name if it is 1-64 characters of a-z 0-9 : . _ -, else refuse it."""
    if not isinstance(name, str) or SCOPE_PATTERN.fullmatch(name) is None:
        shown = repr(name)[:70] if isinstance(name, str) else type(name).__name__
        raise InvalidRequestError(
            f"bad scope name {shown}: use 1-64 characters of a-z, 0-9, ':', '.', '_', '-'"
        )
    return name


def validate_scopes(names: Iterable[object], *, limit: int | None = MAX_SCOPES) -> tuple[str, ...]:
    """Sorted, each once, every name checked; at most `limit` of them (None: any number)."""
    unique = sorted({validate_scope(name) for name in names})
    if limit is not None and len(unique) > limit:
        raise InvalidRequestError(f"{len(unique)} scopes; a token holds at most {limit}")
    return tuple(unique)


def matches_nothing(selector: TokenFilter) -> bool:
    """True for a filter no token can meet: it requires more scopes than a token holds.

    Checked before a query, so a list asking for thousands of scopes is answered (empty)
    rather than sent to the database as thousands of conditions.
    """
    return len(set(selector.scopes)) > MAX_SCOPES


def lacks_scopes(record: TokenRecord, required: tuple[str, ...]) -> bool:
    """True if the token does not hold every required scope."""
    return bool(required) and not set(required).issubset(record.scopes)


def renewed_expiry(record: TokenRecord, now: int, ttl_seconds: int) -> int:
    """The expiry `renew` gives: TTL from now, and never before the token's creation.

    A clock stepped back behind the creation time would otherwise store an expiry
    before the creation, after which `rotate` (lifetime = expiry - creation) fails.
    """
    return max(now, record.created_at) + ttl_seconds


def lifetime(record: TokenRecord) -> int:
    """The lifetime a token was given, at least one second whatever the clock did."""
    return max(record.expires_at - record.created_at, 1)
