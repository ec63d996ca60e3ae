"""The evaluation protocol (negatives unwatched up to the event, popularity-matched and
within-shown ranking, GAUC, segments, observable oracle), item identity, the 7-day window in
the request graph, and parallel runs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from semirec.trainer.nets.configs import BlockConfig, TrainConfig, paper
from semirec.trainer.nets.identity import ItemCounts, ItemIdentity, item_bucket
from semirec.trainer.offline.evaluate import (
    EvalProtocol,
    Popularity,
    _sample_unwatched,
    _shown_together,
    evaluate,
    measure,
    override,
    prepare,
    train_model,
)
from semirec.trainer.offline.metrics import auc, gauc
from semirec.trainer.offline.toy import toy_world

D = 32
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def world():
    return toy_world(users=150, events_per_user=40, dim=D, seed=1, quality_scale=1.5)


@pytest.fixture(scope="module")
def data(world):
    return prepare("toy", world.items, world.events, world.vectors, world.true_prob,
                   EvalProtocol(hr3_negatives=30, hr10_negatives=20, max_rank_cases=300))


def tiny(name: str):
    cfg = paper(name)
    return replace(cfg, block=BlockConfig(dim=D, heads=4, ffn=D),
                   train=TrainConfig(batch_size=64, epochs=6, patience=2, seq_len=50))


def test_negatives_were_not_watched_before_the_event_but_may_be_later(world, data) -> None:
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    watches = [(e.user_id, rows[e.item_id], e.ts) for e in world.events if e.complete is not None]
    cases = data.test.subset(data.cases)
    later = 0
    for negatives in (data.negatives_300, data.negatives_100, data.negatives_pop):
        for i, (u, t, target) in enumerate(zip(cases.user, cases.ts, cases.target, strict=True)):
            before = {r for w, r, ts in watches if w == u and ts < t}
            after = {r for w, r, ts in watches if w == u and ts >= t}
            row = set(negatives[i].tolist())
            assert not row & before and target not in row
            later += len(row & after)
    assert later > 0  # videos the user watches later are fair negatives (no look-ahead)


def test_popularity_matched_negatives_follow_exposure() -> None:
    videos = np.arange(1, 11)
    weights = np.ones(10)
    weights[3] = 50.0  # video 4 was shown 50 times as often
    history = {"u": (np.array([1]), np.array([0.0]))}
    rng = np.random.default_rng(0)
    args = (np.array(["u"] * 400), np.full(400, 10.0), np.full(400, 2), history, videos, 1, rng)
    matched = _sample_unwatched(*args, weights=weights)
    uniform = _sample_unwatched(*args)
    assert not np.isin(matched, [1, 2]).any()  # watched before / the target
    assert (matched == 4).mean() > 0.7 and (uniform == 4).mean() < 0.25


def test_within_shown_pairs_finished_with_unfinished_of_the_same_hour() -> None:
    from semirec.trainer.offline.samples import SampleSet

    h = 3600.0
    user = np.array(["a", "a", "a", "a", "b", "b"], dtype=object)
    ts = np.array([1, 2, 3, h + 1, 5, 6], np.float64)
    label = np.array([1, 0, 0, 1, 1, 1], np.float32)  # a: hour 0 has 1 vs 2; b: none unfinished
    target = np.array([11, 12, 13, 14, 15, 16], np.int32)
    z = np.zeros((6, 3), np.int32)
    test = SampleSet(user, target, label, ts, np.arange(6).astype(object), z, z, z, z)
    cases, negatives = _shown_together(test)
    assert cases.tolist() == [0] and sorted(negatives[0].tolist()) == [12, 13]


def test_measure_has_every_protocol_metric_and_segments(data) -> None:
    pop = Popularity(data.train, data.table.shape[0])
    m = measure(pop, data)
    for key in ("auc", "gauc", "hr@3", "hr@10", "ndcg@10", "hr@10_popneg", "ndcg@10_popneg",
                "auc_shown", "auc_short_video", "gauc_short_video", "auc_long_video"):
        assert 0.0 <= m[key] <= 1.0, key
    test = data.test
    scores = pop(test, test.target[:, None])[:, 0]
    short = test.lengths("video") <= 2
    assert m["auc_short_video"] == pytest.approx(auc(test.label[short], scores[short]))
    assert m["gauc"] == pytest.approx(gauc(test.user, test.label, scores))
    # the record filter (§4.1): every record has a video or five products in its window
    for s in (data.train, data.val, data.test):
        assert ((s.lengths("video") >= 1) | (s.lengths("product") >= 5)).all()


def test_item_counts_are_point_in_time() -> None:
    counts = ItemCounts(np.array([3, 3, 3, 5]), np.array([10.0, 20.0, 30.0, 5.0]),
                        np.array([True, False, True, True]))
    watches, completes = counts.before(np.array([[3, 5, 4, 9], [3, 3, 5, 0]]),
                                       np.array([20.0, 31.0]))
    assert watches.tolist() == [[1, 1, 0, 0], [3, 3, 1, 0]]
    assert completes.tolist() == [[1, 1, 0, 0], [2, 2, 1, 0]]


def test_item_bucket_is_a_stable_documented_hash() -> None:
    import hashlib

    digest = hashlib.blake2b(b"v00017", digest_size=8).digest()
    assert item_bucket("v00017", 1 << 18) == int.from_bytes(digest, "little") % (1 << 18)
    assert item_bucket("v00017", 1 << 18) == item_bucket("v00017", 1 << 18)
    assert len({item_bucket(f"v{i}", 1 << 18) for i in range(1000)}) > 990


def test_identity_learns_item_quality_and_unseen_items_fall_back_to_content(data) -> None:
    base, _ = train_model("youtubenet", data, tiny("youtubenet"), seed=0)
    ident, _ = train_model("youtubenet+id", data, tiny("youtubenet+id"), seed=0)
    assert isinstance(ident.identity, ItemIdentity)
    features = data.features(ident.identity.bias.num_embeddings)

    def scorer(model, items):
        from semirec.trainer.offline.fit import predict
        return lambda s, c: predict(model, s, c, data.table, items=items)

    plain = measure(scorer(base, None), data)
    with_id = measure(scorer(ident, features), data)
    # the toy items' own quality (std 1.5) is not in their vectors (though an MLP can partly
    # memorise it from each item's unique vector noise): identity recovers more of it
    assert with_id["auc"] > plain["auc"] + 0.015, (with_id["auc"], plain["auc"])  # 0.768 vs 0.739
    # buckets of items never watched in training were never touched: exactly zero
    seen = set(features.buckets[np.unique(data.train.target)].tolist())
    untouched = np.setdiff1d(np.arange(ident.identity.bias.num_embeddings), list(seen))
    assert (ident.identity.bias.weight[untouched] == 0).all()
    # an unseen item with no watches adds nothing to its content score
    from semirec.trainer.nets.ranker import UserBatch
    torch.manual_seed(0)
    user = UserBatch(torch.randn(2, 3, D), torch.zeros(2, 3, dtype=torch.long),
                     torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 1, D),
                     torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.bool))
    cands = torch.randn(2, 4, D)
    zeros = torch.zeros(2, 4)
    bucket = torch.from_numpy(untouched[:8].reshape(2, 4))
    with torch.no_grad():
        ctx = ident.encode_user(user)
        torch.testing.assert_close(ident.logits(ctx, cands, (bucket, zeros, zeros)),
                                   ident.score(ctx, cands))


def test_request_graph_applies_the_window_and_identity_inputs(tmp_path, data) -> None:
    from semirec.trainer.registry.export import (
        IDENTITY_INPUTS,
        INPUTS,
        example_request,
        export_onnx,
        onnx_session,
        run_onnx,
        torch_scores,
    )

    model, _ = train_model("semi+id", data, replace(tiny("semi+id"), train=replace(
        tiny("semi+id").train, epochs=1)), seed=0)
    request = example_request(dim=D, video=9, product=12, candidates=30, identity=True)
    request["video_age"] = np.array([400, 300, 200, 169, 168, 100, 50, 3, 0], np.int64)
    session = onnx_session(export_onnx(model, tmp_path / "id.onnx", D))
    assert [i.name for i in session.get_inputs()] == list(INPUTS + IDENTITY_INPUTS)
    got = run_onnx(session, request)
    assert np.abs(got - torch_scores(model, request)).max() < 1e-5
    # entries older than 168 hours are ignored: masking them by hand changes nothing ...
    masked = {**request, "video_mask": request["video_mask"] & (request["video_age"] <= 168)}
    assert np.abs(run_onnx(session, masked) - got).max() < 1e-6
    # ... while an in-window entry does matter, and so do the identity inputs
    moved = {**request, "video_mask": masked["video_mask"] & (np.arange(9) != 8)}
    assert np.abs(run_onnx(session, moved) - got).max() > 1e-4
    busy = {**request, "candidate_watches": request["candidate_watches"] + 100,
            "candidate_completes": request["candidate_completes"] + 100}
    assert (run_onnx(session, busy) > got).all()  # a higher completion rate raises every score
    # the batched graph (Triton) takes the same inputs with a batch axis
    from semirec.trainer.registry.export import example_batch, export_batched_onnx, torch_batch_scores
    batched = onnx_session(export_batched_onnx(model, tmp_path / "idb.onnx", D))
    assert [i.name for i in batched.get_inputs()] == list(INPUTS + IDENTITY_INPUTS)
    batch = example_batch(3, D, 8, 5, 7, identity=True)
    ref = torch_batch_scores(model, batch)
    assert np.abs(batched.run(["score"], batch)[0] - ref).max() < 1e-5
    one = torch_scores(model, {k: v[1] for k, v in batch.items()})
    np.testing.assert_allclose(ref[1], one, atol=1e-6)


def test_parallel_runs_equal_serial_runs(data) -> None:
    serial = evaluate(data, ["pop", "youtubenet"], seeds=2, quick_mode=True)
    parallel = evaluate(data, ["pop", "youtubenet"], seeds=2, quick_mode=True, jobs=2)
    for a, b in zip(serial["results"], parallel["results"], strict=True):
        for key in ("auc", "gauc", "hr@10_popneg", "auc_shown", "auc_short_video"):
            assert a[key] == b[key], key


def test_settings_replace_config_fields_and_name_the_unknown_ones() -> None:
    cfg = override(paper("semi_ccl+sim"), {"train.lr": 5e-4, "block.ffn": 64, "mlp_hidden": 32,
                                           "ccl.tau": 0.3})
    assert (cfg.train.lr, cfg.block.ffn, cfg.mlp_hidden, cfg.ccl.tau) == (5e-4, 64, 32, 0.3)
    assert isinstance(cfg.mlp_hidden, int) and isinstance(cfg.block.ffn, int)
    assert override(paper("semi"), {"ccl.tau": 0.3}).ccl is None  # no CCL: ignored
    for bad in ("hidden", "train.nope", "head.width"):
        with pytest.raises(ValueError, match="unknown setting"):
            override(paper("semi"), {bad: 1.0})
