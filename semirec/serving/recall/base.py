"""What every recall source shares: the candidate, the per-recall request, the source protocol
and :func:`merge`, which keeps the first source's candidate when several find the same video."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol

import numpy as np

from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot

Ranked = Iterable[tuple[str, float]]  # (video id, similarity to the user's profile), best first


class Candidate(NamedTuple):  # a tuple: 500 are made per recall (a dataclass cost 3x more)
    item_id: str
    source: str
    similarity: float  # cosine to the user's profile (0 when the user has none)


# plain tuples -> Candidate without a Python-level __new__ per candidate (500 per recall)
_candidate = partial(tuple.__new__, Candidate)


@dataclass(slots=True)
class RecallRequest:
    """One user's recall: what the orchestrator derives once and every source reads."""

    state: UserState | None
    total: int  # candidates wanted in all
    exclude: set[str]  # the user's recent complete watches: never candidates
    profiles: dict[str, np.ndarray | None]  # per domain ("video", "product"): taste vector or None
    mixed: np.ndarray | None  # the mean of the unit profiles: the user's one taste vector
    memo: dict[Any, Any] = field(default_factory=dict)  # sources' work shared within this recall


class RecallSource(Protocol):
    """One way to find candidates; :class:`semirec.serving.recall.Recall` asks each in turn.

    ``ranked`` is the first pass, within the source's quota; ``fill`` the second pass, asked
    only while fewer than ``request.total`` candidates were found (a small world), ``budget``
    being the room left. Both return videos best first; :func:`merge` skips the excluded and
    already chosen ones itself, so a source looks ``len(request.exclude)`` deeper than
    ``budget`` when it can. A source without a fallback returns ``()`` from ``fill``.
    """

    name: str  # the tag its candidates carry (and the key of its quota)

    def ranked(self, request: RecallRequest, budget: int) -> Ranked: ...

    def fill(self, request: RecallRequest, budget: int) -> Ranked: ...


def merge(request: RecallRequest, quotas: Sequence[tuple[RecallSource, int]],
          fillers: Sequence[RecallSource]) -> list[Candidate]:
    """Quota pass (each source up to its quota, in order), then the fill pass (each filler
    while room is left); a video is kept once, with the source that found it first."""
    total, exclude = request.total, request.exclude
    chosen: dict[str, tuple[str, str, float]] = {}

    def take(source: str, ranked: Ranked, room: int) -> None:
        for item_id, sim in ranked:
            if item_id in exclude or item_id in chosen:
                continue
            chosen[item_id] = (item_id, source, sim)
            room -= 1
            if not room:
                return

    for source, quota in quotas:
        room = min(quota, total - len(chosen))
        if room > 0:
            take(source.name, source.ranked(request, quota), room)
    for source in fillers:
        room = total - len(chosen)
        if room <= 0:
            break
        take(source.name, source.fill(request, room), room)
    return list(map(_candidate, chosen.values()))


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


def mixed(profiles: dict[str, np.ndarray | None]) -> np.ndarray | None:
    """The mean of the unit-length profiles (None without any): the user's one taste vector."""
    both = [p for p in profiles.values() if p is not None]
    if not both:
        return None
    return np.mean([p / max(float(np.linalg.norm(p)), 1e-12) for p in both], axis=0)


class SnapshotPool:
    """A source's pool of videos and their unit rows, derived once per pair of snapshots (the
    catalog's generation, the popularity's version): ``derive`` names the pool's ids."""

    def __init__(self, catalog: CatalogIndex, popularity: PopularitySnapshot,
                 derive: Callable[[], list[str]]) -> None:
        self.catalog, self.popularity, self._derive = catalog, popularity, derive
        self._key: tuple[int, int] | None = None
        self.ids: list[str] = []
        self.unit = np.zeros((0, catalog.dim), np.float32)

    def refresh(self) -> SnapshotPool:
        key = (self.catalog.generation, self.popularity.version)
        if key != self._key:
            self.ids = self._derive()
            self.unit = self.catalog.unit(self.catalog.rows(self.ids))
            self._key = key
        return self
