"""Popularity over a recent window of event time, maintained from the stream.

The ingest agent counts every complete video watch into a Redis hash per event-time hour
(``semirec:pop:<hour>``, field = video id) before it acks the batch, and records the hour in the
sorted set ``semirec:pop:hours``. :class:`PopularitySnapshot` sums the newest ``window_hours``
hours (relative to the newest hour seen, so a replay of history behaves as live traffic) into
an in-memory ranking that recall and the fallback ranker read without touching Redis.

The same pass keeps every video's all-time watch and complete-watch counts (hashes
``semirec:video:watches`` / ``semirec:video:completes``), which a ranker with item identity
reads per candidate (:func:`watch_counts`).

Counting is at-least-once: a batch replayed after a crash between the count and the commit is
counted twice. Popularity is a ranking signal, so this is accepted (exact sequences are not).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import redis.asyncio as aioredis

from semirec.contracts import Domain, Event

HOURS_KEY = "semirec:pop:hours"
WATCHES_KEY = "semirec:video:watches"
COMPLETES_KEY = "semirec:video:completes"
PREFIX = "semirec:pop:"
KEEP_S = 14 * 24 * 3600  # wall-clock expiry of an hour's counts


def hour_key(hour: int) -> str:
    return f"{PREFIX}{hour}"


async def count_watches(client: aioredis.Redis, events: Iterable[Event], bucket_s: int = 3600) -> int:
    """Add the complete video watches among ``events`` to their hour's counts, and every watch
    to the all-time counts (one round trip)."""
    per_hour: dict[int, Counter[str]] = {}
    watches: Counter[str] = Counter()
    completes: Counter[str] = Counter()
    for e in events:
        if e.domain is Domain.VIDEO:
            watches[e.item_id] += 1
            if e.complete:
                completes[e.item_id] += 1
                per_hour.setdefault(int(e.ts // bucket_s), Counter())[e.item_id] += 1
    if not watches:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for key, counts in ((WATCHES_KEY, watches), (COMPLETES_KEY, completes)):
            for item_id, n in counts.items():
                pipe.hincrby(key, item_id, n)
        for hour, counts in per_hour.items():
            key = hour_key(hour)
            for item_id, n in counts.items():
                pipe.hincrby(key, item_id, n)
            pipe.expire(key, KEEP_S)
            pipe.zadd(HOURS_KEY, {str(hour): hour})
        await pipe.execute()
    return sum(sum(c.values()) for c in per_hour.values())


async def watch_counts(client: aioredis.Redis, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(watches, completes) of each video so far, float32 (0 for a video never watched)."""
    if not item_ids:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hmget(WATCHES_KEY, item_ids)
        pipe.hmget(COMPLETES_KEY, item_ids)
        got_w, got_c = await pipe.execute()
    return (np.asarray([int(v or 0) for v in got_w], np.float32),
            np.asarray([int(v or 0) for v in got_c], np.float32))


class PopularitySnapshot:
    """The newest window's counts, refreshed from Redis by :meth:`refresh`."""

    def __init__(self, window_hours: int = 24) -> None:
        self.window_hours = window_hours
        self.counts: dict[str, int] = {}
        self.ranked: list[str] = []  # most popular first
        self.newest_hour: int | None = None
        self.version = 0  # bumped by every refresh (callers cache what they derive from it)

    async def refresh(self, client: aioredis.Redis) -> None:
        newest = await client.zrevrange(HOURS_KEY, 0, 0, withscores=True)
        self.version += 1
        if not newest:
            self.counts, self.ranked, self.newest_hour = {}, [], None
            return
        top = int(newest[0][1])
        hours = await client.zrangebyscore(HOURS_KEY, top - self.window_hours + 1, top)
        total: Counter[str] = Counter()
        async with client.pipeline(transaction=False) as pipe:
            for h in hours:
                pipe.hgetall(hour_key(int(h)))
            for got in await pipe.execute():
                for item, n in got.items():
                    total[item.decode()] += int(n)
        self.counts = dict(total)
        self.ranked = [item for item, _ in total.most_common()]
        self.newest_hour = top

    def scores(self, item_ids: Iterable[str]) -> np.ndarray:
        """log(1 + count) per item, scaled to [0, 1] by the most popular item."""
        counts = np.asarray([self.counts.get(i, 0) for i in item_ids], np.float64)
        top = self.counts.get(self.ranked[0], 0) if self.ranked else 0
        return (np.log1p(counts) / np.log1p(top)).astype(np.float32) if top else \
            np.zeros(len(counts), np.float32)
