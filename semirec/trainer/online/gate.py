"""Evaluation gate: may a candidate ranker replace the serving one? Pure functions, no I/O.

:func:`window_metrics` scores one model on the newest held-out slice (AUC, GAUC, log loss);
:func:`judge` compares the candidate's metrics with the serving model's on the same slice and
promotes when the candidate is not worse by more than a margin on any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from semirec.trainer.offline.metrics import auc


@dataclass(frozen=True)
class GateConfig:
    auc_margin: float = 0.005  # candidate AUC >= serving AUC - margin
    gauc_margin: float = 0.005
    logloss_margin: float = 0.01  # candidate log loss <= serving log loss + margin
    min_samples: int = 100  # held-out watches needed to judge at all
    min_positives: int = 10  # ... and complete / incomplete ones each


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: tuple[str, ...]  # why not (empty when promoted); machine-readable first word
    serving: Mapping[str, float]
    candidate: Mapping[str, float]


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Per-user AUC weighted by the user's watches, over users with both labels (nan if none)."""
    labels = np.asarray(labels).astype(bool)
    total, weight = 0.0, 0
    order = np.argsort(users, kind="stable")
    users, labels, scores = np.asarray(users)[order], labels[order], np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(users)], strict=True):
        y = labels[a:b]
        if y.all() or not y.any():
            continue
        total += auc(y, scores[a:b]) * (b - a)
        weight += b - a
    return total / weight if weight else float("nan")


def window_metrics(labels: np.ndarray, probs: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """``n``, ``positives``, ``auc``, ``gauc``, ``logloss`` of probabilities on one slice."""
    labels = np.asarray(labels, np.float32)
    pos = int(labels.sum())
    out = {"n": float(len(labels)), "positives": float(pos)}
    both = 0 < pos < len(labels)
    out["auc"] = auc(labels, probs) if both else float("nan")
    out["gauc"] = gauc(labels, probs, users) if both else float("nan")
    out["logloss"] = log_loss(labels, probs) if len(labels) else float("nan")
    return out


def finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """``metrics`` as plain floats with nan as None, for JSON (meta.json, ``model-updates``)."""
    return {k: (None if np.isnan(v) else float(v)) for k, v in metrics.items()}


def judge(serving: Mapping[str, float], candidate: Mapping[str, float],
          config: GateConfig | None = None) -> Verdict:
    """Promote unless the slice is too small or the candidate is worse by more than a margin.

    Both mappings come from :func:`window_metrics` on the same held-out slice. A metric that
    is nan for the serving model (e.g. no user with both labels for GAUC) is not compared."""
    cfg = config or GateConfig()
    reasons: list[str] = []
    n, pos = candidate.get("n", 0.0), candidate.get("positives", 0.0)
    if n < cfg.min_samples:
        reasons.append(f"too_few_samples {n:.0f} < {cfg.min_samples}")
    elif min(pos, n - pos) < cfg.min_positives:
        reasons.append(f"one_sided_labels {pos:.0f} complete of {n:.0f}")
    else:
        for metric, margin in (("auc", cfg.auc_margin), ("gauc", cfg.gauc_margin)):
            s, c = serving.get(metric, np.nan), candidate.get(metric, np.nan)
            if np.isnan(s):
                continue
            if np.isnan(c) or c < s - margin:
                reasons.append(f"worse_{metric} {c:.4f} < {s:.4f} - {margin}")
        s, c = serving.get("logloss", np.nan), candidate.get("logloss", np.nan)
        if not np.isnan(s) and (np.isnan(c) or c > s + cfg.logloss_margin):
            reasons.append(f"worse_logloss {c:.4f} > {s:.4f} + {cfg.logloss_margin}")
    return Verdict(not reasons, tuple(reasons), dict(serving), dict(candidate))
