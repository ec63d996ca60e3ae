"""Recommender - one user's recommendation: sequences -> recall -> rank (model or fallback).

The single entry used by the recommendation agent, ``semirec recommend`` and the benchmark.
State comes from Redis (one read per user), vectors and popularity from in-memory snapshots
(:class:`CatalogIndex`, :class:`PopularitySnapshot`) refreshed by :meth:`refresh`. Ranking goes
to the model (Triton) through a circuit breaker with a time budget per call; when the breaker is
open or the call fails, the fallback ranks by similarity and popularity and the result says
``fallback: true``. Nothing here blocks on Triton for longer than the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis

from semirec.core.item_store import ItemStore
from semirec.core.recommendations import Recommendation, RecommendedItem, Timings
from semirec.core.redis_client import redis_client
from semirec.core.sequences import UserState, unpack
from semirec.core.settings import Settings
from semirec.core.store import SequenceStore
from semirec.serving import metrics
from semirec.serving.breaker import CircuitBreaker, State
from semirec.serving.catalog import CatalogIndex
from semirec.serving.errors import RankerUnavailable
from semirec.serving.features import rank_batch
from semirec.serving.identity import IdentityIndex
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.ranking import ModelRanker, fallback_scores
from semirec.serving.recall import Recall, RecallConfig, Recalled

log = logging.getLogger(__name__)
FALLBACK_VERSION = "fallback"


@dataclass(frozen=True, slots=True)
class Job:
    """One recommendation to make (see :meth:`Recommender.recommend` for the fields)."""

    user_id: str
    k: int = 10
    at: float | None = None
    candidates: Sequence[str] | None = None
    request_id: str | None = None
    event_id: str | None = None
    appended_at: float | None = None
    written_at: float | None = None
    received_at: float | None = None


@dataclass(slots=True)
class _Work:
    job: Job
    state: UserState | None
    at: float
    pool: Recalled  # the candidates (catalog rows, similarities, sources)
    skipped: int
    recall_s: float  # the (shared) state read + this job's recall


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
        self.identity = IdentityIndex(self.catalog)
        self.recall = Recall(self.catalog, self.popularity,
                             recall or RecallConfig(total=settings.recall_candidates))
        self.ranker = ranker
        self.breaker = breaker or CircuitBreaker()

    @classmethod
    def from_settings(cls, settings: Settings, *, triton: bool = True) -> Recommender:
        from semirec.serving.ranking import triton_ranker

        ranker = triton_ranker(settings.triton_grpc, timeout_s=settings.rank_timeout_ms / 1000,
                               shared_memory=bool(settings.triton_shared_memory)) if triton else None
        return cls(settings, redis_client=redis_client(settings.redis_url), ranker=ranker)

    async def refresh(self) -> None:
        """Pull catalog changes, the popularity window and the videos' new counts from Redis."""
        await self.catalog.refresh(self.items)
        await self.popularity.refresh(self.redis)
        await self.identity.refresh(self.redis)
        for domain, n in (("video", self.catalog.video_count),
                          ("product", len(self.catalog) - self.catalog.video_count)):
            metrics.CATALOG_ITEMS.labels(domain).set(n)

    async def close(self) -> None:
        if self.ranker is not None:
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
        job = Job(user_id, k, at=at, candidates=candidates, request_id=request_id,
                  event_id=event_id, appended_at=appended_at, written_at=written_at,
                  received_at=received_at)
        return (await self.recommend_many([job], states=None if state is None else [state]))[0]

    async def recommend_many(self, jobs: Sequence[Job],
                             states: Sequence[UserState | None] | None = None) -> list[Recommendation]:
        """One recommendation per job, their rankings in one model call (one gRPC request and
        one model run for all users: per-call costs are paid once); states are read from Redis
        in one round trip unless given."""
        started = time.perf_counter()
        started_at = time.time()
        if states is None:
            blobs = await self.sequences.load_blobs([j.user_id for j in jobs])
            states = [None if b is None else unpack(b) for b in blobs]
        read_s = time.perf_counter() - started
        work: list[_Work] = []
        for job, state in zip(jobs, states, strict=True):
            t = time.perf_counter()
            if job.candidates is None:
                pool, skipped = self.recall.recall(state), 0
            else:
                pool, skipped = self._given(job.candidates, state)
            work.append(_Work(job, state, time.time() if job.at is None else job.at, pool,
                              skipped, read_s + time.perf_counter() - t))
        recalled = time.perf_counter()
        ranked_all = await self._rank_many(work)
        rank_s = time.perf_counter() - recalled
        out = []
        for w, (scores, version, why) in zip(work, ranked_all, strict=True):
            out.append(self._answer(w, scores, version, why, rank_s, started_at))
        return out

    def _answer(self, w: _Work, scores: np.ndarray, version: str, why: str | None, rank_s: float,
                started_at: float) -> Recommendation:
        """``why``: the fallback's reason, None when the model ranked."""
        job = w.job
        order = np.argsort(-scores, kind="stable")[: job.k]
        pool = w.pool
        items = [RecommendedItem(pool.item_id(j), round(float(scores[j]), 6), pool.source_name(j))
                 for j in order.tolist()]
        if w.skipped:
            metrics.SKIPPED_ITEMS.labels("candidates").inc(w.skipped)
        total_ms = (w.recall_s + rank_s) * 1000
        stages = _stages(job.appended_at, job.written_at, job.received_at, started_at)
        timings = Timings(recall_ms=round(w.recall_s * 1000, 3), rank_ms=round(rank_s * 1000, 3),
                          total_ms=round(total_ms, 3),
                          event_to_publish_ms=None if job.appended_at is None
                          else round((time.time() - job.appended_at) * 1000, 3), **stages)
        for stage, ms in stages.items():
            metrics.STAGE_SECONDS.labels(stage.removesuffix("_ms")).observe(max(0.0, ms) / 1000)
        metrics.STAGE_SECONDS.labels("recall").observe(w.recall_s)
        metrics.STAGE_SECONDS.labels("rank").observe(rank_s)
        metrics.STAGE_SECONDS.labels("total").observe(total_ms / 1000)
        return Recommendation(
            user_id=job.user_id, request_id=job.request_id, event_id=job.event_id, items=items,
            model_version=version, generated_at=time.time(), fallback=why is not None,
            timings=timings, skipped_without_vector=w.skipped, fallback_reason=why,
            candidates=list(w.pool.ids) if self.settings.publish_candidates else None)

    def _given(self, candidates: Sequence[str], state: UserState | None) -> tuple[Recalled, int]:
        mixed = self.recall.mixed(self.recall.profiles(state))
        known = [c for c in dict.fromkeys(candidates) if self.catalog.is_video(c)]
        rows = self.catalog.rows(known)
        sims = self.catalog.similarity(mixed, rows) if mixed is not None else np.zeros(len(known))
        return (Recalled(self.catalog, rows, sims.astype(np.float64), np.zeros(len(rows), np.int16),
                         ("request",)), len(set(candidates)) - len(known))

    async def _rank_many(self, work: list[_Work]) -> list[tuple[np.ndarray, str, str | None]]:
        """(scores, model_version, fallback reason or None) per job: the model ranks every job with candidates
        in one call per tensor shape (requests with more candidates than the padding differ);
        a failed call falls back for all of its jobs."""
        out: list[tuple[np.ndarray, str, str | None] | None] = [None] * len(work)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(work):
            if not w.pool:
                out[i] = (np.zeros(0, np.float32), FALLBACK_VERSION,
                          "no_model" if self.ranker is None else None)
            else:
                groups.setdefault(max(len(w.pool), self.settings.recall_candidates), []).append(i)
        ranked = await asyncio.gather(*(self._rank_group([work[i] for i in members])
                                        for members in groups.values()))
        for members, results in zip(groups.values(), ranked, strict=True):
            for i, result in zip(members, results, strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    async def _rank_group(self, group: list[_Work]) -> list[tuple[np.ndarray, str, str | None]]:
        why = "no_model" if self.ranker is None else "breaker_open"
        if self.ranker is not None and self.breaker.allow():
            try:
                buckets = await self.ranker.identity_buckets()  # reads the model's inputs once
                tensors, missing = rank_batch([(w.state, w.pool.rows, w.at) for w in group],
                                              self.catalog, seq_len=self.settings.seq_len,
                                              bucket_s=self.settings.time_bucket_s,
                                              pad_to=self.settings.recall_candidates,
                                              skipped=await self.ranker.takes_skipped())
                if missing:
                    metrics.SKIPPED_ITEMS.labels("sequence").inc(missing)
                if buckets:
                    width = tensors["candidates"].shape[1]
                    parts = [self.identity.tensors(w.pool.rows, buckets, width) for w in group]
                    tensors.update({name: np.concatenate([p[name] for p in parts])
                                    for name in parts[0]})
                scores, version = await self.ranker.rank(tensors)
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
                scores = np.asarray(scores, np.float32).reshape(len(group), -1)
                return [(scores[j, : len(w.pool)], version, None) for j, w in enumerate(group)]
        metrics.BREAKER_OPEN.set(int(self.breaker.state is not State.CLOSED))
        metrics.FALLBACKS.labels(why).inc(len(group))
        answers = []
        for w in group:
            sims = w.pool.similarity.astype(np.float32)
            answers.append((fallback_scores(sims, self.popularity.scores(w.pool.ids)),
                            FALLBACK_VERSION, why))
        return answers

def _stages(appended_at: float | None, written_at: float | None, received_at: float | None,
            started_at: float) -> dict[str, float]:
    """``ingest_ms``, ``notice_ms``, ``queue_ms`` of a triggered recommendation (unix-second
    marks of one machine's or synchronised clocks; empty without them)."""
    if appended_at is None or written_at is None or received_at is None:
        return {}
    return {"ingest_ms": round((written_at - appended_at) * 1000, 3),
            "notice_ms": round((received_at - written_at) * 1000, 3),
            "queue_ms": round((started_at - received_at) * 1000, 3)}
