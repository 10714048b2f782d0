"""Test doubles the gateway's unit tests share."""

from __future__ import annotations

T0 = 1_700_000_000_000  # the unit tests' "now" (2023-11-14T22:13:20Z), gateway wall clock in ms


class Clock:
    """The gateway's wall clock (ms) as a test moves it: ``clock()``, ``clock.advance(s)``;
    stages take it as their ``clock_ms``."""

    def __init__(self, t_ms: int = T0) -> None:
        self.t_ms = t_ms

    def __call__(self) -> int:
        return self.t_ms

    def advance(self, s: float) -> int:
        self.t_ms += int(s * 1000)
        return self.t_ms
