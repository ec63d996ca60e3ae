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
        order = np.argsort(-sims, kind="stable").tolist()
        ids, values = pool.ids, sims.tolist()
        return ((ids[j], values[j]) for j in order)

    def fill(self, request: RecallRequest, budget: int) -> Iterator[tuple[str, float]]:
        """A small world's last resort: any video nobody watched in the window, newest first."""
        unseen = [i for i in self.catalog.newest_videos(request.total + len(request.exclude))
                  if i not in self.popularity.counts]
        return ((i, 0.0) for i in unseen)
