"""Evaluation gate: may a candidate ranker replace the serving one? Pure functions, no I/O.

:func:`window_metrics` scores one model on the newest held-out slice (AUC, GAUC, log loss);
:func:`judge` compares the candidate's metrics with the serving model's on the same slice and
promotes when the candidate is not worse by more than a margin on any of them.

A slice smaller than ``min_samples`` (a round of about a minute of traffic holds out a few
dozen watches) is judged by a confidence bound instead, when it has at least
``small_min_samples``: :func:`paired_logloss` gives the mean per-watch log-loss difference
(candidate - serving) on the slice and its standard error, and the candidate is rejected when
the difference exceeds ``logloss_margin`` with one-sided confidence ``z`` (default 1.645: 95%),
i.e. when it is worse beyond the slice's noise. AUC and GAUC on a few dozen watches are too
noisy to compare and are reported only.
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
    min_samples: int = 100  # held-out watches needed to judge on AUC / GAUC / log loss margins
    min_positives: int = 10  # ... and complete / incomplete ones each
    # smaller slices: judged by a confidence bound on the paired log-loss difference (0 = never)
    small_min_samples: int = 30
    small_min_positives: int = 3
    z: float = 1.645


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


def paired_logloss(labels: np.ndarray, serving: np.ndarray, candidate: np.ndarray,
                   eps: float = 1e-7) -> dict[str, float]:
    """``logloss_diff``: the mean per-watch log-loss difference candidate - serving on the same
    watches, and ``logloss_diff_se``: its standard error (nan below two watches)."""
    y = np.asarray(labels, np.float64)

    def losses(p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    d = losses(candidate) - losses(serving)
    if len(d) < 2:
        return {"logloss_diff": float(d.mean()) if len(d) else float("nan"),
                "logloss_diff_se": float("nan")}
    return {"logloss_diff": float(d.mean()), "logloss_diff_se": float(d.std(ddof=1) / np.sqrt(len(d)))}


def finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """``metrics`` as plain floats with nan as None, for JSON (meta.json, ``model-updates``)."""
    return {k: (None if np.isnan(v) else float(v)) for k, v in metrics.items()}


def judge(serving: Mapping[str, float], candidate: Mapping[str, float],
          config: GateConfig | None = None) -> Verdict:
    """Promote unless the slice is too small or the candidate is worse by more than a margin.

    Both mappings come from :func:`window_metrics` on the same held-out slice. A metric that
    is nan for the serving model (e.g. no user with both labels for GAUC) is not compared.
    A slice of ``small_min_samples`` to ``min_samples`` watches is judged by the confidence
    bound on the candidate's :func:`paired_logloss` (module docstring)."""
    cfg = config or GateConfig()
    reasons: list[str] = []
    n, pos = candidate.get("n", 0.0), candidate.get("positives", 0.0)
    small = 0 < cfg.small_min_samples <= n < cfg.min_samples
    if small:
        diff = candidate.get("logloss_diff", np.nan)
        se = candidate.get("logloss_diff_se", np.nan)
        if min(pos, n - pos) < cfg.small_min_positives:
            reasons.append(f"one_sided_labels {pos:.0f} complete of {n:.0f}")
        elif np.isnan(diff) or np.isnan(se):
            reasons.append(f"too_few_samples {n:.0f} < {cfg.min_samples} (no paired log loss)")
        elif diff - cfg.z * se > cfg.logloss_margin:
            reasons.append(f"worse_logloss_bound {diff:.4f} - {cfg.z} x {se:.4f} > "
                           f"{cfg.logloss_margin}")
    elif n < cfg.min_samples:
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
