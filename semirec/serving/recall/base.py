"""What every recall source shares: the candidate, the per-recall request, the source protocols
and :func:`merge`, which keeps the first source's candidate when several find the same video.

The merge works on catalog rows: a :class:`RowSource` (every built-in source) answers with
arrays of rows and similarities, which the merge filters against a mask of the rows already
chosen or excluded with a few numpy operations per source instead of a Python step per
candidate; a plain :class:`RecallSource` (ids and similarities) is merged item by item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, NamedTuple, Protocol

import numpy as np

from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot

Ranked = Iterable[tuple[str, float]]  # (video id, similarity to the user's profile), best first
# (catalog rows int64, similarities), best first: a row source's answer, in chunks read in turn
# (the merge stops reading once it has what it needs); rows are distinct and >= 0
Chunk = tuple[np.ndarray, np.ndarray]


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
    # set by merge: catalog rows already chosen or excluded (a row source may leave them out)
    seen: np.ndarray | None = None


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


class RowSource(Protocol):
    """A source over the catalog's rows (what :func:`merge` reads without per-candidate
    Python): ``ranked_rows`` / ``fill_rows`` are ``ranked`` / ``fill`` as :data:`Chunk` s."""

    name: str

    def ranked_rows(self, request: RecallRequest, budget: int) -> Iterable[Chunk]: ...

    def fill_rows(self, request: RecallRequest, budget: int) -> Iterable[Chunk]: ...


class RowSourceBase:
    """``ranked`` / ``fill`` (ids) of a row source, derived from its ``*_rows``."""

    name: str
    catalog: CatalogIndex

    def ranked_rows(self, request: RecallRequest, budget: int) -> Iterable[Chunk]:
        raise NotImplementedError

    def fill_rows(self, request: RecallRequest, budget: int) -> Iterable[Chunk]:
        raise NotImplementedError

    def ranked(self, request: RecallRequest, budget: int) -> Iterator[tuple[str, float]]:
        return _as_ids(self.catalog, self.ranked_rows(request, budget))

    def fill(self, request: RecallRequest, budget: int) -> Iterator[tuple[str, float]]:
        return _as_ids(self.catalog, self.fill_rows(request, budget))


def _as_ids(catalog: CatalogIndex, chunks: Iterable[Chunk]) -> Iterator[tuple[str, float]]:
    for rows, sims in chunks:
        yield from zip(catalog.ids(rows), sims.tolist(), strict=True)


class Recalled:
    """One recall's candidates as arrays, in the merge's order: catalog ``rows`` (-1: an id
    the catalog does not hold, from a custom source), ``similarity`` (float64) and the index
    of each one's source in ``names``; ids are made only when asked for."""

    __slots__ = ("_extra", "_ids", "catalog", "names", "rows", "similarity", "source")

    def __init__(self, catalog: CatalogIndex, rows: np.ndarray, similarity: np.ndarray,
                 source: np.ndarray, names: Sequence[str], extra: dict[int, str] | None = None) -> None:
        self.catalog = catalog
        self.rows, self.similarity, self.source = rows, similarity, source
        self.names = tuple(names)
        self._extra = extra or {}  # position -> id, for the rows of -1
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            if self._extra:
                ids = self.catalog.ids(np.maximum(self.rows, 0))
                for k, item_id in self._extra.items():
                    ids[k] = item_id
                self._ids = ids
            else:
                self._ids = self.catalog.ids(self.rows)
        return self._ids

    def item_id(self, j: int) -> str:
        if self._ids is not None:
            return self._ids[j]
        return self._extra[j] if j in self._extra else self.catalog.ids(self.rows[j: j + 1])[0]

    def source_name(self, j: int) -> str:
        return self.names[int(self.source[j])]

    def candidates(self) -> list[Candidate]:
        names = self.names
        return list(map(_candidate, zip(self.ids, [names[s] for s in self.source.tolist()],
                                        self.similarity.tolist(), strict=True)))


def merge(request: RecallRequest, quotas: Sequence[tuple[RecallSource, int]],
          fillers: Sequence[RecallSource], catalog: CatalogIndex) -> Recalled:
    """Quota pass (each source up to its quota, in order), then the fill pass (each filler
    while room is left); a video is kept once, with the source that found it first."""
    total = request.total
    names = list(dict.fromkeys(s.name for s, _ in quotas))
    names += [s.name for s in fillers if s.name not in names]
    code = {name: k for k, name in enumerate(names)}
    seen = request.seen = np.zeros(len(catalog), bool)  # rows chosen or excluded
    excluded = catalog.rows(request.exclude)
    seen[excluded[excluded >= 0]] = True
    rows: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    tags: list[np.ndarray] = []
    extra: dict[int, str] = {}  # position -> id of a candidate without a catalog row
    count = 0

    def take_rows(tag: int, chunks: Iterable[Chunk], room: int) -> int:
        taken = 0
        for r, s in chunks:
            keep = np.flatnonzero(~seen[r])
            if len(keep) > room - taken:
                keep = keep[: room - taken]
            if len(keep):
                r = r[keep]
                seen[r] = True
                rows.append(r)
                sims.append(s[keep].astype(np.float64))
                tags.append(np.full(len(keep), tag, np.int16))
                taken += len(keep)
            if taken >= room:
                break
        return taken

    def take_ids(tag: int, ranked: Ranked, room: int, at: int) -> int:
        r_out: list[int] = []
        s_out: list[float] = []
        unknown = set(extra.values())
        for item_id, sim in ranked:
            row = catalog.row(item_id)
            if row >= 0:
                if seen[row]:
                    continue
                seen[row] = True
            elif item_id in request.exclude or item_id in unknown:
                continue
            else:
                unknown.add(item_id)
                extra[at + len(r_out)] = item_id
            r_out.append(row)
            s_out.append(sim)
            if len(r_out) == room:
                break
        if r_out:
            rows.append(np.asarray(r_out, np.int64))
            sims.append(np.asarray(s_out, np.float64))
            tags.append(np.full(len(r_out), tag, np.int16))
        return len(r_out)

    def take(source: RecallSource, fill: bool, budget: int, room: int) -> int:
        if (read := getattr(source, "fill_rows" if fill else "ranked_rows", None)) is not None:
            return take_rows(code[source.name], read(request, budget), room)
        ranked = source.fill(request, budget) if fill else source.ranked(request, budget)
        return take_ids(code[source.name], ranked, room, count)

    for source, quota in quotas:
        room = min(quota, total - count)
        if room > 0:
            count += take(source, False, quota, room)
    for source in fillers:
        room = total - count
        if room <= 0:
            break
        count += take(source, True, room, room)
    if not rows:
        return Recalled(catalog, np.zeros(0, np.int64), np.zeros(0, np.float64),
                        np.zeros(0, np.int16), names)
    return Recalled(catalog, np.concatenate(rows), np.concatenate(sims), np.concatenate(tags),
                    names, extra)


def profile(entries: Sequence[Entry], catalog: CatalogIndex, n: int) -> np.ndarray | None:
    """Recency-weighted mean of the newest ``n`` entries' vectors (None without any vector)."""
    newest = [e.item_id for e in entries[-n:]]
    if not newest:
        return None
    rows = catalog.rows(newest)
    found = rows >= 0
    if not found.any():
        return None
    vecs = catalog.vectors_at(rows)
    weights = _ramp(len(newest)) * found
    norms = np.maximum(np.linalg.norm(vecs, axis=1), 1e-12)
    return (weights / norms) @ vecs


@lru_cache(maxsize=256)
def _ramp(n: int) -> np.ndarray:
    """Recency weights of ``n`` entries, oldest first (read-only, shared)."""
    weights = np.linspace(0.5, 1.0, n, dtype=np.float32)
    weights.flags.writeable = False
    return weights


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
        self.rows = np.zeros(0, np.int64)
        self.unit = np.zeros((0, catalog.dim), np.float32)

    def refresh(self) -> SnapshotPool:
        key = (self.catalog.generation, self.popularity.version)
        if key != self._key:
            self.ids = self._derive()
            self.rows = self.catalog.rows(self.ids)
            self.unit = self.catalog.unit(self.rows)
            self._key = key
        return self
