"""The circuit breaker's state machine, on an injected clock."""

from __future__ import annotations

from semirec.serving.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=2.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is State.CLOSED and b.allow()
    b.failure()
    assert b.state is State.OPEN and not b.allow()
    clock.now = 1.9
    assert not b.allow()
    clock.now = 2.0
    assert b.allow()  # the probe
    assert b.state is State.HALF_OPEN and not b.allow()  # one probe at a time
    b.success()
    assert b.state is State.CLOSED and b.allow() and b.opened == 1


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=1.0, clock=clock)
    b.failure()
    clock.now = 1.0
    assert b.allow()
    b.failure()
    assert b.state is State.OPEN and not b.allow()
    clock.now = 1.5
    assert not b.allow()
    clock.now = 2.0
    assert b.allow()
    assert b.opened == 2


def test_a_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failures=2, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state is State.CLOSED
