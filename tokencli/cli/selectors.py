"""The filter of revoke's selectors, from its options (list's and export's filter is
service/listing.py's `list_filter`, shared with GET /app/tokens)."""

from __future__ import annotations

from collections.abc import Sequence

from tokencli.domain.model import TokenFilter
from tokencli.domain.rules import validate_scopes


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
