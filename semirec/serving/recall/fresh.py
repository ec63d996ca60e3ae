"""``fresh``: videos this index saw most recently that nobody watched in the popularity window,
most similar to the user first (newest first without a profile), so a new video can be
recommended by its content before anyone watched it; its fill is any unseen video, newest first."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.recall.base import Chunk, RecallRequest, RowSourceBase, SnapshotPool


class FreshSource(RowSourceBase):
    name = "fresh"

    def __init__(self, catalog: CatalogIndex, popularity: PopularitySnapshot, pool: int) -> None:
        self.catalog = catalog
        self.popularity = popularity
        self.pool = pool  # newest videos considered
        self._pool = SnapshotPool(catalog, popularity, self._unwatched)

    def _unwatched(self) -> list[str]:
        return [i for i in self.catalog.newest_videos(self.pool) if i not in self.popularity.counts]

    def ranked_rows(self, request: RecallRequest, budget: int) -> Iterator[Chunk]:
        """Lazy: a caller takes a few dozen of the pool."""
        pool = self._pool.refresh()
        query = request.mixed
        if query is None:
            yield pool.rows, np.zeros(len(pool.rows), np.float32)
            return
        sims = pool.unit @ (query / max(float(np.linalg.norm(query)), 1e-12))
        rows, head = pool.rows, budget + len(request.exclude)
        if request.seen is not None:  # in a merge: what the content sources took is skipped
            keep = np.flatnonzero(~request.seen[rows])  # (the order of the rest is the same)
            rows, sims, head = rows[keep], sims[keep], budget
        yield from _best_first(rows, sims, head)

    def fill_rows(self, request: RecallRequest, budget: int) -> Iterator[Chunk]:
        """A small world's last resort: any video nobody watched in the window, newest first."""
        newest = self.catalog.newest_video_rows(request.total + len(request.exclude))
        counts = self.popularity.counts
        unseen = newest[[i not in counts for i in self.catalog.ids(newest)]] if len(newest) else newest
        yield unseen, np.zeros(len(unseen), np.float32)


def _best_first(rows: np.ndarray, sims: np.ndarray, head: int) -> Iterator[Chunk]:
    """``(rows, sims)`` in the order of a stable descending sort, sorting only the ``head`` best
    (and their ties) unless the caller reads past them (it rarely does: a quota of 50)."""
    neg = -sims
    if head < len(neg):
        cut = np.partition(neg, head - 1)[head - 1]
        first = np.flatnonzero(neg <= cut)  # every tie of the cut: the same prefix as a full sort
        rest = np.flatnonzero(neg > cut)
    else:
        first, rest = np.arange(len(neg)), np.zeros(0, np.int64)
    for part in (first, rest):
        order = part[np.argsort(neg[part], kind="stable")]
        yield rows[order], sims[order]
