"""The item vector store on a real redis-server: batch round trips, versions, domain sets."""

from __future__ import annotations

import numpy as np
import redis

from semirec.core.contracts import Domain
from semirec.core.item_store import ItemStore, ItemVector, decode_many, item_key, pack, unpack
from semirec.core.stack import EmbeddedStack


def test_pack_unpack_round_trip() -> None:
    vec = np.arange(128, dtype=np.float32) / 7
    rec = unpack("v1", pack(Domain.VIDEO, vec, "fusion-abc", 123))
    assert rec.domain is Domain.VIDEO and rec.version == "fusion-abc" and rec.updated_ms == 123
    assert rec.vector.dtype == np.float32 and np.array_equal(rec.vector, vec)


async def test_put_and_get_many(stack: EmbeddedStack, redis_client: redis.Redis) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, 128)).astype(np.float32)
    store = ItemStore.from_url(stack.addresses.redis)
    try:
        await store.put_many([ItemVector("v1", Domain.VIDEO, vecs[0], "init-1"),
                              ItemVector("p1", Domain.PRODUCT, vecs[1], "init-1"),
                              ItemVector("x", Domain.VIDEO, vecs[2], "init-1")])
        got = await store.get_many(["p1", "missing", "v1"])
        assert got.found.tolist() == [True, False, True]
        assert np.array_equal(got.vectors[0], vecs[1]) and np.array_equal(got.vectors[2], vecs[0])
        assert not got.vectors[1].any()
        assert got.versions == ["init-1", None, "init-1"]
        assert got.domains == [Domain.PRODUCT, None, Domain.VIDEO]
        assert await store.ids(Domain.VIDEO) == ["v1", "x"]
        # an upsert that moves an item to the other domain and bumps the version
        await store.put_many([ItemVector("x", Domain.PRODUCT, vecs[0], "fusion-2")])
        assert await store.ids(Domain.VIDEO) == ["v1"]
        assert await store.ids(Domain.PRODUCT) == ["p1", "x"]
        rec = await store.get("x")
        assert rec is not None and rec.version == "fusion-2" and rec.updated_ms > 0
        # a sync reader with its own pipeline decodes the same bytes
        blobs = [redis_client.get(item_key(i)) for i in ("x", "v1")]
        assert np.array_equal(decode_many(["x", "v1"], blobs).vectors, vecs[[0, 0]])
    finally:
        await store.close()
