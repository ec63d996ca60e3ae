"""What every batch agent shares: the message shape, Redis retries, and the loop that acks a
batch only after it has been processed (state written, dead letters acknowledged)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from semirec.contracts import ContractError
from semirec.faults import FatalError, retry_transient
from streams.fatal import stop_worker

log = logging.getLogger(__name__)


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
    """Call ``fn`` until Redis answers, with exponential back-off; never gives up on an outage,
    so an agent never acks what it has not written. Refused credentials or a broken
    configuration raise :class:`semirec.faults.FatalError` (see :func:`run_batches`)."""
    return await retry_transient(fn, *args, dependency="redis", max_delay_s=max_delay_s)


async def run_batches(stream: Any, process: Callable[[Sequence[Message]], Awaitable[Any]], *,
                      batch_max: int, within_s: float) -> None:
    """Feed ``noack_take`` batches to ``process``; ack each batch only once it returned.

    A fatal fault (e.g. Redis refusing the password) stops the whole worker with its exit
    code (:func:`streams.fatal.stop_worker`); the batch is never acked, so never committed."""
    async for batch in stream.noack_take(batch_max, within=within_s):
        try:
            await process([e.message for e in batch])
        except FatalError as exc:
            # wait inside the loop: leaving noack_take would re-enable faust's automatic acks
            await stop_worker(exc.fault)
        for event in batch:
            await stream.ack(event)
