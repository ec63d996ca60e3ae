"""CatalogIndex - every item vector in memory, with an exact faiss index over the videos.

Loaded from :class:`semirec.item_store.ItemStore` and kept current by :meth:`refresh`, which asks
Redis only for the items written since the last call (the store's ``changes`` sorted set), so a
catalog upsert is recallable within one refresh interval (1 s by default). Searches are exact
inner products over L2-normalised vectors (cosine similarity, ``faiss.IndexFlatIP``); the raw
vectors are kept for the ranker, which scales them itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import faiss
import numpy as np

from semirec.contracts import Domain
from semirec.item_store import ItemStore
from serving import metrics

log = logging.getLogger(__name__)
# One OpenMP thread: an agent runs many recalls at once, and on a busy machine OpenMP's
# spin-waiting made one 10k-video search 30x slower (26 ms instead of 0.9 ms, measured).
faiss.omp_set_num_threads(1)
OVERLAP_MS = 2000  # re-read this much before the last change seen (writers' clocks differ)


class CatalogIndex:
    """In-memory vectors of both domains; ``search`` over videos only."""

    def __init__(self, dim: int = 128) -> None:
        self.dim = dim
        self._row: dict[str, int] = {}
        self._ids: list[str] = []
        self._vectors = np.zeros((1024, dim), np.float32)
        self._unit = np.zeros((1024, dim), np.float32)  # L2-normalised rows (similarities)
        self._domain: list[Domain] = []
        self.added_at: list[float] = []  # when this index first saw each row (unix s)
        self._videos = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._video_rows: set[int] = set()
        self._video_order: list[int] = []  # rows in the order they first became videos
        self._since_ms = 0
        self._written: dict[str, int] = {}  # item -> the write (ms) this index holds
        self.loaded = False
        self.generation = 0  # bumped by every upsert (callers cache what they derive from it)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def video_count(self) -> int:
        return len(self._video_rows)

    async def refresh(self, store: ItemStore) -> int:
        """Pull items written since the last refresh; returns how many were (re)indexed."""
        changed = await store.changed_since(max(0, self._since_ms - OVERLAP_MS))
        if changed:
            self._since_ms = max(self._since_ms, changed[-1][1])
        # the overlap re-reads the last seconds' writes: fetch only what we do not hold yet
        changed = [(i, ms) for i, ms in changed if ms > self._written.get(i, -1)]
        if not changed:
            self.loaded = True
            return 0
        ids = [item_id for item_id, _ in changed]
        got = await store.get_many(ids, self.dim, skip_other_dims=True)
        if got.other_dims:  # e.g. written by another encoder version: serve the rest
            metrics.SKIPPED_ITEMS.labels("other_dim").inc(len(got.other_dims))
            log.warning("%d item(s) with a vector that is not %d-d left out of the serving index "
                        "(e.g. %r)", len(got.other_dims), self.dim, got.other_dims[0])
        rows = np.flatnonzero(got.found)
        self.upsert([ids[r] for r in rows], got.vectors[rows],
                    [got.domains[r] for r in rows])  # type: ignore[misc]
        for item_id, ms in changed:
            self._written[item_id] = ms
        self.loaded = True
        return len(rows)

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray, domains: Sequence[Domain]) -> None:
        now = time.time()
        self.generation += 1
        fresh_videos: list[int] = []
        stale: list[int] = []
        for item_id, vec, domain in zip(item_ids, vectors, domains, strict=True):
            row = self._row.get(item_id)
            if row is None:
                row = len(self._ids)
                if row == len(self._vectors):
                    self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
                    self._unit = np.concatenate([self._unit, np.zeros_like(self._unit)])
                self._row[item_id] = row
                self._ids.append(item_id)
                self._domain.append(domain)
                self.added_at.append(now)
            elif row in self._video_rows:  # re-encoded or moved domain: drop the old entry
                stale.append(row)
                self._video_rows.discard(row)
            self._vectors[row] = vec
            self._unit[row] = vec / max(float(np.linalg.norm(vec)), 1e-12)
            self._domain[row] = domain
            if domain is Domain.VIDEO:
                fresh_videos.append(row)
        if stale:  # one pass over the flat index for all of them
            self._videos.remove_ids(np.asarray(stale, np.int64))
        if fresh_videos:
            self._video_order += [r for r in fresh_videos if r not in self._video_rows]
            rows = np.asarray(fresh_videos, np.int64)
            self._videos.add_with_ids(self._unit[rows], rows)
            self._video_rows.update(fresh_videos)

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``([N, dim] raw vectors, [N] found mask)``; unknown ids give zero rows."""
        rows = np.asarray([self._row.get(i, -1) for i in item_ids], np.int64)
        found = rows >= 0
        out = np.zeros((len(item_ids), self.dim), np.float32)
        out[found] = self._vectors[rows[found]]
        return out, found

    def is_video(self, item_id: str) -> bool:
        row = self._row.get(item_id)
        return row is not None and row in self._video_rows

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` videos by cosine similarity, per query row (exact)."""
        if not self._video_rows or len(queries) == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        k = min(k, len(self._video_rows))
        scores, rows = self._videos.search(_normalised(np.asarray(queries, np.float32)), k)
        return [[(self._ids[r], float(s)) for r, s in zip(rr, ss, strict=True) if r >= 0]
                for rr, ss in zip(rows, scores, strict=True)]

    def newest_videos(self, n: int) -> list[str]:
        """The ``n`` videos this index saw first most recently, newest first."""
        out: list[str] = []
        for row in reversed(self._video_order):
            if len(out) >= n:
                break
            if row in self._video_rows:
                out.append(self._ids[row])
        return out

    def unit(self, rows: np.ndarray) -> np.ndarray:
        """L2-normalised vectors of ``rows`` (a copy: cache it, it does not follow upserts)."""
        return self._unit[rows]

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each item (-1 when unknown)."""
        return np.asarray([self._row.get(i, -1) for i in item_ids], np.int64)

    def similarity(self, query: np.ndarray, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Cosine similarity of ``query`` [dim] to each item, given by id or by row (0 for
        unknown items)."""
        rows = item_ids if isinstance(item_ids, np.ndarray) else self.rows(item_ids)
        sims = self._unit[rows] @ _normalised(np.asarray(query, np.float32)[None])[0]
        sims[rows < 0] = 0.0
        return sims


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
