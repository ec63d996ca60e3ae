"""Candidate recall: a few hundred videos for one user, each tagged with the source that found it.

:class:`Recall` asks a list of :class:`RecallSource` in turn (semirec/serving/recall/base.py);
the default ones, in the order their candidates are kept when several find the same video:

- ``content_video`` (content.py): cosine neighbours of the user's recent complete watches
  (recency-weighted profile of the newest ``profile_len`` videos);
- ``content_product`` (content.py): cosine neighbours of the user's recent product clicks: the
  cross-domain pull (item vectors of both domains share one space, docs/encoders.md);
- ``fresh`` (fresh.py): videos this index saw most recently that nobody has watched in the
  window yet, ordered by similarity to the user's profile (newest first for a user without
  history), so a new video can be recommended by its content before anyone watched it;
- ``popular`` (popular.py): the most completed videos over the recent window; it also fills
  whatever the other sources could not (a new user gets popular and fresh videos).

Each source takes up to its quota; then, while candidates are missing, the sources fill in
``fill_order`` (popular, more neighbours of the mixed profile, any unseen video). Videos the
user recently watched completely (their video sequence) are excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from semirec.core.sequences import UserState
from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.recall.base import (
    Candidate,
    Recalled,
    RecallRequest,
    RecallSource,
    RowSource,
    merge,
    mixed,
    profile,
)
from semirec.serving.recall.content import ContentSource, ProfileSearch
from semirec.serving.recall.fresh import FreshSource
from semirec.serving.recall.popular import PopularSource

__all__ = ["SOURCES", "Candidate", "Recall", "RecallConfig", "RecallRequest", "RecallSource", "Recalled",
           "RowSource", "default_sources", "merge", "profile"]

SOURCES = ("content_video", "content_product", "fresh", "popular")


@dataclass(frozen=True)
class RecallConfig:
    total: int = 500
    quotas: dict[str, int] = field(default_factory=lambda: {
        "content_video": 200, "content_product": 150, "fresh": 50, "popular": 100})
    profile_len: int = 10  # newest entries per domain that form a profile
    fresh_pool: int = 2000  # newest videos considered by the fresh source
    # the sources that fill what the quotas left, in turn (any other source fills after them)
    fill_order: tuple[str, ...] = ("popular", "content_video", "content_product", "fresh")


def default_sources(catalog: CatalogIndex, popularity: PopularitySnapshot,
                    config: RecallConfig) -> list[RecallSource]:
    """The sources of :data:`SOURCES`, in that order."""
    search = ProfileSearch(catalog, ("video", "product"),
                           depth=max(config.quotas["content_video"], config.quotas["content_product"]))
    return [ContentSource(search, "video"), ContentSource(search, "product"),
            FreshSource(catalog, popularity, config.fresh_pool),
            PopularSource(catalog, popularity, config.total + 256)]  # room for excluded watches


class Recall:
    """Recall over an in-memory :class:`CatalogIndex` and :class:`PopularitySnapshot` from
    ``sources`` (default: :func:`default_sources`); each needs a quota in ``config.quotas``."""

    def __init__(self, catalog: CatalogIndex, popularity: PopularitySnapshot,
                 config: RecallConfig | None = None,
                 sources: Sequence[RecallSource] | None = None) -> None:
        self.catalog = catalog
        self.popularity = popularity
        self.config = config or RecallConfig()
        self.sources = list(sources) if sources is not None \
            else default_sources(catalog, popularity, self.config)
        missing = [s.name for s in self.sources if s.name not in self.config.quotas]
        if missing:
            raise ValueError(f"recall source(s) without a quota in RecallConfig.quotas: {missing}")
        self._quotas = [(s, self.config.quotas[s.name]) for s in self.sources]
        rank = {name: k for k, name in enumerate(self.config.fill_order)}
        self._fillers = sorted(self.sources, key=lambda s: rank.get(s.name, len(rank)))  # stable

    def profiles(self, state: UserState | None) -> dict[str, np.ndarray | None]:
        n = self.config.profile_len
        if state is None:
            return {"video": None, "product": None}
        return {"video": profile(state.video, self.catalog, n),
                "product": profile(state.product, self.catalog, n)}

    mixed = staticmethod(mixed)

    def request(self, state: UserState | None, total: int | None = None) -> RecallRequest:
        profiles = self.profiles(state)
        return RecallRequest(state, total or self.config.total,
                             {e.item_id for e in state.video} if state else set(),
                             profiles, mixed(profiles))

    def recall(self, state: UserState | None, total: int | None = None) -> Recalled:
        """The candidates as arrays (catalog rows, similarities, sources): what the recommender
        ranks."""
        return merge(self.request(state, total), self._quotas, self._fillers, self.catalog)

    def candidates(self, state: UserState | None, total: int | None = None) -> list[Candidate]:
        return self.recall(state, total).candidates()
