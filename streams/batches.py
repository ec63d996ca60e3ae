"""What every batch agent shares: the message shape, Redis retries, and the loop that acks a
batch only after it has been processed (state written, dead letters acknowledged)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions

from semirec.contracts import ContractError

log = logging.getLogger(__name__)

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              redis.exceptions.BusyLoadingError, OSError)


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


DeadLetterSink = Callable[[list[tuple[Message, ContractError]]], Awaitable[None]]


async def retry_while_redis_down(fn: Callable[..., Awaitable[Any]], *args: Any,
                                 max_delay_s: float = 5.0) -> Any:
    """Call ``fn`` until Redis answers, with exponential back-off; never gives up, so an agent
    never acks what it has not written."""
    delay = 0.05
    while True:
        try:
            return await fn(*args)
        except REDIS_DOWN as exc:
            log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


async def run_batches(stream: Any, process: Callable[[Sequence[Message]], Awaitable[Any]], *,
                      batch_max: int, within_s: float) -> None:
    """Feed ``noack_take`` batches to ``process``; ack each batch only once it returned."""
    async for batch in stream.noack_take(batch_max, within=within_s):
        await process([e.message for e in batch])
        for event in batch:
            await stream.ack(event)
