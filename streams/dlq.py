"""Dead letters: the original bytes plus where they came from and why they were refused."""

from __future__ import annotations

import base64
import time
from typing import Any

import faust
import orjson

from semirec.contracts import Reason
from semirec.settings import Settings


def dead_letter(message: Any, reason: Reason | str, text: str, *, stage: str) -> bytes:
    """The DLQ record (JSON) for a faust ``Message`` that failed at ``stage``."""
    record = {
        "original_b64": base64.b64encode(message.value or b"").decode(),
        "key_b64": None if message.key is None else base64.b64encode(message.key).decode(),
        "source": {"topic": message.topic, "partition": message.partition,
                   "offset": message.offset, "timestamp_ms": round(message.timestamp * 1000)},
        "reason": str(reason),
        "message": text,
        "stage": stage,
        "rejected_at_ms": int(time.time() * 1000),
    }
    return orjson.dumps(record)


async def send_dead_letters(topic: faust.TopicT, letters: list[tuple[bytes | None, bytes]]) -> None:
    """Publish and wait until the broker has acknowledged every letter."""
    futures = [await topic.send(key=key, value=value) for key, value in letters]
    for fut in futures:
        await fut


def dead_letter_sink(app: faust.App, settings: Settings, *, stage: str):
    """A coroutine function that dead-letters ``(message, ContractError)`` pairs for ``stage``."""
    from streams.app import raw_topic

    topic = raw_topic(app, settings.topics.events_dlq, settings.event_partitions)

    async def sink(bad: list) -> None:
        await send_dead_letters(topic, [(m.key, dead_letter(m, e.reason, str(e), stage=stage))
                                        for m, e in bad])

    return sink
