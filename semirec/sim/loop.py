"""The closed loop: world history and simulated users out to Kafka, recommendations back and scored.

Phases:

1. **history**: the world's events are published at a steady rate (paused while the ingest or
   recommendation agent is more than ``max_behind_s`` seconds of events behind), their timestamps moved by one
   ``offset`` (a whole number of hours, :func:`hour_aligned_offset`) so that the history ends
   before streaming starts (world time = wall time - offset; hour blocks the same in both);
   recommendations triggered by them are scored at the triggering event's world time; then the
   agents catch up (lag 0), so the audience starts on fresh recommendations;
2. **live**: the audience opens sessions at a steady rate and reacts to its recommendations;
   at ``shift_at`` of it, the world's interests shift and the held-out new videos are published
   to ``items``;
3. **drain**: no new sessions; open ones finish; then the ingest and recommendation agents'
   lag must reach 0.

Every recommendation received is scored by :mod:`semirec.sim.quality` at its world moment against the
same candidates (the published ``candidates`` when the agent runs with
``SEMIREC_PUBLISH_CANDIDATES=1``, otherwise every video published so far). Popularity for the
popularity policy is counted here, from the complete watches this loop published; the similarity
policy reads the item vectors the system serves (Redis) and each user's clicks and complete
watches as published here. A recommendation is ``live`` when the audience triggered it (not the
history replay). The truth is read for the audience and this evaluation only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from semirec.core.contracts import Event, encode_event
from semirec.core.item_store import ItemStore
from semirec.core.kafka import ensure_topics, producer
from semirec.core.settings import Settings
from semirec.sim.audience import Audience, Outbox
from semirec.sim.live import LiveState, UserView
from semirec.sim.quality import Histories, QualityLog, Scored, content_similarity, slate_quality
from semirec.worlds.live import LiveWorld
from semirec.worlds.world import World

INGEST_GROUP, CATALOG_GROUP, RECOMMEND_GROUP = "semirec-ingest", "semirec-catalog", "semirec-recommend"
HOUR_S = 3600


def hour_aligned_offset(now: float, history_end: float, margin_s: float = 1.0) -> float:
    """The largest whole number of hours that moves ``history_end`` at least ``margin_s`` before
    ``now``: world and wall time then share hour boundaries, so serving's hour blocks (age 0 =
    the request's hour) are the world's session hours."""
    return math.floor((now - history_end - margin_s) / HOUR_S) * HOUR_S


@dataclass(frozen=True, slots=True)
class LoopConfig:
    rate: float = 400.0  # history events per second
    live_s: float = 120.0  # length of the live phase
    shift_at: float = 0.5  # the interest shift, as a fraction of the live phase
    sessions_per_s: float = 3.0  # live sessions opened per second
    shift_strength: float = 1.0
    k: int = 10
    wait_s: float = 10.0  # how long a simulated user waits for a recommendation
    drain_timeout_s: float = 180.0
    lag_every_s: float = 2.0
    max_behind_s: float = 5.0  # history pauses while an agent is more than this many seconds of events behind


@dataclass(slots=True)
class Sample:
    """One second of the run, for the report's plots."""

    t: float
    events: int
    recs: int
    ingest_lag: int | None
    recommend_lag: int | None
    freshness_p50: float | None
    freshness_p99: float | None


@dataclass(slots=True)
class LoopResult:
    offset: float
    started: float
    live_started: float | None = None
    shift_wall: float | None = None
    shift_world: float | None = None
    new_videos_wall: float | None = None
    ended: float | None = None
    events_published: int = 0
    history_events: int = 0
    recommendations: int = 0
    fallbacks: int = 0
    fallback_reasons: Counter[str] = field(default_factory=Counter)  # Recommendation.fallback_reason
    freshness_ms: list[float] = field(default_factory=list)
    active_users: set[str] = field(default_factory=set)  # users with a sequence-changing event
    users_recommended: set[str] = field(default_factory=set)
    timeline: list[Sample] = field(default_factory=list)
    history_paused_s: float = 0.0  # time the history waited for the agents (backpressure)
    final_ingest_lag: int | None = None
    final_recommend_lag: int | None = None
    unscored: Counter[str] = field(default_factory=Counter)
    model_versions: Counter[str] = field(default_factory=Counter)


class ClosedLoop:
    """Drive one run against a started stack and agents (see the module docstring)."""

    def __init__(self, settings: Settings, world: World, live: LiveWorld, audience: Audience,
                 cfg: LoopConfig, state: LiveState, quality: QualityLog, *,
                 offset: float, alive: Callable[[], list[str]] | None = None,
                 titles: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.world = world
        self.live = live
        self.audience = audience
        self.cfg = cfg
        self.state = state
        self.quality = quality
        self.alive = alive or (lambda: [])
        self.titles = titles or {}
        self.result = LoopResult(offset=offset, started=time.time())
        self.world_ts: dict[str, float] = {}  # event_id / request_id -> world time it was made at
        self.popularity: Counter[str] = Counter()
        self.known_videos: list[str] = [it["item_id"] for it in world.items if it["domain"] == "video"]
        self.new_ids: set[str] = set()
        self.shift_world = float("inf")
        self.crashed: list[str] = []
        self.live_ids: set[str] = set()  # event and request ids the audience sent
        self.histories = Histories()
        self._vec_row: dict[str, int] = {}  # item id -> row of _vecs (the vectors serving reads)
        self._vecs = np.zeros((0, 0), np.float32)
        self._vec_absent: set[str] = set()  # asked for and not in Redis (asked again after new items)
        self._producer: Any = None
        self._store: Any = None

    # -- publishing ---------------------------------------------------------------------------
    async def _send_events(self, events: list[Event], world_ts: list[float]) -> None:
        futures = []
        for e, wt in zip(events, world_ts, strict=True):
            self.world_ts[e.event_id] = wt
            if e.domain.value == "video" and e.complete:
                self.popularity[e.item_id] += 1
            if e.appends:
                self.result.active_users.add(e.user_id)
                self.histories.add(e.user_id, e.domain.value, wt, e.item_id)
            futures.append(await self._producer.send(self.settings.topics.events, encode_event(e),
                                                     key=e.user_id.encode()))
        await asyncio.gather(*futures)
        self.result.events_published += len(events)
        self.state.events.add(len(events), time.time())

    async def _send_outbox(self, out: Outbox) -> None:
        self.live_ids.update(e.event_id for e in out.events)
        self.live_ids.update(req["request_id"] for req in out.requests)
        if out.events:
            await self._send_events(out.events, [self.audience.world_ts(e.ts) for e in out.events])
            for e in out.events:
                self._note_action(e)
        futures = []
        for req in out.requests:
            now = time.time()
            self.world_ts[req["request_id"]] = self.audience.world_ts(now)
            body = orjson.dumps({**req, "at": now})
            futures.append(await self._producer.send(self.settings.topics.recommendation_requests,
                                                     body, key=req["user_id"].encode()))
        await asyncio.gather(*futures)

    async def publish_items(self, items: list[dict[str, Any]]) -> None:
        futures = [await self._producer.send(self.settings.topics.items, orjson.dumps(it),
                                             key=it["item_id"].encode()) for it in items]
        await asyncio.gather(*futures)

    # -- views -------------------------------------------------------------------------------
    def _title(self, item_id: str, words: int = 6) -> str:
        title = self.titles.get(item_id, item_id)
        short = " ".join(title.split()[:words])
        return f"{short}…" if len(title.split()) > words else short

    def _note_action(self, e: Event) -> None:
        view = self._user_view(e.user_id)
        view.action = (f"clicked {self._title(e.item_id)}" if e.domain.value == "product" else
                       f"watched {self._title(e.item_id)} {'✓ finished' if e.complete else '✗ left early'}")
        view.action_at = e.ts

    def _user_view(self, user_id: str) -> UserView:
        view = self.state.users.get(user_id)
        if view is None:
            view = self.state.users[user_id] = UserView(user_id)
            if len(self.state.users) > 50:  # keep the most recent few dozen
                oldest = min(self.state.users.values(), key=lambda u: max(u.action_at, u.recommended_at))
                del self.state.users[oldest.user_id]
        return view

    # -- item vectors (the similarity policy) ------------------------------------------------
    async def _load_vectors(self, item_ids: list[str]) -> None:
        """Read the vectors of ``item_ids`` not yet known from Redis (the ones serving reads)."""
        want = [i for i in dict.fromkeys(item_ids) if i not in self._vec_row and i not in self._vec_absent]
        if not want or self._store is None:
            return
        got = await self._store.get_many(want, skip_other_dims=True)
        found = [i for i, ok in zip(want, got.found.tolist(), strict=True) if ok]
        self._vec_absent.update(i for i, ok in zip(want, got.found.tolist(), strict=True) if not ok)
        if found:
            rows = got.vectors[got.found]
            self._vecs = rows if not len(self._vecs) else np.concatenate([self._vecs, rows])
            base = len(self._vec_row)
            self._vec_row.update({i: base + j for j, i in enumerate(found)})

    def similarity(self, user_id: str, cands: list[str], at: float) -> dict[str, float]:
        """Mean cosine of each candidate to the user's newest clicks and watches at ``at``."""
        newest = [self._vec_row[i] for i in self.histories.newest(user_id, at) if i in self._vec_row]
        known = [c for c in cands if c in self._vec_row]
        if not newest or not known:
            return {}
        scores = content_similarity(self._vecs[[self._vec_row[c] for c in known]], self._vecs[newest])
        return dict(zip(known, scores.tolist(), strict=True))

    # -- recommendations -----------------------------------------------------------------------
    def score(self, rec: dict[str, Any], now: float) -> Scored | None:
        """Score one recommendation at its world moment (None when it cannot be scored)."""
        user = rec.get("user_id")
        trigger = rec.get("event_id") or rec.get("request_id")
        world_ts = self.world_ts.get(trigger) if trigger else None
        if world_ts is None:
            world_ts = float(rec.get("generated_at") or now) - self.result.offset
        videos = self.live.video_ids
        top = [it["item_id"] for it in rec.get("items") or [] if it.get("item_id") in videos]
        cands = [c for c in (rec.get("candidates") or self.known_videos) if c in videos]
        if not top or not cands:
            self.result.unscored["no_videos"] += 1
            return None
        ids = list(dict.fromkeys([*cands, *top]))
        try:
            probs = self.live.item_probs(str(user), ids, world_ts)
        except KeyError:
            self.result.unscored["unknown_user"] += 1
            return None
        prob = dict(zip(ids, probs.tolist(), strict=True))
        q = slate_quality(top, cands, prob, self.popularity, self.cfg.k, self.new_ids,
                          similarity=self.similarity(str(user), cands, world_ts))
        return Scored(now, world_ts, str(rec.get("model_version")), bool(rec.get("fallback")),
                      world_ts >= self.shift_world, q, live=trigger in self.live_ids)

    async def on_recommendation(self, raw: bytes) -> None:
        now = time.time()
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.result.unscored["undecodable"] += 1
            return
        r = self.result
        r.recommendations += 1
        self.state.recs.add(1, now)
        user = str(rec.get("user_id"))
        r.users_recommended.add(user)
        version = str(rec.get("model_version"))
        r.model_versions[version] += 1
        self.state.see_version(version, now)
        if rec.get("fallback"):
            r.fallbacks += 1
            r.fallback_reasons[str(rec.get("fallback_reason"))] += 1
            self.state.fallbacks += 1
        fresh = (rec.get("timings") or {}).get("event_to_publish_ms")
        if fresh is not None:
            r.freshness_ms.append(float(fresh))
            self.state.freshness_ms.append(float(fresh))
        await self._load_vectors([c for c in rec.get("candidates") or [] if c not in self._vec_row])
        scored = self.score(rec, now)
        if scored is not None:
            self.quality.add(scored)
        if user in self.audience.sessions or user in self.state.users:
            view = self._user_view(user)
            view.recommended = [self._title(it["item_id"], 4) for it in rec.get("items") or []]
            view.recommended_at, view.model_version = now, version
        await self._send_outbox(self.audience.on_recommendation(rec, now))

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batch.values():
                for msg in records:
                    await self.on_recommendation(msg.value)

    # -- lag -----------------------------------------------------------------------------------
    async def _lags(self) -> tuple[int | None, int | None]:
        from semirec.core.lag import LagError, measure_lag, total_lag

        t = self.settings.topics
        out: list[int | None] = []
        for group, topic in ((INGEST_GROUP, t.events), (RECOMMEND_GROUP, t.user_updates)):
            try:
                out.append(total_lag(await measure_lag(self.settings, [group], [topic], timeout_s=5)))
            except (TimeoutError, LagError, OSError):
                out.append(None)
        return out[0], out[1]

    async def _monitor(self) -> None:
        seen = 0
        while True:
            ingest, recommend = await self._lags()
            now = time.time()
            s = self.state
            s.ingest_lag, s.recommend_lag = ingest, recommend
            s.quality, s.quality_all = self.quality.recent(300), self.quality.overall()
            s.quality_live = self.quality.live_means()
            fresh = self.result.freshness_ms[seen:]  # received since the previous sample
            seen = len(self.result.freshness_ms)
            self.result.timeline.append(Sample(
                now, s.events.total, s.recs.total, ingest, recommend,
                float(np.percentile(fresh, 50)) if fresh else None,
                float(np.percentile(fresh, 99)) if fresh else None))
            dead = self.alive()
            if dead:
                self.crashed = dead
                raise RuntimeError(f"part(s) stopped during the run: {', '.join(dead)}")
            await asyncio.sleep(self.cfg.lag_every_s)

    # -- phases --------------------------------------------------------------------------------
    async def _history(self) -> None:
        events = self.world.events
        self.state.phase, self.state.history_total = "history", len(events)
        off = self.result.offset
        start, sent, paused = time.monotonic(), 0, 0.0
        limit = self.cfg.rate * self.cfg.max_behind_s
        while sent < len(events):
            if max(self.state.ingest_lag or 0, self.state.recommend_lag or 0) > limit:
                self.result.history_paused_s += 0.1
                paused += 0.1
                await asyncio.sleep(0.1)  # backpressure: let the agents catch up
                continue
            due = min(len(events), int((time.monotonic() - start - paused) * self.cfg.rate) + 1)
            if due > sent:
                chunk = events[sent:due]
                shifted = [Event(e.event_id, e.user_id, e.item_id, e.domain, e.action, e.ts + off,
                                 e.complete) for e in chunk]
                await self._send_events(shifted, [e.ts for e in chunk])
                self._note_action(shifted[-1])
                sent = due
                self.state.history_sent = sent
            await asyncio.sleep(0.02)
        self.result.history_events = sent

    async def _live(self) -> None:
        cfg, r = self.cfg, self.result
        self.state.phase = "live"
        r.live_started = time.time()
        ends = r.live_started + cfg.live_s
        self.state.live_ends = ends
        shift_at = r.live_started + cfg.live_s * cfg.shift_at
        opened = 0.0
        last = time.monotonic()
        while time.time() < ends:
            now = time.time()
            if r.shift_wall is None and now >= shift_at:
                await self._shift(now)
            mono = time.monotonic()
            opened += (mono - last) * cfg.sessions_per_s
            last = mono
            n = int(opened)
            if n:
                opened -= n
                await self._send_outbox(self.audience.start_sessions(n, now))
            await self._send_outbox(self.audience.tick(now))
            await asyncio.sleep(0.05)

    async def _shift(self, now: float) -> None:
        r = self.result
        r.shift_wall, r.shift_world = now, self.audience.world_ts(now)
        self.shift_world = r.shift_world
        self.live.schedule_shift(r.shift_world, self.cfg.shift_strength)
        self.state.shift_at = now
        self.state.notes.append(f"{time.strftime('%H:%M:%S')} interests shifted")
        if self.world.new_items:
            self._vec_absent.clear()  # the catalog agent is about to write them
            self.new_ids = {it["item_id"] for it in self.world.new_items}
            self.known_videos += sorted(self.new_ids)
            await self.publish_items(self.world.new_items)
            r.new_videos_wall = self.state.new_videos_at = time.time()
            self.state.notes.append(f"{time.strftime('%H:%M:%S')} {len(self.new_ids)} new videos "
                                    "published to items")

    async def _catch_up(self, phase: str) -> None:
        """Wait (at most ``drain_timeout_s``) until the ingest and recommendation lags are 0."""
        self.state.phase = phase
        deadline = time.time() + self.cfg.drain_timeout_s
        while time.time() < deadline:
            ingest, recommend = await self._lags()
            self.result.final_ingest_lag, self.result.final_recommend_lag = ingest, recommend
            if ingest == 0 and recommend == 0:
                await asyncio.sleep(1.0)  # the last recommendations are on their way
                return
            await asyncio.sleep(0.5)

    async def _drain(self) -> None:
        self.state.phase = "drain"
        deadline = time.time() + self.cfg.drain_timeout_s
        while self.audience.sessions and time.time() < deadline:
            await self._send_outbox(self.audience.tick(time.time()))
            await asyncio.sleep(0.1)
        await self._catch_up("drain")

    async def run(self) -> LoopResult:
        t = self.settings.topics
        from semirec.core.kafka import ingest_topics, serving_topics

        await ensure_topics(self.settings, {**ingest_topics(self.settings), **serving_topics(self.settings),
                                            t.items: self.settings.event_partitions})
        self._producer = producer(self.settings)
        self._store = ItemStore.from_url(self.settings.redis_url)
        await self._load_vectors([it["item_id"] for it in self.world.items])
        consumer = AIOKafkaConsumer(**self.settings.consumer_kwargs(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await self._producer.start()
        await consumer.start()
        tasks: list[asyncio.Task] = []  # the phases and the two readers, cancelled at the end
        try:
            await consumer.topics()  # fetches the metadata partitions_for_topic reads
            parts = consumer.partitions_for_topic(t.recommendations) or set()
            tps = [TopicPartition(t.recommendations, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            tasks = [asyncio.create_task(self._phases()),
                     asyncio.create_task(self._consume(consumer)),
                     asyncio.create_task(self._monitor())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what failed
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            try:  # each client closed even if another fails (one left open holds the broker's
                await consumer.stop()  # shutdown for its 5 s drain)
            finally:
                try:
                    await self._producer.stop()
                finally:
                    await self._store.close()
            self.result.ended = time.time()
            self.state.phase = "done"
        return self.result

    async def _phases(self) -> None:
        await self._history()
        await self._catch_up("catching up")  # the audience starts on fresh recommendations
        await self._live()
        await self._drain()
