"""Popularity counts from the stream (semirec/serving/popularity.py): one script call per batch must
count exactly what one HINCRBY per watch would, on a real redis-server."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import redis
import redis.asyncio as aioredis

from semirec.core.contracts import Domain, Event
from semirec.serving.popularity import (
    COMPLETES_KEY,
    HOURS_KEY,
    KEEP_S,
    WATCHES_KEY,
    PopularitySnapshot,
    count_watches,
    hour_key,
)


def random_events(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        video = rng.random() < 0.7
        item = f"{'v' if video else 'p'}{rng.randrange(40)}"
        ts = 3600.0 * rng.randrange(100, 104) + rng.random() * 3599
        out.append(Event(f"e{seed}-{i}", f"u{rng.randrange(9)}", item,
                         Domain.VIDEO if video else Domain.PRODUCT,
                         "watch" if video else "click", ts, rng.random() < 0.6 if video else None))
    return out


def expected(batches: list[list[Event]]) -> tuple[Counter, Counter, dict[int, Counter]]:
    watches: Counter[str] = Counter()
    completes: Counter[str] = Counter()
    hours: dict[int, Counter[str]] = {}
    for batch in batches:
        for e in batch:
            if e.domain is Domain.VIDEO:
                watches[e.item_id] += 1
                if e.complete:
                    completes[e.item_id] += 1
                    hours.setdefault(int(e.ts // 3600), Counter())[e.item_id] += 1
    return watches, completes, hours


async def test_counts_equal_one_increment_per_watch(stack, redis_client) -> None:
    client = aioredis.Redis.from_url(stack.addresses.redis)
    batches = [random_events(500, seed) for seed in range(3)] + [[]]
    counted = [await count_watches(client, b) for b in batches]
    want_w, want_c, want_h = expected(batches)
    assert counted == [sum(expected([b])[1].values()) for b in batches]

    def as_counter(raw: dict[bytes, bytes]) -> Counter[str]:
        return Counter({k.decode(): int(v) for k, v in raw.items()})

    assert as_counter(await client.hgetall(WATCHES_KEY)) == want_w
    assert as_counter(await client.hgetall(COMPLETES_KEY)) == want_c
    for hour, counts in want_h.items():
        assert as_counter(await client.hgetall(hour_key(hour))) == counts
        assert 0 < await client.ttl(hour_key(hour)) <= KEEP_S
    assert await client.zrange(HOURS_KEY, 0, -1, withscores=True) == \
        [(str(h).encode(), float(h)) for h in sorted(want_h)]
    pop = PopularitySnapshot(window_hours=2)
    await pop.refresh(client)
    newest = max(want_h)
    assert pop.counts == dict(want_h[newest] + want_h.get(newest - 1, Counter()))
    await client.aclose()


def window_sum(hours: dict[int, Counter], top: int, window: int) -> dict[str, int]:
    total: Counter[str] = Counter()
    for h, counts in hours.items():
        if top - window < h <= top:
            total.update(counts)
    return dict(total)


async def test_the_snapshot_rereads_only_the_hours_written_since(stack, redis_client) -> None:
    """After the first read a refresh reads only the hours with new writes (live traffic: the
    current one), and its counts and ranking equal a new snapshot's; an hour no write count
    covers (an older ingest) is read every time, and the periodic full read catches what the
    write counts missed."""
    client = aioredis.Redis.from_url(stack.addresses.redis)
    batches = [random_events(400, seed) for seed in (11, 12)]  # hours 100-103
    for batch in batches:
        await count_watches(client, batch)
    pop = PopularitySnapshot(window_hours=3)

    async def check(hours_read: int, *, changed: bool, like_new: bool = True) -> None:
        reads, version = pop.hours_read, pop.version
        await pop.refresh(client)
        fresh = PopularitySnapshot(window_hours=3)
        await fresh.refresh(client)
        assert (pop.counts == fresh.counts and pop.ranked == fresh.ranked) is like_new
        assert pop.newest_hour == fresh.newest_hour
        assert pop.hours_read - reads == hours_read
        assert (pop.version != version) is changed

    await check(3, changed=True)  # 101-103
    assert pop.counts == window_sum(expected(batches)[2], 103, 3)
    ranked = pop.ranked
    assert ranked == sorted(sorted(pop.counts), key=lambda v: -pop.counts[v])  # ties by id
    await check(0, changed=False)  # nothing written: nothing read, the same version
    live = [Event(f"l{i}", "u", f"v{i % 7}", Domain.VIDEO, "watch", 3600.0 * 103 + i, True)
            for i in range(20)]
    await count_watches(client, live)
    await check(1, changed=True)  # the current hour only
    batches.append(live)
    assert pop.counts == window_sum(expected(batches)[2], 103, 3)
    late = [Event("late", "u", "v3", Domain.VIDEO, "watch", 3600.0 * 101 + 5, True)]
    await count_watches(client, late)
    await check(1, changed=True)  # a late watch in an older hour of the window
    nxt = [Event("next", "u", "v9", Domain.VIDEO, "watch", 3600.0 * 104, True)]
    await count_watches(client, nxt)
    await check(1, changed=True)  # 104 enters, 101 leaves: read 104 alone
    batches += [late, nxt]
    assert pop.counts == window_sum(expected(batches)[2], 104, 3)

    # an older ingest's hour: counts without a write count, read every time
    await client.hincrby(hour_key(104), "v-old", 4)
    await client.delete(hour_key(104) + ":n")
    await check(1, changed=True)
    await check(1, changed=False)
    assert pop.counts["v-old"] == 4
    # counts changed with no write count moved (a failover): seen at the next full read
    await client.set(hour_key(103) + ":n", 1)
    await check(2, changed=False)  # 103 (its count moved) and the uncounted 104
    await client.hincrby(hour_key(103), "v-lost", 2)
    await check(1, changed=False, like_new=False)
    assert "v-lost" not in pop.counts
    pop.FULL_READ_S = 0.0
    await check(3, changed=True)
    assert pop.counts["v-lost"] == 2
    # a refresh that fails half-way (an hour it must read is not a hash) changes nothing
    pop.FULL_READ_S = 60.0
    before = (dict(pop.counts), list(pop.ranked), pop.version, pop.newest_hour)
    await count_watches(client, [Event("n2", "u", "v1", Domain.VIDEO, "watch", 3600.0 * 105, True)])
    await client.rename(hour_key(105), "kept")
    await client.set(hour_key(105), "not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await pop.refresh(client)
    assert (pop.counts, pop.ranked, pop.version, pop.newest_hour) == before
    await client.delete(hour_key(105))
    await client.rename("kept", hour_key(105))
    await check(2, changed=True)  # 105 enters (and 104, uncounted, as always), 102 leaves
    assert pop.newest_hour == 105
    await client.aclose()


async def test_products_and_incomplete_watches_add_no_hour(stack, redis_client) -> None:
    client = aioredis.Redis.from_url(stack.addresses.redis)
    events = [Event("a", "u", "p1", Domain.PRODUCT, "click", 7200.0, None),
              Event("b", "u", "v1", Domain.VIDEO, "watch", 7200.0, False)]
    assert await count_watches(client, events) == 0
    assert await client.hgetall(WATCHES_KEY) == {b"v1": b"1"}
    assert await client.hgetall(COMPLETES_KEY) == {}
    assert await client.zcard(HOURS_KEY) == 0
    assert await count_watches(client, events[:1]) == 0  # nothing to count: no call at all
    await client.aclose()


async def test_ingest_counts_each_batch_alongside_its_state_write(settings, redis_client) -> None:
    """The ingest processor counts a batch's watches while it writes the state; both are done
    when process returns (before the batch would be acked)."""
    from semirec.core.contracts import encode_event
    from semirec.core.store import SequenceStore
    from semirec.streams.ingest import IngestProcessor, count_popularity
    from semirec.streams.messages import Record

    async def no_dead_letters(bad) -> None:
        raise AssertionError(bad)

    batches = [random_events(300, seed) for seed in (7, 8)]
    store = SequenceStore.from_url(settings.redis_url)
    processor = IngestProcessor(settings, store, no_dead_letters,
                                alongside=count_popularity(store, settings))
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        offset = 0
        for n, batch in enumerate(batches, 1):
            records = []
            for e in batch:
                records.append(Record(e.user_id.encode(), encode_event(e), "events", 0, offset))
                offset += 1
            out = await processor.process(records)
            assert out.users_written == len({e.user_id for e in batch})
            got = {k.decode(): int(v) for k, v in (await client.hgetall(WATCHES_KEY)).items()}
            assert got == dict(expected(batches[:n])[0])
    finally:
        await store.close()
        await client.aclose()
