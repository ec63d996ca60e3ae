"""The recommendation worker's own CPU per recommendation, in process: update notices decoded,
the recommender (recall, tensors, answer) over an in-memory catalog of 10k videos + 2k products
(users clicking products, as in benchmarks/serving.py's freshness run), recommendations encoded;
Kafka and Triton left out (the ranker returns zeros). Load-independent: process CPU seconds /
recommendations.

  python -m benchmarks.worker_cpu [--rounds N] [--profile tottime] [--json]
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import time

import numpy as np
import redis.asyncio as aioredis

from semirec.core.contracts import Domain
from semirec.core.recommendations import UserUpdate, encode, parse_update
from semirec.core.sequences import Entry, UserState
from semirec.core.settings import Settings
from semirec.serving.recommender import Job, Recommender

DIM = 128
class FakeRanker:
    async def rank(self, tensors):
        return np.zeros(tensors["candidates"].shape[:2], np.float32), "ranker/1"
    async def identity_buckets(self): return 0
    async def takes_skipped(self): return False
    async def problem(self): return None
    async def close(self): pass

def build(n_videos=10_000, n_products=2000, users=400, seed=0):
    rng = np.random.default_rng(seed)
    rec = Recommender(Settings(), redis_client=aioredis.Redis(), ranker=FakeRanker())
    vids = [f"v{i}" for i in range(n_videos)]
    prods = [f"p{i}" for i in range(n_products)]
    rec.catalog.upsert(vids, rng.normal(size=(n_videos, DIM)).astype(np.float32), [Domain.VIDEO] * n_videos)
    rec.catalog.upsert(prods, rng.normal(size=(n_products, DIM)).astype(np.float32),
                       [Domain.PRODUCT] * n_products)
    pop = rec.popularity
    pop.counts = {v: int(c) for v, c in zip(vids[:3000], rng.zipf(1.5, 3000), strict=True)}
    pop.ranked = sorted(pop.counts, key=lambda v: -pop.counts[v])
    states = []
    for _ in range(users):
        nv, np_ = int(rng.integers(0, 3)) * int(rng.integers(0, 30)), int(rng.integers(1, 50))
        states.append(UserState(
            video=[Entry(1000 * i, vids[int(j)]) for i, j in enumerate(rng.integers(0, n_videos, nv))],
            product=[Entry(1000 * i, prods[int(j)]) for i, j in enumerate(rng.integers(0, n_products, np_))]))
    return rec, states

async def loop(rec, states, rounds):
    raw = [encode(UserUpdate(f"u{i}", f"e{i}", 1.7e9, 1.7e9, 1.7e9)) for i in range(len(states))]
    n = 0
    for _ in range(rounds):
        for lo in range(0, len(states), 8):
            ups = [parse_update(r) for r in raw[lo:lo + 8]]
            jobs = [Job(u.user_id, 10, at=u.ts, event_id=u.event_id, appended_at=u.appended_at,
                        written_at=u.written_at, received_at=time.time()) for u in ups]
            recs = await rec.recommend_many(jobs, states[lo:lo + 8])
            [encode(r) for r in recs]
            n += len(recs)
    return n

def main() -> None:
    import argparse
    import json

    from benchmarks.machine import finish, machine, print_describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 400 users")
    parser.add_argument("--profile", default="", help="print a cProfile sorted by this key")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    at_start = machine()
    rec, states = build()
    asyncio.run(loop(rec, states, 1))  # warm
    pr = cProfile.Profile() if args.profile else None
    t = time.process_time()
    if pr:
        pr.enable()
    n = asyncio.run(loop(rec, states, args.rounds))
    if pr:
        pr.disable()
    result = {"recs": n, "cpu_ms_per_rec": round((time.process_time() - t) * 1000 / n, 3)}
    if pr:
        pstats.Stats(pr).sort_stats(args.profile).print_stats(35)
    finish(result, at_start)
    print_describe(result["machine"])
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
