"""Serving through the real tritonserver: Triton's scores equal the in-process model's, product
clicks move a user's ranked videos toward their category, the agent publishes model-ranked
recommendations, and a stopped tritonserver means fallback, then recovery."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch

from semirec.core.kafka import ensure_topics, ingest_topics, serving_topics
from semirec.core.recommendations import encode
from semirec.core.sequences import Entry, UserState
from semirec.serving.breaker import CircuitBreaker
from semirec.serving.features import rank_request
from semirec.serving.ranking import OnnxRanker, TritonRanker
from semirec.serving.recommender import Job, Recommender
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, TrainConfig, paper
from semirec.trainer.offline.evaluate import EvalProtocol, prepare, train_model
from semirec.trainer.offline.toy import toy_world
from semirec.trainer.registry.export import torch_batch_scores
from semirec.trainer.registry.repository import ModelRepository
from tests.kafka_utils import produce_raw
from tests.serving_utils import CATS, Recommendations, category, clicks, private_triton, put_catalog
from tests.workers import running_worker

D = 128
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def world():
    return toy_world(users=150, videos=120, products=80, categories=CATS, dim=D,
                     events_per_user=40, seed=7)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = replace(paper("semi"), block=BlockConfig(dim=D, heads=4, ffn=D),
                  train=TrainConfig(batch_size=64, epochs=4, patience=2, seq_len=20))
    data = prepare("toy", world.items, world.events, world.vectors, None,
                   EvalProtocol(hr3_negatives=5, hr10_negatives=5, max_rank_cases=20))
    model, info = train_model("semi", data, cfg, seed=0)
    torch.set_num_threads(threads)
    path = checkpoint.save(tmp_path_factory.mktemp("ckpt") / "semi", model, cfg,
                           {"metrics": {"auc": info["val_auc"]}})
    return model, path


@pytest.fixture(scope="module")
def served(stack, trained) -> int:
    """The trained model exported and promoted in the session's tritonserver."""
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    version = repo.export(trained[1])
    repo.promote(version)
    return version


def state_with(products: list[str], videos: list[str] = ()) -> UserState:
    return UserState(video=[Entry(int(T0 * 1000) - 60_000 * (len(videos) - i), v)
                            for i, v in enumerate(videos)],
                     product=[Entry(int(T0 * 1000) - 60_000 * (len(products) - i), p)
                              for i, p in enumerate(products)])


def products_of(cat: int, n: int) -> list[str]:
    return [f"p{i}" for i in range(80) if category(f"p{i}") == cat][:n]


async def recommender(settings, **kw) -> Recommender:
    rec = Recommender(settings, redis_client=aioredis.Redis.from_url(settings.redis_url), **kw)
    await rec.refresh()
    return rec


async def test_triton_scores_equal_the_in_process_model(settings, redis_client, world, trained,
                                                        served, stack) -> None:
    await put_catalog(settings.redis_url, world)
    rec = await recommender(settings, ranker=None)
    state = state_with(products_of(1, 6), ["v3", "v7"])
    cands = [c.item_id for c in rec.recall.candidates(state)]
    vecs, _ = rec.catalog.vectors(cands)
    req = rank_request(state, vecs, rec.catalog, at=T0, seq_len=settings.seq_len, pad_to=500)
    triton = TritonRanker(stack.addresses.triton_grpc, timeout_s=5)
    scores, version = await triton.rank(req.tensors)
    await triton.close()
    onnx = OnnxRanker(Path(stack.model_repository) / "ranker" / str(served) / "model.onnx")
    local, _ = await onnx.rank(req.tensors)
    expected = torch_batch_scores(trained[0], req.tensors)
    assert version == f"ranker/{served}" and scores.shape == (1, 500)
    np.testing.assert_allclose(scores, local, atol=1e-5)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    await rec.close()


async def test_product_clicks_move_ranked_videos_toward_their_category(
        settings, redis_client, world, served, stack) -> None:
    await put_catalog(settings.redis_url, world)
    rec = await recommender(settings, ranker=TritonRanker(stack.addresses.triton_grpc, timeout_s=5))
    top = {}
    for cat in (0, 2):
        answer = await rec.recommend("u", 10, at=T0, state=state_with(products_of(cat, 10)))
        assert not answer.fallback and answer.model_version == f"ranker/{served}"
        top[cat] = Counter(category(i.item_id) for i in answer.items)
    assert top[0][0] > top[2][0] and top[2][2] > top[0][2], top
    assert top[0][0] >= 5 and top[2][2] >= 5, top
    await rec.close()


async def executions(triton: TritonRanker) -> tuple[int, int]:
    stats = (await triton.client.get_inference_statistics("ranker", as_json=True))["model_stats"]
    return (sum(int(m.get("execution_count", 0)) for m in stats),
            sum(int(m.get("inference_count", 0)) for m in stats))


async def test_a_group_of_users_is_ranked_in_one_call_with_each_users_own_scores(
        settings, redis_client, world, served, stack) -> None:
    await put_catalog(settings.redis_url, world)
    triton = TritonRanker(stack.addresses.triton_grpc, timeout_s=5)
    rec = await recommender(settings, ranker=triton)
    states = [state_with(products_of(c % CATS, 4 + c), [f"v{c}", f"v{c + 9}"]) for c in range(5)]
    before = await executions(triton)
    group = await rec.recommend_many([Job(f"g{c}", 50, at=T0) for c in range(5)], states=states)
    after = await executions(triton)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 5)  # one model run, five users
    for c, answer in enumerate(group):
        alone = await rec.recommend(f"g{c}", 50, at=T0, state=states[c])
        assert answer.user_id == f"g{c}" and not answer.fallback and not alone.fallback
        got = {i.item_id: i.score for i in answer.items}
        want = {i.item_id: i.score for i in alone.items}
        common = got.keys() & want.keys()
        assert len(common) >= 48  # the same top 50 (a near-tie at the border may swap)
        assert max(abs(got[i] - want[i]) for i in common) <= 1e-5
    await rec.close()


async def test_inputs_through_shared_memory_give_the_same_scores(
        settings, redis_client, world, served, stack) -> None:
    """SEMIREC_TRITON_SHARED_MEMORY: the tensors travel through a registered system shared-memory
    region (reused call after call) instead of the gRPC message; the scores are the same."""
    await put_catalog(settings.redis_url, world)
    plain = TritonRanker(stack.addresses.triton_grpc, timeout_s=5)
    shared = TritonRanker(stack.addresses.triton_grpc, timeout_s=5, shared_memory=True)
    rec = await recommender(settings, ranker=plain)
    states = [state_with(products_of(c % CATS, 4 + c), [f"v{c}", f"v{c + 9}"]) for c in range(3)]
    from semirec.serving.features import rank_batch

    for n in (3, 1, 3):
        pools = [rec.catalog.rows([c.item_id for c in rec.recall.candidates(s)]) for s in states[:n]]
        tensors, _ = rank_batch([(s, r, T0) for s, r in zip(states[:n], pools, strict=True)],
                                rec.catalog, pad_to=settings.recall_candidates)
        want, version = await plain.rank(tensors)
        got, version_shm = await shared.rank(tensors)
        assert version == version_shm and np.array_equal(got, want)
    assert len(shared._all_regions) == 1 and len(shared._regions) == 1  # one region, reused
    await shared.close()
    assert not shared._all_regions
    await rec.close()


async def test_the_agent_publishes_model_ranked_recommendations(
        settings, redis_client, world, served, stack, tmp_path) -> None:
    """... through shared memory (the embedded stack's setting), whose regions the worker
    unregisters from Triton when it stops (else each worker restart leaves Triton one more)."""
    from tritonclient.grpc import InferenceServerClient

    await put_catalog(settings.redis_url, world)
    await ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)})
    triton = InferenceServerClient(stack.addresses.triton_grpc)
    assert settings.triton_shared_memory

    def regions_of(pid: int) -> list[str]:
        status = triton.get_system_shared_memory_status(as_json=True).get("regions", {})
        return [name for name in status if name.startswith(f"semirec-{pid}-")]

    with running_worker(settings, tmp_path / "worker.log", "--agent", "ingest", "--agent",
                        "recommend", SEMIREC_RANK_TIMEOUT_MS="2000") as proc:
        async with Recommendations(settings) as recs:
            await produce_raw(settings, clicks("carol", products_of(3, 6), T0, "c"))
            await recs.wait(lambda s: any(r.user_id == "carol" and not r.fallback for r in s))
        assert regions_of(proc.pid)
    assert proc.returncode == 0
    assert regions_of(proc.pid) == [], (tmp_path / "worker.log").read_text()[-3000:]
    rec = next(r for r in recs.seen if r.user_id == "carol" and not r.fallback)
    assert rec.model_version == f"ranker/{served}" and len(rec.items) == 10
    assert rec.timings.rank_ms > 0 and rec.timings.event_to_publish_ms is not None


async def test_tritonserver_stopped_means_fallback_then_recovery(
        settings, redis_client, world, trained, tmp_path) -> None:
    """A private tritonserver (the session's keeps serving other tests) is stopped and restarted."""
    await put_catalog(settings.redis_url, world)
    with private_triton(tmp_path) as (triton_stack, repo_dir):
        url = triton_stack.addresses.triton_grpc
        repo = ModelRepository(repo_dir, url)
        repo.promote(repo.export(trained[1]))
        rec = await recommender(replace(settings, triton_grpc=url),
                                ranker=TritonRanker(url, timeout_s=2),
                                breaker=CircuitBreaker(failures=1, cooldown_s=0.5))
        state = state_with(products_of(1, 5))
        assert not (await rec.recommend("u", 5, at=T0, state=state)).fallback
        triton_stack.pause("triton")
        down = [await rec.recommend("u", 5, at=T0, state=state) for _ in range(3)]
        assert all(r.fallback and r.model_version == "fallback" and len(r.items) == 5
                   for r in down)
        # the first call failed (the server is stopped); the breaker it opened refuses the next
        assert [r.fallback_reason for r in down] == ["triton_error", "breaker_open", "breaker_open"]
        assert rec.breaker.opened >= 1
        triton_stack.resume("triton")
        assert repo.load_serving() is not None  # explicit mode: the operator (or trainer) reloads
        for _ in range(100):
            answer = await rec.recommend("u", 5, at=T0, state=state)
            if not answer.fallback:
                break
            await asyncio.sleep(0.1)
        assert not answer.fallback and answer.model_version.startswith("ranker/")
        assert answer.fallback_reason is None and b"fallback_reason" not in encode(answer)
        await rec.close()
