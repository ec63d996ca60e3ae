"""A two-domain toy world whose interests shift mid-stream, for the incremental trainer.

As :func:`semirec.trainer.offline.toy.toy_world` (product clicks follow a user's taste over categories, item
vectors are category centroids plus noise), except that at ``shift_at`` of the time line the
completion rule rotates: a video of category c is then completed by users whose taste (and so
whose product clicks) favour category c + 1. A model frozen before the shift keeps
recommending the old relation; one that keeps learning follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semirec.core.contracts import Domain, Event


@dataclass(frozen=True)
class DriftingWorld:
    items: list[dict]
    vectors: np.ndarray
    events: list[Event]  # sorted by ts
    shift_ts: float


def drifting_world(users: int = 150, videos: int = 60, products: int = 60, categories: int = 4,
                   dim: int = 32, events_per_user: int = 60, shift_at: float = 0.5,
                   seed: int = 0, start: float = 1_700_000_000.0, span_s: float = 86_400.0) \
        -> DriftingWorld:
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(categories, dim))
    items, vecs, cats = [], [], {}
    for domain, count in (("video", videos), ("product", products)):
        for i in range(count):
            item_id, cat = f"{domain[0]}{i}", i % categories
            items.append({"item_id": item_id, "domain": domain, "title": f"{domain} {i}",
                          "tags": [f"c{cat}"], "category": f"c{cat}", "images": []})
            cats[item_id] = cat
            vecs.append(centroids[cat] + 0.5 * rng.normal(size=dim))
    video_ids = [it["item_id"] for it in items if it["domain"] == "video"]
    by_cat = {c: [it["item_id"] for it in items if it["domain"] == "product"
                  and cats[it["item_id"]] == c] for c in range(categories)}
    shift_ts = start + shift_at * span_s
    events: list[Event] = []
    for u in range(users):
        taste = rng.dirichlet(np.full(categories, 0.3))
        for j, t in enumerate(np.sort(rng.uniform(start, start + span_s, events_per_user))):
            eid = f"u{u}-{j}"
            if rng.random() < 0.5:
                item = str(rng.choice(by_cat[int(rng.choice(categories, p=taste))]))
                events.append(Event(eid, f"u{u}", item, Domain.PRODUCT, "click", float(t)))
                continue
            item = str(rng.choice(video_ids))
            cat = cats[item] if t < shift_ts else (cats[item] + 1) % categories
            p = 1.0 / (1.0 + np.exp(-(6.0 * (taste[cat] - 1.0 / categories) - 0.3)))
            events.append(Event(eid, f"u{u}", item, Domain.VIDEO, "watch", float(t),
                                bool(rng.random() < p)))
    events.sort(key=lambda e: (e.ts, e.event_id))
    return DriftingWorld(items, np.asarray(vecs, np.float32), events, shift_ts)
