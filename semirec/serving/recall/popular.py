"""``popular``: the most completed videos over the popularity window (the last 24 event-time
hours by default), with their similarity to the user; its fill is the rest of that ranking."""

from __future__ import annotations

from itertools import islice

import numpy as np

from semirec.serving.catalog import CatalogIndex, normalised
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.recall.base import Chunk, RecallRequest, RowSourceBase, SnapshotPool


class PopularSource(RowSourceBase):
    name = "popular"

    def __init__(self, catalog: CatalogIndex, popularity: PopularitySnapshot, depth: int) -> None:
        self.catalog = catalog
        self.popularity = popularity
        self.depth = depth  # videos of the ranking kept (room for excluded watches included)
        # the pool changes only when the snapshots do: derived (with its rows) once
        self._pool = SnapshotPool(catalog, popularity, self._most_popular)

    def _most_popular(self) -> list[str]:
        return list(islice((i for i in self.popularity.ranked if self.catalog.is_video(i)), self.depth))

    def ranked_rows(self, request: RecallRequest, budget: int) -> tuple[Chunk]:
        """The ``total`` + excluded most popular videos with their similarity to the user (the
        same list serves the quota and the fill pass)."""
        chunk = request.memo.get(self)
        if chunk is None:
            pool = self._pool.refresh()
            n = request.total + len(request.exclude)
            rows = pool.rows[:n]
            if request.mixed is None:
                sims = np.zeros(len(rows), np.float32)
            else:
                query = normalised(np.asarray(request.mixed, np.float32)[None])[0]
                sims = pool.unit[: len(rows)] @ query
            chunk = request.memo[self] = (rows, sims)
        return (chunk,)

    fill_rows = ranked_rows
