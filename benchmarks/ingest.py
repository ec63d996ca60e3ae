"""Ingest benchmark: worker throughput relative to raw consumption, and Redis bytes per user.

One run, one machine, one embedded stack (Tansu + redis-server):
  raw_consume_per_s    aiokafka group consumer reading the events topic (no processing); the
                       median of RAW_PASSES passes (fresh groups), as one pass lasts ~0.2 s
  faust_noop_events_per_s  a faust agent that only acks (faust's own per-message ceiling)
  batch_noop_events_per_s  a batch agent (semirec/streams/batch_transport.py) that only acks: the
                       transport's ceiling
  batch_path_events_per_s  reference: our ingest processor fed by plain aiokafka getmany batches
                       (no faust), writing to a separate Redis database
  worker_events_per_s  `semirec worker --agent ingest` (batch transport) validating, merging,
                       writing to Redis and publishing user-update notices, from its first
                       write to the commit of the last offset
  ratio                worker / raw                                  (target >= 0.2)
  worker_cpu_us_per_event  CPU microseconds per event the worker, the broker and redis-server
                       spent during that run (steadier than rates on a shared machine)
  two_workers_events_per_s  the same with two worker processes in one group (4 partitions)
  cluster_worker_events_per_s  with --redis-cluster: one worker writing to a local 3-master
                       Redis Cluster (semirec.core.redis_cluster) instead of one redis-server;
                       cluster_worker_cpu_us_per_event: its CPU per event (worker and the 3 nodes)
  costs_us_per_event   the ingest path's per-event cost by stage (benchmarks/ingest_costs.py)
  redis_bytes_per_user MEMORY USAGE of a user key with full sequences (target <= 2x packed)
  packed_bytes_per_user len() of the packed state

Usage: python -m benchmarks.ingest [--events N] [--users U] [--redis-cluster] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.machine import finish, machine, print_describe
from semirec.core.kafka import ensure_topics, ingest_topics, producer
from semirec.core.redis_client import sync_redis_client
from semirec.core.settings import REPO_ROOT as ROOT
from semirec.core.settings import Settings, Topics
from semirec.core.stack import LOCAL_GROUP_TIMINGS, EmbeddedStack
from semirec.core.store import USER_PREFIX


def make_events(n: int, users: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        uid = f"user-{rng.randrange(users):06d}"
        video = rng.random() < 0.5
        body = {"event_id": f"ev-{i:09d}", "user_id": uid,
                "item_id": f"{'v' if video else 'p'}{rng.randrange(200_000):06d}",
                "domain": "video" if video else "product", "action": "watch" if video else "click",
                "ts": 1_700_000_000 + i // 10 + rng.randint(-600, 600)}
        if video:
            body["complete"] = rng.random() < 0.8
        out.append((uid.encode(), orjson.dumps(body)))
    return out


async def produce(settings: Settings, messages) -> None:
    await ensure_topics(settings, ingest_topics(settings))
    prod = producer(settings)
    await prod.start()
    try:
        futs = [await prod.send(settings.topics.events, v, key=k) for k, v in messages]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


RAW_PASSES = 3


async def raw_consume(settings: Settings, n: int, group: str) -> float:
    consumer = AIOKafkaConsumer(settings.topics.events, **settings.kafka_kwargs(),
                                group_id=group, auto_offset_reset="earliest",
                                session_timeout_ms=2000, heartbeat_interval_ms=500,
                                rebalance_timeout_ms=2000, max_poll_records=2000)
    await consumer.start()
    try:
        seen, t0 = 0, None
        while seen < n:
            for recs in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                if t0 is None:
                    t0 = time.perf_counter()
                seen += len(recs)
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


async def committed_total(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        tps = [TopicPartition(settings.topics.events, p) for p in range(settings.event_partitions)]
        got = await admin.list_consumer_group_offsets(settings.events_group, partitions=tps)
        return sum(m.offset for m in got.values() if m.offset > 0)
    finally:
        await admin.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads; Linux /proc)."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def worker_rate(settings: Settings, n: int, env: dict[str, str], log: Path,
                      workers: int = 1, cpu: dict[str, float] | None = None,
                      stack_pids: dict[str, int] | None = None) -> float:
    """``workers`` `semirec worker` processes in one group, from the first Redis write to the
    commit of the last offset. ``cpu`` receives the CPU seconds the workers, the broker and
    redis-server (``stack_pids``) spent in that window: on a shared machine a steadier
    measure of the work per event than the rate."""
    r = sync_redis_client(settings.redis_url)
    env = {**env, "SEMIREC_REDIS_URL": settings.redis_url,
           "SEMIREC_CONSUMER_GROUP": settings.events_group}
    procs = []
    for i in range(workers):
        with open(log.with_suffix(f".{i}.log"), "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "semirec", "worker", "--agent", "ingest", "--loglevel",
                 os.environ.get("BENCH_WORKER_LOGLEVEL", "warning")],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        t0 = None
        while t0 is None:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            if r.dbsize() > 0:
                t0 = time.perf_counter()
            else:
                time.sleep(0.005)
        pids = {**(stack_pids or {}), **{f"worker{i}": p.pid for i, p in enumerate(procs)}}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        while await committed_total(settings) < n:
            await asyncio.sleep(0.02)
        rate = n / (time.perf_counter() - t0)
        if cpu is not None:
            for name, pid in pids.items():
                key = "worker" if name.startswith("worker") else name
                cpu[key] = cpu.get(key, 0.0) + cpu_seconds(pid) - cpu0[name]
        return rate
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


def reference_rate(script: str, key: str, n: int, env: dict[str, str]) -> float:
    """Run a reference consumer script; it prints ``{"<key>": events_per_s}``."""
    module = "benchmarks." + script.removesuffix(".py")
    res = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env={**env, "BENCH_EVENTS": str(n)},
                         capture_output=True, text=True, timeout=600)
    # faust routes print() through its logger, so the figure may arrive on stderr
    found = re.search(r'\{"' + re.escape(key) + r'": [0-9.e+]+\}', res.stdout + res.stderr)
    if not found:
        raise RuntimeError(f"{script} failed: {res.stderr[-2000:]}")
    return json.loads(found.group(0))[key]


def reference_costs(n: int, env: dict[str, str]) -> dict[str, float]:
    """Per-event cost by stage (benchmarks/ingest_costs.py), in its own process."""
    res = subprocess.run([sys.executable, "-m", "benchmarks.ingest_costs"], cwd=ROOT,
                         env={**env, "BENCH_EVENTS": str(min(n, 40_000))}, capture_output=True,
                         text=True, timeout=600)
    found = re.search(r'\{"costs_us_per_event": \{[^}]*\}\}', res.stdout)
    if not found:
        raise RuntimeError(f"ingest_costs.py failed: {res.stderr[-2000:]}")
    return json.loads(found.group(0))["costs_us_per_event"]


def memory_per_user(url: str) -> tuple[float, float, int]:
    r = sync_redis_client(url)
    used, packed, users = 0, 0, 0
    for key in r.scan_iter(match=f"{USER_PREFIX}*", count=1000):
        used += r.memory_usage(key, samples=0)
        packed += r.strlen(key)
        users += 1
    return used / users, packed / users, users


async def main_async(args: argparse.Namespace) -> dict:
    with EmbeddedStack(("kafka", "redis")) as stack:
        settings = Settings.from_env({**stack.addresses.env(), **LOCAL_GROUP_TIMINGS})
        settings = replace(settings, consumer_group="bench-worker")
        messages = make_events(args.events, args.users)
        await produce(settings, messages)
        passes = [await raw_consume(settings, len(messages), f"bench-raw-{i}")
                  for i in range(RAW_PASSES)]
        raw = statistics.median(passes)
        env = {**os.environ, **stack.addresses.env(), **LOCAL_GROUP_TIMINGS,
               "SEMIREC_CONSUMER_GROUP": settings.events_group, "SEMIREC_COMMIT_INTERVAL_S": "0.2"}
        for f in fields(Topics):
            env[f"SEMIREC_TOPIC_{f.name.upper()}"] = getattr(settings.topics, f.name)
        noop = reference_rate("faust_noop.py", "faust_noop_events_per_s", len(messages), env)
        batch_noop = reference_rate("batch_noop.py", "batch_noop_events_per_s", len(messages), env)
        other_db = settings.redis_url.rsplit("/", 1)[0] + "/1"
        batch = reference_rate("batch_path.py", "batch_path_events_per_s", len(messages),
                               {**env, "SEMIREC_REDIS_URL": other_db})
        with tempfile.TemporaryDirectory() as tmp:
            cpu: dict[str, float] = {}
            worker = await worker_rate(settings, len(messages), env, Path(tmp) / "worker.log",
                                       cpu=cpu, stack_pids={"broker": stack.procs["kafka"].pid,
                                                            "redis": stack.procs["redis"].pid})
            used, packed, users = memory_per_user(settings.redis_url)
            two = replace(settings, consumer_group="bench-two-workers",
                          redis_url=settings.redis_url.rsplit("/", 1)[0] + "/2")
            two_workers = await worker_rate(two, len(messages), env, Path(tmp) / "two.log",
                                            workers=2)
        costs = reference_costs(len(messages), {**env, "SEMIREC_REDIS_URL": settings.redis_url
                                                .rsplit("/", 1)[0] + "/3"})
        cluster = await cluster_rate(settings, len(messages), env) if args.redis_cluster else {}
    return {
        "events": len(messages), "users": users,
        "raw_consume_per_s": round(raw), "raw_consume_passes": [round(p) for p in passes],
        "worker_events_per_s": round(worker),
        "ratio": round(worker / raw, 3),
        "faust_noop_events_per_s": round(noop),
        "worker_vs_faust_noop": round(worker / noop, 3),
        "batch_noop_events_per_s": round(batch_noop),
        "batch_noop_ratio": round(batch_noop / raw, 3),
        "batch_path_events_per_s": round(batch),
        "batch_path_ratio": round(batch / raw, 3),
        "worker_cpu_us_per_event": {k: round(v / len(messages) * 1e6, 1)
                                    for k, v in sorted(cpu.items())},
        "two_workers_events_per_s": round(two_workers),
        "two_workers_ratio": round(two_workers / raw, 3),
        "costs_us_per_event": costs,
        "redis_bytes_per_user": round(used), "packed_bytes_per_user": round(packed),
        "redis_over_packed": round(used / packed, 3),
        **cluster,
    }


async def cluster_rate(settings: Settings, n: int, env: dict[str, str]) -> dict:
    """One worker writing to a local 3-master Redis Cluster."""
    from semirec.core.redis_cluster import LocalRedisCluster

    with LocalRedisCluster(masters=3) as cluster, tempfile.TemporaryDirectory() as tmp:
        on_cluster = replace(settings, consumer_group="bench-cluster", redis_url=cluster.url)
        cpu: dict[str, float] = {}
        nodes = {f"redis{i}": proc.pid for i, proc in enumerate(cluster.procs.values())}
        rate = await worker_rate(on_cluster, n, env, Path(tmp) / "cluster.log", cpu=cpu,
                                 stack_pids=nodes)
    per_event = {"worker": cpu.get("worker", 0.0),
                 "redis_nodes": sum(v for k, v in cpu.items() if k.startswith("redis"))}
    return {"cluster_worker_events_per_s": round(rate),
            "cluster_worker_cpu_us_per_event": {k: round(v / n * 1e6, 1)
                                                for k, v in per_event.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--redis-cluster", action="store_true",
                        help="also measure one worker writing to a local 3-master Redis Cluster")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    at_start = machine()
    result = finish(asyncio.run(main_async(args)), at_start)
    print_describe(result["machine"])
    if not args.json:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
