"""Publish many keyed records at once and wait for the broker: one record batch per partition
instead of one ``send`` per record (what an agent that announces per-user changes needs at
volume: the ingest agent's user-update notices and training samples).

Records go to the partition a keyed ``send`` would choose (the producer's own partitioner over
the topic's partitions), in the given order within each partition. With aiokafka's default
partitioner the key's murmur2 hash (pure Python in aiokafka, ~5 us a key here) is remembered
per key by a :class:`Partitioner` (a worker's is its runtime's, :mod:`semirec.streams.runtime`),
since the same users are announced batch after batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka.partitioner import DefaultPartitioner, murmur2

HASHES_KEPT = 200_000  # remembered key hashes (user ids); forgotten all at once when full


class Partitioner:
    """The default partitioner's key hashes, remembered: at most ``kept`` keys, all forgotten at
    once when full."""

    __slots__ = ("_hashes", "kept")

    def __init__(self, kept: int = HASHES_KEPT) -> None:
        self.kept = kept
        self._hashes: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def key_hash(self, key: bytes) -> int:
        """The default partitioner's positive murmur2 hash of ``key``, remembered."""
        hashes = self._hashes
        h = hashes.get(key)
        if h is None:
            if len(hashes) >= self.kept:
                hashes.clear()
            h = hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h


async def publish_many(producer: Any, topic: str, records: Sequence[tuple[bytes, bytes]], *,
                       partitioner: Partitioner) -> None:
    """Send ``(key, value)`` records to ``topic`` with an aiokafka producer (``AIOKafkaProducer``;
    in a faust worker ``app.producer._ensure_producer()``) and wait for every acknowledgement.
    ``partitioner`` remembers the key hashes across calls (when the producer's partitioner is
    aiokafka's default)."""
    if not records:
        return
    await producer.partitions_for(topic)  # metadata for the partitioner
    if type(producer._partitioner) is DefaultPartitioner:
        partitions = list(producer._metadata.partitions_for_topic(topic))  # as aiokafka does
        n = len(partitions)
        key_hash = partitioner.key_hash

        def partition_of(key: bytes, value: bytes) -> int:
            return partitions[key_hash(key) % n]
    else:
        def partition_of(key: bytes, value: bytes) -> int:
            return producer._partition(topic, None, key, value, key, value)

    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in records:
        by_partition.setdefault(partition_of(key, value), []).append((key, value))
    futures = []
    for partition, part in by_partition.items():
        batch = producer.create_batch()
        for key, value in part:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)
