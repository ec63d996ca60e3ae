"""Incremental-trainer benchmark, in one run on the embedded stack (Tansu, redis-server, Triton).

  samples_per_s          fine-tuning throughput of the default SEMI (d=128) on one core
  model_freshness_p95_s  Kafka timestamp of a watch's sample -> a served (promoted and answering)
                         model trained on it, default trainer settings, samples streamed at
                         --rate per second for --seconds (target <= 60)
  swap_p99_ratio         ranking-request p99 during promotions / p99 outside them, requests of
                         one user x 50+50 entries x 500 candidates from --clients concurrent
                         clients throughout (target <= 1.5)
  swap_failed            failed ranking requests during the whole run (target 0)

The samples come from the drifting toy world (tests/online_utils.py, 128-d item vectors in Redis)
and are produced straight to the ``samples`` topic (the ingest agent's feature logging adds its
batch time, milliseconds, before that). The starting model is trained on the pre-shift half.
Usage: python -m benchmarks.trainer [--seconds S] [--rate R] [--clients N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import numpy as np
import torch

from benchmarks.machine import finish, machine, print_describe
from semirec.core.contracts import Domain
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.samples import encode_sample
from semirec.core.settings import Settings
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, LOCAL_GROUP_TIMINGS, EmbeddedStack
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import paper
from semirec.trainer.online.learner import (
    ItemTable,
    Learner,
    OnlineConfig,
    samples_from_events,
    to_sample_set,
)
from semirec.trainer.online.service import OnlineTrainer
from semirec.trainer.registry.export import INPUTS, example_batch
from semirec.trainer.registry.repository import ModelRepository
from tests.online_utils import drifting_world

TYPES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}


def samples_per_s(learner: Learner, table: ItemTable, samples) -> float:
    data = to_sample_set(samples, table.rows)
    learner.fine_tune(data.subset(np.arange(min(256, len(data)))), table.tensor)  # warm-up
    started = time.perf_counter()
    learner.fine_tune(data, table.tensor)
    return len(data) / (time.perf_counter() - started)


def load(url: str, stop: threading.Event, log: list[tuple[float, float, bool]]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    batch = example_batch(1, 128, 50, 50, 500, seed=1)
    inputs = []
    for name in INPUTS:
        t = grpcclient.InferInput(name, list(batch[name].shape), TYPES[str(batch[name].dtype)])
        t.set_data_from_numpy(batch[name])
        inputs.append(t)
    while not stop.is_set():
        sent = time.time()
        try:
            client.infer("ranker", inputs, client_timeout=10.0)
            ok = True
        except Exception:
            ok = False
        log.append((sent, time.time() - sent, ok))


async def stream(settings: Settings, samples, rate: float, seconds: float) -> int:
    from semirec.core.kafka import producer

    prod = producer(settings)
    await prod.start()
    sent = 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < seconds and sent < len(samples):
            due = int((time.monotonic() - started) * rate)
            while sent < min(due, len(samples)):
                now = time.time()  # the watch "happens" now: ingest would log it within ms
                s = msgspec.structs.replace(samples[sent], appended_at=now, logged_at=now)
                await prod.send(settings.topics.samples, encode_sample(s), key=s.user_id.encode())
                sent += 1
            await asyncio.sleep(0.02)
        await prod.flush()
    finally:
        await prod.stop()
    return sent


async def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    world = drifting_world(seed=0, dim=128, users=400, events_per_user=80)
    table = ItemTable(128)
    table.add([it["item_id"] for it in world.items], world.vectors)
    samples = samples_from_events(world.events)
    pre = [s for s in samples if s.ts < world.shift_ts]
    post = [s for s in samples if s.ts >= world.shift_ts]
    cfg = paper("semi")
    torch.manual_seed(0)
    from semirec.trainer.nets.zoo import build

    learner = Learner(build(cfg), cfg, OnlineConfig(passes=1, holdout_fraction=0.0))
    learner.add(pre)
    rate = samples_per_s(learner, table, pre[:1000])
    print(f"samples_per_s {rate:.0f}; training the starting model", file=sys.stderr)
    learner.accept(learner.round(table))
    work = Path(tempfile.mkdtemp(prefix="semirec-bench-trainer-"))
    repo_dir = work / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json", ".*"))
    try:
        with EmbeddedStack(model_repository=repo_dir) as stack:
            settings = replace(Settings.from_env({**stack.addresses.env(), **LOCAL_GROUP_TIMINGS}),
                               model_repository=str(repo_dir))
            items = ItemStore.from_url(settings.redis_url)
            await items.put_many(ItemVector(it["item_id"], Domain(it["domain"]), v, "bench")
                                 for it, v in zip(world.items, world.vectors, strict=True))
            await items.close()
            repo = ModelRepository(repo_dir, stack.addresses.triton_grpc)
            checkpoint.save(work / "start", learner.model, cfg)
            repo.promote(repo.export(work / "start"))
            stop_load, log = threading.Event(), []
            clients = [threading.Thread(target=load, args=(stack.addresses.triton_grpc, stop_load,
                                                           log)) for _ in range(args.clients)]
            for c in clients:
                c.start()
            print("streaming", file=sys.stderr)
            trainer = OnlineTrainer(settings, OnlineConfig(), state_dir=work / "state", repo=repo)
            await trainer.start()
            stop = asyncio.Event()
            task = asyncio.create_task(trainer.run(stop))
            sent = await stream(settings, post, args.rate, args.seconds)
            await asyncio.sleep(args.drain)
            stop.set()
            await task
            await trainer.stop()
            stop_load.set()
            for c in clients:
                c.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    promoted = [r.promotion for r in trainer.rounds if r.promotion is not None]
    ages = [a for p in promoted for a in p.ages]
    windows = [p.window for p in promoted]

    def in_swap(t: float) -> bool:
        return any(a - 0.05 <= t <= b + 0.05 for a, b in windows)

    during = [lat for t, lat, ok in log if ok and in_swap(t)]
    steady = [lat for t, lat, ok in log if ok and not in_swap(t)]
    p99 = {k: float(np.percentile(v, 99)) * 1e3 if v else float("nan")
           for k, v in (("during", during), ("steady", steady))}
    return {
        "samples_per_s": round(rate, 1),
        "model_freshness_p50_s": round(float(np.percentile(ages, 50)), 2) if ages else None,
        "model_freshness_p95_s": round(float(np.percentile(ages, 95)), 2) if ages else None,
        "swap_p99_ratio": round(p99["during"] / p99["steady"], 3),
        "swap_failed": sum(1 for _, _, ok in log if not ok),
        "swap_p99_ms": round(p99["during"], 2), "steady_p99_ms": round(p99["steady"], 2),
        "requests": len(log), "requests_during_swaps": len(during),
        "rounds": trainer.rounds_run, "promotions": len(promoted),
        "promotion_load_s": [p.load_s for p in promoted],
        "rejections": [list(r.reasons) for r in trainer.rounds if not r.promoted],
        "samples_streamed": sent, "rate_per_s": args.rate, "clients": args.clients,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=50.0, help="samples per second")
    parser.add_argument("--drain", type=float, default=25.0,
                        help="seconds to keep training after the stream stops")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    at_start = machine()
    out = finish(asyncio.run(run(args)), at_start)
    print_describe(out["machine"])
    if not args.json:
        for key, value in out.items():
            print(f"{key:24s} {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
