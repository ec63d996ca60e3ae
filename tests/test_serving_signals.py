"""A ``+ses+usr`` ranker served through Triton: the config carries the incomplete watches'
inputs, the recommender sends the user's ``skipped`` list, and Triton's scores equal the
in-process graph's on the same state."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch

from semirec.core.sequences import Entry, UserState, pack
from semirec.core.store import user_key
from semirec.serving.features import identity_tensors, rank_request
from semirec.serving.ranking import TritonRanker
from semirec.serving.recommender import Recommender
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.toy import toy_world
from semirec.trainer.registry.export import SKIPPED_INPUTS, torch_batch_scores
from semirec.trainer.registry.repository import ModelRepository, render
from tests.serving_utils import private_triton, put_catalog

D = 128
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def signals_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = replace(paper("semi+sim+ses+usr+id"), block=BlockConfig(dim=D, heads=4, ffn=D),
                  id_buckets=1024)
    model = build(cfg).eval()
    with torch.no_grad():
        model.similarity_weight.weight[0, 6] = 4.0  # the user's rate on like content dominates
        model.user_rate.prior_rate.fill_(0.5)
    return model, checkpoint.save(tmp_path_factory.mktemp("ckpt") / "semi_signals", model, cfg)


def test_the_config_declares_the_skipped_inputs() -> None:
    text = render(D, id_buckets=1024, skipped=True)
    for name in SKIPPED_INPUTS:
        assert f'name: "{name}"' in text and f'key: "{name}"' in text  # input and warm-up
    assert 'name: "skipped"' not in render(D, id_buckets=1024)


async def test_skipped_watches_reach_triton_and_lower_like_content(
        settings, redis_client, signals_checkpoint, tmp_path) -> None:
    model, path = signals_checkpoint
    world = toy_world(users=5, videos=40, products=20, categories=4, dim=D, seed=2)
    await put_catalog(settings.redis_url, world)
    # v0, v4, v8 share a category, as do v1, v5, v9: the user completed the first kind
    # and left the second
    ms = int(T0 * 1000)
    state = UserState(video=[Entry(ms - 7_200_000, "v4"), Entry(ms - 3_600_000, "v8")],
                      product=[Entry(ms - 60_000, "p1")],
                      skipped=[Entry(ms - 5_000_000, "v5"), Entry(ms - 4_000_000, "v9")])
    client = aioredis.Redis.from_url(settings.redis_url)
    await client.set(user_key("u"), pack(state))
    await client.aclose()
    with private_triton(tmp_path) as (triton_stack, repo_dir):
        url = triton_stack.addresses.triton_grpc
        repo = ModelRepository(repo_dir, url)
        version = repo.export(path)
        assert repo.info(version).skipped and repo.info(version).id_buckets == 1024
        repo.promote(version)
        ranker = TritonRanker(url, timeout_s=5)
        assert await ranker.takes_skipped()
        rec = Recommender(replace(settings, triton_grpc=url),
                          redis_client=aioredis.Redis.from_url(settings.redis_url), ranker=ranker)
        await rec.refresh()
        ids = ["v1", "v0"]
        answer = await rec.recommend("u", 2, at=T0, candidates=ids)
        assert not answer.fallback and answer.model_version == f"ranker/{version}"
        assert [i.item_id for i in answer.items] == ["v0", "v1"]
        # the same state's tensors in process give the same scores ...
        vecs, _ = rec.catalog.vectors(ids)
        req = rank_request(state, vecs, rec.catalog, at=T0, seq_len=settings.seq_len, pad_to=500,
                           skipped=True)
        zeros = np.zeros(2, np.float32)
        req.tensors.update(identity_tensors(ids, zeros, zeros, 1024, 500))
        expected = torch_batch_scores(model, req.tensors)[0, :2]
        got = {i.item_id: i.score for i in answer.items}
        np.testing.assert_allclose([got["v1"], got["v0"]], expected, atol=1e-5)
        # ... and the incomplete watches matter: without them v1 would not be pushed down
        req.tensors["skipped_mask"][:] = False
        without = torch_batch_scores(model, req.tensors)[0, :2]
        assert without[0] - without[1] > expected[0] - expected[1] + 0.05
        await rec.close()
