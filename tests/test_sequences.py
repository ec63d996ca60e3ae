"""Sequence state: truncation, hour buckets, ordering, de-duplication, replay, packing."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semirec.core.contracts import MAX_TS, Event, validate_event
from semirec.core.sequences import UserState, apply, pack, replay, unpack
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
    # 0.4 ms before an hour boundary: rounding to milliseconds first would cross it
    assert replay([ev(0, ts=1699999199.9996)])["u"].view()["video"][0]["hour"] == 472221


@settings(max_examples=500, deadline=None)
@given(st.floats(0, MAX_TS, exclude_max=True, allow_nan=False),
       st.sampled_from([1, 60, 3600, 7200, 86400]))
def test_hour_bucket_is_exactly_floor_ts_over_bucket(ts: float, bucket_s: int) -> None:
    state = replay([ev(0, ts=ts)])["u"]
    assert state.video[0].hour(bucket_s) == math.floor(Fraction(ts) / bucket_s)


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
    # a retry re-stamped with another timestamp is caught by the event-id window only; outside
    # it, it is applied again (the window is bounded by design)
    assert apply(state, [(ev(1, ts=BASE_TS + 400), 2)], dedup_window=4) == 0
    apply(state, [(ev(i), 1 + i) for i in range(2, 7)], dedup_window=4)
    assert apply(state, [(ev(1, ts=BASE_TS + 500), 50)], dedup_window=4) == 1


def sequences(state: UserState) -> tuple[list, list]:
    return state.video, state.product


@pytest.mark.parametrize("newer", [1, 100, 10_000])
@pytest.mark.parametrize("retried", ["video", "product"])
@pytest.mark.parametrize("between", ["video", "product", "both"])
def test_a_late_retry_is_never_applied_twice(newer: int, retried: str, between: str) -> None:
    """Whatever the user did between an event and its retry (beyond the event-id window of 64),
    the retry changes nothing: the entry is kept once, or (truncated away) not at all."""
    original = ev(0, domain=retried, item="target")
    domains = ["video", "product"] if between == "both" else [between]
    later = [ev(1 + i, domain=domains[i % len(domains)]) for i in range(newer)]
    state = UserState()
    apply(state, [(e, i) for i, e in enumerate([original, *later])])
    without = (list(state.video), list(state.product))
    still_kept = sum(d == retried for d in domains) * newer / len(domains) < 50
    applied = apply(state, [(original, newer + 1)])
    assert sequences(state) == without
    kept = [e.item_id for e in state.sequence(original.domain)].count("target")
    assert kept == int(still_kept)
    if still_kept:
        assert applied == 0


def with_retries(events: list[Event], n: int, rng: random.Random) -> list[Event]:
    """``events`` with ``n`` of them sent again at random later positions (any delay)."""
    out = list(events)
    for original in rng.sample(events, n):
        out.insert(rng.randint(out.index(original) + 1, len(out)), original)
    return out


def test_a_stream_with_retries_at_random_delays_ends_as_without_them() -> None:
    """The issue's case: 3,200 events over 40 users, 200 retries at random delays."""
    rng = random.Random(5)
    events = [ev(i, domain=rng.choice(["video", "product"]), item=f"i{rng.randint(0, 30)}",
                 ts=BASE_TS + i * 60 + rng.randint(-3600, 3600)) for i in range(3200)]
    events = [Event(e.event_id, f"u{i % 40}", *[getattr(e, f) for f in
                    ("item_id", "domain", "action", "ts", "complete")]) for i, e in enumerate(events)]
    clean, retried = replay(events), replay(with_retries(events, 200, rng))
    assert {u: sequences(s) for u, s in retried.items()} == {u: sequences(s) for u, s in clean.items()}


ids = st.sampled_from(["a", "b", "c", "d"])
fuzzed_events = st.lists(
    st.builds(lambda i, item, dom, dt, done: ev(i, domain=dom, item=item, ts=BASE_TS + dt,
                                                 complete=done),
              st.integers(0, 10**6), ids, st.sampled_from(["video", "product"]),
              st.floats(-1e5, 1e5, allow_nan=False), st.booleans()),
    max_size=120, unique_by=lambda e: e.event_id)


@settings(max_examples=200, deadline=None)
@given(fuzzed_events, st.randoms(use_true_random=False), st.integers(0, 20))
def test_retries_and_arrival_order_never_change_the_sequences(events, rng, n_retries) -> None:
    """Any events, any arrival order, any retries at any delay: the same sequences."""
    reference = replay(events)
    shuffled = list(events)
    rng.shuffle(shuffled)
    retried = with_retries(shuffled, min(n_retries, len(events)), rng)
    got = replay(retried, seq_len=8, dedup_window=2)  # the entry rule, not the window
    want = replay(events, seq_len=8)
    assert {u: sequences(s) for u, s in got.items()} == {u: sequences(s) for u, s in want.items()}
    assert set(replay(shuffled)) == set(reference)


def test_replayed_offsets_are_skipped_per_partition() -> None:
    state = UserState()
    apply(state, [(ev(1), 10), (ev(2), 11)], partition=3)
    assert apply(state, [(ev(3, event_id="x"), 11)], partition=3) == 0
    assert apply(state, [(ev(3, event_id="x"), 11)], partition=4) == 1
    assert state.applied == {3: 11, 4: 11}


def test_incomplete_watches_are_kept_apart_bounded_and_deduplicated() -> None:
    state = UserState()
    watches = [(ev(i, complete=False), i) for i in range(1, 8)]
    assert apply(state, watches, seq_len=5) == 7
    assert state.video == [] and [e.item_id for e in state.skipped] == [f"i{i}" for i in range(3, 8)]
    retry = ev(7, complete=False, event_id="retry-of-e7")  # same item and millisecond
    assert apply(state, [(retry, 8)], seq_len=5) == 0
    seen: list[str] = []
    apply(state, [(ev(9, complete=False), 9), (ev(9, complete=False), 10)], seq_len=5,
          before_watch=lambda s, e, o: seen.append(e.event_id))
    assert seen == ["e9"] and len(state.skipped) == 5


def test_format_1_blobs_still_decode() -> None:
    """A blob written before incomplete watches were kept (format 1: no third list)."""
    state = replay(scripted_events(users=1, per_user=60))
    state = next(iter(state.values()))
    assert state.skipped  # the script has incomplete watches
    blob = bytearray(pack(state))
    blob[0] = 1
    n = len(state.skipped)
    ids = "\x00".join(e.item_id for e in state.skipped).encode()
    old = bytes(blob[: len(blob) - (1 + 8 * n + 4 + len(ids))])
    got = unpack(old)
    assert got.skipped == [] and got.video == state.video and got.product == state.product
    assert got.recent == state.recent and got.applied == state.applied


def test_pack_round_trip_and_compactness() -> None:
    states = replay(scripted_events(users=5, per_user=200))
    for state in states.values():
        state.version = 7
        assert unpack(pack(state)) == state
    full = max(states.values(), key=lambda s: len(s.video) + len(s.product) + len(s.skipped))
    entries = full.video + full.product + full.skipped
    raw_ids = sum(len(e.item_id) for e in entries)
    # 9 bytes per entry (ts + length) + ids + 8 per recent digest + small header
    assert len(pack(full)) <= 9 * len(entries) + raw_ids + 8 * len(full.recent) + 64
