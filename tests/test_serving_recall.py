"""Recall against a real redis-server: the index follows the catalog, sources are tagged,
product clicks pull videos of their category, new videos are recallable, new users served."""

from __future__ import annotations

import numpy as np
import pytest
import redis.asyncio as aioredis

from semirec.core.contracts import Domain, Event
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex
from semirec.serving.features import rank_batch, rank_request
from semirec.serving.popularity import PopularitySnapshot, count_watches
from semirec.serving.recall import SOURCES, Recall, RecallConfig, RecallRequest, default_sources
from semirec.trainer.offline.samples import build_samples
from semirec.trainer.offline.toy import toy_world

DIM = 128
CATS = 4


@pytest.fixture(scope="module")
def world():
    return toy_world(users=20, videos=200, products=80, categories=CATS, dim=DIM, seed=3)


def category(item_id: str) -> int:
    return int(item_id[1:]) % CATS  # toy_world: item i has category i % categories


@pytest.fixture
async def store(stack, redis_client, world):
    client = aioredis.Redis.from_url(stack.addresses.redis)
    items = ItemStore(client)
    await items.put_many(ItemVector(it["item_id"], Domain(it["domain"]), vec, "toy")
                         for it, vec in zip(world.items, world.vectors, strict=True))
    yield items
    await client.aclose()


async def loaded(store: ItemStore) -> CatalogIndex:
    index = CatalogIndex(DIM)
    await index.refresh(store)
    return index


def user(products: list[str] = (), videos: list[str] = ()) -> UserState:
    return UserState(video=[Entry(1000 * i, v) for i, v in enumerate(videos)],
                     product=[Entry(1000 * i, p) for i, p in enumerate(products)])


async def test_index_loads_and_follows_upserts(store, world) -> None:
    index = await loaded(store)
    assert index.video_count == 200 and len(index) == 280
    await index.refresh(store)  # re-reads only the last seconds' writes: nothing new
    assert index.video_count == 200 and len(index) == 280
    vec = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    await store.put_many([ItemVector("vnew", Domain.VIDEO, vec, "toy")])
    assert await index.refresh(store) >= 1
    assert index.search(vec[None], 1)[0][0][0] == "vnew"
    await store.put_many([ItemVector("vnew", Domain.VIDEO, -vec, "toy")])  # re-encoded
    await index.refresh(store)
    assert index.search(vec[None], 1)[0][0][0] != "vnew"
    assert index.video_count == 201


class CountingStore(ItemStore):
    """The real store, counting the change-feed reads (what an idle refresh must not do)."""

    reads = 0

    async def changes_after(self, position: int) -> list[tuple[str, int]]:
        self.reads += 1
        return await super().changes_after(position)


async def test_an_idle_refresh_reads_only_the_feed_position(store) -> None:
    counting = CountingStore(store.client)
    index = CatalogIndex(DIM)
    await index.refresh(counting)
    assert counting.reads == 1 and len(index) == 280
    for _ in range(3):
        assert await index.refresh(counting) == 0
    assert counting.reads == 1  # one ZREVRANGE each, no re-read of 280 items
    vec = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    await store.put_many([ItemVector("vidle", Domain.VIDEO, vec, "toy")])
    assert await index.refresh(counting) == 1 and counting.reads == 2
    assert index.search(vec[None], 1)[0][0][0] == "vidle"


async def test_a_feed_behind_the_index_is_read_again_whole(store, redis_client) -> None:
    index = await loaded(store)
    vec = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    await store.put_many([ItemVector("v0", Domain.VIDEO, vec, "toy")])
    # the feed as an older copy of it would hold it (e.g. a replica promoted after losing
    # its last entries): positions behind the index's, v0's entry among them
    redis_client.delete("semirec:items:changes")
    redis_client.zadd("semirec:items:changes", {"v0": 5, "v1": 3})
    assert await index.refresh(store) == 2 and index.feed_resets == 1
    assert index.search(vec[None], 1)[0][0][0] == "v0" and index.feed_position == 5
    assert await index.refresh(store) == 0 and index.feed_resets == 1


def test_a_re_encoded_video_keeps_its_place_among_the_newest() -> None:
    index = CatalogIndex(dim=4)
    one = np.eye(4, dtype=np.float32)
    index.upsert(["v1", "v2"], one[:2], [Domain.VIDEO, Domain.VIDEO])
    index.upsert(["v3"], one[2:3], [Domain.VIDEO])
    index.upsert(["v1", "v1"], one[3:4].repeat(2, 0), [Domain.VIDEO, Domain.VIDEO])  # re-encoded
    assert index.newest_videos(10) == ["v3", "v2", "v1"]
    assert index.video_count == 3
    (hits,) = index.search(one[3:4], 10)  # one entry per video in the search index too
    assert sorted(i for i, _ in hits) == ["v1", "v2", "v3"]
    assert hits[0] == ("v1", pytest.approx(1.0))


async def test_a_vector_of_another_size_is_left_out_not_fatal(store, world, caplog) -> None:
    """One stale or foreign vector (another encoder's size) once stopped the recommendation
    worker at start (the whole refresh raised); now it is left out, counted and logged."""
    from semirec.serving import metrics

    odd = np.ones(32, np.float32)
    await store.put_many([ItemVector("v-odd", Domain.VIDEO, odd, "other-encoder")])
    before = metrics.SKIPPED_ITEMS.labels("other_dim")._value.get()
    index = await loaded(store)
    assert index.video_count == 200 and len(index) == 280 and not index.is_video("v-odd")
    assert metrics.SKIPPED_ITEMS.labels("other_dim")._value.get() == before + 1
    assert "not 128-d left out" in caplog.text and "v-odd" in caplog.text
    with pytest.raises(ValueError, match="32-d vector, expected 128"):
        await store.get_many(["v-odd"], DIM)  # strict by default for everyone else


async def test_product_clicks_pull_videos_of_their_category(store) -> None:
    index = await loaded(store)
    recall = Recall(index, PopularitySnapshot(), RecallConfig(total=60, quotas={
        "content_video": 20, "content_product": 20, "fresh": 10, "popular": 10}))
    clicks = [f"p{i}" for i in range(80) if category(f"p{i}") == 2][:8]
    cands = recall.candidates(user(products=clicks))
    pulled = [c.item_id for c in cands if c.source == "content_product"]
    assert len(pulled) >= 20  # its quota, then it fills what popularity (empty here) left
    assert all(category(v) == 2 for v in pulled[:20])
    assert {c.source for c in cands} <= set(SOURCES) and len(cands) == 60


async def test_watched_videos_are_excluded_and_content_follows_them(store) -> None:
    index = await loaded(store)
    recall = Recall(index, PopularitySnapshot(), RecallConfig(total=40, quotas={
        "content_video": 30, "content_product": 0, "fresh": 5, "popular": 5}))
    watched = [f"v{i}" for i in range(0, 40, CATS)]  # category 0
    cands = recall.candidates(user(videos=watched))
    assert not {c.item_id for c in cands} & set(watched)
    similar = [c.item_id for c in cands if c.source == "content_video"]
    assert len(similar) >= 30 and all(category(v) == 0 for v in similar[:30])


async def test_new_user_gets_popular_and_fresh_videos(stack, store) -> None:
    client = aioredis.Redis.from_url(stack.addresses.redis)
    watches = [Event(f"e{i}", "someone", f"v{i % 5}", Domain.VIDEO, "watch", 3600.0 * 10 + i, True)
               for i in range(30)]
    await count_watches(client, watches)
    pop = PopularitySnapshot(window_hours=24)
    await pop.refresh(client)
    await client.aclose()
    assert pop.ranked[:5] == sorted(pop.ranked[:5], key=lambda v: -pop.counts[v])
    assert set(pop.ranked) == {f"v{i}" for i in range(5)} and pop.counts["v0"] == 6
    index = await loaded(store)
    cands = Recall(index, pop, RecallConfig(total=50, quotas={
        "content_video": 20, "content_product": 20, "fresh": 10, "popular": 20})).candidates(None)
    assert len(cands) == 50
    assert [c.item_id for c in cands if c.source == "popular"][:5] == pop.ranked[:5]
    assert {c.source for c in cands} <= {"popular", "fresh"}


async def test_popularity_window_follows_event_time(stack, redis_client) -> None:
    client = aioredis.Redis.from_url(stack.addresses.redis)
    old = [Event(f"o{i}", "u", "vold", Domain.VIDEO, "watch", 3600.0 * 100, True) for i in range(9)]
    new = [Event(f"n{i}", "u", "vnew", Domain.VIDEO, "watch", 3600.0 * 130, True) for i in range(2)]
    incomplete = [Event("x", "u", "vx", Domain.VIDEO, "watch", 3600.0 * 130, False)]
    await count_watches(client, old + new + incomplete)
    pop = PopularitySnapshot(window_hours=24)
    await pop.refresh(client)
    await client.aclose()
    assert pop.counts == {"vnew": 2} and pop.newest_hour == 130


async def test_a_new_video_is_recallable_before_anyone_watched_it(store, world) -> None:
    index = await loaded(store)
    pop = PopularitySnapshot()
    pop.counts = {f"v{i}": 10 for i in range(200)}  # every old video has been watched
    pop.ranked = list(pop.counts)
    clicks = [f"p{i}" for i in range(80) if category(f"p{i}") == 1][:6]
    profile_vec = np.mean([world.vectors[200 + int(p[1:])] for p in clicks], axis=0)
    await store.put_many([ItemVector("brand-new", Domain.VIDEO, profile_vec, "toy")])
    await index.refresh(store)
    cands = Recall(index, pop, RecallConfig(total=30, quotas={
        "content_video": 0, "content_product": 0, "fresh": 5, "popular": 25})).candidates(
        user(products=clicks))
    assert ("brand-new", "fresh") in {(c.item_id, c.source) for c in cands}


class Editorial:
    """A custom source: an editor's picks, in order, whatever the user's taste."""

    name = "editorial"

    def __init__(self, picks: list[str]) -> None:
        self.picks = picks

    def ranked(self, request: RecallRequest, budget: int) -> list[tuple[str, float]]:
        return [(v, 1.0) for v in self.picks]

    def fill(self, request: RecallRequest, budget: int) -> list[tuple[str, float]]:
        return []


def test_a_custom_source_plugs_in(world) -> None:
    index = CatalogIndex(DIM)
    index.upsert([it["item_id"] for it in world.items], world.vectors,
                 [Domain(it["domain"]) for it in world.items])
    pop = PopularitySnapshot()
    pop.ranked = [f"v{i}" for i in range(100, 200)]
    pop.counts = {v: 200 - k for k, v in enumerate(pop.ranked)}
    quotas = {"editorial": 3, "content_video": 10, "content_product": 10, "fresh": 5, "popular": 5}
    config = RecallConfig(total=30, quotas=quotas)
    picks = ["v7", "v3", "v11", "v5", "v9"]  # v3 is watched: skipped; v5 beyond the quota
    recall = Recall(index, pop, config, sources=[Editorial(picks), *default_sources(index, pop, config)])
    cands = recall.candidates(user(products=["p2", "p6"], videos=["v3", "v1"]))
    assert [(c.item_id, c.source) for c in cands[:3]] == [("v7", "editorial"), ("v11", "editorial"),
                                                          ("v5", "editorial")]
    assert len(cands) == 30 and len({c.item_id for c in cands}) == 30
    assert "v3" not in {c.item_id for c in cands} and {c.source for c in cands[3:]} <= set(SOURCES)
    rest = [c.source for c in cands[3:]]  # then the default sources, in order, within the room
    assert rest == ["content_video"] * 10 + ["content_product"] * 10 + ["fresh"] * 5 + ["popular"] * 2
    with pytest.raises(ValueError, match=r"without a quota.*editorial"):
        Recall(index, pop, RecallConfig(), sources=[Editorial(picks)])


async def test_request_tensors_equal_the_trainers_point_in_time_samples(store, world) -> None:
    """What the online ranker is fed = what the trainer's sample builder saw for that watch."""
    from semirec.core.sequences import apply

    index = await loaded(store)
    uid = world.events[0].user_id
    events = [e for e in world.events if e.user_id == uid]
    rows = {it["item_id"]: r + 1 for r, it in enumerate(world.items)}
    samples = build_samples(events, rows, seq_len=8)
    table = np.vstack([np.zeros((1, DIM), np.float32), world.vectors])
    state, watches = UserState(), 0
    for offset, event in enumerate(events):
        if event.domain is Domain.VIDEO:
            req = rank_request(state, world.vectors[:3], index, at=event.ts, seq_len=8, pad_to=5)
            t = req.tensors
            for domain in ("video", "product"):
                expect_rows = getattr(samples, domain)[watches]
                np.testing.assert_array_equal(t[f"{domain}_mask"][0], expect_rows > 0)
                np.testing.assert_allclose(t[domain][0], table[expect_rows])
                mask = expect_rows > 0
                np.testing.assert_array_equal(t[f"{domain}_age"][0][mask],
                                              getattr(samples, f"{domain}_age")[watches][mask])
            assert t["candidates"].shape == (1, 5, DIM) and req.n_candidates == 3
            watches += 1
        apply(state, [(event, offset)], seq_len=8)
    assert watches == len(samples) > 5


async def test_batched_tensors_equal_one_request_per_user(store, world) -> None:
    """The agent's batch (written in place, candidates by catalog row) = each user's own request
    stacked, with padding, a user without state and an unknown candidate row."""
    index = await loaded(store)
    ids = [it["item_id"] for it in world.items]
    videos = [i for i in ids if i.startswith("v")]
    users = [(user(products=ids[-5:], videos=videos[:12]), videos[20:27], 1.7e9 + 7200),
             (None, videos[30:33], 1.7e9), (user(videos=[*videos[40:43], "unknown"]), videos[50:51], 1.7e9)]
    got, missing = rank_batch([(s, index.rows(c), at) for s, c, at in users], index, seq_len=8, pad_to=9)
    reqs = [rank_request(s, index.vectors(c)[0], index, at=at, seq_len=8, pad_to=9) for s, c, at in users]
    for name in reqs[0].tensors:
        np.testing.assert_array_equal(got[name], np.concatenate([r.tensors[name] for r in reqs]))
    assert missing == sum(r.missing_sequence_vectors for r in reqs) == 1
    out = np.ones((2, DIM), np.float32)
    index.gather(np.asarray([index.rows([videos[0]])[0], -1]), out)
    np.testing.assert_array_equal(out, np.vstack([index.vectors([videos[0]])[0], np.zeros((1, DIM))]))
