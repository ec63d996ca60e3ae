"""CatalogIndex - every item vector in memory, with an exact faiss index over the videos.

Loaded from :class:`semirec.core.item_store.ItemStore` and kept current by :meth:`refresh`, which asks
Redis only for the items written after the last change-feed position it saw (the store's
``changes`` sorted set, whose positions Redis assigns after each vector is stored: no write can
be missed, see semirec/core/item_store.py), so a catalog upsert is recallable within one refresh
interval (1 s by default); an idle refresh is one ``ZREVRANGE``. Searches are exact
inner products over L2-normalised vectors (cosine similarity); the raw vectors are kept for the
ranker, which scales them itself.

How a search stays exact yet reads half the memory: both profiles' queries go in one faiss call
over a float16 copy of the video rows (``IndexScalarQuantizer`` fp16: 25 MB instead of 51 MB at
100k videos; the scan is memory-bound), which keeps ``k + margin`` rows per query; those rows are
re-scored exactly by faiss over their float32 vectors (the same kernel as ``IndexFlatIP``, so the
same scores). Rounding a unit vector to float16 moves an inner product with a unit query by at
most ``FP16_ERROR`` (2^-11 relative per component, plus float32 summation), so every row left out
scores at most ``(the lowest kept approximate score) + FP16_ERROR``; when the k-th exact score is
above that, the top-k is provably the exact one. When it is not (near-duplicate vectors at the
boundary) that query is answered by the exhaustive float32 ``IndexFlatIP`` search instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from semirec.core.contracts import Domain
from semirec.core.item_store import ItemStore
from semirec.serving import metrics
from semirec.serving.threads import single_threaded_math

log = logging.getLogger(__name__)
single_threaded_math()  # faiss and numpy spin-waiting on a busy machine: see semirec/serving/threads.py
# |q.x - q.fp16(x)| <= 2^-11 |q||x| (+ 2^-25 |q|_1 for subnormals) and two float32 sums of 128
# terms differ by < 2e-5 for unit vectors: 5.1e-4 at most; twice that as the margin of proof
FP16_ERROR = 1e-3
RESCORE_MARGIN = 128  # rows kept per query beyond k for the exact re-scoring
# below this many videos the float32 matrix (<= 25 MB) stays in cache and the exhaustive search
# is the faster one (measured: 0.2 vs 0.5 ms at 10k, equal at 50k, 4.1 vs 3.0 ms at 100k)
FP16_FROM_VIDEOS = 50_000


class CatalogIndex:
    """In-memory vectors of both domains; ``search`` over videos only."""

    def __init__(self, dim: int = 128, *, fp16_from: int = FP16_FROM_VIDEOS) -> None:
        self.dim = dim
        self.fp16_from = fp16_from  # video count from which searches take the fp16 pass
        self._row: dict[str, int] = {}
        self._ids: list[str] = []
        self._vectors = np.zeros((1024, dim), np.float32)
        self._unit = np.zeros((1024, dim), np.float32)  # L2-normalised rows (similarities)
        self._domain: list[Domain] = []
        self.added_at: list[float] = []  # when this index first saw each row (unix s)
        self._videos = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._videos16 = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))
        self.exhaustive_searches = 0  # queries the fp16 pass could not prove (see module doc)
        self._video_rows: set[int] = set()
        self._video_order: list[int] = []  # rows in the order they first became videos
        self._ordered: set[int] = set()  # the rows in _video_order (a re-encode keeps its place)
        self.feed_position = 0  # the change feed's last position this index has read
        self.feed_resets = 0  # times the feed was found behind that position (read again whole)
        self.loaded = False
        self.generation = 0  # bumped by every upsert (callers cache what they derive from it)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def video_count(self) -> int:
        return len(self._video_rows)

    async def refresh(self, store: ItemStore) -> int:
        """Pull the items written since the last refresh; returns how many were (re)indexed.

        One round trip when nothing changed. A feed whose last position is behind the one
        this index read (emptied, or a failed-over Redis that lost its last entries) is read
        again from its start."""
        top = await store.feed_position()
        if top < self.feed_position:
            self.feed_resets += 1
            metrics.FEED_RESETS.inc()
            log.warning("the catalog change feed is at position %d, behind the %d this index read "
                        "(emptied, or Redis failed over and lost its last entries): reading it "
                        "again from the start", top, self.feed_position)
            self.feed_position = 0
        if top == self.feed_position:
            self.loaded = True
            return 0
        changed = await store.changes_after(self.feed_position)
        if not changed:
            self.loaded = True
            return 0
        self.feed_position = max(self.feed_position, changed[-1][1])
        ids = [item_id for item_id, _ in changed]
        # each vector was stored before its entry: this reads it, or a newer one (whose own
        # entry, further on, the next refresh reads again)
        got = await store.get_many(ids, self.dim, skip_other_dims=True)
        if got.other_dims:  # e.g. written by another encoder version: serve the rest
            metrics.SKIPPED_ITEMS.labels("other_dim").inc(len(got.other_dims))
            log.warning("%d item(s) with a vector that is not %d-d left out of the serving index "
                        "(e.g. %r)", len(got.other_dims), self.dim, got.other_dims[0])
        rows = np.flatnonzero(got.found)
        self.upsert([ids[r] for r in rows], got.vectors[rows],
                    [got.domains[r] for r in rows])  # type: ignore[misc]
        self.loaded = True
        return len(rows)

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray, domains: Sequence[Domain]) -> None:
        """Add or replace items (an id given twice: the last one wins)."""
        if len(set(item_ids)) < len(item_ids):
            keep = sorted({item_id: k for k, item_id in enumerate(item_ids)}.values())
            item_ids, vectors = [item_ids[k] for k in keep], vectors[keep]
            domains = [domains[k] for k in keep]
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
        if stale:  # one pass over each flat index for all of them
            for index in (self._videos, self._videos16):
                index.remove_ids(np.asarray(stale, np.int64))
        if fresh_videos:
            first = [r for r in fresh_videos if r not in self._ordered]
            self._video_order += first
            self._ordered.update(first)
            rows = np.asarray(fresh_videos, np.int64)
            for index in (self._videos, self._videos16):
                index.add_with_ids(self._unit[rows], rows)
            self._video_rows.update(fresh_videos)

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``([N, dim] raw vectors, [N] found mask)``; unknown ids give zero rows."""
        rows = self.rows(item_ids)
        return self.vectors_at(rows), rows >= 0

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """``[N, dim]`` raw vectors of ``rows`` (a copy); unknown rows (-1) give zero rows."""
        out = self._vectors[np.maximum(rows, 0)]
        if len(rows) and rows.min() < 0:
            out[rows < 0] = 0.0
        return out

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Raw vectors of ``rows`` into ``out`` (no intermediate copy); unknown rows (-1) zero."""
        np.take(self._vectors, np.maximum(rows, 0), axis=0, out=out)
        if len(rows) and rows.min() < 0:
            out[rows < 0] = 0.0

    def is_video(self, item_id: str) -> bool:
        row = self._row.get(item_id)
        return row is not None and row in self._video_rows

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` videos by cosine similarity, per query row (exact: the same ids and scores
        as an exhaustive ``IndexFlatIP`` search; see the module doc)."""
        ids = self._ids
        return [[(ids[r], s) for r, s in zip(rr.tolist(), ss.tolist(), strict=True)]
                for rr, ss in self.search_rows(queries, k)]

    def search_rows(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` as ``(rows int64, scores float32)`` per query row, best first."""
        if not self._video_rows or len(queries) == 0 or k <= 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(queries))]
        k = min(k, len(self._video_rows))
        q = normalised(np.asarray(queries, np.float32))
        n = len(self._video_rows)
        if n < self.fp16_from or k + RESCORE_MARGIN >= n:  # the exhaustive search is as cheap
            scores, rows = self._videos.search(q, k)
        else:
            scores, rows = self._search_fp16(q, k)
        out = []
        for rr, ss in zip(rows, scores, strict=True):
            if len(rr) and rr.min() < 0:  # faiss's -1: fewer found than asked
                keep = rr >= 0
                rr, ss = rr[keep], ss[keep]
            out.append((rr, ss))
        return out

    def search_exhaustive(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the float32 exhaustive search (reference for :meth:`search`)."""
        return self._videos.search(normalised(np.asarray(queries, np.float32)),
                                   min(k, len(self._video_rows)))

    def _search_fp16(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        approx, kept = self._videos16.search(q, k + RESCORE_MARGIN)  # one call, all queries
        # re-score the kept rows exactly, in row order (ties then resolve as in the full scan)
        union = np.unique(kept[kept >= 0])
        scores, pos = faiss.knn(q, self._unit[union], k, metric=faiss.METRIC_INNER_PRODUCT)
        rows = union[pos]
        for i in range(len(q)):
            if not scores[i, -1] > approx[i, -1] + FP16_ERROR:  # not provable: scan everything
                self.exhaustive_searches += 1
                scores[i], rows[i] = self._videos.search(q[i: i + 1], k)
        return scores, rows

    def newest_videos(self, n: int) -> list[str]:
        """The ``n`` videos this index saw first most recently, newest first."""
        return self.ids(self.newest_video_rows(n))

    def newest_video_rows(self, n: int) -> np.ndarray:
        """The rows of :meth:`newest_videos`."""
        out: list[int] = []
        for row in reversed(self._video_order):
            if len(out) >= n:
                break
            if row in self._video_rows:
                out.append(row)
        return np.asarray(out, np.int64)

    def unit(self, rows: np.ndarray) -> np.ndarray:
        """L2-normalised vectors of ``rows`` (a copy: cache it, it does not follow upserts)."""
        return self._unit[rows]

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Row of each item (-1 when unknown)."""
        get = self._row.get
        return np.asarray([get(i, -1) for i in item_ids], np.int64)

    def row(self, item_id: str) -> int:
        """The item's row (-1 when unknown)."""
        return self._row.get(item_id, -1)

    def ids(self, rows: np.ndarray) -> list[str]:
        """The id of each row (all known: >= 0)."""
        ids = self._ids
        return [ids[r] for r in rows.tolist()]

    def similarity(self, query: np.ndarray, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Cosine similarity of ``query`` [dim] to each item, given by id or by row (0 for
        unknown items)."""
        rows = item_ids if isinstance(item_ids, np.ndarray) else self.rows(item_ids)
        sims = self._unit[rows] @ normalised(np.asarray(query, np.float32)[None])[0]
        sims[rows < 0] = 0.0
        return sims


def normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
