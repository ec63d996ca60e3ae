"""Batch transport: faust's aiokafka consumer, handing whole fetch slices to batch agents.

faust-streaming 0.15.3 delivers every message on its own (``_drain_messages`` awaits
``wait_first(callback(message), ...)`` per message, then the conductor, a channel queue and the
stream iterator), which caps an agent at ~10k messages/s here (docs/ingest.md). This module keeps
faust (group membership, rebalances, the commit timer, commit on stop, flow control) and replaces
only the per-message hand-over for the topics a :class:`BatchAgent` claims:

- :class:`BatchConsumer` (the transport's ``Consumer``) fetches as faust does, and for a claimed
  topic hands each partition's fetch slice to the agent's queue as one :class:`Batch`: one
  ``wait_first`` per slice; faust's read-offset rule (records before the read offset are
  dropped) and gap rule (skipped offsets are committable) hold per slice. Other topics go the
  usual per-message way, so ordinary faust agents in the same worker are unaffected.
- The batch agent calls its handler with the batch's messages, and only when the handler has
  returned (state durable) marks all their offsets acked in faust's own bookkeeping
  (``_acked``, ``_acked_index``, ``_n_acked``, ``_unacked_messages``), which faust's commit timer,
  its rebalance wait (``wait_empty``) and its commit on stop read.
- A batch fetched in an older consumer generation (a rebalance happened meanwhile) is never
  acked: its partitions are read again from the committed offsets, and the applied offsets stored
  with the state make that replay a no-op. A rebalance waits for the batch in flight (each batch
  is tracked as unacked until its handler returns); batches still queued are dropped by faust's
  flow control (``clear``) and read again.
- Order: one agent task per topic processes its batches in fetch order, so per-partition order
  holds.

This leans on faust internals, so ``pyproject.toml`` pins faust-streaming exactly and
``tests/test_batch_transport.py`` checks the contract (kill -9 replay, a two-worker rebalance
under load, a Redis outage, offset gaps).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.futures import notify

from semirec.core.faults import FatalError
from semirec.streams.batches import stop_on_unexpected_error
from semirec.streams.fatal import stop_on_fatal_fault
from semirec.streams.messages import Message, Record, describe_runs
from semirec.streams.runtime import runtime_of

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Message]], Awaitable[Any]]
QUEUE_BATCHES = 8  # fetch slices buffered per agent before the fetch loop waits


class Batch:
    """One partition's fetch slice, tracked by faust's consumer as a single unacked message."""

    __slots__ = ("__weakref__", "acked", "fetch", "generation", "messages", "refcount", "tp")

    def __init__(self, tp: Any, messages: list[Message], generation: int, fetch: int = 0) -> None:
        self.tp = tp
        self.messages = messages
        self.generation = generation
        self.fetch = fetch  # the consumer's fetch round that brought it (BatchConsumer.fetches)
        self.acked = False
        self.refcount = 1  # faust's wait_empty logs it

    def __repr__(self) -> str:
        first, last = self.messages[0].offset, self.messages[-1].offset
        return f"<Batch {self.tp.topic}[{self.tp.partition}] {first}..{last} gen {self.generation}>"


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, with the fetch long-poll from our settings: faust hard-codes
    1.5 s, and a broker that holds a fetch until then (Tansu does, measured: p50 415 ms per hop
    at 1.5 s, 3 ms at 50 ms) adds that to every hop of a quiet stream. The setting is the app's
    runtime's ``fetch_max_wait_ms`` (set by :func:`semirec.streams.app.create_app`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = runtime_of(self.app).fetch_max_wait_ms
        if wait:
            consumer._fetch_max_wait_ms = int(wait)  # read by its Fetcher at start()
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with a fetch loop that hands claimed topics over by slice."""

    _in_flight: set[Batch] | None = None
    fetches = 0  # fetch results taken by the fetch loop so far
    fetches_handed_over = 0  # of those, the ones whose every slice is queued
    _handed_over: asyncio.Event | None = None

    @property
    def handed_over(self) -> asyncio.Event:
        """Set (and replaced) each time a fetch result has been handed over completely."""
        if self._handed_over is None:
            self._handed_over = asyncio.Event()
        return self._handed_over

    def _fetch_handed_over(self) -> None:
        self.fetches_handed_over = self.fetches
        event, self._handed_over = self.handed_over, asyncio.Event()
        event.set()

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def in_flight(self) -> set[Batch]:
        """Batches whose handler is running (strong references, unlike faust's weak set)."""
        if self._in_flight is None:
            self._in_flight = set()
        return self._in_flight

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """Before faust forgets the revoked partitions: drop the queued slices (they are read
        again), let the batches in flight finish (bounded by the rebalance timeout), and commit
        what they acked, whatever ``stream_wait_empty`` says."""
        for queue in {id(q): q for q in self.batch_queues.values()}.values():
            queue.clear()
        deadline = time.monotonic() + self.app.conf.broker_rebalance_timeout * 0.8
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.in_flight:
            log.warning("rebalance goes on with %d batches in flight; they will not be acked",
                        len(self.in_flight))
        await self.commit()
        await super().on_partitions_revoked(revoked)

    @property
    def batch_queues(self) -> dict[str, Any]:
        """Topic name -> the claiming agent's queue (the app runtime's ``batch_claims``)."""
        return runtime_of(self.app).batch_claims

    def ack_batch(self, batch: Batch) -> bool:
        """Mark every offset of ``batch`` acked, unless it comes from an older generation or its
        partition was revoked; returns whether it was acked."""
        batch.acked = True
        self._unacked_messages.discard(batch)
        self.in_flight.discard(batch)
        tp = batch.tp
        current = (batch.generation == self.app.consumer_generation_id
                   and tp in self.assignment())
        try:
            if not current:
                log.info("not acking %r: fetched before a rebalance; it will be read again", batch)
                return False
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            offsets = [m.offset for m in batch.messages
                       if (committed is None or m.offset >= committed) and m.offset not in index]
            index.update(offsets)
            self._acked[tp].extend(offsets)
            self._n_acked += len(offsets)
            return True
        finally:
            notify(self._waiting_for_ack)  # wakes faust's wait_empty

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - a faust hook
        """faust's fetch loop (``faust.transport.consumer.Consumer._drain_messages``), with one
        hand-over per partition slice for claimed topics."""
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        batch_queues = self.batch_queues
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                generation = self.app.consumer_generation_id
                if not self.flow_active:  # as faust's getmany: fetched during a stop, read again
                    await self.perform_seek()
                    continue
                self.fetches += 1
                try:
                    await self._hand_over(records, active, generation, callback, read_offset,
                                          batch_queues, commit_every, acks_enabled_for)
                finally:
                    self._fetch_handed_over()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _hand_over(self, records: Any, active: Any, generation: int, callback: Any,
                         read_offset: Any, batch_queues: dict[str, Any], commit_every: Any,
                         acks_enabled_for: Any) -> None:  # pragma: no cover - a faust hook
        """One fetch result: each claimed topic's partition slice to its agent's queue as one
        :class:`Batch`, other topics message by message (faust's path)."""
        for tp, recs in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                break
            if active is not None and tp not in active \
                    and tp not in self._buffered_partitions:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            queue = batch_queues.get(tp.topic)
            if queue is None:
                for rec in recs:  # ordinary topics: faust's own per-message path
                    await self._deliver_one(tp, rec, callback, acks_enabled_for)
                continue
            r_offset = read_offset[tp]
            if r_offset is not None:
                recs = [r for r in recs if r.offset >= r_offset]
            if not recs:
                continue
            await self._add_gaps(tp, r_offset, recs)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            batch = Batch(tp, [Record(r.key, r.value, r.topic, r.partition, r.offset,
                                      r.timestamp / 1000.0) for r in recs], generation,
                          self.fetches)
            self._unacked_messages.add(batch)
            await self.wait_first(queue.put(batch), self.suspend_flow.wait())
            read_offset[tp] = recs[-1].offset
            del batch

    async def _add_gaps(self, tp: Any, r_offset: int | None, recs: list[Any]) -> None:
        """Offsets that will never arrive (compaction, transaction markers) count as acked, as in
        faust; unlike faust's rule the gap excludes the record after it, which still needs its
        own ack."""
        prev = r_offset
        if recs[-1].offset - recs[0].offset + 1 == len(recs):  # contiguous slice
            if prev is not None and recs[0].offset > prev + 1:
                await self._add_gap(tp, prev + 1, recs[0].offset - 1)
            return
        for r in recs:
            if prev is not None and r.offset > prev + 1:
                await self._add_gap(tp, prev + 1, r.offset - 1)
            prev = r.offset

    async def _deliver_one(self, tp: Any, record: Any, callback: Any, acks_enabled_for: Any) -> None:
        """faust's per-message body of ``_drain_messages``."""
        message = self._to_message(tp, record)
        offset = message.offset
        r_offset = self._read_offset[tp]
        if r_offset is None or offset >= r_offset:
            if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            await self.wait_first(callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = offset


class BatchTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`BatchConsumer`."""

    Consumer = BatchConsumer


def use_batch_transport(app: Any) -> None:
    """Make ``app`` consume through :class:`BatchTransport` (before the worker starts)."""
    if not isinstance(app._transport, BatchTransport):
        app.transport = BatchTransport(app.conf.broker_consumer, app)


class ArrivalRate:
    """Messages per second over the last ``span_s`` seconds (of a monotonic clock)."""

    __slots__ = ("_seen", "_total", "span_s")

    def __init__(self, span_s: float = 1.0) -> None:
        self.span_s = span_s
        self._seen: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, now: float, n: int) -> None:
        self._seen.append((now, n))
        self._total += n
        self._trim(now)

    def per_s(self, now: float) -> float:
        self._trim(now)
        return self._total / self.span_s

    def _trim(self, now: float) -> None:
        seen = self._seen
        while seen and seen[0][0] <= now - self.span_s:
            self._total -= seen.popleft()[1]


class BatchAgent:
    """Consumes one topic in batches: ``handler(messages)`` per batch, acked once it returned.

    The handler gets the slices (each one partition's fetch, in order) that arrive within
    ``within_s`` of the first, joined, until they hold ``batch_max`` messages (the last slice may
    pass it). With ``close_on_fetch`` (the default) the window closes as soon as the fetch result
    that brought the last slice is handed over completely and nothing else is queued: a quiet
    stream does not wait ``within_s`` for nothing, while under load the slices that queued up
    meanwhile are still joined. With ``linger_s`` the window stays open after the fetch, up to
    ``linger_s`` from the first slice and while the batch holds fewer than ``linger_max``
    messages, as long as the recent message rate (the last second's) predicts at least one more
    message before it closes: a busy stream gets fuller batches (per-call costs paid once), a
    quiet one never waits. An error it raises stops the worker without acking (docs/ingest.md). The agent
    registers in the app's runtime (:func:`semirec.streams.runtime.runtime_of`): its watch, the
    topics it claims, and itself for the health checks.
    """

    def __init__(self, app: Any, topic: Any, name: str, handler: BatchHandler, *,
                 batch_max: int, within_s: float = 0.05, close_on_fetch: bool = True,
                 linger_s: float = 0.0, linger_max: int = 0,
                 exit_delay_s: float | None = None) -> None:
        use_batch_transport(app)
        self.app = app
        self.runtime = runtime = runtime_of(app)
        self.topic = topic
        self.name = name
        self.handler = handler
        self.batch_max = batch_max
        self.within_s = within_s
        self.close_on_fetch = close_on_fetch
        self.linger_s = linger_s
        self.linger_max = linger_max or batch_max
        self.rate = ArrivalRate()
        self.exit_delay_s = exit_delay_s
        self.queue = app.FlowControlQueue(maxsize=QUEUE_BATCHES, clear_on_resume=True)
        self.progress = runtime.watch(name)
        self.running = False
        for topic_name in topic.topics:  # before the consumer starts: nothing goes astray
            if runtime.batch_claims.setdefault(topic_name, self.queue) is not self.queue:
                raise ValueError(f"topic {topic_name} is already consumed by a batch agent")
        app.topics.add(topic)  # subscribe; the consumer never hands its messages to the conductor
        runtime.batch_agents.append(self)
        app.task(self._run)

    async def _run(self, app: Any) -> None:
        consumer = app.consumer
        if not isinstance(consumer, BatchConsumer):
            raise TypeError(f"{self.name}: the app's consumer is {type(consumer).__name__}, "
                            "not a BatchConsumer (call use_batch_transport before it starts)")
        self.running = True
        loop = asyncio.get_running_loop()
        try:
            while not app.should_stop:
                batches = [await self.queue.get()]
                size = len(batches[0].messages)
                first = loop.time()
                self.rate.add(first, size)
                deadline, lingers_until = first + self.within_s, first + self.linger_s
                while size < self.batch_max:
                    if self.queue.empty():
                        now = loop.time()
                        if self.close_on_fetch and consumer.fetches_handed_over >= batches[-1].fetch:
                            # the fetch is all here and nothing else queued: no waiting, unless
                            # the stream is busy enough that more is due within the linger
                            if size >= self.linger_max \
                                    or self.rate.per_s(now) * (lingers_until - now) < 1.0:
                                break
                            remaining = lingers_until - now
                        else:
                            remaining = deadline - now
                        if remaining <= 0:
                            break
                        got = await self._next(consumer, remaining)
                        if got is None:
                            continue  # the fetch was handed over (checked above) or time is up
                        batches.append(got)
                    else:
                        batches.append(self.queue.get_nowait())
                    size += len(batches[-1].messages)
                    self.rate.add(loop.time(), len(batches[-1].messages))
                await self._process(consumer, batches)
                del batches
        except asyncio.CancelledError:
            raise
        except FatalError as exc:  # refused credentials, broken configuration: its exit code
            await stop_on_fatal_fault(self.runtime, exc.fault)
        except Exception as exc:
            await stop_on_unexpected_error(self.runtime, self.name, exc, exit_delay_s=self.exit_delay_s)
        finally:
            self.running = False

    async def _next(self, consumer: BatchConsumer, timeout: float) -> Batch | None:
        """The next queued batch, or None once ``timeout`` passed or (``close_on_fetch``) the
        consumer finished handing over a fetch result."""
        getter = asyncio.ensure_future(self.queue.get())
        waits = {getter}
        if self.close_on_fetch:
            waits.add(asyncio.ensure_future(consumer.handed_over.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if not w.done():
                    w.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _process(self, consumer: BatchConsumer, batches: list[Batch]) -> None:
        messages = [m for b in batches for m in b.messages] if len(batches) > 1 \
            else batches[0].messages
        self.progress.start(messages, describe_runs(  # a slice is in offset order
            (b.tp.topic, b.tp.partition, b.messages[0].offset, b.messages[-1].offset)
            for b in batches))
        started = time.perf_counter()
        consumer.in_flight.update(batches)
        try:
            await self.handler(messages)
        except BaseException:
            consumer.in_flight.difference_update(batches)
            raise
        for batch in batches:
            consumer.ack_batch(batch)
        self.progress.done()
        log.debug("%s: %d messages in %.1f ms", self.name, len(messages),
                  (time.perf_counter() - started) * 1000)
