"""publish_many puts each record where a keyed send would, in order, all acknowledged (real broker)."""

from __future__ import annotations

from collections import defaultdict

from aiokafka.partitioner import murmur2

from semirec.core.kafka import ensure_topics, producer
from semirec.streams.publish import Partitioner, publish_many
from tests.kafka_utils import consume_all, produce_raw


async def test_publish_many_partitions_like_a_keyed_send(settings) -> None:
    records = [(f"user-{i % 97}".encode(), f"{i}:".encode() + b"x" * (i % 300)) for i in range(3000)]
    reference = f"{settings.topics.samples}-reference"
    await ensure_topics(settings, {settings.topics.samples: 4, reference: 4})
    prod = producer(settings, max_batch_size=16384)  # small batches: several per partition
    await prod.start()
    partitioner = Partitioner(kept=50)  # fewer than the 97 keys: forgets and hashes again
    try:
        await publish_many(prod, settings.topics.samples, records, partitioner=partitioner)
    finally:
        await prod.stop()
    await produce_raw(settings, records, topic=reference)  # one keyed send each
    got = await consume_all(settings, settings.topics.samples, len(records))
    want = await consume_all(settings, reference, len(records))
    assert len(got) == len(want) == len(records)

    def by_partition(recs) -> dict[int, list[tuple[bytes, bytes]]]:
        out: dict[int, list] = defaultdict(list)
        for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
            out[r.partition].append((r.key, r.value))
        return dict(out)

    assert by_partition(got) == by_partition(want)
    assert len(by_partition(got)) == 4


def test_partitioner_keeps_its_bound() -> None:
    partitioner = Partitioner(kept=3)
    keys = [f"user-{i}".encode() for i in range(10)]
    for key in keys + keys:
        assert partitioner.key_hash(key) == murmur2(key) & 0x7FFFFFFF
        assert 1 <= len(partitioner) <= 3
