"""``fresh``: videos this index saw most recently that nobody watched in the popularity window,
most similar to the user first (newest first without a profile), so a new video can be
recommended by its content before anyone watched it; its fill is any unseen video, newest first."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.recall.base import RecallRequest, SnapshotPool


class FreshSource:
    name = "fresh"

    def __init__(self, catalog: CatalogIndex, popularity: PopularitySnapshot, pool: int) -> None:
        self.catalog = catalog
        self.popularity = popularity
        self.pool = pool  # newest videos considered
        self._pool = SnapshotPool(catalog, popularity, self._unwatched)

    def _unwatched(self) -> list[str]:
        return [i for i in self.catalog.newest_videos(self.pool) if i not in self.popularity.counts]

    def ranked(self, request: RecallRequest, budget: int) -> Iterator[tuple[str, float]]:
        """Lazy: a caller takes a few dozen of the pool."""
        pool = self._pool.refresh()
        query = request.mixed
        if query is None:
            return ((i, 0.0) for i in pool.ids)
        sims = pool.unit @ (query / max(float(np.linalg.norm(query)), 1e-12))
        return _best_first(pool.ids, sims, budget + len(request.exclude))

    def fill(self, request: RecallRequest, budget: int) -> Iterator[tuple[str, float]]:
        """A small world's last resort: any video nobody watched in the window, newest first."""
        unseen = [i for i in self.catalog.newest_videos(request.total + len(request.exclude))
                  if i not in self.popularity.counts]
        return ((i, 0.0) for i in unseen)


def _best_first(ids: list[str], sims: np.ndarray, head: int) -> Iterator[tuple[str, float]]:
    """``(id, sim)`` in the order of a stable descending sort, sorting only the ``head`` best
    (and their ties) unless the caller reads past them (it rarely does: a quota of 50)."""
    neg = -sims
    if head < len(neg):
        cut = np.partition(neg, head - 1)[head - 1]
        first = np.flatnonzero(neg <= cut)  # every tie of the cut: the same prefix as a full sort
        rest = np.flatnonzero(neg > cut)
    else:
        first, rest = np.arange(len(neg)), np.zeros(0, np.int64)
    for part in (first, rest):
        order = part[np.argsort(neg[part], kind="stable")].tolist()
        values = sims[order].tolist()
        yield from zip((ids[j] for j in order), values, strict=True)
