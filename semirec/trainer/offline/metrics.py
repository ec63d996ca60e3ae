"""AUC, HR@K and NDCG@K.

Ranking metrics take the positive's score and its negatives' scores per test case. Ties are
broken uniformly at random *in expectation* (exact, deterministic): with g negatives scoring
higher and t tied, the positive's rank is g + U, U uniform on {0..t}.
"""

from __future__ import annotations

import itertools

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # average 1-based rank over each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _rank_counts(positive: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positive = np.asarray(positive, dtype=np.float64)[:, None]
    negatives = np.asarray(negatives, dtype=np.float64)
    return (negatives > positive).sum(1), (negatives == positive).sum(1)


def hit_rate(positive: np.ndarray, negatives: np.ndarray, k: int) -> float:
    """Mean over cases of P(positive ranks in the top k) among [positive, negatives...]."""
    higher, tied = _rank_counts(positive, negatives)
    hits = np.clip(k - higher, 0, tied + 1) / (tied + 1)
    return float(hits.mean())


def ndcg(positive: np.ndarray, negatives: np.ndarray, k: int) -> float:
    """Mean over cases of 1/log2(rank + 2) if the positive's 0-based rank < k, else 0."""
    higher, tied = _rank_counts(positive, negatives)
    gains = 1.0 / np.log2(np.arange(k) + 2.0)
    total = np.zeros(len(higher))
    for i, (g, t) in enumerate(zip(higher, tied, strict=True)):
        ranks = np.arange(g, min(g + t + 1, k))
        total[i] = gains[ranks].sum() / (t + 1)
    return float(total.mean())


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's number of test watches, over users whose
    watches have both labels (a user with one class has no AUC)."""
    users = np.asarray(users).astype(str)
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1], True])
    total = weight = 0.0
    for a, b in itertools.pairwise(bounds):
        idx = order[a:b]
        y = labels[idx]
        if y.all() or not y.any():
            continue
        total += len(idx) * auc(y, scores[idx])
        weight += len(idx)
    if not weight:
        raise ValueError("GAUC needs a user with both labels")
    return total / weight


def pairwise_auc(positive: np.ndarray, negatives: np.ndarray, mask: np.ndarray) -> float:
    """Mean over cases (with at least one real negative) of P(positive scores above a random
    one of its real negatives), ties counting one half; ``mask`` [R, M] marks real negatives."""
    positive = np.asarray(positive, dtype=np.float64)[:, None]
    negatives = np.asarray(negatives, dtype=np.float64)
    mask = np.asarray(mask, bool)
    wins = ((positive > negatives) + 0.5 * (positive == negatives)) * mask
    n = mask.sum(1)
    keep = n > 0
    if not keep.any():
        raise ValueError("no case has a negative")
    return float((wins.sum(1)[keep] / n[keep]).mean())
