"""Ingest against the real broker and redis-server, with a real `semirec worker` process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

from semirec.core.dead_letters import parse_dead_letter
from semirec.core.sequences import UserState, replay
from semirec.core.store import SequenceStore
from tests.event_script import MALFORMED, encode, scripted_events
from tests.kafka_utils import committed, consume_all, produce_raw, wait_committed
from tests.workers import running_worker, start_worker, stop


async def stored_states(settings) -> dict[str, UserState]:
    store = SequenceStore.from_url(settings.redis_url)
    try:
        return {uid: await store.get(uid) for uid in await store.user_ids()}
    finally:
        await store.close()


def comparable(states: dict[str, UserState]) -> dict[str, tuple]:
    """What must match the reference: sequences and the de-duplication window."""
    return {uid: (s.video, s.product, s.recent) for uid, s in states.items()}


async def test_scripted_stream_with_dlq(settings, redis_client, tmp_path) -> None:
    events = scripted_events(users=20, per_user=130)
    messages = encode(events)
    # malformed messages interleaved at fixed places
    for i, (key, value, _) in enumerate(MALFORMED):
        messages.insert(37 * i + 5, (key, value))
    with running_worker(settings, tmp_path / "worker.log") as proc:
        ends = await produce_raw(settings, messages)
        await wait_committed(settings, ends, proc=proc)
        states = await stored_states(settings)

    expected = replay(events)
    assert comparable(states) == comparable({u: s for u, s in expected.items() if s.video or s.product})
    assert max(len(s.video) for s in states.values()) == 50  # truncation happened
    assert max(len(s.product) for s in states.values()) == 50

    letters = await consume_all(settings, settings.topics.events_dlq, len(MALFORMED))
    assert len(letters) == len(MALFORMED)
    records = [parse_dead_letter(r.value) for r in letters]
    assert Counter(r.reason for r in records) == Counter(m[2] for m in MALFORMED)
    originals = {r.original() for r in records}
    assert originals == {m[1] for m in MALFORMED}
    for r in records:
        assert r.source.topic == settings.topics.events and r.message
        assert r.source.offset >= 0 and r.stage == "ingest"


async def test_worker_killed_mid_stream_replays_without_double_apply(settings, redis_client,
                                                                    tmp_path) -> None:
    """kill -9 between a Redis write and the next offset commit, then restart.

    First half: produced and committed. Then the head of the second half is produced; as soon
    as the worker has written some of it to Redis (before the next commit, 3 s later) it is
    killed, so the restarted worker replays events whose effects are already in Redis. The tail
    is produced only after the kill: however fast the worker is, the kill lands mid-stream.
    """
    events = scripted_events(users=40, per_user=300, seed=11)
    messages = encode(events)
    half = len(messages) // 2
    head, tail = messages[half:half + half // 4], messages[half + half // 4:]
    # small batches: the head takes many of them, so the kill often lands inside it too
    proc = start_worker(settings, tmp_path / "worker1.log", SEMIREC_COMMIT_INTERVAL_S="3",
                        SEMIREC_BATCH_MAX="100")
    try:
        first = await produce_raw(settings, messages[:half])
        await wait_committed(settings, first, proc=proc)
        await produce_raw(settings, head)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(off >= first.get(p, 0) for s in (await stored_states(settings)).values()
                   for p, off in s.applied.items()):
                break
            await asyncio.sleep(0.02)
    finally:
        stop(proc, signal.SIGKILL)
    done = await committed(settings, settings.consumer_group, settings.topics.events,
                           settings.event_partitions)
    written = await stored_states(settings)
    assert done == first, "a commit slipped in before the kill: nothing would be replayed"
    assert any(off >= first.get(p, 0) for s in written.values() for p, off in s.applied.items())
    ends = await produce_raw(settings, tail)
    assert set(ends) == set(first)  # the tail reaches every partition: ends are the final ends

    with running_worker(settings, tmp_path / "worker2.log") as proc2:
        await wait_committed(settings, ends, proc=proc2)
        states = await stored_states(settings)
    expected = {u: s for u, s in replay(events).items() if s.video or s.product}
    assert comparable(states) == comparable(expected)
