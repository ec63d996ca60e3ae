"""Content sources: faiss neighbours of the user's recent videos (``content_video``) and of the
recent product clicks (``content_product``: the cross-domain pull; item vectors of both domains
share one space, docs/encoders.md)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semirec.serving.catalog import CatalogIndex
from semirec.serving.recall.base import Chunk, RecallRequest, RowSourceBase

_NONE: Chunk = (np.zeros(0, np.int64), np.zeros(0, np.float32))


class ProfileSearch:
    """The neighbours of every domain's profile in one faiss call per recall (the scan is
    memory-bound: two queries cost about one), shared by the content sources."""

    def __init__(self, catalog: CatalogIndex, domains: Sequence[str], depth: int) -> None:
        self.catalog = catalog
        self.domains = tuple(domains)
        self.depth = depth  # hits per profile beyond the excluded videos (the largest quota)

    def hits(self, request: RecallRequest, domain: str) -> Chunk:
        found: dict[str, Chunk] | None = request.memo.get(self)
        if found is None:
            queries = [(d, p) for d in self.domains if (p := request.profiles.get(d)) is not None]
            found = {}
            if queries:
                # one profile: the mixed profile has its direction, so the fill's search is this
                # one, deeper (one faiss call per recall instead of two)
                depth = max(self.depth, request.total) if len(queries) == 1 else self.depth
                results = self.catalog.search_rows(np.stack([p for _, p in queries]),
                                                   depth + len(request.exclude))
                found = {d: hits for (d, _), hits in zip(queries, results, strict=True)}
            request.memo[self] = found
        return found.get(domain, _NONE)

    def single(self, request: RecallRequest) -> bool:
        """Whether exactly one domain has a profile."""
        return sum(request.profiles.get(d) is not None for d in self.domains) == 1

    def lead(self, request: RecallRequest) -> str | None:
        """The first domain with a profile: the one whose source fills with the mixed profile."""
        return next((d for d in self.domains if request.profiles.get(d) is not None), None)


class ContentSource(RowSourceBase):
    """``content_<domain>``: cosine neighbours of that domain's profile; its fill (a small world)
    is the neighbours of the mixed profile, tagged by the first domain with a profile."""

    def __init__(self, search: ProfileSearch, domain: str) -> None:
        self.search = search
        self.catalog = search.catalog
        self.domain = domain
        self.name = f"content_{domain}"

    def ranked_rows(self, request: RecallRequest, budget: int) -> tuple[Chunk, ...]:
        return (self.search.hits(request, self.domain),)

    def fill_rows(self, request: RecallRequest, budget: int) -> tuple[Chunk, ...]:
        if request.mixed is None or self.search.lead(request) != self.domain:
            return ()
        if self.search.single(request):  # the mixed profile is this one: its deeper hits
            return (self.search.hits(request, self.domain),)
        return tuple(self.search.catalog.search_rows(request.mixed[None],
                                                     request.total + len(request.exclude)))
