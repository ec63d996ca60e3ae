"""A tiny two-domain world with known item vectors, for tests and smoke runs of the trainer.

Users have a taste over a few categories that drives both their product clicks and their video
completions, so a model that reads the sequences (especially the product one) beats popularity.
Item vectors are category centroids plus noise, standing in for encoder output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semirec.core.contracts import Domain, Event


@dataclass(frozen=True)
class ToyWorld:
    items: list[dict]
    events: list[Event]
    true_prob: dict[str, float]
    vectors: np.ndarray  # [len(items), dim], aligned with items


def toy_world(
    users: int = 120,
    videos: int = 80,
    products: int = 80,
    categories: int = 4,
    dim: int = 32,
    events_per_user: int = 40,
    seed: int = 0,
    quality_scale: float = 0.5,
) -> ToyWorld:
    """``quality_scale``: std of each item's own quality (in the completion logit), which the
    item vectors do not carry."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(categories, dim))
    items: list[dict] = []
    cats: dict[str, int] = {}
    vecs = []
    quality: dict[str, float] = {}
    for domain, count in (("video", videos), ("product", products)):
        for i in range(count):
            item_id, cat = f"{domain[0]}{i}", i % categories
            items.append({"item_id": item_id, "domain": domain, "title": f"{domain} {i}",
                          "tags": [f"c{cat}"], "category": f"c{cat}", "images": []})
            cats[item_id] = cat
            quality[item_id] = float(rng.normal(scale=quality_scale))
            vecs.append(centroids[cat] + 0.5 * rng.normal(size=dim))
    video_ids = [it["item_id"] for it in items if it["domain"] == "video"]
    product_ids = [it["item_id"] for it in items if it["domain"] == "product"]
    by_cat = {c: [p for p in product_ids if cats[p] == c] for c in range(categories)}
    events: list[Event] = []
    true_prob: dict[str, float] = {}
    for u in range(users):
        taste = rng.dirichlet(np.full(categories, 0.3))
        t = 1_600_000_000.0 + rng.uniform(0, 3600 * 24)
        for j in range(events_per_user):
            t += rng.exponential(1800.0)
            eid = f"u{u}-{j}"
            if rng.random() < 0.5:
                item = str(rng.choice(by_cat[int(rng.choice(categories, p=taste))]))
                events.append(Event(eid, f"u{u}", item, Domain.PRODUCT, "click", t))
                continue
            item = str(rng.choice(video_ids))
            logit = 6.0 * (taste[cats[item]] - 1.0 / categories) + quality[item] - 0.3
            p = float(1.0 / (1.0 + np.exp(-logit)))
            done = bool(rng.random() < p)
            events.append(Event(eid, f"u{u}", item, Domain.VIDEO, "watch", t, done))
            true_prob[eid] = p
    events.sort(key=lambda e: (e.ts, e.event_id))
    return ToyWorld(items, events, true_prob, np.asarray(vecs, np.float32))
