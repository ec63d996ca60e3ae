"""Contract tests of semirec/streams/batch_transport.py, which leans on faust-streaming internals (pinned
exactly in pyproject.toml): a faust upgrade that changes them must fail here.

Also part of the contract, with real `semirec worker` processes on the batch transport:
tests/test_ingest.py (kill -9 between a Redis write and the commit, then exact replay),
tests/test_ingest_redis_outage.py (nothing committed past what Redis holds),
tests/test_ingest_failures.py (an unexpected error mid-batch: nothing acked, exact replay).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from semirec.streams.app import create_app, raw_topic
from semirec.streams.batch_transport import Batch, BatchAgent, BatchConsumer, BatchTransport
from semirec.streams.messages import Record, describe, describe_runs
from semirec.streams.runtime import runtime_of
from tests.event_script import encode, scripted_events
from tests.kafka_utils import produce_raw, wait_committed
from tests.test_ingest import comparable, stored_states
from tests.test_ingest_failures import expected_states
from tests.workers import start_worker, stop


@dataclass
class Fetched:  # what aiokafka's getmany yields, as far as the slice logic reads it
    offset: int


def records(tp: TopicPartition, offsets: list[int]) -> list[Record]:
    return [Record(b"k", b"v", tp.topic, tp.partition, o) for o in offsets]


async def test_batches_ack_into_faust_bookkeeping_with_gaps_and_generations(settings) -> None:
    app = create_app(settings, app_id="contract-test")

    async def handler(_: object) -> None:
        return None

    BatchAgent(app, raw_topic(app, "contract", 1), "contract", handler, batch_max=10)
    assert isinstance(app.transport, BatchTransport)
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    tp = TopicPartition("contract", 0)
    consumer.assignment = lambda: {tp}  # as if the group had assigned it
    consumer._committed_offset[tp] = 10
    gen = app.consumer_generation_id

    # a slice 10,11 then one after skipped offsets 12,13 (compaction, transaction markers)
    first = Batch(tp, records(tp, [10, 11]), gen)
    consumer._unacked_messages.add(first)
    assert consumer.ack_batch(first) and first.acked and first not in consumer._unacked_messages
    assert consumer._new_offset(tp) == 12
    consumer._committed_offset[tp] = 12  # what faust's commit records
    await consumer._add_gaps(tp, 11, [Fetched(14), Fetched(15), Fetched(17)])  # 12-13 and 16
    second = Batch(tp, records(tp, [14, 15]), gen)
    assert consumer.ack_batch(second)
    assert consumer._new_offset(tp) == 16, "gaps count as acked, the unacked 17 does not"
    consumer._committed_offset[tp] = 16
    third = Batch(tp, records(tp, [17]), gen)
    assert consumer.ack_batch(third)
    assert consumer._new_offset(tp) == 18
    consumer._committed_offset[tp] = 18
    assert consumer._n_acked == 5

    # a batch fetched before a rebalance is never acked
    stale = Batch(tp, records(tp, [18, 19]), gen - 1)
    assert not consumer.ack_batch(stale) and stale.acked
    assert consumer._new_offset(tp) is None
    # nor one of a partition no longer assigned
    consumer.assignment = lambda: set()
    assert not consumer.ack_batch(Batch(tp, records(tp, [18]), gen))
    assert consumer._new_offset(tp) is None


async def test_each_app_owns_its_runtime(settings) -> None:
    async def handler(_: object) -> None:
        return None

    one, two = create_app(settings, app_id="runtime-one"), create_app(settings, app_id="runtime-two")
    a = BatchAgent(one, raw_topic(one, "shared", 1), "a", handler, batch_max=10)
    b = BatchAgent(two, raw_topic(two, "shared", 1), "b", handler, batch_max=10)  # another app: fine
    mine, theirs = runtime_of(one), runtime_of(two)
    assert mine is not theirs and runtime_of(one) is mine
    assert mine.fetch_max_wait_ms == settings.fetch_max_wait_ms
    assert mine.batch_agents == [a] and theirs.batch_agents == [b]
    assert set(mine.watches) == {"a"} and set(theirs.watches) == {"b"}
    assert one.consumer.batch_queues == {"shared": a.queue}
    assert two.consumer.batch_queues == {"shared": b.queue}
    with pytest.raises(ValueError, match="already consumed"):
        BatchAgent(one, raw_topic(one, "shared", 1), "c", handler, batch_max=10)


async def test_two_workers_rebalance_under_load_with_exact_state(settings, redis_client,
                                                                 tmp_path) -> None:
    """A second worker joins and the first leaves while events stream in: every partition
    commits to its end and every user's state is the event list's."""
    events = scripted_events(users=40, per_user=200, seed=41)
    messages = encode(events)
    chunks = [messages[i:i + 800] for i in range(0, len(messages), 800)]
    ends: dict[int, int] = {}

    async def feed(part: list) -> None:
        for chunk in part:
            got = await produce_raw(settings, chunk)
            for p, end in got.items():
                ends[p] = max(ends.get(p, 0), end)
            await asyncio.sleep(0.05)

    third = len(chunks) // 3
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        await feed(chunks[:third])
        second = start_worker(settings, tmp_path / "w2.log")
        await feed(chunks[third:2 * third])  # the group rebalances meanwhile
        assert first.poll() is None and second.poll() is None
        stop(first, signal.SIGTERM)  # and again: the first leaves under load
        await feed(chunks[2 * third:])
        await wait_committed(settings, ends, proc=second, timeout=90)
        states = await stored_states(settings)
    finally:
        stop(first, signal.SIGKILL)
        if second is not None:
            stop(second)
    assert comparable(states) == expected_states(events)
    log = (tmp_path / "w1.log").read_text() + (tmp_path / "w2.log").read_text()
    assert "unexpected error" not in log


def test_the_batch_in_flight_is_described_from_its_slices() -> None:
    """The health checks' span of a joined batch, built from its slices' ends, is what the
    message-by-message description gives (partitions in numeric order, joined slices merged)."""
    slices = [records(TopicPartition("events", p), offsets) for p, offsets in
              ((10, [5, 6, 9]), (2, [0, 1]), (2, [2, 7]), (0, [3]))]
    runs = [(s[0].topic, s[0].partition, s[0].offset, s[-1].offset) for s in slices]
    span = describe_runs(runs)
    assert span == describe([m for s in slices for m in s])
    assert span == "events[0] 3..3, events[2] 0..7, events[10] 5..9"


@pytest.mark.parametrize("close_on_fetch", [True, False])
async def test_the_window_closes_once_the_fetch_is_handed_over(settings, close_on_fetch) -> None:
    """A quiet stream does not wait ``within_s``: the batch goes to the handler as soon as the
    fetch that brought it is handed over completely (its later slices joined); without
    ``close_on_fetch`` the window stays open for ``within_s``."""
    app = create_app(settings, app_id=f"window-test-{close_on_fetch}")
    loop = asyncio.get_running_loop()
    got: list[tuple[float, list[int]]] = []

    async def handler(messages) -> None:
        got.append((loop.time(), [m.offset for m in messages]))

    within = 0.6
    agent = BatchAgent(app, raw_topic(app, "window", 1), "window", handler, batch_max=100,
                       within_s=within, close_on_fetch=close_on_fetch)
    consumer = app.consumer
    tp = TopicPartition("window", 0)
    consumer.assignment = lambda: {tp}
    consumer._committed_offset[tp] = 0
    gen = app.consumer_generation_id
    task = asyncio.ensure_future(agent._run(app))
    try:
        start = loop.time()
        consumer.fetches = 1  # fetch 1 is being handed over: two slices
        agent.queue.force_put_nowait(Batch(tp, records(tp, [0, 1]), gen, 1))
        await asyncio.sleep(0.05)
        assert not got, "the fetch is not handed over yet: its other slices may follow"
        agent.queue.force_put_nowait(Batch(tp, records(tp, [2]), gen, 1))
        consumer._fetch_handed_over()
        while not got and loop.time() - start < 3 * within:
            await asyncio.sleep(0.01)
        assert [offsets for _, offsets in got] == [[0, 1, 2]]
        waited = got[0][0] - start
        assert (waited < within / 2) if close_on_fetch else (waited >= within * 0.95)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("busy", [True, False])
async def test_a_busy_stream_lingers_for_a_fuller_batch(settings, busy) -> None:
    """With ``linger_s`` a batch whose fetch was handed over stays open while the last second's
    rate predicts more before the linger ends, and goes once it holds ``linger_max`` messages;
    on a quiet stream it goes at once."""
    app = create_app(settings, app_id=f"linger-test-{busy}")
    loop = asyncio.get_running_loop()
    got: list[tuple[float, list[int]]] = []

    async def handler(messages) -> None:
        got.append((loop.time(), [m.offset for m in messages]))

    linger = 0.8
    agent = BatchAgent(app, raw_topic(app, "linger", 1), "linger", handler, batch_max=100,
                       within_s=0.005, linger_s=linger, linger_max=3)
    consumer = app.consumer
    tp = TopicPartition("linger", 0)
    consumer.assignment = lambda: {tp}
    consumer._committed_offset[tp] = 0
    gen = app.consumer_generation_id
    if busy:
        agent.rate.add(loop.time(), 20)  # the last second brought 20 messages
    task = asyncio.ensure_future(agent._run(app))
    try:
        start = loop.time()
        for fetch, offset in enumerate((0, 1) if busy else (0,), start=1):  # one per fetch
            consumer.fetches = fetch
            agent.queue.force_put_nowait(Batch(tp, records(tp, [offset]), gen, fetch))
            consumer._fetch_handed_over()
            await asyncio.sleep(0.1)
        if not busy:  # 1 message in the last second: none more is due within the linger
            assert [offsets for _, offsets in got] == [[0]]
            assert got[0][0] - start < 0.05
            return
        assert not got, "busy: the batch lingers for more"
        consumer.fetches = 3
        agent.queue.force_put_nowait(Batch(tp, records(tp, [2]), gen, 3))
        consumer._fetch_handed_over()
        while not got and loop.time() - start < 3 * linger:
            await asyncio.sleep(0.01)
        assert [offsets for _, offsets in got] == [[0, 1, 2]]
        assert got[0][0] - start < 0.75 * linger, "full at linger_max: no waiting for the rest"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
