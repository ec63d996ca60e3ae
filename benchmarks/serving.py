"""Serving benchmark, all in one run on this machine with the whole embedded stack on it.

  rank_c{1,2,4}_{triton,inproc}_{p50,p99}_ms, _per_s
                     one user, full sequences (50 + 50), 500 candidates: the SEMI request graph
                     through Triton (python backend + onnxruntime, async gRPC) and the same ONNX
                     file under onnxruntime in this process, at 1, 2 and 4 requests in flight
                     rank_c{1,2,4}_triton_cpu_ms_{server,client}, rank_c{1,2,4}_inproc_cpu_ms:
                     CPU time per request (tritonserver and its python-backend stubs; this
                     process's gRPC client; in-process onnxruntime): on a saturated machine
                     throughput_ratio <= inproc_cpu / (server + client), whatever the load
  p50_ms, p99_ms     Triton at concurrency 2                             (target p99 <= 15)
  throughput_ratio   Triton requests/s / in-process requests/s at concurrency 2  (target >= 0.8)
  freshness_p50_ms, freshness_p99_ms
                     a product click produced -> its recommendation received by a subscriber, at
                     100 sequence-changing events/s through real `semirec worker`s (ingest and
                     recommend agents, each in its own process and group, as deployed; with
                     ``--layout inline`` one worker running both, no user-updates hop)
                                                                         (target p99 <= 100)
                     ``--traffic mixed``: 5,000 users with a week of history each (50 clicks,
                     50 complete and 50 incomplete watches, their watches counted), and 100
                     events/s of which half are clicks, a quarter complete and a quarter
                     incomplete watches: 75 recommendations/s, every figure per recommendation
                     delivered (``traffic``, ``history_watches``; ``events`` beside ``sent``)
  freshness_stages   p50 / p99 of each stage of the steady run's recommendations: ingest_ms
                     (event's Kafka timestamp -> ingest's Redis write), notice_ms (-> the agent
                     fetched the notice), queue_ms (-> a ranking slot), recall_ms (state read +
                     recall), rank_ms, delivery_ms (generated -> received by the subscriber)
                     and cpu_ms_per_event: CPU each process spent per event it handled (kafka =
                     Tansu, redis, the ingest worker, this benchmark's producer and subscriber:
                     per event sent; triton with its stubs and the recommendation worker: per
                     recommendation delivered): what bounds the rate this machine sustains
  cpu_ms_per_rec     CPU ms of all processes together (Tansu, redis, tritonserver + stubs, the
                     ingest and the recommendation worker; this benchmark's load generator apart)
                     per recommendation delivered in the 100 /s run; cpu_ms_per_rec_by_process
                     its breakdown                                       (target <= 6)
  freshness_p50_ms_25, freshness_p99_ms_25, freshness_stages_25, cpu_ms_per_rec_25
                     the same at 25 events/s, where nothing queues      (target p99 <= 100);
                     idle_cpu_ms_per_s: CPU ms per second each process spends with no events
  recs_per_s         the highest rate of triggered recommendations delivered with freshness p99
                     under 100 ms (25, 50, 75 /s, then from 150 /s if 100 /s held, stepped up
                     until one fails; 0 when none holds)                 (target >= 150)
  recall_ms_10k, recall_ms_100k
                     median time of one user's 500-candidate recall over 10k / 100k videos
                     (faiss exact inner product + popularity + fresh)    (target 100k <= 5)

Weights are random (cost does not depend on them). ``--ranker-precision fp32|int8`` (default:
``SEMIREC_RANKER_PRECISION``'s) picks the ranker's graph in Triton and in process
(``ranker_precision`` in the JSON, ``ranker_precision_resolved`` what ``auto`` became on this
CPU); ``--ranker-deep-top K`` (default: ``SEMIREC_RANKER_DEEP_TOP``'s; 0 = off) exports it as a
cascade of K (``ranker_deep_top`` in the JSON: what the exported version has). ``--model``
(default ``semi``, the figures in the docs before 2026-12-06; a model without a wide part is
exported whole) serves another
SEMI network, e.g. the demo's ``semi_ccl+sim+ses+usr+id`` (its extra inputs: the workers send
the users' incomplete watches and the items' counts), ``--served`` at the sizes the trainer
serves it (``benchmarks/sizes.py``), ``--set`` its sizes (``mlp_hidden=64``).
Usage:
  python -m benchmarks.serving [--seconds S] [--parts rank,recall,freshness] [--profile-workers DIR]
                               [--layout split|inline] [--subscriber-wait-ms MS]
                               [--worker-env KEY=VALUE ...] [--ranker-precision P] [--ranker-deep-top K]
                               [--model NAME] [--served] [--set K=V,...] [--traffic clicks|mixed] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.machine import finish, machine, print_describe
from benchmarks.sizes import SERVED_HELP, ranker_config
from semirec.cli.evaluate import parse_settings
from semirec.core.contracts import Domain, Event, encode_event
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.kafka import ensure_topics, ingest_topics, producer, serving_topics
from semirec.core.recommendations import parse_recommendation
from semirec.core.redis_client import redis_client
from semirec.core.sequences import Entry, UserState
from semirec.core.settings import Settings
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, LOCAL_GROUP_TIMINGS, EmbeddedStack
from semirec.core.store import SequenceStore
from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot, count_watches
from semirec.serving.ranking import OnnxRanker, TritonRanker
from semirec.serving.recall import Recall
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.registry.export import model_request
from semirec.trainer.registry.precision import model_for, resolve

DIM = 128
VIDEOS, PRODUCTS, USERS = 10_000, 2000, 5000  # the freshness runs' catalog and users
SUBSCRIBER_WAIT_MS = 10  # the measuring subscriber's fetch long-poll (--subscriber-wait-ms)
HISTORY_ENTRIES = 50  # --traffic mixed: per user, clicks, complete and incomplete watches each
HISTORY_S = 7 * 24 * 3600.0
TRAFFICS = ("clicks", "mixed")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- ranking: Triton vs in-process ---------------------------------------------------------

def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children (Triton's stubs)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout.split()
    ticks = 0
    for p in [pid, *map(int, out)]:
        with suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def closed_loop(rank, tensors, concurrency: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await rank(tensors)
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - started)


async def bench_rank(triton_url: str, onnx_path: Path, seconds: float, triton_pid: int,
                     model: Ranker, precision: str = "fp32") -> dict:
    one = model_request(model, DIM, 50, 50, 500, seed=1)
    tensors = {k: v[None] for k, v in one.items()}
    triton = TritonRanker(triton_url, timeout_s=5)
    buckets = 0 if model.identity is None else model.identity.bias.num_embeddings
    inproc = OnnxRanker(model_for(onnx_path, precision), threads=1, id_buckets=buckets)
    out: dict = {}
    for _ in range(20):  # warm both paths
        await triton.rank(tensors)
        inproc.rank_sync(tensors)
    for c in (1, 2, 4):
        for name, fn in (("triton", triton.rank), ("inproc", inproc.rank)):
            server, client = tree_cpu_s(triton_pid), time.process_time()
            lat, rate = await closed_loop(fn, tensors, c, seconds)
            server, client = tree_cpu_s(triton_pid) - server, time.process_time() - client
            out[f"rank_c{c}_{name}_p50_ms"] = round(percentile(lat, 50), 3)
            out[f"rank_c{c}_{name}_p99_ms"] = round(percentile(lat, 99), 3)
            out[f"rank_c{c}_{name}_per_s"] = round(rate, 1)
            if name == "triton":
                out[f"rank_c{c}_triton_cpu_ms_server"] = round(server * 1000 / len(lat), 2)
                out[f"rank_c{c}_triton_cpu_ms_client"] = round(client * 1000 / len(lat), 2)
            else:
                out[f"rank_c{c}_inproc_cpu_ms"] = round(client * 1000 / len(lat), 2)
    await triton.close()
    out["p50_ms"], out["p99_ms"] = out["rank_c2_triton_p50_ms"], out["rank_c2_triton_p99_ms"]
    out["throughput_ratio"] = round(out["rank_c2_triton_per_s"] / out["rank_c2_inproc_per_s"], 3)
    return out


# -- recall ---------------------------------------------------------------------------------

def bench_recall(n_videos: int, repeat: int = 50) -> float:
    rng = np.random.default_rng(0)
    index = CatalogIndex(DIM)
    videos = [f"v{i}" for i in range(n_videos)]
    products = [f"p{i}" for i in range(2000)]
    index.upsert(videos, rng.normal(size=(n_videos, DIM)).astype(np.float32), [Domain.VIDEO] * n_videos)
    index.upsert(products, rng.normal(size=(2000, DIM)).astype(np.float32), [Domain.PRODUCT] * 2000)
    pop = PopularitySnapshot()
    pop.counts = {v: int(c) for v, c in zip(videos[:5000], rng.zipf(1.5, 5000), strict=True)}
    pop.ranked = sorted(pop.counts, key=lambda v: -pop.counts[v])
    recall = Recall(index, pop)
    state = UserState(video=[Entry(i, videos[int(j)]) for i, j in enumerate(rng.integers(0, n_videos, 50))],
                      product=[Entry(i, products[int(j)]) for i, j in enumerate(rng.integers(0, 2000, 50))])
    recall.candidates(state)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        got = recall.candidates(state)
        times.append((time.perf_counter() - t) * 1000)
    assert len(got) == 500
    return round(float(np.median(times)), 3)


# -- freshness through the real worker ------------------------------------------------------

async def put_catalog(redis_url: str, n_videos: int, n_products: int) -> None:
    rng = np.random.default_rng(1)
    client = redis_client(redis_url)
    store = ItemStore(client)
    for domain, n in ((Domain.VIDEO, n_videos), (Domain.PRODUCT, n_products)):
        vecs = rng.normal(size=(n, DIM)).astype(np.float32)
        for lo in range(0, n, 2000):
            await store.put_many(ItemVector(f"{domain.value[0]}{i}", domain, vecs[i], "bench")
                                 for i in range(lo, min(n, lo + 2000)))
    await client.aclose()


async def put_histories(store: SequenceStore, users: int, entries: int, n_videos: int,
                        n_products: int, now: float) -> int:
    """``--traffic mixed``: every benchmark user gets a full state before the runs, ``entries``
    product clicks, complete watches and incomplete watches each, spread over the last week,
    written as ingest writes states, and the watches counted as ingest counts them (popularity,
    the items' watch counts and the count feed); returns the watches counted."""
    rng = np.random.default_rng(2)
    counted = 0
    for lo in range(0, users, 250):
        writes, watches = [], []
        for u in range(lo, min(users, lo + 250)):
            ts = np.sort(now - rng.uniform(60.0, HISTORY_S, 3 * entries))
            items = [f"p{j}" for j in rng.integers(0, n_products, entries)] + \
                    [f"v{j}" for j in rng.integers(0, n_videos, 2 * entries)]
            order = rng.permutation(3 * entries)  # the three lists interleaved in time
            kinds = [(items[k], k // entries) for k in order]  # 0 click, 1 complete, 2 not
            state = UserState()
            for t, (item, kind) in zip(ts.tolist(), kinds, strict=True):
                entry = Entry(int(t * 1000), item)
                (state.product, state.video, state.skipped)[kind].append(entry)
                if kind:
                    watches.append(Event(f"h{u}-{len(watches)}", f"bu{u}", item, Domain.VIDEO,
                                         "watch", t, complete=kind == 1))
            writes.append((f"bu{u}", b"", state))
        if not all(await store.save(writes)):
            raise RuntimeError("benchmark users already had states: not a fresh stack")
        await count_watches(store.client, watches)
        counted += len(watches)
    return counted


def traffic_event(traffic: str, rng: np.random.Generator, event_id: str, user: str,
                  n_videos: int, n_products: int) -> Event:
    """One paced event: ``clicks`` a product click; ``mixed`` half product clicks, a quarter
    complete and a quarter incomplete video watches (those trigger no recommendation)."""
    draw = rng.random() if traffic == "mixed" else 0.0
    if draw < 0.5:
        return Event(event_id, user, f"p{int(rng.integers(0, n_products))}", Domain.PRODUCT,
                     "click", time.time())
    return Event(event_id, user, f"v{int(rng.integers(0, n_videos))}", Domain.VIDEO, "watch",
                 time.time(), complete=draw < 0.75)


async def paced_run(settings: Settings, rate: float, seconds: float, users: int, tag: str,
                    pids: dict[str, int] | None = None, drain_s: float = 3.0,
                    traffic: str = "clicks", subscriber_wait_ms: int = SUBSCRIBER_WAIT_MS) -> dict:
    """Produce ``rate`` events/s (distinct users in turn; :func:`traffic_event`); measure
    produce -> received of every sequence-changing event, and the CPU each process of ``pids``
    spent per event sent (``benchmark``: this process). Receives until every recommendation
    arrived or ``drain_s`` after the last event, so on a machine too busy to keep up the CPU
    still counts against the recommendations it paid for."""
    cpu0 = {name: tree_cpu_s(pid) for name, pid in (pids or {}).items()}
    bench0 = time.process_time()
    from aiokafka import AIOKafkaConsumer

    # the subscriber's long-poll is short (SUBSCRIBER_WAIT_MS): on Tansu a fetch returns only when
    # its wait runs out, which would add up to the wait to every figure (Kafka answers at once)
    consumer = AIOKafkaConsumer(settings.topics.recommendations,
                                **{**settings.consumer_kwargs(),
                                   "fetch_max_wait_ms": subscriber_wait_ms},
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.05)
    for tp in consumer.assignment():
        await consumer.position(tp)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    stages: dict[str, list[float]] = {}
    fallbacks = 0
    prod = producer(settings, linger_ms=0)
    await prod.start()
    rng = np.random.default_rng(int(rate))

    async def receive(until: float) -> None:
        nonlocal fallbacks
        while time.monotonic() < until and len(got) < n:
            for records in (await consumer.getmany(timeout_ms=20)).values():
                now = time.time()
                for r in records:
                    rec = parse_recommendation(r.value)
                    if rec.event_id in sent and rec.event_id not in got:
                        got[rec.event_id] = now
                        fallbacks += rec.fallback
                        t = rec.timings
                        for stage, ms in (("ingest_ms", t.ingest_ms), ("notice_ms", t.notice_ms),
                                          ("queue_ms", t.queue_ms), ("recall_ms", t.recall_ms),
                                          ("rank_ms", t.rank_ms),
                                          ("delivery_ms", (now - rec.generated_at) * 1000)):
                            if ms is not None:
                                stages.setdefault(stage, []).append(ms)

    events = [traffic_event(traffic, rng, f"{tag}-{i}", f"bu{(i * 7919) % users}", VIDEOS, PRODUCTS)
              for i in range(int(rate * seconds))]
    n = sum(e.appends for e in events)  # the recommendations to wait for
    receiver = asyncio.create_task(receive(time.monotonic() + seconds + drain_s))
    start = time.monotonic()
    for i, event in enumerate(events):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        event = replace(event, ts=time.time())
        if event.appends:
            sent[event.event_id] = time.time()
        await prod.send(settings.topics.events, encode_event(event), key=event.user_id.encode())
    await prod.flush()
    await receiver
    # per event each process handled: the ranking side only ranked what was delivered
    done = {"triton": len(got), "recommend_worker": len(got), "worker": len(got)}
    spent = {name: tree_cpu_s(pid) - cpu0[name] for name, pid in (pids or {}).items()}
    cpu = {name: round(s * 1000 / max(1, done.get(name, len(events))), 2)
           for name, s in spent.items()}
    # all processes together (the load generator apart) per delivered recommendation
    per_rec = {name: round(s * 1000 / max(1, len(got)), 2) for name, s in spent.items()}
    cpu["benchmark"] = round((time.process_time() - bench0) * 1000 / len(events), 2)
    await prod.stop()
    await consumer.stop()
    fresh = [(got[e] - sent[e]) * 1000 for e in got]
    return {"rate": rate, "events": len(events), "sent": n, "received": len(got),
            "fallbacks": fallbacks,
            "delivered_per_s": round(len(got) / seconds, 1),
            "p50_ms": round(percentile(fresh, 50), 1) if fresh else None,
            "p99_ms": round(percentile(fresh, 99), 1) if fresh else None,
            "stages_p50_p99_ms": {k: [round(percentile(v, 50), 1), round(percentile(v, 99), 1)]
                                  for k, v in stages.items()},
            "cpu_ms_per_event": cpu,
            "cpu_ms_per_rec": round(sum(spent.values()) * 1000 / max(1, len(got)), 2) if spent else None,
            "cpu_ms_per_rec_by_process": per_rec}


async def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU ms per second each process spends with no events flowing (fetch long-polls,
    snapshot refreshes, heartbeats), and their sum."""
    cpu0 = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    await asyncio.sleep(seconds)
    out = {name: round((tree_cpu_s(pid) - cpu0[name]) * 1000 / seconds, 1) for name, pid in pids.items()}
    out["all"] = round(sum(out.values()), 1)
    return out


def sustained(run: dict) -> bool:
    """Every recommendation delivered (99%) with freshness p99 under 100 ms."""
    return run["p99_ms"] is not None and run["p99_ms"] <= 100 and run["received"] >= 0.99 * run["sent"]


async def bench_freshness(settings: Settings, seconds: float, log: Path,
                          stack_pids: dict[str, int], worker_env: dict[str, str],
                          profile_dir: Path | None = None, traffic: str = "clicks",
                          subscriber_wait_ms: int = SUBSCRIBER_WAIT_MS,
                          layout: str = "split") -> dict:
    from tests.conftest import settings_env  # the child's environment, as the tests build it

    await ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)})
    env = {**settings_env(settings), "SEMIREC_RANK_TIMEOUT_MS": "1000", **worker_env}
    procs = []
    # split (as deployed by docker-compose and the demo): ingest and recommendation agents in
    # their own processes and consumer groups, joined by the user-updates topic; inline: one
    # worker runs both and hands changed users over in-process (SEMIREC_RECOMMEND_INLINE)
    workers = {"split": (("ingest_worker", ["ingest"], {}), ("recommend_worker", ["recommend"], {})),
               "inline": (("worker", ["ingest", "recommend"], {"SEMIREC_RECOMMEND_INLINE": "1"}),),
               }[layout]
    for key, agents, extra in workers:
        name = key.removesuffix("_worker")  # its log: ingest.log, recommend.log, worker.log
        group = settings.events_group + ("-recommend" if agents == ["recommend"] else "")
        # --profile-workers: each worker under cProfile (its stats written when it stops)
        prof = [] if profile_dir is None else ["-m", "cProfile", "-o", str(profile_dir / f"{name}.prof")]
        with open(log.with_name(f"{name}.log"), "ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, *prof, "-m", "semirec", "worker",
                 *(arg for agent in agents for arg in ("--agent", agent))],
                env={**env, "SEMIREC_CONSUMER_GROUP": group, **extra}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))
    try:
        pids = {**stack_pids, **{key: proc.pid for (key, *_), proc in zip(workers, procs, strict=True)}}
        sub = {"traffic": traffic, "subscriber_wait_ms": subscriber_wait_ms}
        await paced_run(settings, 20, 5, USERS, "warm", **sub)  # joins groups, loads the index
        steady = await paced_run(settings, 100, seconds, USERS, "steady", pids, drain_s=60.0, **sub)
        await asyncio.sleep(3.0)  # let a backlog drain before the steps
        idle = await idle_cpu(pids, 3.0)
        steps = []
        for rate in (25, 50, 75, 150, 200, 300, 400, 600):  # up until one fails
            if rate > 100 and not sustained(steady):
                break
            r = await paced_run(settings, rate, max(4.0, seconds / 2), USERS, f"r{rate}", pids,
                                **sub)
            steps.append(r)
            if not sustained(r) and rate != 100:
                break
            await asyncio.sleep(1.0)
        ok = [s for s in [steady, *steps] if sustained(s)]
        at25 = next(s for s in steps if s["rate"] == 25)
        return {"cpu_ms_per_rec": steady["cpu_ms_per_rec"],
                "cpu_ms_per_rec_by_process": steady["cpu_ms_per_rec_by_process"],
                "freshness_p50_ms_25": at25["p50_ms"], "freshness_p99_ms_25": at25["p99_ms"],
                "freshness_stages_25": at25["stages_p50_p99_ms"],
                "cpu_ms_per_rec_25": at25["cpu_ms_per_rec"],
                "idle_cpu_ms_per_s": idle,
                "freshness_p50_ms": steady["p50_ms"], "freshness_p99_ms": steady["p99_ms"],
                "freshness_stages": steady["stages_p50_p99_ms"],
                "freshness_cpu_ms_per_event": steady["cpu_ms_per_event"], "freshness_steady": steady,
                "rate_steps": steps,
                "recs_per_s": max((s["delivered_per_s"] for s in ok), default=0.0)}
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=30)


async def main_async(args: argparse.Namespace) -> dict:
    from semirec.trainer.nets import checkpoint
    from semirec.trainer.nets.zoo import build
    from semirec.trainer.registry.repository import ModelRepository

    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    work = Path(tempfile.mkdtemp(prefix="semirec-bench-serving-"))
    repo_dir = work / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json"))
    at_start = machine()
    result: dict = {"load_avg_1m": at_start["load_avg_1_5_15"][0]}
    try:
        with EmbeddedStack(model_repository=repo_dir, directory=work / "stack") as stack:
            import torch

            torch.manual_seed(0)
            sizes = parse_settings(args.settings)
            cfg = ranker_config(args.model, sizes, args.served)
            model = build(cfg).eval()
            ckpt = checkpoint.save(work / "ckpt", model, cfg)
            result["model"], result["settings"] = args.model, sizes
            result["served_sizes"] = args.served
            repo = ModelRepository(repo_dir, stack.addresses.triton_grpc,
                                   precision=args.ranker_precision, deep_top=args.ranker_deep_top)
            result["ranker_precision"] = args.ranker_precision
            result["ranker_precision_resolved"] = resolve(args.ranker_precision)
            version = repo.export(ckpt)
            result["ranker_deep_top"] = repo.info(version).deep_top
            repo.promote(version)
            if "rank" in args.parts:
                result.update(await bench_rank(stack.addresses.triton_grpc,
                                               repo_dir / "ranker" / str(version) / "model.onnx",
                                               args.seconds, stack.procs["triton"].pid,
                                               model, args.ranker_precision))
            if "recall" in args.parts:
                result["recall_ms_10k"] = bench_recall(10_000)
                result["recall_ms_100k"] = bench_recall(100_000)
            if "freshness" in args.parts:
                settings = replace(Settings.from_env({**stack.addresses.env(),
                                                      **LOCAL_GROUP_TIMINGS}),
                                   consumer_group="bench-serving")
                await put_catalog(settings.redis_url, VIDEOS, PRODUCTS)
                result["traffic"] = args.traffic
                if args.traffic == "mixed":
                    store = SequenceStore.from_url(settings.redis_url)
                    result["history_watches"] = await put_histories(
                        store, USERS, HISTORY_ENTRIES, VIDEOS, PRODUCTS, time.time())
                    await store.close()
                result.update(await bench_freshness(
                    settings, args.seconds * 2, work / "worker.log",
                    {name: proc.pid for name, proc in stack.procs.items()}, worker_env,
                    args.profile_workers, args.traffic, args.subscriber_wait_ms, args.layout))
                result["layout"] = args.layout
                result["worker_env"] = worker_env
                result["subscriber_wait_ms"] = args.subscriber_wait_ms
    finally:
        steady = result.get("freshness_steady")
        if steady is not None and steady["received"] < 0.99 * steady["sent"]:
            for name in ("ingest", "recommend", "worker"):  # why the workers did not deliver
                with suppress(OSError):
                    tail = (work / f"{name}.log").read_text(errors="replace").splitlines()[-40:]
                    print(f"--- {name} worker log (tail) ---", *tail, sep="\n", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    finish(result, at_start)
    result["load_avg_1m_end"] = result["machine"]["load_avg_at_end"][0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per ranking measurement")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra setting for the two workers (e.g. SEMIREC_FETCH_MAX_WAIT_MS=10)")
    parser.add_argument("--parts", default="rank,recall,freshness",
                        help="comma-separated subset of rank,recall,freshness (default: all)")
    parser.add_argument("--model", default="semi",
                        help="the ranker served (random weights), a SEMI name such as the demo's "
                             "semi_ccl+sim+ses+usr+id (default: %(default)s)")
    parser.add_argument("--set", dest="settings", default="",
                        help="its sizes as `semirec evaluate --set` takes them, e.g. mlp_hidden=64")
    parser.add_argument("--served", action="store_true", help=SERVED_HELP)
    parser.add_argument("--traffic", choices=TRAFFICS, default="clicks",
                        help="the freshness runs' events: product clicks by users without history, "
                             "or mixed (users with a full week of history; half clicks, a quarter "
                             "complete, a quarter incomplete watches) (default: %(default)s)")
    parser.add_argument("--ranker-precision", choices=("auto", "fp32", "int8"), default=None,
                        help="the ranker's graph in Triton and in process (default: "
                             "SEMIREC_RANKER_PRECISION's)")
    parser.add_argument("--ranker-deep-top", type=int, default=None, metavar="K",
                        help="export the ranker as a cascade of K, 0 = off (default: "
                             "SEMIREC_RANKER_DEEP_TOP's)")
    parser.add_argument("--subscriber-wait-ms", type=int, default=SUBSCRIBER_WAIT_MS, metavar="MS",
                        help="the measuring subscriber's fetch long-poll; on Tansu each of its "
                             "fetches costs the broker CPU and the wait adds to every freshness "
                             "figure (default: %(default)s)")
    parser.add_argument("--layout", choices=("split", "inline"), default="split",
                        help="split: ingest and recommendation workers joined by user-updates (as "
                             "deployed); inline: one worker running both, changed users handed "
                             "over in-process (SEMIREC_RECOMMEND_INLINE=1) (default: %(default)s)")
    parser.add_argument("--profile-workers", type=Path, default=None, metavar="DIR",
                        help="run the workers under cProfile, stats to DIR/{ingest,recommend,worker}.prof "
                             "(the profiler's own cost inflates their CPU figures)")
    args = parser.parse_args()
    if args.profile_workers is not None:
        args.profile_workers = args.profile_workers.resolve()
        args.profile_workers.mkdir(parents=True, exist_ok=True)
    args.ranker_precision = args.ranker_precision or Settings.from_env().ranker_precision
    if args.ranker_deep_top is None:
        args.ranker_deep_top = Settings.from_env().ranker_deep_top
    result = asyncio.run(main_async(args))
    print_describe(result["machine"])
    if not args.json:
        for key, value in result.items():
            print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
