"""Online fine-tuning of a ranker with item identity: item counts rebuilt from the samples
stream equal the offline point-in-time counts, the learner fine-tunes and judges such a model
with them, and checkpoints keep them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from semirec.trainer.nets.configs import BlockConfig, paper
from semirec.trainer.nets.identity import ItemCounts, item_bucket
from semirec.trainer.nets.zoo import build
from semirec.trainer.online.gate import GateConfig
from semirec.trainer.online.learner import (
    BUFFERS,
    ItemTable,
    Learner,
    OnlineConfig,
    load_state,
    samples_from_events,
    save_state,
    to_sample_set,
)
from tests.online_utils import drifting_world

D = 32
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def semi_id():
    cfg = paper("semi+sim+id")
    return replace(cfg, block=BlockConfig(dim=D, heads=4, ffn=D), id_buckets=1024)


def test_stream_counts_equal_the_offline_point_in_time_counts() -> None:
    world = drifting_world(seed=3, dim=D)
    samples = samples_from_events(world.events)
    learner = Learner(build(semi_id()), semi_id(), OnlineConfig())
    assert learner.add(samples) == len(samples)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    counts = ItemCounts(np.array([rows[s.item_id] for s in samples]),
                        np.array([s.ts for s in samples]), np.array([s.complete for s in samples]))
    watches, completes = counts.before(np.array([[rows[s.item_id]] for s in samples]),
                                       np.array([s.ts for s in samples]))
    _, w, c = learner.counts.inputs(samples, 1024)
    np.testing.assert_array_equal(w, watches[:, 0])
    np.testing.assert_array_equal(c, completes[:, 0])
    assert w.max() > 20 and 0 < c.sum() < w.sum()
    assert learner.add(samples[:50]) == 0  # a replayed sample is not counted twice
    assert sum(n for n, _ in learner.counts.counts.values()) == len(samples)


def test_the_learner_fine_tunes_and_judges_a_model_with_item_identity(tmp_path: Path) -> None:
    world = drifting_world(seed=1, dim=D, shift_at=1.0)
    table = ItemTable(D)
    table.add([it["item_id"] for it in world.items], world.vectors)
    samples = samples_from_events(world.events)
    torch.manual_seed(0)
    model = build(semi_id())
    model.identity.prior_rate.fill_(float(np.mean([s.complete for s in samples])))
    online = OnlineConfig(round_samples=400, passes=2, gate=GateConfig(min_samples=50,
                                                                       min_positives=5))
    learner = Learner(model, semi_id(), online)
    learner.add(samples[:1500])
    result = learner.round(table)
    bias = result.candidate.identity.bias.weight
    trained = {s.item_id for s in result.trained}
    assert bias[[item_bucket(i, 1024) for i in trained]].abs().sum() > 0  # ids learned online
    held = result.verdict.candidate
    assert held["n"] == 300 and np.isfinite(held["auc"])
    learner.accept(result) if result.verdict.promote else learner.reject(result)
    # the gate scores with the stamped counts: zero counts (the prior) score differently
    held_set = to_sample_set(result.holdout, table.rows)
    stamped = learner.probs(learner.model, held_set, table.tensor, learner.items(result.holdout))
    bare = learner.items(result.holdout)
    bare.watches[:], bare.completes[:] = 0, 0
    assert not np.allclose(stamped, learner.probs(learner.model, held_set, table.tensor, bare))
    # checkpoints keep the counts and the held samples' stamps; older ones read without them
    save_state(tmp_path, learner, {0: 1500})
    restored, _, _ = load_state(tmp_path, online)
    assert restored.counts.counts == learner.counts.counts
    assert restored.counts.stamps == learner.counts.stamps
    assert set(learner.counts.stamps) == {s.event_id for s in (*learner.pending, *learner.replay)}
    folder = tmp_path / (tmp_path / "CURRENT").read_text().strip()
    body = json.loads((folder / BUFFERS).read_text())
    del body["item_counts"]
    (folder / BUFFERS).write_text(json.dumps(body))
    old, _, _ = load_state(tmp_path, online)
    assert old.counts.counts == {} and old.pending == learner.pending


def test_the_truth_diagnostic_scores_a_graph_with_item_identity(tmp_path: Path) -> None:
    """The demo can serve an ``+id`` ranker: its offline diagnostic feeds the counts too."""
    from semirec.sim.truth_diagnostic import diagnose, onnx_scorer
    from semirec.trainer.registry.export import export_batched_onnx
    from semirec.worlds import load_world

    world = load_world("world", seed=0, users=40)
    dim = 128  # the serving catalog's width
    vectors = np.random.default_rng(0).normal(size=(len(world.items), dim)).astype(np.float32)
    cfg = replace(paper("semi_ccl+sim+rec+id"), block=BlockConfig(dim=dim, heads=4, ffn=D),
                  id_buckets=1024)
    torch.manual_seed(0)
    model = build(cfg).eval()
    with torch.no_grad():  # counts matter: a strong rate weight
        model.identity.rate_weight.fill_(5.0)
    onnx = export_batched_onnx(model, tmp_path / "model.onnx", dim)
    scorer = onnx_scorer(onnx, world, vectors, id_buckets=1024)
    out = diagnose(world, vectors, scorer, cases=10)
    assert out["cases"] == 10 and 0.0 < out["model"] < 1.0


def test_the_torch_scorer_scores_as_the_served_graph(tmp_path: Path) -> None:
    """``semirec.sim.ranker_check`` scores the demo's ranker (``+ses+usr+id``: incomplete
    watches and item counts among its inputs) in torch as the exported graph does on Triton."""
    from semirec.core.sequences import UserState, apply
    from semirec.sim.truth_diagnostic import onnx_scorer, torch_scorer
    from semirec.trainer.registry.export import export_batched_onnx
    from semirec.worlds import load_world

    world = load_world("world", seed=0, users=40)
    dim = 128
    vectors = np.random.default_rng(0).normal(size=(len(world.items), dim)).astype(np.float32)
    cfg = replace(paper("semi_ccl+sim+ses+usr+id"), block=BlockConfig(dim=dim, heads=4, ffn=D),
                  id_buckets=1024)
    torch.manual_seed(0)
    model = build(cfg).eval()
    with torch.no_grad():  # the counts and the user's rate move the scores
        model.identity.rate_weight.fill_(5.0)
        model.similarity_weight.weight.normal_()
    onnx = export_batched_onnx(model, tmp_path / "model.onnx", dim)
    in_torch = torch_scorer(model, world, vectors)
    served = onnx_scorer(onnx, world, vectors, id_buckets=1024)
    videos = [it["item_id"] for it in world.items if it["domain"] == "video"]
    rows = {it["item_id"]: i for i, it in enumerate(world.items)}
    candidates = vectors[[rows[v] for v in videos]]
    states: dict[str, UserState] = {}
    skipped = 0
    for n, e in enumerate(world.events):
        apply(states.setdefault(e.user_id, UserState()), [(e, n)])
        if n % 500 == 499:  # a user mid-history
            state = states[e.user_id]
            skipped += len(state.skipped)
            expected = served(e.user_id, state, videos, candidates, e.ts + 1)
            got = in_torch(e.user_id, state, videos, candidates, e.ts + 1)
            assert got.shape == expected.shape == (len(videos),)
            np.testing.assert_allclose(got, expected, atol=1e-4)
    assert skipped > 0  # the incomplete watches were among the inputs
