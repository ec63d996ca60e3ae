"""A ranker with item identity (issue 14) served through Triton: the config carries the identity
inputs and the bucket count, the recommender feeds each candidate's hashed id and its watch
counts from the stream, and Triton's scores equal the in-process model's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch

from semirec.core.contracts import Domain, Event
from semirec.serving.catalog import CatalogIndex
from semirec.serving.features import identity_tensors, item_bucket, rank_request
from semirec.serving.identity import IdentityIndex
from semirec.serving.popularity import (
    COMPLETES_KEY,
    COUNTED_KEY,
    WATCHES_KEY,
    count_watches,
    watch_counts,
)
from semirec.serving.ranking import TritonRanker
from semirec.serving.recommender import Recommender
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, paper
from semirec.trainer.nets.identity import item_bucket as trainer_bucket
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.toy import toy_world
from semirec.trainer.registry.export import torch_batch_scores
from semirec.trainer.registry.repository import ModelRepository
from tests.serving_utils import private_triton, put_catalog

D = 128
T0 = 1_700_000_000.0


def test_the_served_bucket_hash_is_the_trainers() -> None:
    for item_id in ("v1", "p42", "ünï-çødé", "x" * 255):
        for buckets in (7, 1 << 18):
            assert item_bucket(item_id, buckets) == trainer_bucket(item_id, buckets)


@pytest.fixture(scope="module")
def identity_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = replace(paper("semi+id"), block=BlockConfig(dim=D, heads=4, ffn=D), id_buckets=1024)
    model = build(cfg).eval()
    with torch.no_grad():
        model.identity.rate_weight.fill_(5.0)  # the completion rate dominates the score
    return model, checkpoint.save(tmp_path_factory.mktemp("ckpt") / "semi_id", model, cfg)


async def test_identity_inputs_reach_triton_and_rank_by_completion_rate(
        settings, redis_client, identity_checkpoint, tmp_path) -> None:
    model, path = identity_checkpoint
    world = toy_world(users=5, videos=40, products=20, categories=4, dim=D, seed=2)
    await put_catalog(settings.redis_url, world)
    client = aioredis.Redis.from_url(settings.redis_url)
    await count_watches(client, [Event(f"g{i}", "x", "v1", Domain.VIDEO, "watch", T0, True)
                                 for i in range(50)]
                        + [Event(f"b{i}", "x", "v2", Domain.VIDEO, "watch", T0, False)
                           for i in range(50)])
    assert [list(a) for a in await watch_counts(client, ["v1", "v2", "v3"])] == \
        [[50, 50, 0], [50, 0, 0]]
    await client.aclose()
    with private_triton(tmp_path) as (triton_stack, repo_dir):
        url = triton_stack.addresses.triton_grpc
        repo = ModelRepository(repo_dir, url)
        version = repo.export(path)
        assert repo.info(version).id_buckets == 1024
        repo.promote(version)
        ranker = TritonRanker(url, timeout_s=5)
        assert await ranker.identity_buckets() == 1024
        rec = Recommender(replace(settings, triton_grpc=url),
                          redis_client=aioredis.Redis.from_url(settings.redis_url), ranker=ranker)
        await rec.refresh()
        answer = await rec.recommend("u", 3, at=T0, candidates=["v2", "v3", "v1"])
        assert not answer.fallback and answer.model_version == f"ranker/{version}"
        assert [i.item_id for i in answer.items] == ["v1", "v3", "v2"]
        # the same tensors in process give the same scores
        vecs, _ = rec.catalog.vectors(["v2", "v3", "v1"])
        req = rank_request(None, vecs, rec.catalog, at=T0, seq_len=settings.seq_len, pad_to=500)
        req.tensors.update(identity_tensors(["v2", "v3", "v1"], np.array([50, 0, 50], np.float32),
                                            np.array([0, 0, 50], np.float32), 1024, 500))
        expected = torch_batch_scores(model, req.tensors)[0, :3]
        got = {i.item_id: i.score for i in answer.items}
        np.testing.assert_allclose([got["v2"], got["v3"], got["v1"]], expected, atol=1e-5)
        await rec.close()


async def test_watch_counts_read_thousands_of_ids_in_one_call(settings, redis_client) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    events = [Event(f"w{i}", "u", f"v{i % 1500}", Domain.VIDEO, "watch", T0, i % 4 == 0)
              for i in range(3000)]
    await count_watches(client, events)
    ids = [f"v{i}" for i in range(2600)] + ["v7", "never", "v8"]  # past 1,000: chunked in Lua
    watches, completes = await watch_counts(client, ids)
    expect_w = [sum(e.item_id == i for e in events) for i in ids]
    expect_c = [sum(e.item_id == i and e.complete for e in events) for i in ids]
    assert expect_w[1499:1501] == [2, 0] and 0 < sum(expect_c) < sum(expect_w)
    assert watches.dtype == completes.dtype == np.float32
    assert watches.tolist() == expect_w and completes.tolist() == expect_c
    assert [a.tolist() for a in await watch_counts(client, [])] == [[], []]
    await client.aclose()


async def test_the_identity_index_follows_the_count_feed(settings, redis_client) -> None:
    """Buckets and counts by catalog row equal those made from the ids and read by id; a refresh
    reads only the feed entries written since the last one (``read_limit`` at a time), a video
    counted before the catalog has its vector gets its counts once it has, and a feed that no
    longer holds the entries after the one read (trimmed, or behind it) is read whole,
    forgetting what it no longer holds."""
    client = aioredis.Redis.from_url(settings.redis_url)
    catalog = CatalogIndex(dim=4)
    ids = [f"v{i}" for i in range(30)]
    catalog.upsert(ids[:25], np.eye(4, dtype=np.float32)[np.arange(25) % 4],
                   [Domain.VIDEO] * 25)
    events = [Event(f"w{i}", "u", ids[i % 29], Domain.VIDEO, "watch", T0, i % 3 == 0)
              for i in range(100)]
    early = IdentityIndex(catalog)  # started before anything was counted
    assert await early.refresh(client) == 0 and early.positions == ["0-0"]
    await count_watches(client, events[:10])  # counted before the index starts: read whole
    index = IdentityIndex(catalog, read_limit=3)
    assert await index.refresh(client) == 10 and index.feed_resets == 0
    assert await early.refresh(client) == 10 and early.feed_resets == 0  # read whole: no reset
    assert await index.refresh(client) == 0  # idle: nothing read again
    for lo in range(10, 60, 5):  # 10 feed entries: four calls of at most 3
        await count_watches(client, events[lo:lo + 5])
    assert await index.refresh(client) == 29 and index.feed_resets == 0

    async def expected(rows: np.ndarray) -> dict[str, np.ndarray]:
        row_ids = catalog.ids(rows)
        return identity_tensors(row_ids, *await watch_counts(client, row_ids), 1024, 40)

    rows = np.array([3, 0, 24, 7, 7, 12])
    for name, value in (await expected(rows)).items():
        np.testing.assert_array_equal(index.tensors(rows, 1024, 40)[name], value)
    await count_watches(client, events[60:])  # 29 again, of which v28 is not in the catalog yet
    assert await index.refresh(client) == 29
    catalog.upsert(ids[25:], np.ones((5, 4), np.float32), [Domain.VIDEO] * 5)
    rows = catalog.rows(["v28", "v29", "v1", "v26"])
    got = index.tensors(rows, 1024, 4)
    for name, value in (await expected(rows)).items():
        np.testing.assert_array_equal(got[name][:, :4], value[:, :4])
    assert got["candidate_watches"][0].tolist()[:2] == [3, 0]  # v28 counted, v29 never
    assert index.tensors(rows, 7, 4)["candidate_bucket"][0].tolist() == \
        [item_bucket(i, 7) for i in ["v28", "v29", "v1", "v26"]]
    # trimmed past the entry read (a reader that fell behind): the counts are read whole
    await count_watches(client, events[:2])
    await count_watches(client, events[2:3])
    await client.xtrim(COUNTED_KEY, maxlen=1, approximate=False)
    assert await index.refresh(client) == 29 and index.feed_resets == 1
    assert index.tensors(catalog.rows(["v0", "v2"]), 1024)["candidate_watches"][0].tolist() == \
        [5, 5]
    # the counts as an older copy would hold them (a replica promoted after losing its newest
    # entries): the feed behind the entry read
    await client.flushdb()
    await client.hset(WATCHES_KEY, mapping={"v0": 1, "v1": 2})
    await client.hset(COMPLETES_KEY, "v0", 1)
    await client.xadd(COUNTED_KEY, {"ids": b"\x90"}, id="5-0")
    assert await index.refresh(client) == 2 and index.feed_resets == 2
    assert index.counts == {"v0": (1, 1), "v1": (2, 0)} and index.positions == ["5-0"]
    assert index.tensors(catalog.rows(["v0", "v1", "v2"]), 1024)["candidate_watches"][0].tolist() \
        == [1, 2, 0]
    assert await index.refresh(client) == 0 and index.feed_resets == 2
    await client.aclose()
