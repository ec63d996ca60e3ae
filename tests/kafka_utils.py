"""Test helpers around the real broker: produce raw bytes, read committed offsets, wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from semirec.core.kafka import ensure_topics, ingest_topics, producer
from semirec.core.settings import Settings


async def produce_raw(settings: Settings, messages: Iterable[tuple[bytes | None, bytes]],
                      topic: str | None = None) -> dict[int, int]:
    """Send ``(key, value)`` pairs in order; returns partition -> end offset (last + 1)."""
    await ensure_topics(settings, ingest_topics(settings))
    topic = topic or settings.topics.events
    prod = producer(settings)
    await prod.start()
    try:
        futures = [await prod.send(topic, value, key=key) for key, value in messages]
        ends: dict[int, int] = {}
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        await prod.stop()


async def committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()


async def wait_committed(settings: Settings, ends: dict[int, int] | int, *, timeout: float = 60,
                         proc=None) -> None:
    """Wait until the ingest group has committed every partition up to ``ends``
    (partition -> end offset), or ``ends`` messages in all when it is an int."""
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}")
        got = await committed(settings, settings.consumer_group, settings.topics.events,
                              settings.event_partitions)
        if (sum(got.values()) >= ends if isinstance(ends, int)
                else all(got.get(p, 0) >= end for p, end in ends.items())):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not caught up after {timeout}s: committed {got}, ends {ends}")


async def consume_all(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list:
    """Read ``expected`` records from ``topic`` from the beginning (no group)."""
    consumer = AIOKafkaConsumer(topic, **settings.kafka_kwargs(), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        # a short extra poll: nothing more than expected may arrive
        for recs in (await consumer.getmany(timeout_ms=300)).values():
            records.extend(recs)
        return records
    finally:
        await consumer.stop()
