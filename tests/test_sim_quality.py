"""semirec.sim.quality: exact online quality of one slate and its aggregates (pure, no services)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semirec.sim.quality import (
    Histories,
    QualityLog,
    Scored,
    content_similarity,
    popularity_expectation,
    slate_quality,
)


def _brute_force_popularity(probs: list[float], pop: list[int], k: int) -> float:
    """Average over every tie-breaking order: sort by popularity, ties in each permutation order."""
    n = len(probs)
    means = []
    for perm in itertools.permutations(range(n)):
        rank = {i: r for r, i in enumerate(perm)}
        order = sorted(range(n), key=lambda i: (-pop[i], rank[i]))
        means.append(np.mean([probs[i] for i in order[:k]]))
    return float(np.mean(means))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 0.99), st.integers(0, 3)), min_size=1, max_size=6),
       st.integers(1, 6))
def test_popularity_expectation_equals_the_average_over_tie_breaks(rows, k) -> None:
    probs, pop = [r[0] for r in rows], [r[1] for r in rows]
    got = popularity_expectation(np.array(probs), np.array(pop, float), k)
    assert got == pytest.approx(_brute_force_popularity(probs, pop, min(k, len(rows))), abs=1e-12)


def test_slate_quality_policies() -> None:
    prob = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3, "n": 0.8}
    pop = {"a": 0, "b": 10, "c": 10, "d": 1}
    q = slate_quality(["c", "n"], ["a", "b", "c", "d", "n"], prob, pop, k=2, new_items={"n"})
    assert q.semirec == pytest.approx(0.65)
    assert q.popularity == pytest.approx(0.3)  # b and c, the two most popular
    assert q.random == pytest.approx(np.mean(list(prob.values())))
    assert q.oracle == pytest.approx(0.85)  # a and n
    assert (q.k, q.candidates, q.new_recommended, q.new_in_oracle) == (2, 5, 1, 1)
    assert q.new_p_sum == pytest.approx(0.8)
    # all candidates recommended: every policy is the mean
    full = slate_quality(list(prob), list(prob), prob, pop, k=10)
    assert full.k == 5
    assert full.semirec == pytest.approx(full.random) == pytest.approx(full.oracle)
    assert full.popularity == pytest.approx(full.random)
    with pytest.raises(ValueError):
        slate_quality([], ["a"], prob, pop, k=2)
    with pytest.raises(ValueError):
        slate_quality(["a"], [], prob, pop, k=2)


def _row(t: float, version: str, after: bool, semirec: float) -> Scored:
    prob = {"a": semirec, "b": 0.2, "c": 0.6}
    q = slate_quality(["a"], list(prob), prob, {"b": 3}, k=1, new_items={"c"} if after else set())
    return Scored(t, t, version, False, after, q)


def test_quality_log_aggregates() -> None:
    log = QualityLog()
    assert log.overall() is None and log.series(0, 10)["t"] == []
    for i in range(10):
        log.add(_row(100 + i, "v1", False, 0.4))
    for i in range(10):
        log.add(_row(110 + i, "v2", True, 0.8))
    assert log.overall()["semirec"] == pytest.approx(0.6)
    assert log.before_shift()["semirec"] == pytest.approx(0.4)
    assert log.after_shift()["semirec"] == pytest.approx(0.8)
    assert log.after_shift()["popularity"] == pytest.approx(0.2)
    assert log.after_shift()["oracle"] == pytest.approx(0.8)
    per = log.per_model_version()
    assert per["v1"]["recommendations"] == 10 and per["v2"]["semirec"] == pytest.approx(0.8)
    series = log.series(100, 10)
    assert series["t"] == [5.0, 15.0] and series["semirec"] == pytest.approx([0.4, 0.8])
    new = log.new_videos(110)
    assert new["recommendations"] == 10 and new["share_of_slots"] == 0.0
    assert new["oracle_share_of_slots"] == 0.0  # a (0.8) beats the new c (0.6)
    summary = log.summary(new_since_wall=None)
    assert summary["new_videos"] is None and summary["recommendations_scored"] == 20


def test_truth_diagnostic_orders_the_policies() -> None:
    """TRUTH DIAGNOSTIC on a tiny world: a scorer that is the truth equals the oracle."""
    from semirec.sim.truth_diagnostic import diagnose
    from semirec.worlds import load_world

    world = load_world("world", seed=0, users=40)
    vectors = np.random.default_rng(0).normal(size=(len(world.items), 8)).astype(np.float32)

    def truth(user, state, ids, candidates, at):
        return world.item_probs(user, ids, at)

    out = diagnose(world, vectors, truth, cases=20)
    assert out["diagnostic"].startswith("TRUTH DIAGNOSTIC") and out["cases"] == 20
    assert out["model"] == pytest.approx(out["oracle"])
    assert out["random"] < out["popularity"] < out["oracle"]
    assert out["similarity"] < out["oracle"]
    among = out["among_candidates"]  # within serving's recall candidates
    videos = sum(it["domain"] == "video" for it in world.items)
    assert 10 <= among["candidates"] <= videos
    assert among["model"] == pytest.approx(among["oracle"])
    assert among["random"] < among["oracle"]
    # the truth's terms: a scorer that is the truth follows each term as the truth does
    terms = among["terms"]
    assert among["term_cases"] > 0 and set(terms) == {"category", "style", "format", "intent",
                                                      "quality"}
    for name, row in terms.items():
        assert row["model_corr"] == pytest.approx(row["truth_corr"], abs=1e-3), name
        assert 0 < row["truth_corr"] < 1 and row["oracle_without"] <= among["oracle"] + 1e-9, name
    assert terms["quality"]["oracle_without"] < among["oracle"]
    blind = diagnose(world, vectors, lambda u, s, ids, c, at: -world.item_probs(u, ids, at), cases=20)
    assert blind["model"] < blind["random"]
    assert blind["among_candidates"]["model"] < blind["among_candidates"]["random"]

    def quality_only(user, state, ids, candidates, at):
        return 1 / (1 + np.exp(-world.truth.item_terms(user, ids, at)["quality"]))

    terms = diagnose(world, vectors, quality_only, cases=20)["among_candidates"]["terms"]
    assert terms["quality"]["model_corr"] == 1.0
    assert all(abs(row["model_corr"]) < 0.2 for n, row in terms.items() if n != "quality")


def test_follows_is_the_rank_correlation_within_each_case() -> None:
    """Order within a case only (a per-case offset and a monotone map change nothing); ties of
    a binary term take their mean rank; a case where the term does not vary is left out."""
    from semirec.sim.truth_diagnostic import follows

    rng = np.random.default_rng(0)
    terms = [{"a": rng.normal(size=30), "b": (rng.random(30) < 0.3).astype(float),
              "c": rng.normal(size=30)} for _ in range(20)]
    terms.append({"a": rng.normal(size=30), "b": np.zeros(30), "c": rng.normal(size=30)})
    got = follows(terms, [np.exp(t["a"]) + 5 * k for k, t in enumerate(terms)])
    assert got["a"] == 1.0 and abs(got["c"]) < 0.1
    assert follows(terms, [-t["a"] for t in terms])["a"] == -1.0
    assert follows(terms, [t["b"] for t in terms])["b"] == 1.0  # the all-zero case left out


def test_ranker_check_similarity_is_the_cosine_to_the_newest_items() -> None:
    """semirec.sim.ranker_check's plain similarity: cosine to the mean direction of the newest 10
    videos and 10 products (padding ignored; 0 without any)."""
    import torch

    from semirec.sim.ranker_check import similarity_scores
    from semirec.trainer.offline.samples import SampleSet

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    seq = np.zeros((2, 12), np.int32)
    video, product = seq.copy(), seq.copy()
    video[0, -1] = 1  # user 0: one video in direction (1, 0), ten products in (0, 1) ...
    product[0, -10:] = 2
    product[0, -11] = 3  # ... and an 11th newest product: beyond the newest 10, ignored
    samples = SampleSet(user=np.array(["a", "b"], object), target=np.array([3, 3], np.int32),
                        label=np.ones(2, np.float32), ts=np.zeros(2), event=np.array(["x", "y"], object),
                        video=video, video_age=seq, product=product, product_age=seq)
    got = similarity_scores(samples, table)
    # mean of the unit vectors: (1, 10) / 11; the target's unit is (1, 1) / sqrt 2
    np.testing.assert_allclose(got, [np.sqrt(0.5), 0.0], atol=1e-6)


def test_fresh_skips_are_left_out_and_the_rest_stays_right_aligned() -> None:
    """``ranker_check``'s same-hour skips: the age-0 incomplete watches go, older ones keep
    their order and ages, right-aligned; the other inputs are untouched."""
    from semirec.sim.ranker_check import without_fresh_skips
    from semirec.trainer.offline.samples import SampleSet

    seq = np.zeros((3, 5), np.int32)
    skipped = np.array([[0, 7, 8, 9, 4], [0, 0, 0, 5, 6], [0, 0, 0, 0, 0]], np.int32)
    ages = np.array([[0, 30, 2, 0, 0], [0, 0, 0, 1, 3], [0, 0, 0, 0, 0]], np.int32)
    samples = SampleSet(user=np.array(["a", "b", "c"], object), target=np.array([1, 2, 3], np.int32),
                        label=np.ones(3, np.float32), ts=np.zeros(3),
                        event=np.array(["x", "y", "z"], object), video=seq + 1, video_age=seq,
                        product=seq, product_age=seq, skipped=skipped, skipped_age=ages)
    got = without_fresh_skips(samples)
    np.testing.assert_array_equal(got.skipped, [[0, 0, 0, 7, 8], [0, 0, 0, 5, 6], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(got.skipped_age, [[0, 0, 0, 30, 2], [0, 0, 0, 1, 3], [0] * 5])
    np.testing.assert_array_equal(got.video, samples.video)
    np.testing.assert_array_equal(samples.skipped[0], [0, 7, 8, 9, 4])  # the input is unchanged


def test_similarity_policy_is_the_exact_top_k_by_similarity() -> None:
    prob = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3}
    sim = {"a": 0.2, "b": 0.8, "c": 0.7, "d": 0.2}
    q = slate_quality(["a", "b"], list(prob), prob, {}, k=2, similarity=sim)
    assert q.similarity == pytest.approx((0.1 + 0.5) / 2)  # b and c, the two most similar
    # a tie at the boundary: c, then a or d at random -> (0.5 + (0.9 + 0.3) / 2) / 2
    q = slate_quality(["a", "b"], list(prob), prob, {}, k=2, similarity={**sim, "b": 0.0})
    assert q.similarity == pytest.approx((0.5 + 0.6) / 2)
    # no history (no scores): every candidate ties, so similarity is the random policy
    q = slate_quality(["a", "b"], list(prob), prob, {}, k=2)
    assert q.similarity == pytest.approx(q.random)
    assert set(q.policies()) == {"semirec", "similarity", "popularity", "random", "oracle"}


def test_content_similarity_is_the_mean_cosine_to_the_history() -> None:
    rng = np.random.default_rng(0)
    cands, hist = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    cos = [[c @ h / np.linalg.norm(c) / np.linalg.norm(h) for h in hist] for c in cands]
    got = content_similarity(cands, hist)
    assert got == pytest.approx(np.mean(cos, axis=1))
    assert content_similarity(3 * cands, 0.5 * hist) == pytest.approx(got)  # cosine: scale-free
    assert content_similarity(cands, hist[:0]).tolist() == [0.0] * 5


def test_histories_give_the_newest_clicks_and_watches_at_a_moment() -> None:
    h = Histories()
    for t in range(15):
        h.add("u", "product", 100.0 + t, f"p{t}")
    h.add("u", "video", 105.0, "v1")
    h.add("u", "video", 103.0, "v0")  # out of order: kept in time order
    h.add("u", "video", 105.0, "v1")  # the same entry again: kept once
    h.add("w", "video", 100.0, "x")
    assert h.newest("u", 200.0) == [f"p{t}" for t in range(5, 15)] + ["v0", "v1"]
    assert h.newest("u", 104.0) == [f"p{t}" for t in range(5)] + ["v0"]  # inclusive of the moment
    assert h.newest("u", 99.0) == [] and h.newest("nobody", 200.0) == []
    assert h.newest("u", 200.0, n=2) == ["p13", "p14", "v0", "v1"]


def _scored(world_ts: float, semirec: float, *, after: bool, live: bool) -> Scored:
    prob = {"a": semirec, "b": 0.2}
    return Scored(world_ts, world_ts, "v1", False, after, slate_quality(["a"], list(prob), prob, {}, k=1),
                  live=live)


def test_quality_log_splits_live_traffic_from_the_history_replay() -> None:
    log = QualityLog()
    shift = 1000.0
    for i in range(10):
        log.add(_scored(900.0 + i, 0.9, after=False, live=False))  # history replay
    log.add(_scored(950.0, 0.6, after=False, live=True))
    log.add(_scored(shift, 0.3, after=True, live=True))  # the first minute starts at the shift
    log.add(_scored(shift + 59.0, 0.5, after=True, live=True))
    log.add(_scored(shift + 60.0, 0.7, after=True, live=True))  # the second minute
    log.add(_scored(shift + 10.0, 0.1, after=True, live=False))  # not the audience's
    s = log.summary(shift_world=shift)
    whole = (9.0 + 0.6 + 0.3 + 0.5 + 0.7 + 0.1) / 15
    assert s["online_completion"]["semirec"] == pytest.approx(whole, abs=1e-4)
    assert s["online_completion_live"]["semirec"] == pytest.approx((0.6 + 0.3 + 0.5 + 0.7) / 4, abs=1e-4)
    assert s["online_completion_live_before_shift"]["semirec"] == pytest.approx(0.6, abs=1e-4)
    assert s["online_completion_live_after_shift"]["semirec"] == pytest.approx(0.5, abs=1e-4)
    assert s["online_completion_first_minute_after_shift"]["semirec"] == pytest.approx(0.4, abs=1e-4)
    assert s["online_completion_live"]["random"] == pytest.approx(0.5 * 0.525 + 0.1, abs=1e-4)
    assert s["recommendations_scored"] == 15
    assert s["recommendations_scored_live"] == {"all": 4, "before_shift": 1, "after_shift": 3,
                                                "first_minute_after_shift": 2}
    assert log.series(940.0, 60.0, live_only=True)["semirec"] == pytest.approx([0.6, 0.4, 0.7])
    none = QualityLog().summary()
    assert none["online_completion_live"] is None
    assert none["online_completion_first_minute_after_shift"] is None
    assert log.summary()["online_completion_first_minute_after_shift"] is None  # no shift yet


def test_truth_diagnostic_refuses_to_guess_the_rankers_encoder(tmp_path, monkeypatch) -> None:
    """Vectors of another encoder would score the ranker on the wrong items: with no --encoder
    and nothing in the demo's cache it says so instead of scoring."""
    from click.testing import CliRunner

    from semirec.sim.truth_diagnostic import main

    monkeypatch.setenv("SEMIREC_DEMO_CACHE", str(tmp_path))
    result = CliRunner().invoke(main, ["--size", "tiny", "--users", "20", "--json"])
    assert result.exit_code == 2, result.output
    assert "not cached" in result.output and "--encoder" in result.output
