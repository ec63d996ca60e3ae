"""Diagnostics for the generated world: how much of the oracle AUC any ranker can reach.

The oracle scores with the world's latent truth (each user's interests, style and format taste,
completion bias, the session's intent). A ranker only sees item vectors and the sequences of
complete watches and clicks. Three measurements separate the causes of the gap:

- ``truth_vectors``: item vectors made of the items' *latent attributes* (category, style,
  format, quality; randomly rotated into 128-d) instead of encoder output: the gap that
  remains is the ranker's, not the encoder's (``semirec evaluate --vectors truth``).
- ``feature_ceiling``: a logistic regression on hand-made features of the sequences built from
  those exact attributes (category share, same-hour intent, mean style match, format share, per
  domain): roughly what the sequences reveal at all. ``hide`` blanks attributes (e.g. the ones
  the encoder vectors do not carry) to see what is left without them.
- ``attribute_probe``: how much of each latent attribute a linear map of the item vectors
  recovers on held-out items (does the encoder expose category, style, format, quality?).

The latent attributes are rebuilt with :func:`semirec.worlds.catalog.build_catalog` and the seed
derivation of :func:`semirec.worlds.generate.generate_world`; item ids are checked to match.

Usage: python -m semirec.trainer.offline.ceiling [--size demo] [--encoder DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from semirec.trainer.offline.metrics import auc
from semirec.trainer.offline.samples import SampleSet


def latent_catalog(world: Any):  # -> semirec.worlds.catalog.Catalog
    from semirec.worlds.catalog import build_catalog
    from semirec.worlds.config import WorldConfig

    known = set(WorldConfig.__dataclass_fields__)
    cfg = WorldConfig(**{k: v for k, v in world.params.items() if k in known})
    seed = int(world.params["seed"])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]).spawn(4)[0])
    catalog = build_catalog(cfg, rng)
    if [it["item_id"] for it in catalog.items] != [it["item_id"] for it in world.items]:
        raise ValueError("the rebuilt catalog does not match the world's items")
    return catalog


def _attributes(world: Any) -> dict[str, np.ndarray]:
    """Per item row (row 0 = padding): category, style, format, quality, is_video."""
    catalog = latent_catalog(world)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    n = len(world.items) + 1
    out = {"category": np.zeros(n, int), "style": np.zeros((n, catalog.videos.style.shape[1])),
           "format": np.zeros(n, int), "quality": np.zeros(n), "video": np.zeros(n)}
    for side, is_video in ((catalog.products, 0.0), (catalog.videos, 1.0)):
        r = np.array([rows[i] for i in side.ids])
        out["category"][r], out["style"][r] = side.category, side.style
        out["format"][r], out["quality"][r], out["video"][r] = side.fmt, side.quality, is_video
    return out


def truth_vectors(world: Any, dim: int = 128, seed: int = 1) -> np.ndarray:
    """[items, dim] float32: one-hot category, style / 2, one-hot format, quality, domain sign,
    rotated by a random orthogonal matrix."""
    a = _attributes(world)
    n_cat, n_fmt = a["category"].max() + 1, a["format"].max() + 1
    parts = [np.eye(n_cat)[a["category"]], a["style"] / 2,
             np.eye(n_fmt)[a["format"]] * a["video"][:, None], a["quality"][:, None],
             2 * a["video"][:, None] - 1]
    raw = np.hstack(parts)[1:]
    if raw.shape[1] > dim:
        raise ValueError(f"{raw.shape[1]} attributes do not fit in {dim} dimensions")
    rotation = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))[0]
    padded = np.hstack([raw, np.zeros((len(raw), dim - raw.shape[1]))])
    return (padded @ rotation).astype(np.float32)


def _features(s: SampleSet, a: dict[str, np.ndarray], domains: tuple[str, ...]) -> np.ndarray:
    n_cat, n_fmt = a["category"].max() + 1, a["format"].max() + 1
    target = np.eye(n_cat)[a["category"][s.target]]
    cols = [a["quality"][s.target][:, None], target, np.eye(n_fmt)[a["format"][s.target]]]
    for domain in domains:
        rows, age = getattr(s, domain), getattr(s, f"{domain}_age")
        real = rows > 0
        count = real.sum(1, keepdims=True)
        cats = np.eye(n_cat)[a["category"][rows]]
        share = (cats * real[..., None]).sum(1) / count.clip(1)
        match = (share * target).sum(1, keepdims=True)
        now = real & (age <= 0)
        now_share = (cats * now[..., None]).sum(1)
        now_share /= now.sum(1, keepdims=True).clip(1)
        style = (a["style"][rows] * real[..., None]).sum(1) / count.clip(1)
        cols += [match, np.log(10 * match + 0.1), count / 50, (now_share * target).sum(1)[:, None],
                 now.any(1, keepdims=True), (style * a["style"][s.target]).sum(1, keepdims=True)]
        if domain == "video":
            fmt = (np.eye(n_fmt)[a["format"][rows]] * real[..., None]).sum(1) / count.clip(1)
            cols.append((fmt * np.eye(n_fmt)[a["format"][s.target]]).sum(1, keepdims=True))
    return np.hstack(cols).astype(np.float64)


def _logistic_auc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, steps: int = 400) -> float:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    model = torch.nn.Linear(xt.shape[1], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(xt).squeeze(-1), torch.from_numpy(y_train))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = model(torch.tensor((x_test - mu) / sd, dtype=torch.float32)).squeeze(-1).numpy()
    return auc(y_test, scores)


def attribute_probe(world: Any, vectors: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Ridge probes from item vectors to latent attributes, fit on 70% of the items and scored
    on the rest: accuracy for category (all items) and format (videos), R^2 for style (mean over
    its dimensions) and quality (videos)."""
    a = {k: v[1:] for k, v in _attributes(world).items()}
    x = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-8)
    x = np.hstack([x, np.ones((len(x), 1))])
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.7 * len(x))
    video = a["video"] > 0

    def fit_predict(rows: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        train, test = order[:cut][rows[order[:cut]]], order[cut:][rows[order[cut:]]]
        w = np.linalg.solve(x[train].T @ x[train] + 1e-2 * np.eye(x.shape[1]), x[train].T @ y[train])
        return x[test] @ w, y[test]

    def r2(pred: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))

    everything = np.ones(len(x), bool)
    cat_pred, cat = fit_predict(everything, np.eye(a["category"].max() + 1)[a["category"]])
    fmt_pred, fmt = fit_predict(video, np.eye(a["format"].max() + 1)[a["format"]])
    return {
        "category_accuracy": round(float((cat_pred.argmax(1) == cat.argmax(1)).mean()), 3),
        "video_format_accuracy": round(float((fmt_pred.argmax(1) == fmt.argmax(1)).mean()), 3),
        "style_r2": round(r2(*fit_predict(everything, a["style"])), 3),
        "video_quality_r2": round(r2(*fit_predict(video, a["quality"])), 3),
    }


def feature_ceiling(
    world: Any, train: SampleSet, test: SampleSet, hide: tuple[str, ...] = ()
) -> dict[str, float]:
    """Test AUC of a logistic regression on exact-attribute features, per set of sequences;
    the attributes in ``hide`` (``style``, ``quality``) are blanked."""
    torch.manual_seed(0)
    a = _attributes(world)
    for name in hide:
        if name not in ("style", "quality"):
            raise ValueError(f"only style and quality can be hidden, not {name!r}")
        a[name] = np.zeros_like(a[name])
    out = {}
    for name, domains in (("target_only", ()), ("video", ("video",)),
                          ("product", ("product",)), ("video+product", ("video", "product"))):
        out[name] = round(_logistic_auc(_features(train, a, domains), train.label,
                                        _features(test, a, domains), test.label), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Feature ceiling of the generated world.")
    parser.add_argument("--size", default="demo")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--encoder", default=None,
                        help="also probe this item-encoder checkpoint's vectors")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from semirec.trainer.offline.samples import build_samples, chronological_split
    from semirec.worlds import load_world

    world = load_world("world", seed=args.world_seed, size=args.size)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    train, _, test = chronological_split(build_samples(world.events, rows))
    result = {"oracle_auc": round(auc(test.label, [world.true_prob[e] for e in test.event]), 4),
              "feature_ceiling_auc": feature_ceiling(world, train, test),
              "feature_ceiling_auc_without_style_quality":
                  feature_ceiling(world, train, test, hide=("style", "quality"))}
    if args.encoder:
        from pathlib import Path

        from semirec.trainer.offline.vectors import item_vectors

        result["probe"] = {
            "encoder": attribute_probe(world, item_vectors(world.items,
                                                           checkpoint=Path(args.encoder))),
            "truth": attribute_probe(world, truth_vectors(world))}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()


def observable_item_probs(world: Any):  # -> (user_id, video_ids, ts) -> np.ndarray
    """The generated world's truth without what no sequence or item content reveals: the
    per-user completion bias (``bias_u``) and the item quality's noise, i.e. ``quality_v``
    replaced by its content-visible part ``0.3 * (stars - 3)`` of the featured product's
    review (the stars are recovered from the video's title, which quotes the review). Same
    signature as ``world.item_probs``; the observable oracle of the protocol."""
    from semirec.worlds.catalog import snippet_title
    from semirec.worlds.sources import review_snippets
    from semirec.worlds.truth import sigmoid

    truth = getattr(world.item_probs, "__self__", None)
    if truth is None:
        raise ValueError("the world has no truth object (only generated worlds do)")
    stars: dict[str, list[int]] = {}
    for category in review_snippets():
        for s in category:
            stars.setdefault(snippet_title(s), []).append(s.rating)
    visible = np.zeros(len(truth.videos.ids))
    for it in world.items:
        if it["domain"] == "video":
            review = it["title"].split(": ", 1)[1]
            visible[truth._video_index[it["item_id"]]] = 0.3 * (np.mean(stars[review]) - 3)

    def probs(user_id: str, video_ids: Sequence[str], ts: float) -> np.ndarray:
        u = truth._user_index[user_id]
        v = np.array([truth._video_index[i] for i in video_ids], dtype=np.int64)
        n = len(v)
        raw = truth.raw_logit(np.full(n, u), v, np.full(n, float(ts)),
                              np.full(n, truth.intent_at(u, ts)))
        raw = raw - truth.users.bias[u] - truth.videos.quality[v] + visible[v]
        return sigmoid(raw + truth.intercept)

    return probs
