"""What a ranker with item identity reads per candidate, kept in memory by catalog row: the id's
hashed bucket and the video's watch / complete-watch counts.

The counts follow the count feed (semirec.serving.popularity): every refresh asks each shard for
the videos counted after the feed entry it read last, with their counts (one script call per
shard; an idle refresh returns nothing; the first, or one after the reader fell behind the
feed's trimming, reads the counts whole), so a recommendation takes its 500 candidates' counts
and buckets from arrays indexed by the rows recall gives, instead of making their ids, hashing
them and sending them to Redis (docs/serving.md). The price: counts are as old as the last
refresh (1 s by default), where training samples see every watch before them.
"""

from __future__ import annotations

import logging

import numpy as np
import redis.asyncio as aioredis

from semirec.serving import metrics
from semirec.serving.catalog import CatalogIndex
from semirec.serving.features import item_buckets, padded_identity
from semirec.serving.popularity import counts_after, shard_of, shards_of

log = logging.getLogger(__name__)


class IdentityIndex:
    """Bucket and counts per catalog row of ``catalog`` (rows it adds are picked up on use)."""

    def __init__(self, catalog: CatalogIndex, *, read_limit: int = 200) -> None:
        self.catalog = catalog
        self.read_limit = read_limit  # feed entries per shard and script call
        self.counts: dict[str, tuple[int, int]] = {}  # video id -> (watches, completes)
        self.positions: list[str] = []  # the count feed's entry read last, per shard ("": none)
        self.feed_resets = 0
        self._watches = np.zeros(0, np.float32)
        self._completes = np.zeros(0, np.float32)
        self._buckets: dict[int, np.ndarray] = {}  # bucket count -> bucket per covered row
        self._rows = 0  # catalog rows the arrays cover

    async def refresh(self, client: aioredis.Redis) -> int:
        """Read the counts changed since the last refresh; returns how many videos changed."""
        shards = shards_of(client)
        if len(self.positions) != shards:
            self.positions = [""] * shards
        changed: set[str] = set()
        while True:
            more = False
            for shard, got in enumerate(await counts_after(client, self.positions, self.read_limit)):
                if got.whole:
                    self._forget(shard, shards)
                self.positions[shard] = got.position
                for item, w, c in zip(got.ids, got.watches, got.completes, strict=True):
                    self.counts[item] = (w, c)
                    row = self.catalog.row(item)
                    if 0 <= row < self._rows:
                        self._watches[row], self._completes[row] = w, c
                changed.update(got.ids)
                more |= got.more
            if not more:
                return len(changed)

    def _forget(self, shard: int, shards: int) -> None:
        """Before a shard's counts are read whole: drop what this index holds of it."""
        if not self.positions[shard]:  # never read: nothing to drop
            return
        if self.positions[shard] != "0-0":  # "0-0": read whole while the feed was empty
            self.feed_resets += 1
            metrics.COUNT_FEED_RESETS.inc()
            log.warning("the count feed (shard %d) no longer holds the entries after the one this "
                        "index read (trimmed: the reader fell behind; or emptied, or Redis failed "
                        "over and lost its newest entries): its counts are read whole", shard)
        for item in [i for i in self.counts if shard_of(i, shards) == shard]:
            del self.counts[item]
            row = self.catalog.row(item)
            if 0 <= row < self._rows:
                self._watches[row] = self._completes[row] = 0.0

    def _cover(self) -> None:
        """Extend the arrays to the catalog's rows added since the last call."""
        n = len(self.catalog)
        if n <= self._rows:
            return
        new = np.arange(self._rows, n)
        ids = self.catalog.ids(new)
        got = [self.counts.get(i, (0, 0)) for i in ids]
        self._watches = np.concatenate([self._watches, np.array([w for w, _ in got], np.float32)])
        self._completes = np.concatenate([self._completes,
                                          np.array([c for _, c in got], np.float32)])
        for buckets, per_row in self._buckets.items():
            self._buckets[buckets] = np.concatenate([per_row, item_buckets(ids, buckets)])
        self._rows = n

    def tensors(self, rows: np.ndarray, buckets: int, pad_to: int = 0) -> dict[str, np.ndarray]:
        """``candidate_bucket`` / ``candidate_watches`` / ``candidate_completes`` [1, C] of
        catalog ``rows`` (all known), padded like the candidates (bucket 0, no watches); the
        same as :func:`semirec.serving.features.identity_tensors` of their ids and counts."""
        self._cover()
        per_row = self._buckets.get(buckets)
        if per_row is None:
            per_row = self._buckets[buckets] = item_buckets(
                self.catalog.ids(np.arange(self._rows)), buckets)
        return padded_identity(per_row[rows], self._watches[rows], self._completes[rows], pad_to)
