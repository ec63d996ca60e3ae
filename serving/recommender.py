"""Recommender - one user's recommendation: sequences -> recall -> rank (model or fallback).

The single entry used by the recommendation agent, ``semirec recommend`` and the benchmark.
State comes from Redis (one read per user), vectors and popularity from in-memory snapshots
(:class:`CatalogIndex`, :class:`PopularitySnapshot`) refreshed by :meth:`refresh`. Ranking goes
to the model (Triton) through a circuit breaker with a time budget per call; when the breaker is
open or the call fails, the fallback ranks by similarity and popularity and the result says
``fallback: true``. Nothing here blocks on Triton for longer than the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis

from semirec.item_store import ItemStore
from semirec.recommendations import Recommendation, RecommendedItem, Timings
from semirec.sequences import UserState
from semirec.settings import Settings
from semirec.store import SequenceStore
from serving import metrics
from serving.breaker import CircuitBreaker, State
from serving.catalog import CatalogIndex
from serving.errors import RankerUnavailable
from serving.features import identity_tensors, rank_request
from serving.popularity import PopularitySnapshot, watch_counts
from serving.ranking import fallback_scores
from serving.recall import Candidate, Recall, RecallConfig

log = logging.getLogger(__name__)
FALLBACK_VERSION = "fallback"


class ModelRanker(Protocol):
    async def rank(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, str]: ...

    async def identity_buckets(self) -> int:
        """0, or the hashed-id bucket count of a model with item identity."""
        ...


class Recommender:
    def __init__(self, settings: Settings, *, redis_client: aioredis.Redis,
                 ranker: ModelRanker | None, breaker: CircuitBreaker | None = None,
                 recall: RecallConfig | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.sequences = SequenceStore(redis_client)
        self.items = ItemStore(redis_client)
        self.catalog = CatalogIndex()
        self.popularity = PopularitySnapshot(settings.popularity_window_hours)
        self.recall = Recall(self.catalog, self.popularity,
                             recall or RecallConfig(total=settings.recall_candidates))
        self.ranker = ranker
        self.breaker = breaker or CircuitBreaker()

    @classmethod
    def from_settings(cls, settings: Settings, *, triton: bool = True) -> Recommender:
        from serving.ranking import TritonRanker

        ranker = TritonRanker(settings.triton_grpc, timeout_s=settings.rank_timeout_ms / 1000) \
            if triton else None
        return cls(settings, redis_client=aioredis.Redis.from_url(settings.redis_url), ranker=ranker)

    async def refresh(self) -> None:
        """Pull catalog changes and the popularity window from Redis."""
        await self.catalog.refresh(self.items)
        await self.popularity.refresh(self.redis)
        for domain, n in (("video", self.catalog.video_count),
                          ("product", len(self.catalog) - self.catalog.video_count)):
            metrics.CATALOG_ITEMS.labels(domain).set(n)

    async def close(self) -> None:
        if self.ranker is not None and hasattr(self.ranker, "close"):
            await self.ranker.close()
        await self.redis.aclose()

    async def recommend(self, user_id: str, k: int = 10, *, at: float | None = None,
                        candidates: Sequence[str] | None = None, request_id: str | None = None,
                        event_id: str | None = None, appended_at: float | None = None,
                        state: UserState | None = None, written_at: float | None = None,
                        received_at: float | None = None) -> Recommendation:
        """Recommend ``k`` videos for ``user_id`` at time ``at`` (default now).

        ``candidates`` replaces recall (ids without a vector are skipped and counted);
        ``appended_at`` (the triggering event's Kafka timestamp) adds ``event_to_publish_ms``;
        with ``written_at`` (ingest's Redis write) and ``received_at`` (the agent fetched the
        notice) also the stages before this call (``ingest_ms``, ``notice_ms``, ``queue_ms``).
        """
        started = time.perf_counter()
        started_at = time.time()
        at = time.time() if at is None else at
        if state is None:
            state = await self.sequences.get(user_id)
        if candidates is None:
            pool = self.recall.candidates(state)
            skipped = 0
        else:
            pool, skipped = self._given(candidates, state)
        recalled = time.perf_counter()
        ids = [c.item_id for c in pool]
        vecs, _ = self.catalog.vectors(ids)
        scores, version, fallback = await self._rank(state, pool, vecs, at)
        ranked = time.perf_counter()
        order = np.argsort(-scores, kind="stable")[:k]
        items = [RecommendedItem(pool[j].item_id, round(float(scores[j]), 6), pool[j].source)
                 for j in order]
        if skipped:
            metrics.SKIPPED_ITEMS.labels("candidates").inc(skipped)
        total_ms = (time.perf_counter() - started) * 1000
        stages = _stages(appended_at, written_at, received_at, started_at)
        timings = Timings(recall_ms=round((recalled - started) * 1000, 3),
                          rank_ms=round((ranked - recalled) * 1000, 3),
                          total_ms=round(total_ms, 3),
                          event_to_publish_ms=None if appended_at is None
                          else round((time.time() - appended_at) * 1000, 3), **stages)
        for stage, ms in stages.items():
            metrics.STAGE_SECONDS.labels(stage.removesuffix("_ms")).observe(max(0.0, ms) / 1000)
        metrics.STAGE_SECONDS.labels("recall").observe(recalled - started)
        metrics.STAGE_SECONDS.labels("rank").observe(ranked - recalled)
        metrics.STAGE_SECONDS.labels("total").observe(total_ms / 1000)
        return Recommendation(
            user_id=user_id, request_id=request_id, event_id=event_id, items=items,
            model_version=version, generated_at=time.time(), fallback=fallback, timings=timings,
            skipped_without_vector=skipped,
            candidates=ids if self.settings.publish_candidates else None)

    def _given(self, candidates: Sequence[str], state: UserState | None) \
            -> tuple[list[Candidate], int]:
        mixed = self.recall.mixed(self.recall.profiles(state))
        known = [c for c in dict.fromkeys(candidates) if self.catalog.is_video(c)]
        sims = self.catalog.similarity(mixed, known) if mixed is not None else np.zeros(len(known))
        return ([Candidate(c, "request", float(s)) for c, s in zip(known, sims, strict=True)],
                len(set(candidates)) - len(known))

    async def _rank(self, state: UserState | None, pool: list[Candidate], vecs: np.ndarray,
                    at: float) -> tuple[np.ndarray, str, bool]:
        if not pool:
            return np.zeros(0, np.float32), FALLBACK_VERSION, self.ranker is None
        why = "no_model" if self.ranker is None else "breaker_open"
        if self.ranker is not None and self.breaker.allow():
            req = rank_request(state, vecs, self.catalog, at=at, seq_len=self.settings.seq_len,
                               bucket_s=self.settings.time_bucket_s,
                               pad_to=self.settings.recall_candidates)
            if req.missing_sequence_vectors:
                metrics.SKIPPED_ITEMS.labels("sequence").inc(req.missing_sequence_vectors)
            try:
                if buckets := await self.ranker.identity_buckets():
                    ids = [c.item_id for c in pool]
                    watches, completes = await watch_counts(self.redis, ids)
                    req.tensors.update(identity_tensors(ids, watches, completes, buckets,
                                                        self.settings.recall_candidates))
                scores, version = await self.ranker.rank(req.tensors)
            except RankerUnavailable as exc:
                was = self.breaker.state
                self.breaker.failure()
                metrics.TRITON_ERRORS.inc()
                if self.breaker.state is not was:  # log transitions, not every request
                    log.warning("ranker unavailable (%s); circuit %s, falling back to similarity "
                                "+ popularity", exc, self.breaker.state)
                why = "triton_error"
            else:
                if self.breaker.state is not State.CLOSED:
                    log.warning("ranker answers again (%s); circuit closed", version)
                self.breaker.success()
                metrics.BREAKER_OPEN.set(0)
                return np.asarray(scores, np.float32).reshape(-1)[: len(pool)], version, False
        metrics.BREAKER_OPEN.set(int(self.breaker.state is not State.CLOSED))
        metrics.FALLBACKS.labels(why).inc()
        sims = np.asarray([c.similarity for c in pool], np.float32)
        return fallback_scores(sims, self.popularity.scores(c.item_id for c in pool)), \
            FALLBACK_VERSION, True


def _stages(appended_at: float | None, written_at: float | None, received_at: float | None,
            started_at: float) -> dict[str, float]:
    """``ingest_ms``, ``notice_ms``, ``queue_ms`` of a triggered recommendation (unix-second
    marks of one machine's or synchronised clocks; empty without them)."""
    if appended_at is None or written_at is None or received_at is None:
        return {}
    return {"ingest_ms": round((written_at - appended_at) * 1000, 3),
            "notice_ms": round((received_at - written_at) * 1000, 3),
            "queue_ms": round((started_at - received_at) * 1000, 3)}
