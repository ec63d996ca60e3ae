"""The generated world past its history: new videos, a scheduled interest shift, live sessions."""

from __future__ import annotations

import numpy as np
import pytest

from semirec.core.items import validate_item
from semirec.worlds import load_world
from semirec.worlds.categories import CATEGORIES
from semirec.worlds.live import LiveWorld

SLUGS = [c.slug for c in CATEGORIES]


def test_new_videos_have_no_history_and_are_held_out_of_the_catalog() -> None:
    base = load_world("world", seed=0, users=60)
    world = load_world("world", seed=0, users=60, new_videos=8)
    new_ids = {it["item_id"] for it in world.new_items}
    assert len(new_ids) == 8 and all(validate_item(it) for it in world.new_items)
    assert all(it["domain"] == "video" for it in world.new_items)
    assert not new_ids & {it["item_id"] for it in world.items}
    assert not new_ids & {e.item_id for e in world.events}
    assert world.items + world.new_items == base.items  # the same catalog, the last videos held out
    assert len(world.events) == len(base.events)  # same sessions; only the exposed videos differ
    # the truth knows them: they can be scored for anyone at any time
    e = world.events[-1]
    probs = world.item_probs(e.user_id, sorted(new_ids), e.ts + 3600)
    assert probs.shape == (8,) and np.all((probs > 0) & (probs < 1))
    with pytest.raises(ValueError, match="new_videos"):
        load_world("world", videos=20, new_videos=11)


def test_new_videos_zero_changes_nothing() -> None:
    a = load_world("world", seed=3, users=30)
    b = load_world("world", seed=3, users=30, new_videos=0)
    assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    assert a.items == b.items and b.new_items == []


def test_scheduled_shift_changes_probabilities_only_after_its_time() -> None:
    world = load_world("world", seed=1, users=50)
    end = world.events[-1].ts
    videos = world.item_ids("video")
    users = world.user_ids()[:20]
    before = [world.item_probs(u, videos, end + 100) for u in users]
    at_shift = end + 3600 * 5
    LiveWorld(world).schedule_shift(at_shift, 1.0)
    again = [world.item_probs(u, videos, end + 100) for u in users]
    after = [world.item_probs(u, videos, at_shift + 10) for u in users]
    np.testing.assert_array_equal(np.array(before), np.array(again))
    moved = np.mean([np.abs(a - b).mean() for a, b in zip(before, after, strict=True)])
    assert moved > 0.03
    # every watch of the history keeps its probability (the shift is past the last event)
    w = [e for e in world.events if e.domain == "video"][::40]
    np.testing.assert_allclose([world.item_probs(e.user_id, [e.item_id], e.ts)[0] for e in w],
                               [world.true_prob[e.event_id] for e in w], rtol=1e-12)


def test_live_sessions_follow_the_behaviour_model() -> None:
    world = load_world("world", seed=2, users=40)
    live = LiveWorld(world, seed=5)
    ts = world.events[-1].ts + 7200
    u = world.user_ids()[0]
    intent = live.session_intent(u, ts)
    assert intent in SLUGS
    assert live.session_intent(u, ts + 60) == intent  # one intent per session hour
    # the intent term is in the truth now: intent-category videos gain
    cats = {it["item_id"]: it["category"] for it in world.items}
    vids = [v for v in world.item_ids("video")]
    with_intent = world.item_probs(u, vids, ts)
    without = world.item_probs(u, vids, ts + 2 * 3600)  # another hour, no session
    in_cat = np.array([cats[v] == intent for v in vids])
    assert np.all(with_intent[in_cat] > without[in_cat])
    np.testing.assert_allclose(with_intent[~in_cat], without[~in_cat], rtol=1e-9)
    clicks = live.product_clicks(u, ts, 400)
    products = {it["item_id"]: it["category"] for it in world.items if it["domain"] == "product"}
    assert all(c in products for c in clicks)
    assert np.mean([products[c] == intent for c in clicks]) > 0.55
    # deterministic under the seed
    again = LiveWorld(load_world("world", seed=2, users=40), seed=5)
    assert again.session_intent(u, ts) == again.session_intent(u, ts + 60) == intent
    assert again.product_clicks(u, ts, 400) == clicks
    assert len(live.pick_users(10)) == 10
