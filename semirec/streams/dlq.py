"""Dead letters (:class:`semirec.core.dead_letters.DeadLetter`): the original bytes (or a bounded
prefix of them) plus where they came from and why they were refused.

A letter must always be publishable, whatever arrived: when the whole original does not fit
the producer's request limit, the letter keeps the first :data:`PREFIX_BYTES` bytes, the
original size and its SHA-256, and says ``truncated: true``. Keys and explanations are bounded
too, and every letter is checked against the limit with aiokafka's own size estimate.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import faust
import msgspec
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from semirec.core.contracts import Reason
from semirec.core.dead_letters import DeadLetter, LetterSource, encode_dead_letter
from semirec.core.settings import Settings

PREFIX_BYTES = 64 * 1024  # of an original that does not fit whole
KEY_BYTES = 1024  # of the original key, in the letter and as the letter's own key
TEXT_CHARS = 1000  # of the human explanation
DEFAULT_LIMIT = 1_000_000  # faust's producer_max_request_size default


def record_size(key: bytes | None, value: bytes) -> int:
    """Upper bound of the record's size as the producer checks it against its request limit."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])


def letter_key(message: Any) -> bytes | None:
    """The letter's Kafka key: the original key, cut to :data:`KEY_BYTES`."""
    return None if message.key is None else message.key[:KEY_BYTES]


def dead_letter(message: Any, reason: Reason | str, text: str, *, stage: str,
                limit: int = DEFAULT_LIMIT) -> bytes:
    """The encoded :class:`~semirec.core.dead_letters.DeadLetter` for a ``Message`` that failed
    at ``stage``; its record (with :func:`letter_key`) never exceeds ``limit`` bytes."""
    value = message.value or b""
    key = message.key
    letter = DeadLetter(
        original_b64=base64.b64encode(value).decode(),
        original_bytes=len(value),
        original_sha256=hashlib.sha256(value).hexdigest(),
        truncated=False,
        key_b64=None if key is None else base64.b64encode(key[:KEY_BYTES]).decode(),
        key_bytes=None if key is None else len(key),
        source=LetterSource(message.topic, message.partition, message.offset,
                            round(message.timestamp * 1000)),
        reason=Reason(reason),
        message=text[:TEXT_CHARS],
        stage=stage,
        rejected_at_ms=int(time.time() * 1000),
    )
    out_key = letter_key(message)
    raw = encode_dead_letter(letter)
    if record_size(out_key, raw) > limit:
        letter = msgspec.structs.replace(
            letter, original_b64=base64.b64encode(value[:PREFIX_BYTES]).decode(), truncated=True)
        raw = encode_dead_letter(letter)
    if record_size(out_key, raw) > limit:  # a limit below the bounded letter: drop the prefix
        raw = encode_dead_letter(msgspec.structs.replace(letter, original_b64=""))
    if record_size(out_key, raw) > limit:
        raise ValueError(f"producer limit {limit} is below a bounded dead letter")
    return raw


async def send_dead_letters(topic: faust.TopicT, letters: list[tuple[bytes | None, bytes]]) -> None:
    """Publish and wait until the broker has acknowledged every letter."""
    futures = [await topic.send(key=key, value=value) for key, value in letters]
    for fut in futures:
        await fut


def dead_letter_sink(app: faust.App, settings: Settings, *, stage: str):
    """A coroutine function that dead-letters ``(message, ContractError)`` pairs for ``stage``,
    within the app producer's request limit."""
    from semirec.streams.app import raw_topic

    topic = raw_topic(app, settings.topics.events_dlq, settings.event_partitions)
    limit = app.conf.producer_max_request_size

    async def sink(bad: list) -> None:
        await send_dead_letters(topic, [
            (letter_key(m), dead_letter(m, e.reason, str(e), stage=stage, limit=limit))
            for m, e in bad])

    return sink
