"""Catalog writes ordered by the item's version, and a change feed no reader can fall behind,
on one redis-server and on a real local Redis Cluster (3 masters): an older upsert processed
late loses, concurrent writers in any order leave the newest version, and an in-memory index
following the feed while writers run ends up holding every item's newest vector."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from types import SimpleNamespace

import numpy as np
import pytest
from redis.cluster import key_slot

from semirec.core import item_store as item_store_module
from semirec.core.contracts import Domain
from semirec.core.item_store import CHANGES_KEY, ItemStore, ItemVector, domain_set, item_key
from semirec.core.items import Item
from semirec.core.redis_client import redis_client, sync_redis_client
from semirec.core.redis_cluster import LocalRedisCluster
from semirec.core.stack import EmbeddedStack
from semirec.encoders.base import EncodeResult
from semirec.serving.catalog import CatalogIndex
from semirec.streams.catalog import CatalogProcessor
from semirec.streams.messages import Record

DIM = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(masters=3) as c:
        yield c


@pytest.fixture(params=["server", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    """A flushed Redis: the session's redis-server, or the module's 3-master cluster."""
    if request.param == "server":
        stack: EmbeddedStack = request.getfixturevalue("stack")
        found = stack.addresses.redis
    else:
        found = request.getfixturevalue("cluster").url
    client = sync_redis_client(found)
    client.flushdb()  # every primary of a cluster
    client.close()
    return found


@pytest.fixture
async def store(url: str) -> AsyncIterator[ItemStore]:
    s = ItemStore(redis_client(url, decode_responses=False))
    yield s
    await s.close()


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def rec(item_id: str, version: int, seed: int, domain: Domain = Domain.VIDEO) -> ItemVector:
    return ItemVector(item_id, domain, vec(seed), "enc", version)


async def test_an_older_version_never_overwrites_a_newer_one(store: ItemStore) -> None:
    assert await store.put_many([rec("a", 200, 1), rec("b", 50, 2)], {"a": "A v200", "b": "B"}) == 2
    position = await store.feed_position()
    # a late upsert of a (older, other domain, other title) and a newer one of b, in one call
    assert await store.put_many([rec("a", 100, 3, Domain.PRODUCT), rec("b", 60, 4)],
                                {"a": "A v100", "b": "B v60"}) == 1
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and a.updated_ms == 200 and np.array_equal(a.vector, vec(1))
    assert b is not None and b.updated_ms == 60 and np.array_equal(b.vector, vec(4))
    assert await store.titles(["a", "b"]) == {"a": "A v200", "b": "B v60"}
    assert await store.ids(Domain.VIDEO) == ["a", "b"] and await store.ids(Domain.PRODUCT) == []
    assert [i for i, _ in await store.changes_after(position)] == ["b"]  # the stale write: no entry
    # the same version again (a replay, or a re-encode by a new encoder) is written, and fed
    again = ItemVector("a", Domain.VIDEO, vec(5), "enc-2", 200)
    assert await store.put_many([again]) == 1
    a = await store.get("a")
    assert a is not None and a.version == "enc-2" and np.array_equal(a.vector, vec(5))
    assert [i for i, _ in await store.changes_after(position)] == ["b", "a"]
    # several upserts of one item in one call: the newest version, whatever the order
    assert await store.put_many([rec("c", 9, 6), rec("c", 7, 7), rec("c", 8, 8)]) == 1
    c = await store.get("c")
    assert c is not None and c.updated_ms == 9 and np.array_equal(c.vector, vec(6))


async def test_feed_positions_come_from_redis_not_the_writers_clock(
        store: ItemStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.put_many([rec("a", 1, 1)])
    first = await store.feed_position()
    # a writer whose clock is an hour behind: its entries still come after every earlier one
    real = item_store_module.time.time
    lagging = SimpleNamespace(time=lambda: real() - 3600)
    monkeypatch.setattr(item_store_module, "time", lagging)
    await store.put_many([rec("b", 0, 2), rec("c", 0, 3)])
    changes = await store.changes_after(first)
    assert [i for i, _ in changes] == ["b", "c"]
    assert first < changes[0][1] < changes[1][1] == await store.feed_position()


async def test_concurrent_writers_in_any_order_leave_the_newest_version(store: ItemStore) -> None:
    items, versions = [f"i{n}" for n in range(40)], 6
    writes = [rec(i, v, 100 * n + v) for n, i in enumerate(items) for v in range(1, versions + 1)]
    random.Random(0).shuffle(writes)
    batches = [writes[k::4] for k in range(4)]  # four writers, each its own order

    async def writer(batch: Sequence[ItemVector]) -> None:
        for k in range(0, len(batch), 5):
            await store.put_many(batch[k:k + 5])

    await asyncio.gather(*(writer(b) for b in batches))
    got = await store.get_many(items, DIM)
    assert got.found.all()
    expected = np.stack([vec(100 * n + versions) for n in range(len(items))])
    np.testing.assert_array_equal(got.vectors, expected)


class SlowVectors(ItemStore):
    """The real store, whose vector writes land late (a slow node): a feed entry that became
    visible before its vector would be read by the index, find nothing, and never come back."""

    async def _write_vectors(self, keys: Sequence[str], blobs: Sequence[bytes]) -> list[bool]:
        await asyncio.sleep(random.uniform(0.0, 0.02))
        return await super()._write_vectors(keys, blobs)


async def test_a_reader_following_the_feed_never_misses_a_vector(store: ItemStore) -> None:
    writers = [SlowVectors(store.client) for _ in range(3)]
    index = CatalogIndex(DIM)
    newest: dict[str, tuple[int, int]] = {}  # item -> (version, seed) of its newest write
    done = asyncio.Event()
    rng = random.Random(1)

    async def write(w: ItemStore, n: int) -> None:
        for step in range(25):
            batch = []
            for _ in range(4):
                item, seed = f"i{rng.randrange(60)}", 1000 * n + step * 10 + len(batch)
                version = rng.randrange(1, 50)
                batch.append(rec(item, version, seed))
                if version >= newest.get(item, (0, 0))[0]:
                    newest[item] = (version, seed)
            await w.put_many(batch)
            await asyncio.sleep(rng.uniform(0.0, 0.005))

    async def follow() -> int:
        refreshes = 0
        while not done.is_set():
            await index.refresh(store)
            refreshes += 1
            await asyncio.sleep(0.001)
        return refreshes

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(w, n) for n, w in enumerate(writers)))
    done.set()
    assert await reader > 10  # it did follow the writes
    await index.refresh(store)  # one more read of the feed, after the last write
    # the truth: what Redis holds (equal versions written concurrently: either may stand)
    ids = sorted(newest)
    held = await store.get_many(ids, DIM)
    assert held.found.all()
    for item in ids:
        rec_held = await store.get(item)
        assert rec_held is not None and rec_held.updated_ms == newest[item][0]
    vectors, found = index.vectors(ids)
    assert found.all(), [i for i, f in zip(ids, found, strict=True) if not f]
    np.testing.assert_array_equal(vectors, held.vectors)  # every item at its newest vector


async def test_the_change_feed_is_one_key_and_items_spread(store: ItemStore, url: str) -> None:
    """On the cluster: each vector's compare-and-set and the feed's append touch one key each
    (no cross-slot script), and the vectors live on every primary."""
    await store.put_many([rec(f"v{n}", 1, n) for n in range(30)])
    assert len(await store.changes_after(0)) == 30
    if not store.cluster:
        return
    sync = sync_redis_client(url)
    try:
        nodes = {sync.nodes_manager.get_node_from_slot(key_slot(item_key(f"v{n}").encode())).name
                 for n in range(30)}
        assert len(nodes) == 3
        assert sync.zcard(CHANGES_KEY) == 30 and sync.scard(domain_set(Domain.VIDEO)) == 30
    finally:
        sync.close()


class FixedEncoder:
    """Vectors from the title (the test is about the processor's ordering, not encoding)."""

    version = "fixed-1"

    def encode_lenient(self, items: Sequence[Item]) -> EncodeResult:
        vectors = np.stack([vec(sum(map(ord, it.title))) for it in items])
        return EncodeResult(vectors, list(range(len(items))))


def upsert(item_id: str, title: str, offset: int, ts: float, updated_at: float | None = None) -> Record:
    body = f'{{"item_id": "{item_id}", "domain": "video", "title": "{title}"'
    body += f', "updated_at": {updated_at}}}' if updated_at is not None else "}"
    return Record(item_id.encode(), body.encode(), "items", 0, offset, ts)


async def test_the_catalog_agent_keeps_the_newest_upsert_whatever_the_order(store: ItemStore) -> None:
    async def no_dead_letters(bad: object) -> None:
        raise AssertionError(f"unexpected dead letters: {bad}")

    processor = CatalogProcessor(store, no_dead_letters, encoder_factory=FixedEncoder)
    out = await processor.process([upsert("a", "a new", 5, 2000.0), upsert("b", "b one", 6, 2000.0)])
    assert (out.stored, out.stale) == (2, 0)
    # a worker that lost the partition finishes an older batch late: nothing of it is written
    out = await processor.process([upsert("a", "a old", 1, 1000.0),
                                   upsert("b", "b two", 2, 9999.0, updated_at=1500.0)])
    assert (out.stored, out.stale) == (0, 2)
    # in one batch the newest wins, not the last; updated_at, when given, is the version
    out = await processor.process([upsert("c", "c newer", 7, 10.0, updated_at=3000.0),
                                   upsert("c", "c older", 8, 9999.0, updated_at=2500.0)])
    assert (out.stored, out.stale) == (1, 0)
    got = await store.get_many(["a", "b", "c"], DIM)
    expected = np.stack([vec(sum(map(ord, t))) for t in ("a new", "b one", "c newer")])
    np.testing.assert_array_equal(got.vectors, expected)
    assert await store.titles(["a", "b", "c"]) == {"a": "a new", "b": "b one", "c": "c newer"}
    assert [r.updated_ms for r in [await store.get(i) for i in "abc"]] == [2_000_000, 2_000_000,
                                                                            3_000_000]

