"""AUC, HR@K and NDCG@K on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semirec.trainer.offline.metrics import auc, hit_rate, ndcg


def test_auc_hand_cases() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, 0.1) win, (0.8, 0.4) win -> 3/4
    assert auc([0, 1, 0, 1], [0.1, 0.35, 0.4, 0.8]) == 0.75
    # a tie counts one half: pos 0.5 vs neg 0.5 -> 0.5, vs neg 0.2 -> 1 -> 0.75
    assert auc([1, 0, 0], [0.5, 0.5, 0.2]) == 0.75
    assert auc([1, 0, 1, 0], [1, 1, 1, 1]) == 0.5


def test_auc_matches_pairwise_count_on_random_data() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300), 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert auc(labels, scores) == pytest.approx(pairs)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        auc([1, 1], [0.2, 0.3])


def test_hit_rate_hand_cases() -> None:
    pos = np.array([0.9, 0.5, 0.1])
    negs = np.array([
        [0.1, 0.2, 0.3, 0.4],  # rank 0 -> hit@3
        [0.6, 0.7, 0.1, 0.2],  # rank 2 -> hit@3
        [0.6, 0.7, 0.8, 0.2],  # rank 4 -> miss
    ])
    assert hit_rate(pos, negs, 3) == pytest.approx(2 / 3)
    assert hit_rate(pos, negs, 1) == pytest.approx(1 / 3)
    assert hit_rate(pos, negs, 5) == 1.0


def test_ties_are_broken_at_random_in_expectation() -> None:
    # two negatives above, two tied: rank is 2, 3 or 4 with prob 1/3 each
    pos, negs = np.array([0.5]), np.array([[0.9, 0.8, 0.5, 0.5, 0.1]])
    assert hit_rate(pos, negs, 3) == pytest.approx(1 / 3)
    assert hit_rate(pos, negs, 4) == pytest.approx(2 / 3)
    expected = (1 / math.log2(4) + 1 / math.log2(5)) / 3  # ranks 2 and 3 score, 4 is past k=4
    assert ndcg(pos, negs, 4) == pytest.approx(expected)
    # a constant scorer is random: HR@K = K / (n + 1)
    assert hit_rate(np.zeros(1), np.zeros((1, 99)), 10) == pytest.approx(0.1)


def test_ndcg_hand_cases() -> None:
    pos = np.array([0.9, 0.5, 0.1])
    negs = np.array([[0.1, 0.2], [0.6, 0.1], [0.6, 0.7]])  # ranks 0, 1, 2
    expected = (1.0 + 1 / math.log2(3) + 1 / math.log2(4)) / 3
    assert ndcg(pos, negs, 10) == pytest.approx(expected)
    assert ndcg(pos, negs, 2) == pytest.approx((1.0 + 1 / math.log2(3)) / 3)


def test_gauc_weights_users_by_their_watches_and_skips_one_class_users() -> None:
    from semirec.trainer.offline.metrics import gauc

    users = np.array(["a", "a", "a", "a", "b", "b", "c"])
    labels = np.array([1, 0, 1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.1, 0.9, 5.0])
    # a: pairs (0.9>0.1, 0.9>0.3, 0.2>0.1, 0.2<0.3) -> 3/4 over 4 watches; b: 0 over 2; c skipped
    assert gauc(users, labels, scores) == pytest.approx((4 * 0.75 + 2 * 0.0) / 6)
    # a global AUC would mix users: c's high score counts there, not in GAUC
    assert gauc(users, labels, scores) != pytest.approx(auc(labels, scores))
    with pytest.raises(ValueError):
        gauc(np.array(["a", "b"]), np.array([1, 0]), np.array([0.0, 1.0]))


def test_pairwise_auc_over_real_negatives_only() -> None:
    from semirec.trainer.offline.metrics import pairwise_auc

    pos = np.array([0.5, 0.5, 0.5])
    neg = np.array([[0.1, 0.9, 7.0], [0.5, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = np.array([[True, True, False], [True, False, False], [False, False, False]])
    assert pairwise_auc(pos, neg, mask) == pytest.approx((0.5 + 0.5) / 2)
