"""CircuitBreaker - stop calling a failing dependency, probe it, and come back when it answers.

Closed: calls go through; ``failures`` consecutive failures open the breaker. Open: calls are
refused (the caller falls back) until ``cooldown_s`` has passed; then one call at a time is let
through as a probe (half-open). A probe that succeeds closes the breaker; one that fails opens it
for another cooldown. The clock is injected, so the logic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.opened = 0  # how many times it opened (for metrics and tests)

    def allow(self) -> bool:
        """Whether the caller may call the dependency now (a True in half-open is the probe)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state = State.HALF_OPEN
        if self.state is State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.probing = False

    def failure(self) -> None:
        self.consecutive_failures += 1
        self.probing = False
        if self.state is State.HALF_OPEN or self.consecutive_failures >= self.threshold:
            if self.state is not State.OPEN:
                self.opened += 1
            self.state = State.OPEN
            self.opened_at = self.clock()
