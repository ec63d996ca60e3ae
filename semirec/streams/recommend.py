"""Recommendation agent: user updates and requests -> topic ``recommendations``.

Two batch agents (:class:`semirec.streams.batch_transport.BatchAgent`: one hand-over per fetch
slice, a window that closes once the fetch is handed over) share one
:class:`semirec.serving.recommender.Recommender`:

- ``recommend-updates`` reads ``user-updates`` (published by ingest after its Redis write, so a
  user's state is never older than the event that triggered the recommendation). Per batch the
  notices are coalesced per user (only the newest counts: under load a busy user is ranked
  once per batch, not once per event); up to ``rank_batch`` users are ranked in one Triton call
  (per-call costs paid once), several such groups at once, and each group's results are
  published as soon as it is ranked, with ``event_id``, ``event_to_publish_ms`` and its stages.
  With ``SEMIREC_RECOMMEND_INLINE=1`` in a worker that runs ingest too, ingest hands its changed
  users over in the same process instead (:meth:`RecommendProcessor.on_user_updates`, after its
  Redis write, before it acks its batch): no notice, no second consumer.
- ``recommend-requests`` reads ``recommendation-requests``; malformed requests are
  dead-lettered with a reason; every valid request is answered with its ``request_id``.

A batch is acked only after its recommendations are acknowledged by the broker. The catalog
and popularity snapshots are refreshed every second in the background; when Triton is down or
slow the recommender falls back (``fallback: true``) and the stream keeps moving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from semirec.core.contracts import ContractError
from semirec.core.metrics import AgentMetrics
from semirec.core.recommendations import (
    Recommendation,
    RecommendationRequest,
    UserUpdate,
    encode,
    parse_request,
    parse_update,
)
from semirec.core.sequences import UserState
from semirec.core.settings import Settings
from semirec.serving import metrics
from semirec.serving.recommender import Job, Recommender
from semirec.streams.batch_transport import BatchAgent
from semirec.streams.batches import DeadLetterSink, retry_while_redis_down
from semirec.streams.messages import Message

log = logging.getLogger(__name__)
REFRESH_S = 1.0
CLOSE_S = 2.0  # the most a stopping worker waits to release Triton's regions and its channels

Publish = Callable[[list[tuple[Recommendation, str]]], Awaitable[None]]


class RecommendProcessor:
    """The agents' logic, independent of faust (tests and benchmarks drive it directly)."""

    def __init__(self, settings: Settings, recommender: Recommender, publish: Publish,
                 dead_letters: DeadLetterSink) -> None:
        self.settings = settings
        self.recommender = recommender
        self.publish = publish
        self.dead_letters = dead_letters
        self.metrics = AgentMetrics("recommend")
        # groups of up to rank_batch users in flight: rec_concurrency users in all
        self._slots = asyncio.Semaphore(max(1, settings.rec_concurrency // settings.rank_batch))
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if not self._started:
                await retry_while_redis_down(self.recommender.refresh)
                ranker = self.recommender.ranker
                if ranker is not None and (problem := await ranker.problem()):
                    log.warning("%s; serving the fallback (similarity + popularity) until it "
                                "answers", problem)
                self._started = True

    async def refresh_forever(self, interval_s: float = REFRESH_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.recommender.refresh()
            except Exception as exc:  # keep serving from the last snapshot
                log.warning("catalog/popularity refresh failed: %s", exc)

    async def close(self) -> None:
        """Unregister the ranker's shared-memory regions from Triton (they would outlive the
        process there) and close the gRPC channel and Redis; bounded by ``CLOSE_S``."""
        try:
            await asyncio.wait_for(self.recommender.close(), CLOSE_S)
        except Exception as exc:  # stopping anyway: Triton down, Redis gone
            log.warning("closing the recommender: %s", exc or type(exc).__name__)

    async def on_updates(self, batch: Sequence[Message]) -> int:
        await self.start()
        started, received_at = time.perf_counter(), time.time()
        newest: dict[str, UserUpdate] = {}
        for msg in batch:
            try:
                update = parse_update(msg.value or b"")
            except ContractError as exc:  # our own topic: a bad notice is a bug, not user input
                log.error("skipping malformed user update at %s/%d: %s", msg.partition, msg.offset, exc)
                continue
            if update.user_id in newest:
                metrics.COALESCED.inc()
            newest[update.user_id] = update
        served = await self._serve_updates(newest.values(), received_at)
        self.metrics.observe("batch", time.perf_counter() - started)
        self.metrics.batch(len(batch))
        return served

    async def on_user_updates(self, updates: Sequence[UserUpdate],
                              states: Sequence[UserState]) -> int:
        """Changed users handed over in-process by ingest (``SEMIREC_RECOMMEND_INLINE``), one per
        user, with the states it just wrote (not read again): ranked and published as a batch of
        notices would be."""
        await self.start()
        started = time.perf_counter()
        served = await self._serve_updates(updates, time.time(), states)
        self.metrics.observe("batch", time.perf_counter() - started)
        self.metrics.batch(len(updates))
        return served

    async def _serve_updates(self, updates: Iterable[UserUpdate], received_at: float,
                             states: Sequence[UserState] | None = None) -> int:
        return await self._serve_all("event", [
            Job(u.user_id, 10, at=u.ts, event_id=u.event_id, appended_at=u.appended_at,
                written_at=u.written_at, received_at=received_at) for u in updates], states)

    async def on_requests(self, batch: Sequence[Message]) -> int:
        await self.start()
        started = time.perf_counter()
        good: dict[tuple[str, str], RecommendationRequest] = {}
        bad: list[tuple[Message, ContractError]] = []
        for msg in batch:
            try:
                req = parse_request(msg.value or b"", msg.key)
            except ContractError as exc:
                bad.append((msg, exc))
                self.metrics.rejected(exc.reason.value)
                continue
            good[(req.user_id, req.request_id)] = req  # a retried request is answered once
        if bad:
            await self.dead_letters(bad)
        served = await self._serve_all("request", [
            Job(r.user_id, r.k, at=r.at, candidates=r.candidates, request_id=r.request_id)
            for r in good.values()])
        self.metrics.observe("batch", time.perf_counter() - started)
        self.metrics.batch(len(batch))
        return served

    async def _serve_all(self, trigger: str, jobs: list[Job],
                         states: Sequence[UserState] | None = None) -> int:
        """``states``: the jobs' user states when known (else read from Redis per group)."""
        size = self.settings.rank_batch
        spans = range(0, len(jobs), size)
        return sum(await asyncio.gather(*(
            self._serve(trigger, jobs[lo: lo + size], None if states is None else states[lo: lo + size])
            for lo in spans)))

    async def _serve(self, trigger: str, jobs: list[Job],
                     states: Sequence[UserState] | None = None) -> int:
        """Rank a group of users in one model call and publish at once (no waiting for the rest
        of the batch); the batch is acked only after all its recommendations are acknowledged."""
        async with self._slots:
            recs = await retry_while_redis_down(self.recommender.recommend_many, jobs, states)
        await self.publish([(rec, rec.user_id) for rec in recs])
        now = time.time()
        for job, rec in zip(jobs, recs, strict=True):
            metrics.RECOMMENDATIONS.labels(trigger, str(rec.fallback).lower()).inc()
            if job.appended_at is not None:
                metrics.FRESHNESS.observe(max(0.0, now - job.appended_at))
        self.metrics.processed(len(recs))
        return len(recs)



def register_recommend(app: Any, settings: Settings) -> None:
    """Attach the recommendation agents to a faust app built by :func:`semirec.streams.app.create_app`."""
    from semirec.streams.app import raw_topic
    from semirec.streams.dlq import dead_letter_sink
    from semirec.streams.publish import publish_many
    from semirec.streams.runtime import runtime_of

    # with SEMIREC_RECOMMEND_INLINE (the worker runs ingest too) user-updates is not read here
    updates = raw_topic(app, settings.topics.user_updates, settings.event_partitions)
    requests = raw_topic(app, settings.topics.recommendation_requests, settings.event_partitions)
    to_dlq = dead_letter_sink(app, settings, stage="recommend")
    partitioner = runtime_of(app).partitioner

    async def publish(recs: list[tuple[Recommendation, str]]) -> None:
        # one producer batch per partition (as ingest's notices), not faust's per-message send
        await publish_many(app.producer._ensure_producer(), settings.topics.recommendations,
                           [(key.encode(), encode(rec)) for rec, key in recs],
                           partitioner=partitioner)

    processor: RecommendProcessor | None = None

    def shared() -> RecommendProcessor:
        nonlocal processor
        if processor is None:
            processor = RecommendProcessor(settings, Recommender.from_settings(settings), publish,
                                           to_dlq)
        return processor

    @app.task
    async def refresh_snapshots() -> None:
        try:
            await shared().start()
            await shared().refresh_forever()
        finally:  # cancelled when the worker stops, with the agents' tasks
            await shared().close()

    async def on_updates(batch: Sequence[Message]) -> int:
        return await shared().on_updates(batch)

    async def on_requests(batch: Sequence[Message]) -> int:
        return await shared().on_requests(batch)

    async def on_user_updates(changed: Sequence[UserUpdate], states: Sequence[UserState]) -> int:
        return await shared().on_user_updates(changed, states)

    agents = [(requests, "recommend-requests", on_requests)]
    if settings.recommend_inline:  # ingest in this worker hands its changed users over
        runtime_of(app).recommend_updates = on_user_updates
    else:
        agents.insert(0, (updates, "recommend-updates", on_updates))
    # batch agents (semirec/streams/batch_transport.py): one hand-over per fetch slice instead of
    # faust's per-message path, and a window that closes as soon as the fetch is handed over
    for topic, name, handler in agents:
        # with SEMIREC_RANK_LINGER_MS a busy stream lingers for up to a full Triton call
        BatchAgent(app, topic, name, handler, batch_max=settings.rec_concurrency * 16,
                   within_s=0.005, linger_s=settings.rank_linger_ms / 1000,
                   linger_max=settings.rank_batch, exit_delay_s=settings.crash_exit_delay_s)
