"""Per-event cost of the ingest path, split by stage, in this process (no Kafka).

Run by benchmarks/ingest.py with the same SEMIREC_* environment (a Redis to write to) and
BENCH_EVENTS; prints one JSON line ``{"costs_us_per_event": {...}}``. Each stage is timed on
its own over the same batches (best of REPEATS, so a busy machine disturbs it less):

  decode   bytes -> Event (semirec.streams.event_codec: msgspec, parse_event for the rest)
  group    events -> user -> partition -> (event, offset)
  merge    semirec.core.sequences.apply on each user's state
  pack     semirec.core.sequences.pack of each changed state (once per user and batch)
  metrics  the per-batch metrics calls
  redis    IngestProcessor.process end to end (real Redis, warm state cache) minus the above
  process  IngestProcessor.process end to end
  samples_build  what building and encoding every watch's training sample adds to process
  samples  what logging every watch's training sample adds to process (build, encode, publish
           to the broker and wait for its acks; packing overlaps the wait)
  popularity  semirec.serving.popularity.count_watches on each batch's events (one script call)
  after_write  time inside the after-write hook (user-update notices, awaited); popularity is
           counted alongside the state write
  in_process  IngestProcessor.process end to end with both hooks: what the worker does per
           event besides faust and the batch transport
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict

from benchmarks.ingest import make_events
from semirec.core.metrics import AgentMetrics
from semirec.core.sequences import UserState, apply, pack
from semirec.core.settings import Settings
from semirec.core.store import SequenceStore
from semirec.streams.event_codec import decode_event
from semirec.streams.ingest import BatchOutcome, IngestProcessor
from semirec.streams.messages import Record

REPEATS = 3
PARTITIONS = 4


def best(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


async def main(n: int, users: int, batch_max: int) -> dict[str, float]:
    settings = Settings.from_env()
    now = time.time()
    records = [Record(k, v, "events", i % PARTITIONS, i // PARTITIONS, now)
               for i, (k, v) in enumerate(make_events(n, users, seed=5))]
    batches = [records[i:i + batch_max] for i in range(0, n, batch_max)]

    def decode() -> list:
        return [[(m, decode_event(m.value, m.key)) for m in b] for b in batches]

    decoded = decode()

    def group() -> list:
        out = []
        for b in decoded:
            by_user: dict = defaultdict(dict)
            for m, e in b:
                parts = by_user[e.user_id]
                pairs = parts.get(m.partition)
                if pairs is None:
                    parts[m.partition] = pairs = []
                pairs.append((e, m.offset))
            out.append(by_user)
        return out

    grouped = group()
    states: dict[str, UserState] = {}

    def merge() -> None:
        states.clear()
        for by_user in grouped:
            for uid, parts in by_user.items():
                state = states.setdefault(uid, UserState())
                for p, pairs in parts.items():
                    apply(state, pairs, partition=p, seq_len=settings.seq_len,
                          dedup_window=settings.dedup_window)

    merge()
    changed = [[states[u] for u in by_user] for by_user in grouped]

    def pack_all() -> None:
        for batch_states in changed:
            for s in batch_states:
                pack(s)

    metrics = AgentMetrics("bench-costs")

    def observe() -> None:
        for b in decoded:
            out = BatchOutcome(messages=len(b), events=b)
            IngestProcessor._observe(processor, out, 0.01)

    store = SequenceStore.from_url(settings.redis_url, cache_users=settings.state_cache_users)

    async def no_dead_letters(bad: list) -> None:
        raise RuntimeError(f"{len(bad)} malformed benchmark events")

    processor = IngestProcessor(settings, store, no_dead_letters, metrics=metrics)
    costs = {"decode": best(decode), "group": best(group), "merge": best(merge),
             "pack": best(pack_all), "metrics": best(observe)}
    await store.client.flushdb()
    for b in batches:  # warm the state cache (a running worker has it warm)
        await processor.process(b)
    await store.client.flushdb()
    store.forget(list(states))
    totals = []
    for _ in range(REPEATS):
        await store.client.flushdb()
        store.forget(list(states))
        t0 = time.perf_counter()
        for b in batches:
            await processor.process(b)
        totals.append(time.perf_counter() - t0)
    process = min(totals)
    costs["redis"] = max(0.0, process - sum(costs.values()))
    costs["process"] = process
    hooks = await hook_costs(settings, store, batches, states, no_dead_letters)
    costs["samples_build"] = max(0.0, hooks["with_sample_encoding"] - process)
    costs["samples"] = max(0.0, hooks["with_samples"] - process)
    costs["popularity"] = hooks["popularity"]
    costs["after_write"] = hooks["after_write"]
    costs["in_process"] = hooks["with_hooks"]
    await store.client.flushdb()
    await store.close()
    return {k: round(v / n * 1e6, 2) for k, v in costs.items()}


async def hook_costs(settings: Settings, store: SequenceStore, batches: list, states: dict,
                     dead_letters) -> dict[str, float]:
    """Seconds for all batches: process with the samples hook, with every hook, and the
    popularity counts alone (best of REPEATS each), publishing to the real broker."""
    from semirec.core.kafka import ensure_topics, producer
    from semirec.core.samples import encode_sample
    from semirec.serving.popularity import count_watches
    from semirec.streams.app import PRODUCER_BATCH_BYTES
    from semirec.streams.ingest import announce_changes, count_popularity, publish_samples
    from semirec.streams.publish import Partitioner

    topics = settings.topics
    await ensure_topics(settings, {topics.samples: PARTITIONS, topics.user_updates: PARTITIONS})
    prod = producer(settings, max_batch_size=PRODUCER_BATCH_BYTES, linger_ms=0)
    await prod.start()
    out: dict[str, float] = {}
    try:
        partitioner = Partitioner()  # one for every configuration, as a worker's runtime holds one
        announce = announce_changes(lambda: prod, settings, partitioner)
        in_hook = [0.0]

        async def after_write(outcome: BatchOutcome) -> None:
            t0 = time.perf_counter()
            await announce(outcome)
            in_hook[0] += time.perf_counter() - t0

        async def encode_only(samples: list) -> None:
            [encode_sample(s) for s in samples]

        configs = {
            "with_sample_encoding": IngestProcessor(settings, store, dead_letters,
                                                    before_save=encode_only),
            "with_samples": IngestProcessor(settings, store, dead_letters,
                                            before_save=publish_samples(lambda: prod, settings, partitioner)),
            "with_hooks": IngestProcessor(
                settings, store, dead_letters,
                before_save=publish_samples(lambda: prod, settings, partitioner),
                after_write=after_write, alongside=count_popularity(store, settings)),
        }
        hook_times = []
        for name, processor in configs.items():
            totals = []
            for _ in range(REPEATS):
                await store.client.flushdb()
                store.forget(list(states))
                in_hook[0] = 0.0
                t0 = time.perf_counter()
                for b in batches:
                    await processor.process(b)
                totals.append(time.perf_counter() - t0)
                hook_times.append(in_hook[0])
            out[name] = min(totals)
        out["after_write"] = min(hook_times[2 * REPEATS:])
        events = [[decode_event(m.value, m.key) for m in b] for b in batches]
        totals = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            for evs in events:
                await count_watches(store.client, evs, settings.time_bucket_s)
            totals.append(time.perf_counter() - t0)
        out["popularity"] = min(totals)
    finally:
        await prod.stop()
    return out


if __name__ == "__main__":
    from semirec.cli.worker import tune_gc

    tune_gc()  # as `semirec worker` runs
    s = Settings.from_env()
    result = asyncio.run(main(int(os.environ["BENCH_EVENTS"]), int(os.environ.get("BENCH_USERS", 1000)),
                              s.batch_max))
    print(json.dumps({"costs_us_per_event": result}), flush=True)
