"""Ingest agent: events topic -> per-user video/product sequences in Redis.

Per batch (``noack_take``): decode and validate every message; dead-letter the malformed
ones and wait for the broker's ack; group the rest by user; read each user's state, apply the
events with :func:`semirec.sequences.apply` and compare-and-set it back in one pipeline; only
then ack the messages, so faust commits an offset only after Redis has acknowledged the state.
A crash between the Redis write and the commit replays the batch, and the per-partition
applied offsets stored inside each user's state make the replay a no-op. Redis errors are
retried with back-off forever: the agent never acks what it has not written. Any other
error stops the worker without acking the batch (:func:`streams.batches.guarded`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from semirec.contracts import ContractError, Event, parse_event
from semirec.metrics import AgentMetrics
from semirec.sequences import UserState, apply
from semirec.settings import Settings
from semirec.store import SequenceStore
from streams.batches import (
    DeadLetterSink,
    Message,
    guarded,
    retry_while_redis_down,
    run_batches,
    watch,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchOutcome:
    messages: int = 0
    applied_events: int = 0  # events that changed a sequence
    users_written: int = 0
    cas_conflicts: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    events: list[tuple[Message, Event]] = field(default_factory=list)  # the valid ones
    # user_id -> the newest (message, event) of each user whose state was written in this batch
    changed: dict[str, tuple[Message, Event] | None] = field(default_factory=dict)


AfterWrite = Callable[[BatchOutcome], Awaitable[None]]


class IngestProcessor:
    """The agent's logic, independent of faust (used by the agent, tests and benchmarks)."""

    def __init__(self, settings: Settings, store: SequenceStore, dead_letters: DeadLetterSink,
                 *, retry_max_s: float = 5.0, metrics: AgentMetrics | None = None,
                 after_write: AfterWrite | None = None) -> None:
        self.settings = settings
        self.after_write = after_write  # runs after Redis acknowledged, before the batch is acked
        self.store = store
        self.dead_letters = dead_letters
        self.retry_max_s = retry_max_s
        self.metrics = metrics or AgentMetrics("ingest")

    async def process(self, batch: Sequence[Message]) -> BatchOutcome:
        started = time.perf_counter()
        out = BatchOutcome(messages=len(batch))
        bad: list[tuple[Message, ContractError]] = []
        by_user: dict[str, list[tuple[Event, int, int]]] = defaultdict(list)
        for msg in batch:
            try:
                event = parse_event(msg.value or b"", msg.key)
            except ContractError as exc:
                bad.append((msg, exc))
                out.rejected[exc.reason.value] += 1
                continue
            out.events.append((msg, event))
            by_user[event.user_id].append((event, msg.partition, msg.offset))
        if bad:
            with self.metrics.timed("dlq"):
                await self.dead_letters(bad)
        await retry_while_redis_down(self._write, by_user, out, max_delay_s=self.retry_max_s)
        for msg, event in out.events:  # the last message of each changed user, in batch order
            if event.user_id in out.changed:
                out.changed[event.user_id] = (msg, event)
        if self.after_write is not None and out.changed:
            await self.after_write(out)
        self._observe(out, time.perf_counter() - started)
        return out

    def _observe(self, out: BatchOutcome, seconds: float) -> None:
        """Count the batch once its state is written (see semirec.metrics)."""
        m = self.metrics
        m.observe("batch", seconds)
        m.batch(out.messages)
        m.processed(len(out.events))
        for reason, n in out.rejected.items():
            m.rejected(reason, n)
        m.state_written([e.ts for _, e in out.events],
                        [msg.timestamp for msg, _ in out.events if msg.timestamp > 0])

    async def _write(self, by_user: dict[str, list[tuple[Event, int, int]]], out: BatchOutcome) -> None:
        pending = list(by_user)
        while pending:
            with self.metrics.redis("load"):
                loaded = await self.store.load(pending)
            writes = []
            for uid, (token, state) in zip(pending, loaded, strict=True):
                if applied := self._apply(state, by_user[uid]):
                    state.version += 1
                    writes.append((uid, token, state, applied))
            won: list[bool] = []
            if writes:
                with self.metrics.redis("cas"):
                    won = await self.store.save([w[:3] for w in writes])
            lost = []
            for (uid, _, _, applied), ok in zip(writes, won, strict=True):
                if ok:
                    out.users_written += 1
                    out.applied_events += applied
                    out.changed[uid] = None
                else:
                    lost.append(uid)
            out.cas_conflicts += len(lost)
            pending = lost

    def _apply(self, state: UserState, events: list[tuple[Event, int, int]]) -> int:
        applied = 0
        by_partition: dict[int, list[tuple[Event, int]]] = defaultdict(list)
        for event, partition, offset in events:
            by_partition[partition].append((event, offset))
        for partition, pairs in by_partition.items():
            pairs.sort(key=lambda p: p[1])
            applied += apply(state, pairs, partition=partition, seq_len=self.settings.seq_len,
                             dedup_window=self.settings.dedup_window)
        return applied


def announce_changes(updates: Any, store: SequenceStore, settings: Settings) -> AfterWrite:
    """After a batch's state is written: count complete watches into the popularity window and
    publish one ``user-updates`` notice per changed user (awaiting the broker's acks), so the
    recommendation agent never ranks on state older than the event that triggered it."""
    from semirec.recommendations import UserUpdate, encode
    from serving.popularity import count_watches

    async def after_write(out: BatchOutcome) -> None:
        await retry_while_redis_down(count_watches, store.client, [e for _, e in out.events],
                                     settings.time_bucket_s)
        now = time.time()
        futures = []
        for uid, newest in out.changed.items():
            if newest is None:
                continue
            msg, event = newest
            notice = UserUpdate(uid, event.event_id, event.ts, msg.timestamp, now)
            futures.append(await updates.send(key=uid.encode(), value=encode(notice)))
        for fut in futures:
            await fut

    return after_write


def register_ingest(app: Any, settings: Settings) -> None:
    """Attach the ingest agent to a faust app built by :func:`streams.app.create_app`."""
    from streams.app import raw_topic
    from streams.dlq import dead_letter_sink

    events = raw_topic(app, settings.topics.events, settings.event_partitions)
    updates = raw_topic(app, settings.topics.user_updates, settings.event_partitions)
    to_dlq = dead_letter_sink(app, settings, stage="ingest")

    async def body(stream: Any) -> None:
        store = SequenceStore.from_url(settings.redis_url, cache_users=settings.state_cache_users)
        processor = IngestProcessor(settings, store, to_dlq,
                                    after_write=announce_changes(updates, store, settings))
        try:
            await run_batches(stream, processor.process, batch_max=settings.batch_max,
                              within_s=settings.batch_within_s, progress=watch("ingest"))
        finally:
            await store.close()

    @app.agent(events, name="ingest")
    async def ingest(stream: Any) -> None:
        await guarded("ingest", body(stream), exit_delay_s=settings.crash_exit_delay_s)
