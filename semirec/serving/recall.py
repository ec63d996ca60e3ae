"""Candidate recall: a few hundred videos for one user, each tagged with the source that found it.

Sources, in the order their candidates are kept when several find the same video:

- ``content_video``: cosine neighbours of the user's recent complete watches (recency-weighted
  profile of the newest ``profile_len`` videos);
- ``content_product``: cosine neighbours of the user's recent product clicks: the cross-domain
  pull (item vectors of both domains share one space, docs/encoders.md);
- ``fresh``: videos this index saw most recently that nobody has watched in the window yet,
  ordered by similarity to the user's profile (newest first for a user without history), so a
  new video can be recommended by its content before anyone watched it;
- ``popular``: the most completed videos over the recent window; it also fills whatever the
  other sources could not (a new user gets popular and fresh videos).

Videos the user recently watched completely (their video sequence) are excluded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple

import numpy as np

from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex, normalised
from semirec.serving.popularity import PopularitySnapshot

SOURCES = ("content_video", "content_product", "fresh", "popular")


class Candidate(NamedTuple):  # a tuple: 500 are made per recall (a dataclass cost 3x more)
    item_id: str
    source: str
    similarity: float  # cosine to the user's profile (0 when the user has none)


@dataclass(frozen=True)
class RecallConfig:
    total: int = 500
    quotas: dict[str, int] = field(default_factory=lambda: {
        "content_video": 200, "content_product": 150, "fresh": 50, "popular": 100})
    profile_len: int = 10  # newest entries per domain that form a profile
    fresh_pool: int = 2000  # newest videos considered by the fresh source


def profile(entries: Sequence[Entry], catalog: CatalogIndex, n: int) -> np.ndarray | None:
    """Recency-weighted mean of the newest ``n`` entries' vectors (None without any vector)."""
    newest = [e.item_id for e in entries[-n:]]
    if not newest:
        return None
    vecs, found = catalog.vectors(newest)
    if not found.any():
        return None
    weights = np.linspace(0.5, 1.0, len(newest), dtype=np.float32) * found
    norms = np.maximum(np.linalg.norm(vecs, axis=1), 1e-12)
    return (weights / norms) @ vecs


class Recall:
    """Recall over an in-memory :class:`CatalogIndex` and :class:`PopularitySnapshot`."""

    def __init__(self, catalog: CatalogIndex, popularity: PopularitySnapshot,
                 config: RecallConfig | None = None) -> None:
        self.catalog = catalog
        self.popularity = popularity
        self.config = config or RecallConfig()
        self._pools_key: tuple[int, int] | None = None
        self._popular: list[str] = []
        self._fresh_ids: list[str] = []
        self._fresh_unit = np.zeros((0, catalog.dim), np.float32)
        self._popular_unit = np.zeros((0, catalog.dim), np.float32)

    def _refresh_pools(self) -> None:
        """The popular and fresh pools change only when the snapshots do: derive them once."""
        key = (self.catalog.generation, self.popularity.version)
        if key == self._pools_key:
            return
        cfg = self.config
        self._popular = list(islice((i for i in self.popularity.ranked if self.catalog.is_video(i)),
                                    cfg.total + 256))  # room for excluded watches
        self._fresh_ids = [i for i in self.catalog.newest_videos(cfg.fresh_pool)
                       if i not in self.popularity.counts]
        self._fresh_unit = self.catalog.unit(self.catalog.rows(self._fresh_ids))
        self._popular_unit = self.catalog.unit(self.catalog.rows(self._popular))
        self._pools_key = key

    def profiles(self, state: UserState | None) -> dict[str, np.ndarray | None]:
        n = self.config.profile_len
        if state is None:
            return {"video": None, "product": None}
        return {"video": profile(state.video, self.catalog, n),
                "product": profile(state.product, self.catalog, n)}

    @staticmethod
    def mixed(profiles: dict[str, np.ndarray | None]) -> np.ndarray | None:
        """The mean of the unit-length profiles (None without any): the user's one taste vector."""
        both = [p for p in profiles.values() if p is not None]
        if not both:
            return None
        return np.mean([p / max(float(np.linalg.norm(p)), 1e-12) for p in both], axis=0)

    def candidates(self, state: UserState | None, total: int | None = None) -> list[Candidate]:
        cfg = self.config
        total = total or cfg.total
        self._refresh_pools()
        exclude = {e.item_id for e in state.video} if state else set()
        prof = self.profiles(state)
        mixed = self.mixed(prof)
        chosen: dict[str, Candidate] = {}

        def take(source: str, ranked: Iterable[tuple[str, float]], limit: int) -> None:
            room = min(limit, total - len(chosen))
            if room <= 0:
                return
            for item_id, sim in ranked:
                if item_id in exclude or item_id in chosen:
                    continue
                chosen[item_id] = Candidate(item_id, source, sim)
                room -= 1
                if not room:
                    return

        queries = [(d, p) for d, p in (("video", prof["video"]), ("product", prof["product"]))
                   if p is not None]
        if queries:
            deepest = max(cfg.quotas["content_video"], cfg.quotas["content_product"]) + len(exclude)
            found = self.catalog.search(np.stack([p for _, p in queries]), deepest)
            for (domain, _), hits in zip(queries, found, strict=True):
                take(f"content_{domain}", hits, cfg.quotas[f"content_{domain}"])
        take("fresh", self._fresh(mixed), cfg.quotas["fresh"])
        pop_sims = self._popular_sims(mixed, total + len(exclude))
        take("popular", pop_sims, cfg.quotas["popular"])
        take("popular", pop_sims, total)  # fill what the other sources left
        if len(chosen) < total and mixed is not None:  # a small world: more neighbours
            for hits in self.catalog.search(mixed[None], total + len(exclude)):
                take("content_video" if prof["video"] is not None else "content_product", hits, total)
        if len(chosen) < total:
            take("fresh", self._fresh(None, pool=total + len(exclude)), total)
        return list(chosen.values())

    def _fresh(self, query: np.ndarray | None, pool: int | None = None) \
            -> Iterator[tuple[str, float]]:
        """Fresh videos, most similar first; lazy: a caller takes a few dozen of the pool."""
        if pool is not None:  # a small world's last resort: any unseen video
            unseen = [i for i in self.catalog.newest_videos(pool) if i not in self.popularity.counts]
            return ((i, 0.0) for i in unseen)
        if query is None:
            return ((i, 0.0) for i in self._fresh_ids)
        sims = self._fresh_unit @ (query / max(float(np.linalg.norm(query)), 1e-12))
        order = np.argsort(-sims, kind="stable").tolist()
        ids, values = self._fresh_ids, sims.tolist()
        return ((ids[j], values[j]) for j in order)

    def _popular_sims(self, query: np.ndarray | None, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular videos with their similarity to ``query`` (rows cached per
        snapshot: no id lookups per recall)."""
        ids = self._popular[:n]
        if query is None:
            return [(i, 0.0) for i in ids]
        sims = self._popular_unit[: len(ids)] @ normalised(np.asarray(query, np.float32)[None])[0]
        return list(zip(ids, sims.tolist(), strict=True))
