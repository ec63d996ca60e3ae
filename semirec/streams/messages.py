"""What a batch agent handles and how its progress is seen: the message shape, a plain record
for callers that do not read through faust, and each agent's batch watch (the health checks')."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Message(Protocol):
    """What a processor needs of a Kafka message (faust's ``Message`` fits)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float


@dataclass(slots=True)
class Record:
    """A plain :class:`Message`, for callers that do not read through faust (tests, benchmarks)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float = 0.0


@dataclass(slots=True)
class BatchWatch:
    """One agent's progress as the health checks see it: the batch in flight (since when, which
    offsets) and the error that stopped the agent, if any. A worker's are in its runtime
    (:meth:`semirec.streams.runtime.WorkerRuntime.watch`)."""

    agent: str
    in_flight_since: float | None = None  # time.monotonic() when the batch was handed over
    span: str = ""  # "topic[partition] first..last" per partition of the batch in flight
    failed: str | None = None

    def start(self, messages: Sequence[Message], span: str | None = None) -> None:
        """``span``: :func:`describe` of ``messages``, when the caller knows it cheaper."""
        self.in_flight_since = time.monotonic()
        self.span = describe(messages) if span is None else span

    def done(self) -> None:
        self.in_flight_since = None
        self.span = ""

    def stuck_for(self, now: float | None = None) -> float:
        """Seconds the batch in flight has been processing (0 when idle)."""
        if self.in_flight_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.in_flight_since


def describe(messages: Sequence[Message]) -> str:
    return describe_runs((m.topic, m.partition, m.offset, m.offset) for m in messages)


def describe_runs(runs: Iterable[tuple[str, int, int, int]]) -> str:
    """``topic[partition] first..last`` per partition of ``(topic, partition, first, last)``
    runs (e.g. fetch slices), partitions in order."""
    spans: dict[tuple[str, int], list[int]] = {}
    for topic, partition, first, last in runs:
        lo_hi = spans.get((topic, partition))
        if lo_hi is None:
            spans[topic, partition] = [first, last]
        else:
            lo_hi[0], lo_hi[1] = min(lo_hi[0], first), max(lo_hi[1], last)
    return ", ".join(f"{t}[{p}] {lo}..{hi}" for (t, p), (lo, hi) in sorted(spans.items()))
