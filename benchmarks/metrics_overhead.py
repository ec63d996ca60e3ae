"""Metrics overhead: what the ingest agent's Prometheus instrumentation costs per event.

One run, one machine, a real redis-server. After a warm-up that fills every user's sequences:
  processor_us_per_event  :class:`semirec.streams.ingest.IngestProcessor` with metrics switched off
                          (median of rounds)
  metrics_us_per_event    the instrumentation alone: exactly the AgentMetrics calls the
                          processor makes for the same batches, timed in a loop
  overhead                metrics / processor                            (target <= 0.10)
  instrumented/bare_events_per_s  end-to-end rounds of alternating order (noisy on a busy machine)

Usage: python -m benchmarks.metrics_overhead [--events N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import contextmanager

import orjson

from benchmarks.machine import finish, machine, print_describe
from semirec.core.metrics import AgentMetrics
from semirec.core.settings import Settings
from semirec.core.stack import EmbeddedStack
from semirec.core.store import SequenceStore
from semirec.streams.ingest import IngestProcessor
from semirec.streams.messages import Record


class NoMetrics(AgentMetrics):
    """Every method a no-op: the processor without instrumentation."""

    def processed(self, n: int = 1) -> None: ...
    def rejected(self, reason: str, n: int = 1) -> None: ...
    def batch(self, n_messages: int) -> None: ...
    def observe(self, stage: str, seconds: float) -> None: ...
    def state_written(self, event_ts, append_ts, now=None) -> None: ...

    @contextmanager
    def timed(self, stage: str = "batch"):
        yield

    @contextmanager
    def redis(self, op: str):
        yield


def batches(n: int, users: int, size: int, round_no: int) -> list[list[Record]]:
    now = time.time()
    msgs = []
    for i in range(n):
        uid = f"user-{i % users}"
        body = {"event_id": f"r{round_no}-{i}", "user_id": uid, "item_id": f"p{i % 5000}",
                "domain": "product", "action": "click", "ts": now - 60 + i * 1e-4}
        msgs.append(Record(uid.encode(), orjson.dumps(body), "events", i % 4, round_no * n + i, now))
    return [msgs[i : i + size] for i in range(0, n, size)]


async def run(url: str, metrics: AgentMetrics, work: list[list[Record]]) -> float:
    store = SequenceStore.from_url(url)

    async def no_dlq(_: list) -> None:
        return None

    proc = IngestProcessor(Settings(), store, no_dlq, metrics=metrics)
    try:
        t0 = time.perf_counter()
        for batch in work:
            await proc.process(batch)
        return sum(map(len, work)) / (time.perf_counter() - t0)
    finally:
        await store.close()


async def main_async(args: argparse.Namespace) -> dict:
    with EmbeddedStack(("redis",)) as stack:
        url = stack.addresses.redis
        # warm-up: every user gets full sequences, so each timed round does the same work
        await run(url, NoMetrics("x"), batches(max(args.events, 60 * args.users), args.users,
                                                 2000, 0))
        rates: dict[str, list[float]] = {"instrumented": [], "bare": []}
        both = [("instrumented", AgentMetrics("bench")), ("bare", NoMetrics("x"))]
        for r in range(args.rounds):
            for i, (name, metrics) in enumerate(both if r % 2 == 0 else both[::-1]):
                work = batches(args.events, args.users, 2000, 1 + 2 * r + i)
                rates[name].append(await run(url, metrics, work))
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_event_metrics = instrumentation_us_per_event(batches(args.events, args.users, 2000, 99))
    processor_us = 1e6 / med["bare"]
    return {"events": args.events, "rounds": args.rounds,
            "processor_us_per_event": round(processor_us, 2),
            "metrics_us_per_event": round(per_event_metrics, 3),
            "overhead": round(per_event_metrics / processor_us, 4),
            "instrumented_events_per_s": round(med["instrumented"]),
            "bare_events_per_s": round(med["bare"])}


def instrumentation_us_per_event(work: list[list[Record]], repeat: int = 5) -> float:
    """The calls IngestProcessor makes per batch (one load and one CAS round trip each)."""
    m = AgentMetrics("bench-calls")
    ts = [[orjson.loads(msg.value)["ts"] for msg in batch] for batch in work]
    t0 = time.perf_counter()
    for _ in range(repeat):
        for batch, event_ts in zip(work, ts, strict=True):
            with m.redis("load"):
                pass
            with m.redis("cas"):
                pass
            m.observe("batch", 0.1)
            m.batch(len(batch))
            m.processed(len(batch))
            m.state_written(event_ts, [msg.timestamp for msg in batch])
    return (time.perf_counter() - t0) * 1e6 / (repeat * sum(map(len, work)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    at_start = machine()
    result = finish(asyncio.run(main_async(args)), at_start)
    print_describe(result["machine"])
    if not args.json:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
