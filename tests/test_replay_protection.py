"""Replay protection is counted, and a topic recreated or mirrored (offsets start again below
what user states applied) is detected and its events applied, not silently skipped."""

from __future__ import annotations

from dataclasses import replace

from semirec.core.contracts import Domain, Event, encode_event
from semirec.core.metrics import REGISTRY
from semirec.core.sequences import replay
from semirec.core.store import SequenceStore
from semirec.streams.ingest import IngestProcessor
from semirec.streams.messages import Record
from tests.event_script import encode, scripted_events
from tests.kafka_utils import produce_raw, wait_committed
from tests.test_ingest import comparable, stored_states
from tests.workers import running_worker


async def _no_dead_letters(bad) -> None:
    raise AssertionError(bad)


def _events(tag: str, n: int) -> list[Event]:
    return [Event(event_id=f"{tag}{i}", user_id="u1", item_id=f"{tag}-v{i}", domain=Domain.VIDEO,
                  action="watch", ts=1_700_000_000.0 + i, complete=True) for i in range(n)]


def _records(events: list[Event], first_offset: int) -> list[Record]:
    return [Record(e.user_id.encode(), encode_event(e), "events", 0, first_offset + i)
            for i, e in enumerate(events)]


def _metric(name: str, agent: str) -> float:
    return REGISTRY.get_sample_value(name, {"agent": agent}) or 0.0


async def test_replays_are_counted_and_a_state_past_the_log_end_is_reset(settings,
                                                                         redis_client) -> None:
    store = SequenceStore.from_url(settings.redis_url)
    ends = {0: 100}
    proc = IngestProcessor(settings, store, _no_dead_letters, log_end=ends.get)
    agent = proc.metrics.agent
    try:
        first = _events("a", 10)
        out = await proc.process(_records(first, 90))  # offsets 90..99
        assert (out.applied_events, out.replay_skipped, out.replay_resets) == (10, 0, 0)
        skipped_before = _metric("semirec_events_replay_skipped_total", agent)
        # the same batch again (a crash before the commit), plus 2 new events: 10 skipped
        out = await proc.process(_records([*first, *_events("b", 2)], 90))
        assert (out.applied_events, out.replay_skipped, out.replay_resets) == (2, 10, 0)
        assert _metric("semirec_events_replay_skipped_total", agent) == skipped_before + 10
        # the topic is recreated: offsets start at 0 again, far below the applied 101, and the
        # log ends at 5, so the state's offset comes from another incarnation of the topic
        ends[0] = 5
        resets_before = _metric("semirec_replay_protection_resets_total", agent)
        out = await proc.process(_records(_events("c", 5), 0))
        assert (out.applied_events, out.replay_skipped, out.replay_resets) == (5, 0, 1)
        assert _metric("semirec_replay_protection_resets_total", agent) == resets_before + 1
        state = await store.get("u1")
        assert state is not None and state.applied == {0: 4} and len(state.video) == 17
    finally:
        await store.close()


async def test_worker_applies_a_mirrored_topic_whose_offsets_restart(settings, redis_client,
                                                                     tmp_path) -> None:
    """A worker consumes one topic; then the stream moves to a new topic (a mirror in another
    cluster: same users, offsets from 0). Its events are applied, not skipped as replays.

    Detected per user while the new log is shorter than the offset the user's state applied
    (docs/operations.md): here every user of the old stream has a long history there."""
    old = [e for e in scripted_events(users=8, per_user=60, seed=21)
           if int(e.user_id.removeprefix("user-")) % 3]  # no short histories
    new = scripted_events(users=8, per_user=20, seed=22)
    new = [replace(e, event_id=f"new-{e.event_id}") for e in new]
    with running_worker(settings, tmp_path / "w1.log", "--agent", "ingest") as proc:
        await wait_committed(settings, await produce_raw(settings, encode(old)), proc=proc)
    topics = replace(settings.topics, events=f"{settings.topics.events}-mirror")
    mirror = replace(settings, topics=topics)
    with running_worker(mirror, tmp_path / "w2.log", "--agent", "ingest") as proc:
        await wait_committed(mirror, await produce_raw(mirror, encode(new)), proc=proc)
        states = await stored_states(settings)
    expected = {u: s for u, s in replay([*old, *new]).items() if s.video or s.product}
    assert comparable(states) == comparable(expected)
