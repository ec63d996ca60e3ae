"""The serving benchmark's load (benchmarks/serving.py): ``--traffic mixed`` events and the
users' histories it writes first, on a real redis-server."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from benchmarks.serving import HISTORY_S, put_histories, traffic_event
from semirec.core.contracts import Domain
from semirec.core.store import SequenceStore
from semirec.serving.popularity import PopularitySnapshot, watch_counts


def test_clicks_traffic_draws_what_it_always_drew_and_mixed_traffic_mixes_watches() -> None:
    rng = np.random.default_rng(100)
    clicks = [traffic_event("clicks", rng, f"e{i}", "u", 10_000, 2000) for i in range(200)]
    older = np.random.default_rng(100)  # the figures before --traffic: one product draw an event
    assert [e.item_id for e in clicks] == [f"p{int(older.integers(0, 2000))}" for _ in range(200)]
    assert all(e.domain is Domain.PRODUCT and e.appends for e in clicks)
    rng = np.random.default_rng(7)
    mixed = [traffic_event("mixed", rng, f"e{i}", "u", 10_000, 2000) for i in range(4000)]
    kinds = Counter("click" if e.domain is Domain.PRODUCT else "complete" if e.complete
                    else "incomplete" for e in mixed)
    assert abs(kinds["click"] / 4000 - 0.5) < 0.03
    assert abs(kinds["complete"] / 4000 - 0.25) < 0.03
    assert abs(kinds["incomplete"] / 4000 - 0.25) < 0.03
    assert sum(e.appends for e in mixed) == kinds["click"] + kinds["complete"]  # what triggers
    assert all(e.item_id.startswith("v") for e in mixed if e.domain is Domain.VIDEO)


async def test_histories_are_full_week_long_states_whose_watches_are_counted(
        settings, redis_client) -> None:
    store = SequenceStore.from_url(settings.redis_url)
    now = time.time()
    counted = await put_histories(store, users=30, entries=50, n_videos=200, n_products=100,
                                  now=now)
    assert counted == 30 * 100
    watches: Counter[str] = Counter()
    completes: Counter[str] = Counter()
    for u in range(30):
        state = await store.get(f"bu{u}")
        assert state is not None
        for seq in (state.product, state.video, state.skipped):
            assert len(seq) == 50 and seq == sorted(seq)
            assert all(now - HISTORY_S <= e.ts_ms / 1000 <= now - 60 for e in seq)
        assert all(e.item_id.startswith("p") for e in state.product)
        watches.update(e.item_id for e in state.video + state.skipped)
        completes.update(e.item_id for e in state.video)
    ids = sorted(watches)
    w, c = await watch_counts(store.client, ids)
    assert w.tolist() == [watches[i] for i in ids] and c.tolist() == [completes[i] for i in ids]
    pop = PopularitySnapshot(window_hours=24)
    await pop.refresh(store.client)
    assert 0 < sum(pop.counts.values()) < sum(completes.values())  # the newest day's
    with pytest.raises(RuntimeError, match="not a fresh stack"):
        await put_histories(store, users=1, entries=1, n_videos=200, n_products=100, now=now)
    await store.close()
