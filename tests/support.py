"""Helpers the tests import: a clock moved by hand."""

from __future__ import annotations

START = 1_790_000_000  # a fixed UTC instant (2026-09-21), so tests never read the wall clock


class Clock:
    """A clock the test moves by hand: pass it where the service takes `clock`."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
