"""Catalog ingestion through the agent: items/s, and items per CPU-second of the worker.

One embedded stack (Tansu + redis-server); generated-world items produced once to the items
topic; then, per run, a fresh ``semirec worker --agent catalog`` (its own consumer group, an
empty Redis and an empty feature cache, so every title and image goes through the backbones)
with ``SEMIREC_ENCODER_RUNTIME`` = onnx, onnx-int8 or torch, runs alternating. The ONNX models
(and the int8 text model) are made before the runs (an agent makes them once per encoder
version; not timed here).

Measured from the worker's first Redis write (the items of that first batch are not counted)
to the commit of the last offset: ``items_per_s`` (wall) and ``items_per_cpu_s`` (items per
CPU-second of the worker process, i.e. per core: the steadier figure on a shared machine).

    python -m benchmarks.catalog [--items 256] [--rounds 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.machine import finish, machine, print_describe
from semirec.core.item_store import ITEM_PREFIX
from semirec.core.kafka import ensure_topics, producer
from semirec.core.redis_client import sync_redis_client
from semirec.core.settings import Settings, Topics
from semirec.core.stack import LOCAL_GROUP_TIMINGS, EmbeddedStack
from semirec.streams.catalog import catalog_topics

RUNTIMES = ("onnx", "onnx-int8", "torch")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


async def produce(settings: Settings, items: list[dict[str, Any]]) -> None:
    await ensure_topics(settings, catalog_topics(settings))
    prod = producer(settings)
    await prod.start()
    try:
        futs = [await prod.send(settings.topics.items, orjson.dumps(i), key=i["item_id"].encode())
                for i in items]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


async def committed_total(settings: Settings, group: str) -> int:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        tps = [TopicPartition(settings.topics.items, p) for p in range(settings.event_partitions)]
        got = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(m.offset for m in got.values() if m.offset > 0)
    finally:
        await admin.close()


async def agent_run(settings: Settings, env: dict[str, str], n: int, runtime: str, group: str,
                    cache: Path, log: Path) -> dict[str, float]:
    r = sync_redis_client(settings.redis_url)
    r.flushdb()
    env = {**env, "SEMIREC_ENCODER_RUNTIME": runtime, "SEMIREC_CONSUMER_GROUP": group,
           "SEMIREC_CACHE_DIR": str(cache)}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "semirec", "worker", "--agent", "catalog",
                                 "--loglevel", "warning"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while r.dbsize() == 0:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            time.sleep(0.005)
        t0, c0 = time.perf_counter(), cpu_seconds(proc.pid)
        first = sum(1 for _ in r.scan_iter(match=f"{ITEM_PREFIX}*", count=1000))
        while await committed_total(settings, group) < n:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - c0
        stored = sum(1 for _ in r.scan_iter(match=f"{ITEM_PREFIX}*", count=1000))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    counted = stored - first
    return {"items_timed": counted, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "items_per_s": round(counted / wall, 1), "items_per_cpu_s": round(counted / cpu, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from semirec.encoders.exported import ensure_exported, ensure_int8_text
    from semirec.encoders.sample import sample_items

    items = sample_items(args.items, args.seed)[:args.items]
    load_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, float]]] = {r: [] for r in RUNTIMES}
    with tempfile.TemporaryDirectory(prefix="semirec-bench-catalog-") as tmp, \
            EmbeddedStack(("kafka", "redis")) as stack:
        onnx_root = Path(tmp) / "onnx"
        ensure_int8_text(ensure_exported(root=onnx_root))
        settings = Settings.from_env({**stack.addresses.env(), **LOCAL_GROUP_TIMINGS})
        await produce(settings, items)
        env = {**os.environ, **stack.addresses.env(), **LOCAL_GROUP_TIMINGS,
               "SEMIREC_COMMIT_INTERVAL_S": "0.2"}
        for f in fields(Topics):
            env[f"SEMIREC_TOPIC_{f.name.upper()}"] = getattr(settings.topics, f.name)
        for round_ in range(args.rounds):
            for runtime in RUNTIMES:
                cache = Path(tmp) / f"cache-{runtime}-{round_}"
                cache.mkdir()
                (cache / "onnx").symlink_to(onnx_root)
                runs[runtime].append(await agent_run(
                    settings, env, len(items), runtime, f"bench-catalog-{runtime}-{round_}",
                    cache, Path(tmp) / "worker.log"))
    best = {r: max(runs[r], key=lambda x: x["items_per_cpu_s"]) for r in RUNTIMES}
    return {
        "items": len(items), "rounds": args.rounds,
        **{f"items_per_s_{r}": best[r]["items_per_s"] for r in RUNTIMES},
        **{f"items_per_cpu_s_{r}": best[r]["items_per_cpu_s"] for r in RUNTIMES},
        "cpu_ratio": round(best["onnx"]["items_per_cpu_s"] / best["torch"]["items_per_cpu_s"], 2),
        "cpu_ratio_int8": round(
            best["onnx-int8"]["items_per_cpu_s"] / best["torch"]["items_per_cpu_s"], 2),
        "runs": runs,
        "load_avg_1_5_15": load_start,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    at_start = machine()
    result = finish(asyncio.run(main_async(args)), at_start)
    print_describe(result["machine"])
    if not args.json:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
