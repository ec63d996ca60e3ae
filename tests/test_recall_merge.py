"""The array merge of recall (catalog rows, numpy masks) against the per-candidate Python merge
and sources it replaced, kept here as the reference: the same candidates, in the same order,
with the same sources and similarities, on many random worlds, users, quotas and custom
sources (our own logic alone: an in-memory catalog, no services)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from semirec.core.contracts import Domain
from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex, normalised
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.recall import Recall, RecallConfig, RecallRequest, default_sources, mixed

DIM = 16


# -- the reference: the previous implementation, per candidate in Python ---------------------

def reference(recall: Recall, state: UserState | None, extra: list | None) -> list[tuple]:
    """The previous ``merge`` over the previous sources' (id, similarity) lists."""
    cat, pop, cfg = recall.catalog, recall.popularity, recall.config
    profiles = recall.profiles(state)
    mix = mixed(profiles)
    exclude = {e.item_id for e in state.video} if state else set()
    total = cfg.total
    queries = [(d, p) for d in ("video", "product") if (p := profiles[d]) is not None]
    hits: dict[str, list] = {}
    if queries:
        depth = max(cfg.quotas["content_video"], cfg.quotas["content_product"])
        depth = max(depth, total) if len(queries) == 1 else depth
        found = cat.search(np.stack([p for _, p in queries]), depth + len(exclude))
        hits = {d: h for (d, _), h in zip(queries, found, strict=True)}
    lead = queries[0][0] if queries else None

    def content(domain: str, fill: bool) -> list:
        if not fill:
            return hits.get(domain, [])
        if mix is None or lead != domain:
            return []
        if len(queries) == 1:
            return hits[domain]
        return cat.search(mix[None], total + len(exclude))[0]

    def fresh(budget: int, fill: bool) -> list:
        if fill:
            return [(i, 0.0) for i in cat.newest_videos(total + len(exclude)) if i not in pop.counts]
        ids = [i for i in cat.newest_videos(cfg.fresh_pool) if i not in pop.counts]
        if mix is None:
            return [(i, 0.0) for i in ids]
        sims = cat.unit(cat.rows(ids)) @ (mix / max(float(np.linalg.norm(mix)), 1e-12))
        order = np.argsort(-sims, kind="stable")
        return [(ids[j], float(sims[j])) for j in order]

    def popular(budget: int, fill: bool) -> list:
        ids = list(islice((i for i in pop.ranked if cat.is_video(i)), total + 256))
        ids = ids[: total + len(exclude)]
        if mix is None:
            return [(i, 0.0) for i in ids]
        query = normalised(np.asarray(mix, np.float32)[None])[0]
        return list(zip(ids, (cat.unit(cat.rows(ids)) @ query).tolist(), strict=True))

    builtin = {"content_video": lambda b, f: content("video", f),
               "content_product": lambda b, f: content("product", f),
               "fresh": fresh, "popular": popular}
    answer = {s.name: builtin.get(s.name) for s in recall.sources}
    for source in extra or []:
        answer[source.name] = lambda b, f, s=source: s.fill(None, b) if f else s.ranked(None, b)
    chosen: dict[str, tuple] = {}

    def take(name: str, ranked, room: int) -> None:
        for item_id, sim in ranked:
            if item_id in exclude or item_id in chosen:
                continue
            chosen[item_id] = (item_id, name, sim)
            room -= 1
            if not room:
                return

    for source in recall.sources:
        quota = cfg.quotas[source.name]
        room = min(quota, total - len(chosen))
        if room > 0:
            take(source.name, answer[source.name](quota, False), room)
    for source in recall._fillers:
        room = total - len(chosen)
        if room <= 0:
            break
        take(source.name, answer[source.name](room, True), room)
    return list(chosen.values())


# -- random cases ----------------------------------------------------------------------------

class Picks:
    """A custom source answering with ids (the per-item path of the merge): duplicates,
    excluded and unknown ids included."""

    def __init__(self, name: str, ranked: list, fill: list) -> None:
        self.name, self._ranked, self._fill = name, ranked, fill

    def ranked(self, request: RecallRequest | None, budget: int) -> list:
        return list(self._ranked)

    def fill(self, request: RecallRequest | None, budget: int) -> list:
        return list(self._fill)


class RowPicks(Picks):
    """A custom row source: the same picks as catalog rows, in several chunks."""

    def __init__(self, name: str, ranked: list, fill: list, index: CatalogIndex) -> None:
        super().__init__(name, ranked, fill)
        self.index = index

    def _chunks(self, picks: list) -> list:
        rows = self.index.rows([i for i, _ in picks])
        sims = np.asarray([s for _, s in picks], np.float64)
        return [(rows[lo: lo + 7], sims[lo: lo + 7]) for lo in range(0, len(rows), 7)]

    def ranked_rows(self, request: RecallRequest, budget: int) -> list:
        return self._chunks(self._ranked)

    def fill_rows(self, request: RecallRequest, budget: int) -> list:
        return self._chunks(self._fill)


def world(rng: np.random.Generator) -> tuple[CatalogIndex, PopularitySnapshot, list[str], list[str]]:
    n_videos, n_products = int(rng.integers(0, 300)), int(rng.integers(1, 60))
    index = CatalogIndex(DIM)
    videos = [f"v{i}" for i in range(n_videos)]
    products = [f"p{i}" for i in range(n_products)]
    vecs = rng.normal(size=(n_videos, DIM)).astype(np.float32)
    if n_videos > 4:  # exact ties: copies of other videos' vectors
        k = int(rng.integers(1, n_videos // 2))
        vecs[rng.integers(0, n_videos, k)] = vecs[rng.integers(0, n_videos, k)]
    for lo in range(0, n_videos, 70):  # several upserts: an order of arrival to the newest
        index.upsert(videos[lo: lo + 70], vecs[lo: lo + 70], [Domain.VIDEO] * len(videos[lo: lo + 70]))
    index.upsert(products, rng.normal(size=(n_products, DIM)).astype(np.float32),
                 [Domain.PRODUCT] * n_products)
    pop = PopularitySnapshot()
    watched = [v for v in videos if rng.random() < 0.4] + ["v-gone", products[0]]
    pop.counts = {v: int(rng.integers(1, 50)) for v in watched}
    pop.ranked = sorted(pop.counts, key=lambda v: -pop.counts[v])
    pop.version = 1
    return index, pop, videos, products


def user(rng: np.random.Generator, videos: list[str], products: list[str]) -> UserState | None:
    if rng.random() < 0.15:
        return None
    pick = lambda pool, n: [pool[int(j)] for j in rng.integers(0, len(pool), n)] if pool else []  # noqa: E731
    seen = pick(videos, int(rng.integers(0, 40))) + (["v-unknown"] if rng.random() < 0.3 else [])
    clicks = pick(products, int(rng.integers(0, 20)))
    return UserState(video=[Entry(i, v) for i, v in enumerate(seen)],
                     product=[Entry(i, p) for i, p in enumerate(clicks)])


def config(rng: np.random.Generator, extra: list[Picks]) -> RecallConfig:
    quotas = {s: int(rng.integers(0, 80)) for s in ("content_video", "content_product", "fresh", "popular")}
    quotas.update({p.name: int(rng.integers(0, 20)) for p in extra})
    fill = [*quotas]
    rng.shuffle(fill)
    return RecallConfig(total=int(rng.integers(1, 400)), quotas=quotas,
                        profile_len=int(rng.integers(1, 12)), fresh_pool=int(rng.integers(1, 300)),
                        fill_order=tuple(fill[: int(rng.integers(0, len(fill) + 1))]))


@pytest.mark.parametrize("seed", range(12))
def test_the_array_merge_equals_the_python_merge(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = 0
    for _ in range(6):
        index, pop, videos, products = world(rng)
        for _ in range(8):
            extra = []
            if rng.random() < 0.4:
                ids = [*videos, "x-unknown", "y-unknown", products[0]]
                ranked = [(ids[int(j)], float(rng.random())) for j in rng.integers(0, len(ids), 25)]
                extra = [Picks("editorial", ranked, ranked[::-1])]
            if rng.random() < 0.4 and videos:  # distinct known rows, as row sources give
                ids = list(dict.fromkeys(videos[int(j)] for j in rng.integers(0, len(videos), 30)))
                ranked = [(i, float(rng.random())) for i in ids]
                extra.append(RowPicks("rows", ranked, ranked[::-1], index))
            cfg = config(rng, extra)
            sources = default_sources(index, pop, cfg)
            for p in extra:
                sources.insert(int(rng.integers(0, len(sources) + 1)), p)
            recall = Recall(index, pop, cfg, sources=sources)
            for _ in range(3):
                state = user(rng, videos, products)
                expect = reference(recall, state, extra)
                got = recall.candidates(state)
                assert [tuple(c) for c in got] == expect
                recalled = recall.recall(state)
                assert recalled.ids == [c[0] for c in expect]
                np.testing.assert_array_equal(recalled.rows, index.rows(recalled.ids))
                cases += 1
    assert cases == 6 * 8 * 3
