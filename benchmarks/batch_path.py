"""Reference point, not a production path: our real ingest processor fed by a plain aiokafka
group consumer (``getmany`` batches, commit after each processed batch), without faust.

Run by benchmarks/ingest.py with the same SEMIREC_* environment; prints one JSON line with
events/s measured from the first batch to the N-th event. It answers how far a batch path
outside faust's per-message pipeline would take the worker (see docs/ingest.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from aiokafka import AIOKafkaConsumer

from semirec.core.settings import Settings
from semirec.core.store import SequenceStore
from semirec.streams.ingest import IngestProcessor
from semirec.streams.messages import Record


async def main(n: int) -> float:
    s = Settings.from_env()
    consumer = AIOKafkaConsumer(
        s.topics.events, **s.kafka_kwargs(), group_id=f"{s.events_group}-batch-path",
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=s.batch_max,
        session_timeout_ms=round(s.session_timeout_s * 1000),
        heartbeat_interval_ms=round(s.heartbeat_interval_s * 1000),
        rebalance_timeout_ms=round(s.rebalance_timeout_s * 1000))
    store = SequenceStore.from_url(s.redis_url, cache_users=s.state_cache_users)

    async def no_dead_letters(bad: list) -> None:
        raise RuntimeError(f"{len(bad)} malformed benchmark events")

    processor = IngestProcessor(s, store, no_dead_letters)
    await consumer.start()
    try:
        seen, t0 = 0, 0.0
        while seen < n:
            got = await consumer.getmany(timeout_ms=500, max_records=s.batch_max)
            if not got:
                continue
            t0 = t0 or time.perf_counter()
            batch = [Record(r.key, r.value, r.topic, r.partition, r.offset, r.timestamp / 1000)
                     for records in got.values() for r in records]
            await processor.process(batch)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in got.items()})
            seen += sum(len(records) for records in got.values())
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
        await store.close()


if __name__ == "__main__":
    rate = asyncio.run(main(int(os.environ["BENCH_EVENTS"])))
    print(json.dumps({"batch_path_events_per_s": rate}), flush=True)
