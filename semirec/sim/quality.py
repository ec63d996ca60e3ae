"""Online quality, exact: the true completion probability of what was recommended, beside baselines.

For one recommendation of a user at world time ``t`` with candidate videos ``C`` and top-k ``R``:

- ``semirec``: mean true P(complete) of ``R`` (the slate the system published);
- ``similarity``: the expected mean of the top-k of ``C`` by plain content similarity: the mean
  cosine of a candidate's served item vector to the user's newest 10 clicks and 10 (complete)
  watches at ``t`` (ties broken uniformly at random; no history: every score ties = ``random``);
- ``popularity``: the expected mean of the top-k of ``C`` by popularity counted from the stream
  so far (ties broken uniformly at random: the boundary group contributes its mean per free slot);
- ``random``: the expectation of a uniformly random k-subset of ``C`` = the mean over ``C``;
- ``oracle``: mean of the best k of ``C`` by true probability.

All five use the same candidates and the same moment, so they differ only by the policy. Nothing
is sampled. The probabilities come from the world's truth: evaluation only.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

POLICIES = ("semirec", "similarity", "popularity", "random", "oracle")
FIRST_AFTER_SHIFT_S = 60.0  # "the first minute after the shift", world seconds


@dataclass(frozen=True, slots=True)
class SlateQuality:
    """The policies' mean true completion probability for one recommendation."""

    semirec: float
    similarity: float
    popularity: float
    random: float
    oracle: float
    k: int
    candidates: int
    new_recommended: int = 0  # new videos (no history) among the published top-k
    new_in_oracle: int = 0  # ... among the oracle's top-k
    new_p_sum: float = 0.0  # sum of the true probabilities of the new videos recommended

    def policies(self) -> dict[str, float]:
        return {p: getattr(self, p) for p in POLICIES}


def popularity_expectation(probs: np.ndarray, popularity: np.ndarray, k: int) -> float:
    """Expected mean of ``probs`` over the top-``k`` by ``popularity`` (any score), ties broken at random."""
    if k <= 0 or len(probs) == 0:
        raise ValueError("need k >= 1 and at least one candidate")
    k = min(k, len(probs))
    total, free = 0.0, k
    for value in np.unique(popularity)[::-1]:  # groups of equal popularity, most popular first
        group = probs[popularity == value]
        if len(group) <= free:
            total += float(group.sum())
            free -= len(group)
        else:
            total += free * float(group.mean())
            free = 0
        if free == 0:
            break
    return total / k


def slate_quality(recommended: Sequence[str], candidates: Sequence[str], prob: Mapping[str, float],
                  popularity: Mapping[str, float], k: int,
                  new_items: frozenset[str] | set[str] = frozenset(),
                  similarity: Mapping[str, float] | None = None) -> SlateQuality:
    """Score one slate. ``prob`` covers every id in ``recommended`` and ``candidates``;
    ``similarity`` scores candidates for the similarity policy (missing: 0; None: all tie)."""
    cands = list(dict.fromkeys(candidates))
    if not cands:
        raise ValueError("no candidates to compare against")
    top = list(dict.fromkeys(recommended))[:k]
    if not top:
        raise ValueError("an empty slate has no quality")
    k = len(top)
    p = np.array([prob[c] for c in cands], dtype=np.float64)
    pop = np.array([popularity.get(c, 0.0) for c in cands], dtype=np.float64)
    sim = np.array([(similarity or {}).get(c, 0.0) for c in cands], dtype=np.float64)
    kk = min(k, len(cands))
    best = np.argsort(-p, kind="stable")[:kk]
    new_top = [i for i in top if i in new_items]
    return SlateQuality(
        semirec=float(np.mean([prob[i] for i in top])),
        similarity=popularity_expectation(p, sim, kk),
        popularity=popularity_expectation(p, pop, kk),
        random=float(p.mean()),
        oracle=float(p[best].mean()),
        k=k, candidates=len(cands),
        new_recommended=len(new_top),
        new_in_oracle=sum(cands[i] in new_items for i in best),
        new_p_sum=float(sum(prob[i] for i in new_top)),
    )


SIMILARITY_NEWEST = 10  # the similarity policy's history: the newest 10 clicks and 10 watches
_LAST = chr(0x10FFFF)  # sorts after every item id


def content_similarity(candidates: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Per candidate row, the mean cosine similarity to the ``history`` rows (zeros without history)."""
    if len(history) == 0:
        return np.zeros(len(candidates))

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return unit(candidates) @ unit(history).mean(0)


@dataclass(slots=True)
class Histories:
    """Each user's clicks and complete watches as the serving state keeps them (ordered by time,
    one entry per item and moment), in world time, so the similarity policy reads a user's
    newest entries at the moment a recommendation is scored."""

    seqs: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)

    def add(self, user_id: str, domain: str, ts: float, item_id: str) -> None:
        seq = self.seqs.setdefault((user_id, domain), [])
        entry = (ts, item_id)
        at = bisect.bisect_left(seq, entry)
        if at == len(seq) or seq[at] != entry:
            seq.insert(at, entry)

    def newest(self, user_id: str, at: float, n: int = SIMILARITY_NEWEST) -> list[str]:
        """The newest ``n`` products then the newest ``n`` videos with time <= ``at``."""
        out: list[str] = []
        for domain in ("product", "video"):
            seq = self.seqs.get((user_id, domain), [])
            end = bisect.bisect_right(seq, (at, _LAST))
            out += [item for _, item in seq[max(0, end - n):end]]
        return out


@dataclass(frozen=True, slots=True)
class Scored:
    """One measured recommendation."""

    wall_ts: float  # when the sim received it
    world_ts: float  # the world moment it was scored at
    model_version: str
    fallback: bool
    after_shift: bool
    quality: SlateQuality
    live: bool = False  # triggered by the audience (False: history replay, or unknown trigger)


def _means(rows: Iterable[Scored]) -> dict[str, float] | None:
    rows = list(rows)
    if not rows:
        return None
    return {p: round(float(np.mean([getattr(r.quality, p) for r in rows])), 4) for p in POLICIES}


@dataclass(slots=True)
class QualityLog:
    """Every measured recommendation, with the aggregates the summary and the plots need."""

    rows: list[Scored] = field(default_factory=list)

    def add(self, row: Scored) -> None:
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def overall(self) -> dict[str, float] | None:
        return _means(self.rows)

    def before_shift(self) -> dict[str, float] | None:
        return _means(r for r in self.rows if not r.after_shift)

    def after_shift(self) -> dict[str, float] | None:
        return _means(r for r in self.rows if r.after_shift)

    def live(self) -> list[Scored]:
        return [r for r in self.rows if r.live]

    def live_means(self) -> dict[str, float] | None:
        """Per-policy means over the audience's traffic (no history replay)."""
        return _means(self.live())

    def first_after_shift(self, shift_world: float | None, seconds: float = FIRST_AFTER_SHIFT_S,
                          ) -> list[Scored]:
        """Live rows scored in the first ``seconds`` (world time) from the shift on."""
        if shift_world is None:
            return []
        return [r for r in self.rows if r.live and shift_world <= r.world_ts < shift_world + seconds]

    def recent(self, n: int = 200) -> dict[str, float] | None:
        return _means(self.rows[-n:])

    def per_model_version(self) -> dict[str, dict[str, float | int]]:
        groups: dict[str, list[Scored]] = defaultdict(list)
        for r in self.rows:
            groups[r.model_version].append(r)
        return {v: {**(_means(rows) or {}), "recommendations": len(rows)} for v, rows in groups.items()}

    def new_videos(self, since_wall: float | None) -> dict[str, float | int] | None:
        """After new videos were published: how often they were recommended, and how good they were."""
        if since_wall is None:
            return None
        rows = [r for r in self.rows if r.wall_ts >= since_wall]
        slots = sum(r.quality.k for r in rows)
        if not slots:
            return {"recommendations": 0}
        rec = sum(r.quality.new_recommended for r in rows)
        return {"recommendations": len(rows),
                "share_of_slots": round(rec / slots, 4),
                "oracle_share_of_slots": round(sum(r.quality.new_in_oracle for r in rows) / slots, 4),
                "mean_p_recommended": (round(sum(r.quality.new_p_sum for r in rows) / rec, 4)
                                       if rec else None)}

    def series(self, start: float, bin_s: float, live_only: bool = False) -> dict[str, list[float]]:
        """Per-policy means in wall-clock bins since ``start`` (``t`` = bin middle, seconds)."""
        rows = self.live() if live_only else self.rows
        if not rows:
            return {"t": [], **{p: [] for p in POLICIES}}
        bins: dict[int, list[Scored]] = defaultdict(list)
        for r in rows:
            bins[int((r.wall_ts - start) // bin_s)].append(r)
        keys = sorted(bins)
        out: dict[str, list[float]] = {"t": [(b + 0.5) * bin_s for b in keys]}
        for p in POLICIES:
            out[p] = [float(np.mean([getattr(r.quality, p) for r in bins[b]])) for b in keys]
        return out

    def summary(self, new_since_wall: float | None = None,
                shift_world: float | None = None) -> dict[str, object]:
        """The whole run (history replay included) and the audience's traffic alone (``_live``)."""
        live = self.live()
        first = self.first_after_shift(shift_world)
        live_before = [r for r in live if not r.after_shift]
        live_after = [r for r in live if r.after_shift]
        return {"online_completion": self.overall(),
                "online_completion_before_shift": self.before_shift(),
                "online_completion_after_shift": self.after_shift(),
                "online_completion_live": _means(live),
                "online_completion_live_before_shift": _means(live_before),
                "online_completion_live_after_shift": _means(live_after),
                "online_completion_first_minute_after_shift": _means(first),
                "online_completion_per_model_version": self.per_model_version(),
                "new_videos": self.new_videos(new_since_wall),
                "recommendations_scored": len(self.rows),
                "recommendations_scored_live": {"all": len(live), "before_shift": len(live_before),
                                                "after_shift": len(live_after),
                                                "first_minute_after_shift": len(first)}}


def as_dict(q: SlateQuality) -> dict[str, float | int]:
    return asdict(q)
