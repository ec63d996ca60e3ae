"""TRUTH DIAGNOSTIC: ridge probes from item vectors to a generated world's latent item attributes.

This reads the generated world's ground truth (its latent item attributes), which no part of
training or serving may see: it measures what an encoder keeps, nothing more. Targets, per item:

- ``category`` (one-hot, accuracy over all items) and ``format`` (one-hot, accuracy over videos),
- ``style``: the within-category image style (R², mean over its dimensions, all items),
- ``stars``: the review's 1-5 stars behind the title's sentiment (R², all items).

Each probe is a closed-form ridge regression (numpy) on standardised vectors, fit on a fixed
70% of the items (hash-free: a seeded permutation) and scored on the other 30%. The ridge
strength is chosen per target on an inner 80/20 split of the training items only, so wide
inputs (the backbones' 1,664 features) are not over-fitted and the test items stay unseen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LAMBDAS = tuple(10.0 ** k for k in range(-2, 6))
TRAIN_SHARE = 0.7


def world_attributes(world: Any) -> dict[str, np.ndarray]:
    """Latent attributes of ``world.items`` (generated worlds only; reads ``world.truth``)."""
    truth = getattr(world, "truth", None)
    if truth is None or truth.products is None:
        raise ValueError("the probe needs a generated world (its truth holds the latent attributes)")
    n = len(world.items)
    row = {it["item_id"]: i for i, it in enumerate(world.items)}
    out = {"category": np.zeros(n, int), "format": np.zeros(n, int),
           "style": np.zeros((n, truth.videos.style.shape[1])), "stars": np.zeros(n),
           "video": np.zeros(n, bool)}
    for side, is_video in ((truth.products, False), (truth.videos, True)):
        keep = [(r, row[i]) for r, i in enumerate(side.ids) if i in row]  # held-out new videos drop
        src, dst = (np.array(x, dtype=np.int64) for x in zip(*keep, strict=True))
        out["category"][dst], out["format"][dst] = side.category[src], side.fmt[src]
        out["style"][dst], out["stars"][dst] = side.style[src], side.stars[src]
        out["video"][dst] = is_video
    return out


def _ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return vt.T @ ((s / (s**2 + lam))[:, None] * (u.T @ y))


def _sse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(((pred - y) ** 2).sum())


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0
                  ) -> np.ndarray:
    """Ridge predictions for ``x_test``; the strength is picked on an inner split of the train rows."""
    flat = y_train.ndim == 1
    y_train = y_train.reshape(len(y_train), -1)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    xt, xs = (x_train - mu) / sd, (x_test - mu) / sd
    y_mu = y_train.mean(0)
    yt = y_train - y_mu
    order = np.random.default_rng(seed + 1).permutation(len(xt))
    cut = int(0.8 * len(xt))
    fit, val = order[:cut], order[cut:]
    u, s, vt = np.linalg.svd(xt[fit], full_matrices=False)
    uty = u.T @ yt[fit]
    errors = [_sse(xt[val] @ (vt.T @ ((s / (s**2 + lam))[:, None] * uty)), yt[val]) for lam in LAMBDAS]
    lam = LAMBDAS[int(np.argmin(errors))]
    pred = xs @ _ridge_fit(xt, yt, lam) + y_mu
    return pred[:, 0] if flat else pred


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    pred, y = pred.reshape(len(y), -1), y.reshape(len(y), -1)
    return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def probe_vectors(vectors: np.ndarray, attrs: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """``style_r2``, ``stars_r2``, ``category_acc``, ``format_acc`` (+ per-domain style R²)."""
    x = np.asarray(vectors, np.float64)
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    is_train = np.zeros(n, bool)
    is_train[order[: int(TRAIN_SHARE * n)]] = True

    def held_out(rows: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tr, te = rows & is_train, rows & ~is_train
        return ridge_predict(x[tr], y[tr], x[te], seed), y[te]

    every, video = np.ones(n, bool), attrs["video"]
    cat_pred, cat = held_out(every, np.eye(attrs["category"].max() + 1)[attrs["category"]])
    fmt_pred, fmt = held_out(video, np.eye(attrs["format"].max() + 1)[attrs["format"]])
    style_pred, style = held_out(every, attrs["style"])
    test = ~is_train
    return {
        "style_r2": round(_r2(style_pred, style), 3),
        "style_r2_videos": round(_r2(style_pred[video[test]], style[video[test]]), 3),
        "style_r2_products": round(_r2(style_pred[~video[test]], style[~video[test]]), 3),
        "stars_r2": round(_r2(*held_out(every, attrs["stars"])), 3),
        "category_acc": round(float((cat_pred.argmax(1) == cat.argmax(1)).mean()), 3),
        "format_acc": round(float((fmt_pred.argmax(1) == fmt.argmax(1)).mean()), 3),
        "test_items": int(test.sum()),
    }


def backbone_vectors(items: Sequence[Any], config: Any) -> dict[str, np.ndarray]:
    """The frozen backbones' features of ``items`` (item-contract dicts; before fusion): ``image``
    (mean over frames, 1280-d), ``text`` (title, 384/512-d) and both side by side."""
    from semirec.core.items import as_item
    from semirec.encoders.base import default_cache
    from semirec.encoders.features import FeatureExtractor

    feats, _ok, errors = FeatureExtractor(config, default_cache()).extract([as_item(it) for it in items])
    if errors:
        raise ValueError(f"{len(errors)} item(s) could not be read: {next(iter(errors.values()))}")
    mask = feats.image_mask[..., None].astype(np.float32)
    image = (feats.images * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
    return {"image": image, "text": feats.text, "image+text": np.hstack([image, feats.text])}
