"""Ingest agent: events topic -> per-user video/product sequences in Redis.

Per batch (:class:`semirec.streams.batch_transport.BatchAgent`: one or more partition fetch slices):
decode and validate every message; dead-letter the malformed ones and wait for the broker's
ack; group the rest by user; read each user's state, apply the events with
:func:`semirec.core.sequences.apply` and compare-and-set it back (one script call per chunk of
users), with the ``alongside`` hook (popularity counts) running meanwhile; run the
``after_write`` hook (user-update notices); only then ack the messages, so faust commits an
offset only after Redis has acknowledged the state.
A crash between the Redis write and the commit replays the batch, and the per-partition
applied offsets stored inside each user's state make the replay a no-op. Redis errors are
retried with back-off forever: the agent never acks what it has not written. Any other
error stops the worker without acking the batch (:func:`semirec.streams.batches.stop_on_unexpected_error`).
With ``SEMIREC_LOG_SAMPLES`` (default on) every watch's point-in-time training sample (the
user's state just before it) is published to ``samples`` (in chunks, while the batch is applied)
and acknowledged before the state write (docs/online-training.md).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from semirec.core.contracts import ContractError, Domain, Event
from semirec.core.metrics import AgentMetrics
from semirec.core.recommendations import UserUpdate
from semirec.core.samples import TrainingSample, sample_of
from semirec.core.sequences import UserState, apply, pack
from semirec.core.settings import Settings
from semirec.core.store import SequenceStore
from semirec.streams.batch_transport import BatchAgent
from semirec.streams.batches import DeadLetterSink, retry_while_redis_down
from semirec.streams.event_codec import decode_event
from semirec.streams.messages import Message
from semirec.streams.publish import Partitioner, publish_many
from semirec.streams.runtime import RecommendUpdates

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchOutcome:
    messages: int = 0
    applied_events: int = 0  # events that changed a sequence (incomplete watches not counted)
    users_written: int = 0
    cas_conflicts: int = 0
    replay_skipped: int = 0  # events at or below their user's applied offset (a replay)
    replay_resets: int = 0  # user partitions whose applied offset lay past the log end
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    events: list[tuple[Message, Event]] = field(default_factory=list)  # the valid ones
    # user_id -> the newest (message, event) of each user whose video / product sequence changed
    # in this batch (a state changed only by incomplete watches is written, not announced)
    changed: dict[str, tuple[Message, Event] | None] = field(default_factory=dict)
    # user_id -> the state written for each changed user (handed to an inline recommender)
    states: dict[str, UserState] = field(default_factory=dict)


AfterWrite = Callable[[BatchOutcome], Awaitable[None]]
# partition -> its log end offset (the consumer's high watermark), None when unknown
LogEnd = Callable[[int], int | None]
# user_id -> partition -> (event, offset) in offset order
ByUser = dict[str, dict[int, list[tuple[Event, int]]]]
_offset = itemgetter(1)
# point-in-time training samples of a write attempt, awaited before the state is written
BeforeSave = Callable[[list[TrainingSample]], Awaitable[None]]
# work on a batch's valid events that needs no user state, run alongside the state write
Alongside = Callable[[list[Event]], Awaitable[Any]]
SAMPLES_CHUNK = 256  # samples handed to before_save at once (~0.5 MB), while the batch goes on


class IngestProcessor:
    """The agent's logic, independent of faust (used by the agent, tests and benchmarks)."""

    def __init__(self, settings: Settings, store: SequenceStore, dead_letters: DeadLetterSink,
                 *, retry_max_s: float = 5.0, metrics: AgentMetrics | None = None,
                 after_write: AfterWrite | None = None,
                 before_save: BeforeSave | None = None,
                 alongside: Alongside | None = None,
                 log_end: LogEnd | None = None) -> None:
        self.settings = settings
        # a state that applied an offset the partition never reached (log end) comes from
        # another incarnation of the topic: its replay protection is reset, not trusted
        self.log_end = log_end
        # work on the batch's valid events that needs no state (popularity counts): runs while
        # the state is written, awaited before the after-write hook and the ack
        self.alongside = alongside
        # sees every watch's sample before the state that makes it unrecoverable is written
        # (a crash in between replays the batch and logs the samples again: at least once)
        self.before_save = before_save
        self.after_write = after_write  # runs after Redis acknowledged, before the batch is acked
        self.store = store
        self.dead_letters = dead_letters
        self.retry_max_s = retry_max_s
        self.metrics = metrics or AgentMetrics("ingest")

    async def process(self, batch: Sequence[Message]) -> BatchOutcome:
        started = time.perf_counter()
        out = BatchOutcome(messages=len(batch))
        bad: list[tuple[Message, ContractError]] = []
        by_user: ByUser = defaultdict(dict)
        events = out.events
        # (partition, offset) -> Kafka timestamp of each video event, for its training sample
        stamps: dict[tuple[int, int], float] | None = {} if self.before_save is not None else None
        video = Domain.VIDEO
        for msg in batch:
            try:
                event = decode_event(msg.value or b"", msg.key)
            except ContractError as exc:
                bad.append((msg, exc))
                out.rejected[exc.reason.value] += 1
                continue
            events.append((msg, event))
            parts = by_user[event.user_id]
            pairs = parts.get(msg.partition)
            if pairs is None:
                parts[msg.partition] = pairs = []
            pairs.append((event, msg.offset))
            if stamps is not None and event.domain is video:
                stamps[msg.partition, msg.offset] = msg.timestamp
        if bad:
            with self.metrics.timed("dlq"):
                await self.dead_letters(bad)
        beside = asyncio.ensure_future(self.alongside([e for _, e in events])) \
            if self.alongside is not None and events else None
        try:
            await retry_while_redis_down(self._write, by_user, out, stamps,
                                         max_delay_s=self.retry_max_s)
            if beside is not None:
                await beside
        finally:
            if beside is not None:
                settle([beside])
        for msg, event in out.events:  # the last message of each changed user, in batch order
            if event.user_id in out.changed:
                out.changed[event.user_id] = (msg, event)
        if self.after_write is not None and out.changed:
            await self.after_write(out)
        self._observe(out, time.perf_counter() - started)
        return out

    def _observe(self, out: BatchOutcome, seconds: float) -> None:
        """Count the batch once its state is written (see semirec.core.metrics)."""
        m = self.metrics
        m.observe("batch", seconds)
        m.batch(out.messages)
        m.processed(len(out.events))
        if out.replay_skipped:
            m.replay_skipped(out.replay_skipped)
        if out.replay_resets:
            m.replay_reset(out.replay_resets)
        for reason, n in out.rejected.items():
            m.rejected(reason, n)
        m.state_written([e.ts for _, e in out.events],
                        [msg.timestamp for msg, _ in out.events if msg.timestamp > 0])

    async def _write(self, by_user: ByUser, out: BatchOutcome,
                     stamps: dict[tuple[int, int], float] | None) -> None:
        pending = list(by_user)
        while pending:
            with self.metrics.redis("load"):
                loaded = await self.store.load(pending)
            writes = []
            samples: list[TrainingSample] = []
            log_samples = self.before_save
            # samples on their way to the broker: sent in chunks while the batch is applied and
            # packed, all acknowledged before any state of this write is (the state is written
            # only after its samples are durable)
            sending: list[asyncio.Future[None]] = []
            blobs = None
            try:
                for uid, (token, state) in zip(pending, loaded, strict=True):
                    applied, appended = self._apply(state, by_user[uid], samples, stamps, out)
                    if applied:
                        state.version += 1
                        writes.append((uid, token, state, appended))
                    if log_samples is not None and len(samples) >= SAMPLES_CHUNK:
                        sending.append(asyncio.ensure_future(log_samples(samples)))
                        samples = []
                        await asyncio.sleep(0)  # the producer sends them while we go on
                if log_samples is not None and samples:
                    sending.append(asyncio.ensure_future(log_samples(samples)))
                if sending:
                    blobs = await pack_yielding([w[2] for w in writes])
                    await asyncio.gather(*sending)
            finally:
                settle(sending)
            won: list[bool] = []
            if writes:
                with self.metrics.redis("cas"):
                    won = await self.store.save([w[:3] for w in writes], blobs)
            lost = []
            for (uid, _, state, appended), ok in zip(writes, won, strict=True):
                if ok:
                    out.users_written += 1
                    out.applied_events += appended
                    if appended:
                        out.changed[uid] = None
                        out.states[uid] = state
                else:
                    lost.append(uid)
            out.cas_conflicts += len(lost)
            pending = lost

    def _apply(self, state: UserState, parts: dict[int, list[tuple[Event, int]]],
               samples: list[TrainingSample] | None = None,
               stamps: dict[tuple[int, int], float] | None = None,
               out: BatchOutcome | None = None) -> tuple[int, int]:
        """(events applied, of which joined the video / product sequences)."""
        applied, kept = 0, dict[str, int]()
        for partition, pairs in parts.items():
            pairs.sort(key=_offset)  # already in offset order when read from one fetch
            last = state.applied.get(partition)
            if last is not None and pairs[0][1] <= last and out is not None:
                self._replayed(state, partition, last, pairs, out)
            observe = None
            if stamps is not None and samples is not None:
                def observe(s: UserState, e: Event, o: int, p: int = partition) -> None:
                    samples.append(sample_of(s, e, p, o, stamps.get((p, o), 0.0), time.time()))
            applied += apply(state, pairs, partition=partition, seq_len=self.settings.seq_len,
                             dedup_window=self.settings.dedup_window, before_watch=observe,
                             kept=kept)
        return applied, applied - kept.get("skipped", 0)

    def _replayed(self, state: UserState, partition: int, last: int,
                  pairs: list[tuple[Event, int]], out: BatchOutcome) -> None:
        """Some of ``pairs`` are at or below the state's applied offset: a replay, counted; or,
        when that offset is at or past the partition's log end, a state from an earlier topic
        of the same name (recreated, or mirrored from another cluster): trusting it would skip
        every event up to there, so its offset is forgotten and the events applied (the
        item/timestamp and event-id rules still drop true duplicates)."""
        end = self.log_end(partition) if self.log_end is not None else None
        if end is not None and last >= end:
            del state.applied[partition]
            out.replay_resets += 1
            log.warning("user state applied offset %d of partition %d, past its log end %d: "
                        "the topic was recreated or mirrored; applying its events again",
                        last, partition, end)
            return
        out.replay_skipped += bisect.bisect_right(pairs, last, key=_offset)


def settle(futures: Sequence[asyncio.Future[Any]]) -> None:
    """After the batch's own work stopped (done or raised): cancel what still runs, and mark the
    errors of those that failed as seen, so that asyncio does not log them again at exit (the
    error that stops the worker is the one the batch raised)."""
    for future in futures:
        if future.done():
            _seen(future)
        else:  # it may still end with its own error rather than the cancellation
            future.cancel()
            future.add_done_callback(_seen)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def pack_yielding(states: Sequence[UserState], every: int = 64) -> list[bytes]:
    """:func:`semirec.core.sequences.pack` each state, letting the event loop run every ``every``
    states (so the producer's sender task sends meanwhile)."""
    blobs = []
    for i, state in enumerate(states, 1):
        blobs.append(pack(state))
        if i % every == 0:
            await asyncio.sleep(0)
    return blobs


Producer = Callable[[], Any]  # -> a started aiokafka producer (faust: app.producer._ensure_producer)


def count_popularity(store: SequenceStore, settings: Settings) -> Alongside:
    """Count a batch's watches into the popularity window (one Redis script call; retried while
    Redis is down), alongside the state write."""
    from semirec.serving.popularity import count_watches

    async def count(events: list[Event]) -> None:
        await retry_while_redis_down(count_watches, store.client, events, settings.time_bucket_s)

    return count


def updates_of(out: BatchOutcome, written_at: float) -> list[UserUpdate]:
    """One :class:`UserUpdate` per user whose sequences changed in a written batch (its newest
    event)."""
    return [UserUpdate(uid, event.event_id, event.ts, msg.timestamp, written_at)
            for uid, newest in out.changed.items() if newest is not None
            for msg, event in (newest,)]


def announce_changes(producer: Producer, settings: Settings, partitioner: Partitioner) -> AfterWrite:
    """After a batch's state is written: publish one ``user-updates`` notice per changed user and
    await the broker's acks, so the recommendation agent never ranks on state older than the
    event that triggered it."""
    from semirec.core.recommendations import encode

    topic = settings.topics.user_updates

    async def after_write(out: BatchOutcome) -> None:
        notices = [(u.user_id.encode(), encode(u)) for u in updates_of(out, time.time())]
        await publish_many(producer(), topic, notices, partitioner=partitioner)

    return after_write


def recommend_inline(recommend: RecommendUpdates) -> AfterWrite:
    """After a batch's state is written: rank the changed users in this process and await the
    broker's acks of their recommendations (``SEMIREC_RECOMMEND_INLINE``: no ``user-updates``
    hop) from the states just written, so the batch is acked only once they are published, as
    with the notices."""

    async def after_write(out: BatchOutcome) -> None:
        updates = updates_of(out, time.time())
        # the states just written: no Redis read, no decoding (ingest's next batch, which may
        # change them in place, waits for this one)
        await recommend(updates, [out.states[u.user_id] for u in updates])

    return after_write


def publish_samples(producer: Producer, settings: Settings, partitioner: Partitioner) -> BeforeSave:
    """Publish point-in-time samples to the ``samples`` topic (key = user_id) and wait for the
    broker's acks, before ingest writes the state they were taken from."""
    from semirec.core.samples import encode_sample

    topic = settings.topics.samples

    async def before_save(samples: list[TrainingSample]) -> None:
        await publish_many(producer(), topic,
                           [(s.user_id.encode(), encode_sample(s)) for s in samples],
                           partitioner=partitioner)

    return before_save


def high_watermark(app: Any, topic: str) -> LogEnd:
    """The worker's consumer's high watermark of ``topic``'s partitions (None before its first
    fetch of one)."""
    from faust.types import TP

    def log_end(partition: int) -> int | None:
        try:
            end = app.consumer.highwater(TP(topic, partition))
        except Exception:  # no consumer (yet), or the partition is not assigned here
            return None
        return end if isinstance(end, int) and end >= 0 else None

    return log_end


def register_ingest(app: Any, settings: Settings) -> None:
    """Attach the ingest agent to a faust app built by :func:`semirec.streams.app.create_app`."""
    from semirec.streams.app import raw_topic
    from semirec.streams.dlq import dead_letter_sink
    from semirec.streams.runtime import runtime_of

    events = raw_topic(app, settings.topics.events, settings.event_partitions)
    runtime = runtime_of(app)
    partitioner = runtime.partitioner
    to_dlq = dead_letter_sink(app, settings, stage="ingest")

    processors: list[IngestProcessor] = []

    async def handle(batch: Sequence[Message]) -> BatchOutcome:
        if not processors:  # built in the worker's loop, on the first batch
            store = SequenceStore.from_url(settings.redis_url,
                                           cache_users=settings.state_cache_users)
            # the recommendation agent in this worker, inline (it registers its entry), or the
            # user-updates notices for recommendation workers wherever they run
            inline = runtime.recommend_updates
            processors.append(IngestProcessor(
                settings, store, to_dlq, log_end=high_watermark(app, settings.topics.events),
                after_write=recommend_inline(inline) if inline is not None else
                announce_changes(app.producer._ensure_producer, settings, partitioner),
                alongside=count_popularity(store, settings),
                before_save=publish_samples(app.producer._ensure_producer, settings, partitioner)
                if settings.log_samples else None))
        return await processors[0].process(batch)

    # inline, ingest's batch is the ranking's: SEMIREC_RANK_LINGER_MS holds it open as it would
    # the recommendation agent's (a busy stream only)
    linger = settings.rank_linger_ms / 1000 if settings.recommend_inline else 0.0
    BatchAgent(app, events, "ingest", handle, batch_max=settings.batch_max,
               within_s=settings.batch_within_s, linger_s=linger,
               linger_max=settings.rank_batch if linger else 0,
               exit_delay_s=settings.crash_exit_delay_s)
