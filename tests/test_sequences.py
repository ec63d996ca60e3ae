"""Sequence state: truncation, hour buckets, ordering, de-duplication, replay, packing."""

from __future__ import annotations

import random

from semirec.contracts import validate_event
from semirec.sequences import UserState, apply, pack, replay, unpack
from tests.event_script import BASE_TS, scripted_events


def ev(i: int, *, domain: str = "video", ts: float | None = None, complete: bool = True,
       event_id: str | None = None, item: str | None = None):
    body = {"event_id": event_id or f"e{i}", "user_id": "u", "item_id": item or f"i{i}",
            "domain": domain, "action": "watch" if domain == "video" else "click",
            "ts": BASE_TS + i if ts is None else ts}
    if domain == "video":
        body["complete"] = complete
    return validate_event(body)


def test_keeps_newest_50_per_domain_oldest_first() -> None:
    events = [ev(i) for i in range(120)] + [ev(1000 + i, domain="product") for i in range(60)]
    state = replay(events)["u"]
    assert [e.item_id for e in state.video] == [f"i{i}" for i in range(70, 120)]
    assert [e.item_id for e in state.product] == [f"i{1000 + i}" for i in range(10, 60)]


def test_hour_buckets() -> None:
    state = replay([ev(0, ts=7200 * 1000 + 3599.9), ev(1, ts=7200 * 1000 + 3600)])["u"]
    assert [e["hour"] for e in state.view()["video"]] == [2000, 2001]
    assert [e["hour"] for e in state.view(bucket_s=7200)["video"]] == [1000, 1000]


def test_out_of_order_arrival_gives_time_order_and_same_state() -> None:
    events = [ev(i, ts=BASE_TS + 37 * i % 1000) for i in range(80)]
    shuffled = events[:]
    random.Random(1).shuffle(shuffled)
    a, b = replay(events)["u"], replay(shuffled)["u"]
    assert a.video == b.video and len(a.video) == 50
    assert [e.ts_ms for e in a.video] == sorted(e.ts_ms for e in a.video)
    # the 50 newest by timestamp, whatever the arrival order
    newest = sorted(events, key=lambda e: (e.ts_ms, e.item_id))[-50:]
    assert [e.item_id for e in a.video] == [e.item_id for e in newest]


def test_a_late_event_older_than_a_full_sequence_is_dropped() -> None:
    events = [ev(i, ts=BASE_TS + 10_000 + i) for i in range(50)] + [ev(99, ts=BASE_TS)]
    assert "i99" not in [e.item_id for e in replay(events)["u"].video]


def test_duplicate_event_ids_apply_once_within_the_window() -> None:
    state = UserState()
    assert apply(state, [(ev(1), 0), (ev(1), 1)], dedup_window=4) == 1
    assert len(state.video) == 1
    # outside the window a duplicate is applied again (the window is bounded by design)
    apply(state, [(ev(i), 1 + i) for i in range(2, 7)], dedup_window=4)
    assert apply(state, [(ev(1, ts=BASE_TS + 500), 50)], dedup_window=4) == 1


def test_replayed_offsets_are_skipped_per_partition() -> None:
    state = UserState()
    apply(state, [(ev(1), 10), (ev(2), 11)], partition=3)
    assert apply(state, [(ev(3, event_id="x"), 11)], partition=3) == 0
    assert apply(state, [(ev(3, event_id="x"), 11)], partition=4) == 1
    assert state.applied == {3: 11, 4: 11}


def test_incomplete_watches_change_nothing() -> None:
    state = UserState()
    assert apply(state, [(ev(1, complete=False), 0)]) == 0
    assert state == UserState()


def test_pack_round_trip_and_compactness() -> None:
    states = replay(scripted_events(users=5, per_user=200))
    for state in states.values():
        state.version = 7
        assert unpack(pack(state)) == state
    full = max(states.values(), key=lambda s: len(s.video) + len(s.product))
    raw_ids = sum(len(e.item_id) for e in full.video + full.product)
    # 9 bytes per entry (ts + length) + ids + 8 per recent digest + small header
    assert len(pack(full)) <= 9 * (len(full.video) + len(full.product)) + raw_ids \
        + 8 * len(full.recent) + 64
