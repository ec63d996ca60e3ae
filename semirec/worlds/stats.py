"""Summary figures of a world: sizes, history lengths, completion rate and the oracle AUC."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from semirec.worlds.world import World


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank AUC (Mann-Whitney U) with ties counted half; NaN when a class is missing."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank per tie group
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def oracle_auc(world: World) -> float:
    """AUC of the true completion probabilities against the realised watches (generated worlds)."""
    watches = [e for e in world.events if e.complete is not None and e.event_id in world.true_prob]
    if not watches:
        return float("nan")
    return auc(np.array([world.true_prob[e.event_id] for e in watches]),
               np.array([bool(e.complete) for e in watches]))


def probe_aucs(world: World) -> dict[str, float]:
    """AUCs of simple scorers of each watch that see only earlier events (no training).

    ``item_rate`` and ``user_item_rate`` (smoothed past completion rates of the video and user)
    are content-blind; ``video_history`` / ``product_history`` score a watch by the share of
    the user's earlier complete watches / product clicks in the video's category; ``oracle``
    uses the true probability (generated worlds). NaN where a scorer has nothing to go on.
    """
    category = {item["item_id"]: item["category"] for item in world.items}
    clicks: defaultdict[str, Counter[str]] = defaultdict(Counter)
    finished: defaultdict[str, Counter[str]] = defaultdict(Counter)
    seen = {"user": defaultdict(lambda: [0.0, 0.0]), "item": defaultdict(lambda: [0.0, 0.0])}
    rows: dict[str, list[float]] = defaultdict(list)
    labels: list[bool] = []
    total = [0.0, 0.0]

    def rate(key: str, k: str) -> float:
        prior = (total[0] + 1) / (total[1] + 2)
        hits, n = seen[key][k]
        return (hits + 5 * prior) / (n + 5)

    for e in world.events:
        cat = category.get(e.item_id, "")
        if e.complete is None:
            clicks[e.user_id][cat] += 1
            continue
        logit = [np.log(r / (1 - r)) for r in (rate("user", e.user_id), rate("item", e.item_id))]
        rows["item_rate"].append(logit[1])
        rows["user_item_rate"].append(logit[0] + logit[1])
        for name, hist in (("video_history", finished[e.user_id]), ("product_history", clicks[e.user_id])):
            rows[name].append((hist[cat] + 0.1) / (sum(hist.values()) + 1))
        if world.true_prob:
            rows["oracle"].append(world.true_prob[e.event_id])
        labels.append(bool(e.complete))
        for key, k in (("user", e.user_id), ("item", e.item_id)):
            seen[key][k][0] += e.complete
            seen[key][k][1] += 1
        total[0] += e.complete
        total[1] += 1
        if e.complete:
            finished[e.user_id][cat] += 1
    y = np.array(labels, bool)
    out = {name: auc(np.array(scores), y) for name, scores in rows.items()}
    if not any(clicks.values()):
        out["product_history"] = float("nan")
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def summary(world: World) -> dict[str, Any]:
    watches = [e for e in world.events if e.domain == "video"]
    clicks = len(world.events) - len(watches)
    complete = sum(bool(e.complete) for e in watches)
    users = {e.user_id for e in world.events}
    per_user = Counter((e.user_id, e.domain.value) for e in world.events if e.appends)
    out: dict[str, Any] = {
        "world": world.name,
        "users": len(users),
        "videos": len(world.item_ids("video")),
        "products": len(world.item_ids("product")),
        "events": len(world.events),
        "watches": len(watches),
        "complete_watches": complete,
        "complete_rate": complete / len(watches) if watches else float("nan"),
        "product_clicks": clicks,
        "mean_complete_watches_per_user": sum(n for (_, d), n in per_user.items() if d == "video")
        / max(1, len(users)),
        "mean_clicks_per_user": clicks / max(1, len(users)),
        "start": _iso(world.events[0].ts) if world.events else None,
        "end": _iso(world.events[-1].ts) if world.events else None,
    }
    if world.true_prob:
        out["oracle_auc"] = oracle_auc(world)
    return out
