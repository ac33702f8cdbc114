"""Token filters from command-line options, shared by list, revoke and export."""

from __future__ import annotations

from collections.abc import Sequence

from tokencli.domain.errors import InvalidRequestError
from tokencli.domain.model import STATE_NAMES, TokenFilter, TokenState
from tokencli.domain.rules import expiry_horizon, validate_positive, validate_scopes


def parse_states(names: Sequence[str]) -> frozenset[TokenState]:
    """States named on the command line; a name that is not a stored state is refused."""
    states = set()
    for name in names:
        if name not in STATE_NAMES:
            raise InvalidRequestError(f"unknown state {name[:40]!r}; use {', '.join(STATE_NAMES)}")
        states.add(TokenState(name))
    return frozenset(states)


def selector_options_filter(
    *,
    label: str | None = None,
    scopes: Sequence[str] | None = None,
    everything: bool = False,
) -> TokenFilter | None:
    """The live tokens a revoke selector names (None when no selector was given)."""
    if label is None and not scopes and not everything:
        return None
    return TokenFilter(label=label, scopes=validate_scopes(scopes or (), limit=None))


def list_filter(
    *,
    include_ended: bool,
    label: str | None,
    scopes: Sequence[str] | None,
    states: Sequence[str] | None,
    expiring_within: int | None,
    limit: int | None,
    now: int,
) -> TokenFilter:
    """The filter of `list` and `export`: live tokens unless --all or --state say more."""
    validate_positive("limit", limit, 2**62)
    expires_by = None if expiring_within is None else expiry_horizon(now, expiring_within)
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
