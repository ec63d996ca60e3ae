"""Recommendation agent: user updates and requests -> topic ``recommendations``.

Two faust agents share one :class:`serving.recommender.Recommender`:

- ``recommend-updates`` reads ``user-updates`` (published by ingest after its Redis write, so a
  user's state is never older than the event that triggered the recommendation). Per batch the
  notices are coalesced per user (only the newest counts: under load a busy user is ranked
  once per batch, not once per event), the users are ranked concurrently (Triton's dynamic
  batcher joins their calls) and each result is published as soon as it is ranked, with
  ``event_id`` and ``event_to_publish_ms``.
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from semirec.contracts import ContractError
from semirec.metrics import AgentMetrics
from semirec.recommendations import (
    Recommendation,
    RecommendationRequest,
    UserUpdate,
    encode,
    parse_request,
    parse_update,
)
from semirec.settings import Settings
from serving import metrics
from serving.recommender import Recommender
from streams.batches import DeadLetterSink, Message, retry_while_redis_down, run_batches

log = logging.getLogger(__name__)
REFRESH_S = 1.0

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
        self._slots = asyncio.Semaphore(settings.rec_concurrency)
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if not self._started:
                await retry_while_redis_down(self.recommender.refresh)
                ranker = self.recommender.ranker
                if ranker is not None and hasattr(ranker, "problem") \
                        and (problem := await ranker.problem()):
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

    async def on_updates(self, batch: Sequence[Message]) -> int:
        await self.start()
        started = time.perf_counter()
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
        recs = await asyncio.gather(*(self._serve(
            "event", u.user_id, 10, at=u.ts, event_id=u.event_id, appended_at=u.appended_at)
            for u in newest.values()))
        self.metrics.observe("batch", time.perf_counter() - started)
        self.metrics.batch(len(batch))
        return len(recs)

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
        recs = await asyncio.gather(*(self._serve(
            "request", r.user_id, r.k, at=r.at, candidates=r.candidates, request_id=r.request_id)
            for r in good.values()))
        self.metrics.observe("batch", time.perf_counter() - started)
        self.metrics.batch(len(batch))
        return len(recs)

    async def _serve(self, trigger: str, user_id: str, k: int, **kw: Any) -> Recommendation:
        """Rank one user and publish at once (no waiting for the rest of the batch); the batch
        is acked only after every one of its recommendations is acknowledged."""
        async with self._slots:
            rec = await retry_while_redis_down(self._recommend, user_id, k, kw)
        await self.publish([(rec, rec.user_id)])
        metrics.RECOMMENDATIONS.labels(trigger, str(rec.fallback).lower()).inc()
        if kw.get("appended_at") is not None:
            metrics.FRESHNESS.observe(max(0.0, time.time() - kw["appended_at"]))
        self.metrics.processed(1)
        return rec

    async def _recommend(self, user_id: str, k: int, kw: dict[str, Any]) -> Recommendation:
        return await self.recommender.recommend(user_id, k, **kw)



def register_recommend(app: Any, settings: Settings) -> None:
    """Attach the recommendation agents to a faust app built by :func:`streams.app.create_app`."""
    from streams.app import raw_topic
    from streams.dlq import dead_letter_sink

    updates = raw_topic(app, settings.topics.user_updates, settings.event_partitions)
    requests = raw_topic(app, settings.topics.recommendation_requests, settings.event_partitions)
    out = raw_topic(app, settings.topics.recommendations, settings.event_partitions)
    to_dlq = dead_letter_sink(app, settings, stage="recommend")

    async def publish(recs: list[tuple[Recommendation, str]]) -> None:
        futures = [await out.send(key=key.encode(), value=encode(rec)) for rec, key in recs]
        for fut in futures:
            await fut

    processor: RecommendProcessor | None = None

    def shared() -> RecommendProcessor:
        nonlocal processor
        if processor is None:
            processor = RecommendProcessor(settings, Recommender.from_settings(settings), publish,
                                           to_dlq)
        return processor

    @app.task
    async def refresh_snapshots() -> None:
        await shared().start()
        await shared().refresh_forever()

    @app.agent(updates, name="recommend-updates")
    async def recommend_updates(stream: Any) -> None:
        await run_batches(stream, shared().on_updates, batch_max=settings.rec_concurrency * 16,
                          within_s=0.005)

    @app.agent(requests, name="recommend-requests")
    async def recommend_requests(stream: Any) -> None:
        await run_batches(stream, shared().on_requests, batch_max=settings.rec_concurrency * 16,
                          within_s=0.005)
