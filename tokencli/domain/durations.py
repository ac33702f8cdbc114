"""Durations as people type them ("90s", "15m", "1h30m", "7d") and back.

The parser is strict on purpose: units must come largest first and at most once, so a
typo such as "15mm" or "30m1h" is an error rather than a silently odd TTL. A bare
integer means seconds, the unit crontab lines and scripts reach for first.
"""

from __future__ import annotations

import re

UNIT_SECONDS: dict[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_UNIT_ORDER = "wdhms"
# Long inputs are refused before any regex work: no real TTL needs more characters.
_MAX_TEXT = 40
# ASCII digits only: `\d` would also take "１５" or "١٥", which nobody types as a TTL.
_PART = re.compile(r"([0-9]+)([a-z])")
_BARE = re.compile(r"[0-9]+")


class DurationError(ValueError):
    """The text is not a duration; the message says why in words for a person."""


def parse_duration(text: str) -> int:
    """Return the number of seconds that `text` ("90s", "1h30m", "7d", "600") stands for."""
    candidate = text.strip()
    if not candidate:
        raise DurationError("empty duration; use e.g. 90s, 15m, 2h, 7d or 1h30m")
    if len(candidate) > _MAX_TEXT:
        raise DurationError(f"duration is too long ({len(candidate)} characters)")
    if candidate[0] == "-":
        raise DurationError(f"{text!r} is negative; a duration must be positive")
    if candidate[0] == "+":
        candidate = candidate[1:]
    if _BARE.fullmatch(candidate):
        return int(candidate)
    total = 0
    position = 0
    last_unit_index = -1
    for match in _PART.finditer(candidate):
        if match.start() != position:
            break
        amount, unit = match.groups()
        unit_index = _UNIT_ORDER.find(unit)
        if unit_index < 0:
            raise DurationError(f"unknown unit {unit!r} in {text!r}; units are s, m, h, d, w")
        if unit_index <= last_unit_index:
            raise DurationError(f"units in {text!r} must go from largest to smallest, once each")
        last_unit_index = unit_index
        total += int(amount) * UNIT_SECONDS[unit]
        position = match.end()
    if position != len(candidate) or position == 0:
        raise DurationError(f"{text!r} is not a duration; use e.g. 90s, 15m, 2h, 7d or 1h30m")
    return total


def format_duration(seconds: int) -> str:
    """Return the shortest canonical text for `seconds`, e.g. 5400 -> "1h30m"; 0 -> "0s"."""
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds == 0:
        return "0s"
    parts = []
    remaining = seconds
    for unit in _UNIT_ORDER:
        amount, remaining = divmod(remaining, UNIT_SECONDS[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
