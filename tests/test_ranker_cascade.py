"""The ranker's graph as a cascade (``SEMIREC_RANKER_DEEP_TOP``): every candidate by the wide
part, the whole network for the wide part's best K, the rest below them in the wide part's order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from semirec.core.settings import Settings, SettingsError
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.samples import in_window
from semirec.trainer.registry.export import (
    IDENTITY_INPUTS,
    cascades,
    example_batch,
    export_batched_onnx,
    export_onnx,
    fit_buckets,
    onnx_session,
    run_onnx,
    torch_batch_scores,
    torch_scores,
    user_batch,
)
from semirec.trainer.registry.repository import ModelRepository

D = 32
K = 100

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def served(name: str = "semi_ccl+sim+ses+usr+id", seed: int = 0):
    """A small model with the demo's inputs whose wide part is not zero (as after training)."""
    torch.manual_seed(seed)
    cfg = replace(paper(name), block=BlockConfig(dim=D, heads=4, ffn=D), id_buckets=64)
    model = build(cfg).eval()
    with torch.no_grad():
        model.similarity_weight.weight.normal_(0.0, 3.0)
        if model.identity is not None:
            model.identity.bias.weight.normal_(0.0, 1.0)
    return model, cfg


def batch(model, candidates: int, padding: int = 0, users: int = 3, seed: int = 5):
    feeds = fit_buckets(model, example_batch(users, D, 20, 12, candidates, seed=seed,
                                             identity=model.identity is not None,
                                             skipped=model.user_rate is not None))
    for name in ("candidates", *IDENTITY_INPUTS):  # as serving pads: zero rows, bucket 0, no watches
        if name in feeds:
            x = feeds[name]
            feeds[name] = np.concatenate([x, np.zeros((users, padding, *x.shape[2:]), x.dtype)], 1)
    return feeds


def wide_order(model, feeds) -> np.ndarray:
    """[B, C] candidates by the wide part alone, best first (torch)."""
    with torch.inference_mode():
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        for d in ("video", "product", "skipped"):
            t[f"{d}_mask"] = t[f"{d}_mask"] & in_window(t[f"{d}_age"])
        ctx = model.encode_user(user_batch(t))
        wide = model.wide_logits(ctx, t["candidates"], tuple(t[k] for k in IDENTITY_INPUTS))
    return np.argsort(-wide.numpy(), axis=1, kind="stable")


@pytest.mark.parametrize("head_bias", [None, -8.0])
def test_the_cascade_scores_the_wide_parts_best_k_exactly_and_the_rest_below_them(
        head_bias: float | None) -> None:
    model, _ = served()
    if head_bias is not None:  # the deep part lowers every probability far below the wide part's
        with torch.no_grad():
            model.head.mlp[-1].bias.fill_(head_bias)
    feeds = batch(model, 400)
    full = torch_batch_scores(model, feeds)
    cascade = torch_batch_scores(model, feeds, deep_top=K)
    order = wide_order(model, feeds)
    for u in range(len(full)):
        top, rest = order[u, :K], order[u, K:]
        np.testing.assert_allclose(cascade[u, top], full[u, top], atol=1e-6)
        assert cascade[u, rest].max() < cascade[u, top].min()
        assert (np.diff(cascade[u, rest]) <= 0).all()  # the rest keep the wide part's order
        # this model's top 10 lies within its wide part's best K, so the cascade ranks it exactly
        best = np.argsort(-full[u], kind="stable")[:10]
        assert set(best) <= set(top)
        np.testing.assert_array_equal(np.argsort(-cascade[u], kind="stable")[:10], best)


def test_the_logit_is_the_heads_term_plus_the_wide_part_and_the_cascade_computes_features_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = served()
    feeds = batch(model, 300, padding=20)
    with torch.inference_mode():
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        ctx = model.encode_user(user_batch(t))
        items = tuple(t[k] for k in IDENTITY_INPUTS)
        feats = model.wide_features(ctx, t["candidates"])
        torch.testing.assert_close(
            model.head_logits(ctx, t["candidates"], feats) + model.wide_logits_of(feats, items),
            model.logits(ctx, t["candidates"], items))
    calls = []
    wide_features = model.wide_features
    monkeypatch.setattr(model, "wide_features", lambda *a: calls.append(a) or wide_features(*a))
    torch_batch_scores(model, feeds, deep_top=K)
    assert len(calls) == 1  # the best K reuse their features (and wide logits), not recompute them


def test_padding_rows_never_take_a_place_among_the_k() -> None:
    model, _ = served()
    with torch.no_grad():  # zero rows (cosine 0) now beat every candidate that resembles the user
        model.similarity_weight.weight.copy_(-model.similarity_weight.weight.abs())
    plain = batch(model, 300)
    padded = batch(model, 300, padding=200)
    np.testing.assert_allclose(torch_batch_scores(model, padded, deep_top=K)[:, :300],
                               torch_batch_scores(model, plain, deep_top=K), atol=1e-6)


def test_fewer_candidates_than_k_get_the_full_models_scores() -> None:
    model, _ = served()
    feeds = batch(model, 17)
    np.testing.assert_allclose(torch_batch_scores(model, feeds, deep_top=K),
                               torch_batch_scores(model, feeds), atol=1e-6)


def test_the_exported_cascade_equals_torch_for_any_candidate_count(tmp_path: Path) -> None:
    model, _ = served()
    batched = onnx_session(export_batched_onnx(model, tmp_path / "b.onnx", D, deep_top=K))
    single = onnx_session(export_onnx(model, tmp_path / "s.onnx", D, deep_top=K))
    for candidates, padding in ((7, 0), (K, 0), (K + 1, 0), (350, 150)):
        feeds = batch(model, candidates, padding)
        np.testing.assert_allclose(batched.run(["score"], feeds)[0],
                                   torch_batch_scores(model, feeds, deep_top=K), atol=1e-5)
        one = {k: v[1] for k, v in feeds.items()}
        np.testing.assert_allclose(run_onnx(single, one), torch_scores(model, one, deep_top=K),
                                   atol=1e-5)
    assert "TopK" in {n.op_type for n in onnx.load(str(tmp_path / "b.onnx")).graph.node}


def test_a_model_narrower_than_its_item_vectors_exports_equal_to_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = replace(paper("semi_ccl+sim+ses+usr+id"), block=BlockConfig(dim=D, heads=4, ffn=D),
                  id_buckets=64, item_dim=2 * D)
    model = build(cfg).eval()
    with torch.no_grad():
        model.similarity_weight.weight.normal_(0.0, 3.0)
    session = onnx_session(export_batched_onnx(model, tmp_path / "b.onnx", 2 * D, deep_top=K))
    feeds = fit_buckets(model, example_batch(3, 2 * D, 20, 12, 300, seed=5, identity=True,
                                             skipped=True))
    np.testing.assert_allclose(session.run(["score"], feeds)[0],
                               torch_batch_scores(model, feeds, deep_top=K), atol=1e-5)


def test_a_model_without_a_wide_part_is_exported_whole(tmp_path: Path) -> None:
    cfg = replace(paper("semi"), block=BlockConfig(dim=D, heads=4, ffn=D))
    plain = build(cfg).eval()
    assert not cascades(plain, K) and not cascades(served()[0], 0) and cascades(served()[0], K)
    repo = ModelRepository(tmp_path / "repo", deep_top=K)
    assert repo.info(repo.export(checkpoint.save(tmp_path / "plain", plain, cfg))).deep_top == 0
    model, cfg = served()
    version = repo.export(checkpoint.save(tmp_path / "wide", model, cfg))
    info = repo.info(version)
    assert info.deep_top == K and info.as_dict()["deep_top"] == K
    # the version's graph is the cascade, checked at export on more candidates than K
    session = onnx_session(repo.dir / str(version) / "model.onnx")
    feeds = batch(model, 300, padding=200)
    np.testing.assert_allclose(session.run(["score"], feeds)[0],
                               torch_batch_scores(model, feeds, deep_top=K), atol=1e-5)
    assert ModelRepository(tmp_path / "repo").deep_top == 0  # off unless asked
    assert ModelRepository.from_settings(Settings(model_repository=str(tmp_path))).deep_top == 150


@pytest.mark.parametrize("value", ["1", "99", "10001", "-1"])
def test_deep_top_is_off_or_at_least_the_largest_k_a_request_may_ask_for(value: str) -> None:
    with pytest.raises(SettingsError, match="SEMIREC_RANKER_DEEP_TOP must be 0"):
        Settings.from_env({"SEMIREC_RANKER_DEEP_TOP": value})
    assert Settings.from_env({"SEMIREC_RANKER_DEEP_TOP": "0"}).ranker_deep_top == 0


@pytest.mark.parametrize(("wide_scale", "exported"), [(5.0, K), (0.0, 0)])
def test_the_trainer_exports_a_cascade_only_if_it_keeps_the_top_10_on_logged_requests(
        wide_scale: float, exported: int) -> None:
    """A wide part that dominates the logit keeps the top 10 (cascade exported); one that
    carries nothing (the head alone orders the candidates) does not (exported whole)."""
    from types import SimpleNamespace

    from semirec.trainer.online.learner import ItemTable, Learner, OnlineConfig, samples_from_events
    from semirec.trainer.online.service import CASCADE_MIN_OVERLAP, OnlineTrainer
    from tests.online_utils import drifting_world

    world = drifting_world(seed=2, dim=D, videos=300)
    table = ItemTable(D)
    table.add([it["item_id"] for it in world.items], world.vectors)
    samples = samples_from_events(world.events)
    model, cfg = served()
    with torch.no_grad():
        model.similarity_weight.weight.mul_(wide_scale)
        model.identity.bias.weight.mul_(wide_scale)
        for p in model.head.parameters():
            p.normal_(0.0, 0.3)  # a head far from the wide part's order
    learner = Learner(model, cfg, OnlineConfig())
    learner.add(samples)
    assert learner.cascade_overlap(model, samples[:40], table, K) is None  # <= K videos
    overlap = learner.cascade_overlap(model, samples, table, K)
    assert overlap is not None and (overlap == 1.0 if exported else overlap < CASCADE_MIN_OVERLAP)
    service = SimpleNamespace(repo=SimpleNamespace(deep_top=K), learner=learner, table=table)
    result = SimpleNamespace(candidate=model, trained=samples, holdout=[])
    metrics: dict = {}
    assert OnlineTrainer._deep_top(service, result, metrics) == exported  # type: ignore[arg-type]
    assert metrics["cascade_top10_overlap"] == round(overlap, 4)
