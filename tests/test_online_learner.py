"""The incremental learner and its gate, without services: interest shift, a worse candidate,
checkpoints."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from semirec.trainer.nets.configs import BlockConfig, paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.metrics import auc
from semirec.trainer.online.gate import GateConfig, gauc, judge, window_metrics
from semirec.trainer.online.learner import (
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
GATE = GateConfig(min_samples=50, min_positives=5)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def semi():
    return replace(paper("semi"), block=BlockConfig(dim=D, heads=4, ffn=D))


def setup(seed: int, shift_at: float = 0.5):
    """A learner trained on the samples before the shift, and the samples after it."""
    world = drifting_world(seed=seed, dim=D, shift_at=shift_at)
    table = ItemTable(D)
    table.add([it["item_id"] for it in world.items], world.vectors)
    samples = samples_from_events(world.events)
    cut = world.shift_ts if shift_at < 1 else samples[int(len(samples) * 0.7)].ts
    pre = [s for s in samples if s.ts < cut]
    post = [s for s in samples if s.ts >= cut]
    torch.manual_seed(seed)
    online = OnlineConfig(round_samples=300, seed=seed, replay_ratio=0.5, gate=GATE)
    learner = Learner(build(semi()), semi(), replace(online, passes=4, holdout_fraction=0.0))
    learner.add(pre)
    learner.accept(learner.round(table))  # the offline model: trained before the shift
    learner.online = online
    return learner, table, post


# -- gate ----------------------------------------------------------------------------------------


def test_judge_promotes_unless_worse_by_a_margin() -> None:
    serving = {"n": 400.0, "positives": 150.0, "auc": 0.70, "gauc": 0.65, "logloss": 0.60}
    assert judge(serving, serving).promote  # equal: fresher data wins
    slightly = {**serving, "auc": 0.697, "gauc": 0.648, "logloss": 0.605}
    assert judge(serving, slightly).promote
    worse = judge(serving, {**serving, "auc": 0.68, "logloss": 0.70})
    assert not worse.promote
    assert [r.split()[0] for r in worse.reasons] == ["worse_auc", "worse_logloss"]
    small = judge(serving, {**serving, "n": 20.0})
    assert not small.promote and small.reasons[0].startswith("too_few_samples")
    one_sided = judge(serving, {**serving, "positives": 399.0})
    assert not one_sided.promote and one_sided.reasons[0].startswith("one_sided_labels")
    no_gauc = {**serving, "gauc": float("nan")}
    assert judge(no_gauc, {**serving, "gauc": 0.1}).promote  # nothing to compare against


def test_window_metrics_and_gauc() -> None:
    labels = np.array([1, 0, 1, 0, 1, 1, 0])
    scores = np.array([0.9, 0.2, 0.4, 0.6, 0.8, 0.7, 0.1])
    users = np.array(["a", "a", "b", "b", "c", "c", "d"])  # c and d: one label only
    expected = (auc([1, 0], [0.9, 0.2]) * 2 + auc([1, 0], [0.4, 0.6]) * 2) / 4
    assert gauc(labels, scores, users) == pytest.approx(expected)
    m = window_metrics(labels, scores, users)
    assert m["n"] == 7 and m["positives"] == 4 and m["auc"] == pytest.approx(auc(labels, scores))
    assert m["logloss"] == pytest.approx(-np.mean(labels * np.log(scores)
                                                  + (1 - labels) * np.log(1 - scores)))


# -- learner -------------------------------------------------------------------------------------


def test_incremental_training_beats_the_frozen_model_after_an_interest_shift() -> None:
    """On a world whose completion rule rotates mid-stream, rounds over the first 60% of the
    post-shift stream beat the pre-shift model on the last 40% by a clear AUC margin."""
    margins = []
    for seed in (0, 1):
        learner, table, post = setup(seed)
        frozen = learner.model
        cut = int(len(post) * 0.6)
        promoted = 0
        for start in range(0, cut, 300):
            learner.add(post[start:min(start + 300, cut)])
            result = learner.round(table)
            if result.verdict.promote:
                learner.accept(result)
                promoted += 1
            else:
                learner.reject(result)
        test = to_sample_set(post[cut:], table.rows)
        before = auc(test.label, learner.probs(frozen, test, table.tensor))
        after = auc(test.label, learner.probs(learner.model, test, table.tensor))
        margins.append(after - before)
        assert promoted >= 2
    print(f"\npost-shift AUC margin over seeds: {[round(m, 3) for m in margins]}")
    assert min(margins) > 0.1, margins


def test_a_worse_candidate_is_not_promoted() -> None:
    learner, table, post = setup(0, shift_at=1.0)  # no shift: the serving model is good
    serving = copy.deepcopy(learner.model.state_dict())

    def sabotage(fit_set, tensor):  # a candidate that ranks backwards
        model = copy.deepcopy(learner.model)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.0)
        return model, learner._optimizer(model, None)

    learner.add(post[:400])
    result = learner.round(table, train_model=sabotage)
    assert not result.verdict.promote
    assert any(r.startswith("worse_auc") for r in result.verdict.reasons)
    learner.reject(result)
    for key, value in learner.model.state_dict().items():
        assert torch.equal(value, serving[key]), key
    assert learner.pending == result.holdout and list(learner.replay)[-len(result.trained):] \
        == result.trained


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    learner, table, post = setup(1)
    learner.add(post[:350])
    learner.accept(learner.round(table))
    learner.add(post[350:420])
    folder = save_state(tmp_path, learner, {0: 420, 3: 7}, {"serving_version": 4})
    save_state(tmp_path, learner, {0: 421})
    save_state(tmp_path, learner, {0: 422}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000003"]
    assert not folder.exists() and not list(tmp_path.glob(".tmp*"))
    restored, offsets, body = load_state(tmp_path, learner.online)
    assert offsets == {0: 422} and body["rounds"] == learner.rounds
    for key, value in learner.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key
    a, b = learner.optimizer.state_dict(), restored.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, per in a["state"].items():
        for key, value in per.items():
            assert torch.equal(b["state"][idx][key], value), (idx, key)
    assert restored.pending == learner.pending and list(restored.replay) == list(learner.replay)
    assert list(restored.seen) == list(learner.seen)
    assert load_state(tmp_path / "none", learner.online) is None


# -- a gate for one minute of traffic -------------------------------------------------------------


def test_a_small_slice_is_judged_by_a_confidence_bound_on_the_paired_log_loss() -> None:
    serving = {"n": 40.0, "positives": 15.0, "auc": 0.70, "gauc": 0.65, "logloss": 0.60}
    noisy = {**serving, "auc": 0.60, "logloss_diff": 0.03, "logloss_diff_se": 0.02}
    assert judge(serving, noisy).promote  # worse on average, but within the slice's noise
    worse = judge(serving, {**noisy, "logloss_diff": 0.12, "logloss_diff_se": 0.03})
    assert not worse.promote and worse.reasons[0].startswith("worse_logloss_bound")
    unpaired = judge(serving, serving)
    assert not unpaired.promote and unpaired.reasons[0].startswith("too_few_samples")
    strict = judge(serving, noisy, GateConfig(small_min_samples=0))
    assert not strict.promote and strict.reasons[0].startswith("too_few_samples 40 < 100")
    tiny = judge(serving, {**noisy, "n": 20.0})
    assert not tiny.promote and tiny.reasons[0].startswith("too_few_samples")
    one_sided = judge(serving, {**noisy, "positives": 39.0})
    assert not one_sided.promote and one_sided.reasons[0].startswith("one_sided_labels")


def test_rounds_of_a_minute_of_traffic_follow_a_shift_and_refuse_a_broken_candidate() -> None:
    """Rounds of 150 new samples hold out 30-40: the strict gate (100 watches) never promotes; the
    confidence bound promotes candidates that follow the shift (AUC on the later logged watches
    well above the frozen model's) and still refuses one that ranks backwards."""
    results = {}
    for small in (0, 30):
        learner, table, post = setup(0)
        learner.online = replace(learner.online, round_samples=150,
                                 gate=GateConfig(small_min_samples=small))
        frozen = learner.model
        cut = int(len(post) * 0.6)
        promoted = 0
        for start in range(0, cut, 150):
            learner.add(post[start:min(start + 150, cut)])
            result = learner.round(table)
            assert result.verdict.candidate["n"] < 40
            if result.verdict.promote:
                learner.accept(result)
                promoted += 1
            else:
                learner.reject(result)
        test = to_sample_set(post[cut:], table.rows)
        gain = auc(test.label, learner.probs(learner.model, test, table.tensor)) - auc(
            test.label, learner.probs(frozen, test, table.tensor))
        results[small] = (promoted, gain)
    print(f"\n(promotions, post-shift AUC gain) strict / bound: {results}")
    assert results[0] == (0, 0.0)
    assert results[30][0] >= 2 and results[30][1] > 0.1, results

    learner, table, post = setup(0, shift_at=1.0)

    def sabotage(fit_set, tensor):
        model = copy.deepcopy(learner.model)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.0)
        return model, learner._optimizer(model, None)

    learner.add(post[:150])
    result = learner.round(table, train_model=sabotage)
    assert result.verdict.candidate["n"] == 30 and not result.verdict.promote
    assert result.verdict.reasons[0].startswith("worse_logloss_bound"), result.verdict.reasons
