"""The public domain types and limits, imported by every layer (docs/design.md, "Shape").

One definition each: the store returns these, the service reasons with them, output and
the HTTP API render them. NamedTuples rather than dataclasses: `check` imports this module
on every run, and a dataclass costs about a millisecond to define.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 3650 * 86_400
MAX_COUNT = 1_000_000
MAX_USES = 1_000_000_000
MAX_LABEL_LENGTH = 200
MAX_SCOPES = 32
SCOPE_PATTERN = re.compile(r"[a-z0-9:._-]{1,64}", re.ASCII)
DEFAULT_AUDIT_RETENTION_SECONDS = 90 * 86_400
# GET /app/tokens answers a page of this many tokens, unless its `limit` asks for fewer:
# a page is rendered on the server's loop, so it is kept well under a millisecond
# (docs/design.md, "Listing in pages").
LIST_LIMIT_MAX = 100
LIST_LIMIT_DEFAULT = LIST_LIMIT_MAX
# Bidirectional overrides and isolates: they can make text display as something it is not.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class TokenState(StrEnum):
    """A verdict on a presented token, and the state of a stored one."""

    VALID = "valid"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    USED_UP = "used_up"
    INSUFFICIENT_SCOPE = "insufficient_scope"


# The states a stored token can be in (the others are verdicts on what was presented).
STORED_STATES = (TokenState.VALID, TokenState.EXPIRED, TokenState.USED_UP, TokenState.REVOKED)
# Their names, as options, query parameters and the OpenAPI document spell them.
STATE_NAMES = tuple(state.value for state in STORED_STATES)


class TokenRecord(NamedTuple):
    """One stored token, as the store holds it (times are UTC epoch seconds)."""

    id: str
    label: str | None
    created_at: int
    expires_at: int
    uses_left: int | None
    revoked_at: int | None
    secret_hash: bytes
    uses_limit: int | None
    scopes: tuple[str, ...] = ()


class TokenInfo(NamedTuple):
    """The public face of a token: everything but its secret."""

    id: str
    label: str | None
    created_at: int
    expires_at: int
    uses_left: int | None
    state: TokenState
    scopes: tuple[str, ...] = ()


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


class AuditEvent(NamedTuple):
    """One line of the audit trail. Never holds a secret: IDs and outcomes only."""

    at: int
    action: str
    token_id: str | None
    outcome: str
    source: str
    detail: str | None = None


class Counts(NamedTuple):
    """Token counts by condition at one moment, and the size of the audit trail."""

    live: int
    expired: int
    used_up: int
    revoked: int
    next_expiry: int | None
    audit_events: int = 0
    oldest_event: int | None = None


class Stats(NamedTuple):
    """What `stats` reports: counts by condition, the next expiry, where the data is."""

    counts: Counts
    database: str | None
    size_bytes: int | None


class TokenFilter(NamedTuple):
    """Which stored tokens a list, export or selector revoke is about; conditions AND.

    `states` None means every state; `expires_by` keeps tokens whose expiry is at or
    before that instant; `scopes` must all be held.
    """

    states: frozenset[TokenState] | None = frozenset({TokenState.VALID})
    label: str | None = None
    scopes: tuple[str, ...] = ()
    expires_by: int | None = None
    limit: int | None = None


LIVE = TokenFilter()
EVERY_TOKEN = TokenFilter(states=None)


def ends_at(record: TokenRecord) -> int:
    """The moment a stored token stops being usable: expiry, revocation or last use.

    Stores index this, so purge is one `DELETE ... WHERE ends_at <= now`. A token imported
    already used up has no recorded moment of its last use; its creation stands in.
    """
    end = record.expires_at
    if record.revoked_at is not None:
        end = min(end, record.revoked_at)
    if record.uses_left is not None and record.uses_left <= 0:
        end = min(end, record.created_at)
    return end
