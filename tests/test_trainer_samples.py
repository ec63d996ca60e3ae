"""Samples: sequences snapshotted before each watch, the split, the CCL pre-training set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semirec.core.contracts import Domain, Event
from semirec.core.sequences import replay
from semirec.trainer.offline.samples import (
    build_samples,
    ccl_records,
    chronological_split,
    length_batches,
    user_batch,
)
from semirec.trainer.offline.toy import toy_world

H = 3600.0


def watch(eid: str, user: str, item: str, ts: float, complete: bool) -> Event:
    return Event(eid, user, item, Domain.VIDEO, "watch", ts, complete)


def click(eid: str, user: str, item: str, ts: float) -> Event:
    return Event(eid, user, item, Domain.PRODUCT, "click", ts)


ROWS = {"v1": 1, "v2": 2, "v3": 3, "p1": 4, "p2": 5}


def test_snapshot_before_each_watch() -> None:
    events = [
        click("e1", "a", "p1", 10 * H + 5),
        watch("e2", "a", "v1", 11 * H + 1, True),
        watch("e3", "b", "v2", 11 * H + 2, True),  # another user: invisible to a
        click("e4", "a", "p2", 12 * H + 7),
        watch("e5", "a", "v2", 14 * H + 3, False),  # incomplete: a sample, never in a sequence
        watch("e6", "a", "v3", 14 * H + 9, True),
    ]
    s = build_samples(events, ROWS, seq_len=4)
    assert list(s.event) == ["e2", "e3", "e5", "e6"]
    assert list(s.label) == [1, 1, 0, 1]
    assert list(s.target) == [1, 2, 2, 3]
    # e2: no video yet, p1 one hour before
    assert s.video[0].tolist() == [0, 0, 0, 0]
    assert s.product[0].tolist() == [0, 0, 0, 4] and s.product_age[0, -1] == 1
    # e3 (user b): nothing at all
    assert s.video[1].sum() == 0 and s.product[1].sum() == 0
    # e5: v1 (3 hours before), products p1, p2 (4 and 2 hours before), right-aligned
    assert s.video[2].tolist() == [0, 0, 0, 1] and s.video_age[2, -1] == 3
    assert s.product[2].tolist() == [0, 0, 4, 5]
    assert s.product_age[2, -2:].tolist() == [4, 2]
    # e6: the incomplete watch e5 did not join the sequence
    assert s.video[3].tolist() == [0, 0, 0, 1]


def test_samples_agree_with_the_ingest_state_and_truncate() -> None:
    world = toy_world(users=6, events_per_user=60, seed=3)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    s = build_samples(world.events, rows, seq_len=10)
    ids = {r: i for i, r in rows.items()}
    for k in (0, len(s) // 2, len(s) - 1):
        before = [e for e in world.events if e.ts < s.ts[k] and e.user_id == s.user[k]]
        state = replay(before, seq_len=10)[s.user[k]] if before else None
        for domain in ("video", "product"):
            got = [ids[r] for r in getattr(s, domain)[k] if r]
            want = [e.item_id for e in state.sequence(Domain(domain))] if state else []
            assert got == want
    assert s.lengths("product").max() == 10  # truncated to the newest 10


def test_unknown_items_and_unsorted_events_are_errors() -> None:
    with pytest.raises(KeyError, match="catalog"):
        build_samples([watch("e", "a", "nope", 1.0, True)], ROWS)
    with pytest.raises(KeyError, match="catalog"):
        build_samples([click("e0", "a", "zz", 0.0), watch("e", "a", "v1", 1.0, True)], ROWS)
    with pytest.raises(ValueError, match="sorted"):
        build_samples([watch("e1", "a", "v1", 5.0, True), watch("e2", "a", "v1", 1.0, True)],
                      ROWS)


def test_chronological_split() -> None:
    world = toy_world(users=20, events_per_user=30)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    s = build_samples(world.events, rows)
    train, val, test = chronological_split(s, 0.2, 0.1)
    assert len(train) + len(val) + len(test) == len(s)
    assert train.ts.max() < val.ts.min() <= val.ts.max() < test.ts.min()
    assert abs(len(test) / len(s) - 0.2) < 0.02
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.02


def test_ccl_records_one_longest_record_per_user() -> None:
    world = toy_world(users=30, events_per_user=40)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    s = build_samples(world.events, rows)
    rec = ccl_records(s, min_video_len=3, min_product_len=5)
    lv, lp = s.lengths("video"), s.lengths("product")
    assert len(set(rec.user)) == len(rec)
    assert (rec.lengths("video") > 3).all() and (rec.lengths("product") >= 5).all()
    for u, score in zip(rec.user, (rec.lengths("video") + rec.lengths("product")) / 2,
                        strict=True):
        ok = (s.user == u) & (lv > 3) & (lp >= 5)
        assert score == ((lv + lp)[ok] / 2).max()
    eligible = {u for u, a, b in zip(s.user, lv, lp, strict=True) if a > 3 and b >= 5}
    assert set(rec.user) == eligible


def test_batches_cover_everything_once_and_trim_padding() -> None:
    world = toy_world(users=20, events_per_user=30)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    s = build_samples(world.events, rows)
    batches = length_batches(s, np.random.default_rng(0).permutation(len(s)), 16,
                             rng=np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(s)))
    table = torch.from_numpy(np.vstack([np.zeros((1, 32)), world.vectors]).astype(np.float32))
    for idx in batches[:5]:
        user = user_batch(s, idx, table, seq_len=50)
        longest = max(1, int(s.lengths("video")[idx].max()))
        assert user.video.shape == (len(idx), longest, 32)
        assert user.video_mask.sum(1).tolist() == s.lengths("video")[idx].tolist()
        assert (user.video[~user.video_mask] == 0).all()


def test_the_ranker_sees_the_last_seven_days_only() -> None:
    from semirec.trainer.offline.samples import in_window

    assert in_window(np.array([0, 1, 168, 169, 5000])).tolist() == [True, True, True, False, False]
    assert in_window(torch.tensor([168, 169])).tolist() == [True, False]
    day = 24 * H
    events = [
        click("e1", "a", "p1", 0.0),  # 9 days before e4: out
        watch("e2", "a", "v1", 1 * day, True),  # 8 days before: out
        watch("e3", "a", "v2", 3 * day, True),  # 6 days before: in
        watch("e4", "a", "v3", 9 * day + 10, True),
    ]
    s = build_samples(events, ROWS, seq_len=4, window_hours=168)
    assert s.video[-1].tolist() == [0, 0, 0, 2] and s.video_age[-1, -1] == 144
    assert s.video_age[-1, :-1].tolist() == [0, 0, 0] and s.product[-1].sum() == 0
    unwindowed = build_samples(events, ROWS, seq_len=4)  # the stored sequence keeps all
    assert unwindowed.video[-1].tolist() == [0, 0, 1, 2]


def test_record_filter_keeps_one_video_or_five_products() -> None:
    from semirec.trainer.offline.samples import record_filter

    events = [click(f"c{i}", "a", "p1", i * H) for i in range(5)]
    events += [watch("w1", "a", "v1", 10 * H, True),  # 5 products before: kept
               watch("w2", "b", "v1", 10 * H, True),  # nothing: dropped
               watch("w3", "b", "v2", 11 * H, False)]  # one (complete) video before: kept
    events += [click("c9", "c", "p1", 12 * H), watch("w4", "c", "v1", 13 * H, True)]  # dropped
    s = build_samples(events, ROWS, seq_len=10)
    assert list(s.event[record_filter(s)]) == ["w1", "w3"]


def test_ccl_records_several_per_user() -> None:
    world = toy_world(users=30, events_per_user=40)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    s = build_samples(world.events, rows)
    one = ccl_records(s, min_video_len=3, min_product_len=5)
    four = ccl_records(s, min_video_len=3, min_product_len=5, per_user=4)
    users, counts = np.unique(four.user.astype(str), return_counts=True)
    assert counts.max() == 4 and set(users) == set(one.user)
    assert set(one.event) <= set(four.event)  # the best record of each user is among them
