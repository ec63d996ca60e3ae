"""Prometheus metrics, liveness and readiness for every semirec worker.

One registry (:data:`REGISTRY`) holds the metrics every agent shares, labelled by ``agent``;
an agent binds them once with :class:`AgentMetrics` and calls its methods. :func:`start_http`
serves ``/metrics``, ``/healthz`` (liveness: the event loop answers and the process has not
declared itself broken) and ``/readyz`` (readiness: every registered check passes) from the
caller's asyncio loop, so a blocked loop fails its health check instead of hiding behind a
thread. Metric names are listed in docs/operations.md; the alert rules and the dashboard use
only names defined here or by the lag exporter (:mod:`semirec.core.lag`).
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import socket
import time
from collections import Counter as Counter_
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
# Event time can be hours old (offline clients, replays): the freshness buckets reach a day.
FRESHNESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                     3600.0, 14400.0, 86400.0)

EVENTS_PROCESSED = Counter(
    "semirec_events_processed", "Messages that passed the contract and were handled "
    "(applied, duplicate or no-op), counted once state is written.", ["agent"], registry=REGISTRY)
EVENTS_REJECTED = Counter(
    "semirec_events_rejected", "Messages sent to the dead-letter topic, by reason code.",
    ["agent", "reason"], registry=REGISTRY)
EVENTS_REPLAY_SKIPPED = Counter(
    "semirec_events_replay_skipped", "Events skipped by replay protection: offset at or below "
    "the last one the user's state applied from that partition (a batch consumed again after a "
    "crash or rebalance).", ["agent"], registry=REGISTRY)
REPLAY_RESETS = Counter(
    "semirec_replay_protection_resets", "User states whose last applied offset of a partition "
    "lay at or past the partition's log end (the topic was recreated or mirrored to another "
    "cluster): their replay protection for it was reset and the events applied.", ["agent"],
    registry=REGISTRY)
CATALOG_STALE = Counter(
    "semirec_catalog_stale_writes", "Item upserts not written because the store held a newer "
    "version of the item (an older upsert processed late, e.g. by a worker that lost its "
    "partition in a rebalance).", ["agent"], registry=REGISTRY)
PROCESSING_SECONDS = Histogram(
    "semirec_processing_seconds", "Wall time of one processing stage (e.g. a whole batch).",
    ["agent", "stage"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
BATCH_MESSAGES = Histogram(
    "semirec_batch_messages", "Messages per processed batch.", ["agent"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=REGISTRY)
REDIS_SECONDS = Histogram(
    "semirec_redis_call_seconds", "Latency of one Redis round trip (pipeline or command).",
    ["agent", "op"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
EVENT_TO_STATE = Histogram(
    "semirec_event_to_state_seconds", "Event timestamp (its ts field) to state written.",
    ["agent"], buckets=FRESHNESS_BUCKETS, registry=REGISTRY)
APPEND_TO_STATE = Histogram(
    "semirec_append_to_state_seconds", "Kafka record timestamp (produce or log-append time) "
    "to state written.", ["agent"], buckets=FRESHNESS_BUCKETS, registry=REGISTRY)
LAST_WRITE = Gauge(
    "semirec_last_state_write_timestamp_seconds", "Unix time of the last batch written.",
    ["agent"], registry=REGISTRY)
AGENT_CRASHES = Counter(
    "semirec_agent_crashes", "Unexpected errors that stopped an agent (the worker then exits "
    "without acknowledging the batch; see docs/ingest.md).", ["agent"], registry=REGISTRY)
READY = Gauge("semirec_ready", "1 when the readiness checks pass (evaluated on each scrape).",
              registry=REGISTRY)
DEPENDENCY_UP = Gauge(
    "semirec_dependency_up", "0 while calls to a dependency (redis, kafka) are being retried "
    "because it does not answer (a transient outage), 1 once it answers again.", ["dependency"],
    registry=REGISTRY)
DEPENDENCY_RETRIES = Counter(
    "semirec_dependency_retries", "Calls retried with back-off because a dependency did not answer.",
    ["dependency"], registry=REGISTRY)

# dependency -> the last error of an outage under way (what /readyz shows); process-wide
OUTAGES: dict[str, str] = {}


def outage_started(dependency: str, error: str) -> None:
    """A call to ``dependency`` failed transiently and will be retried."""
    OUTAGES[dependency] = error
    DEPENDENCY_UP.labels(dependency).set(0)
    DEPENDENCY_RETRIES.labels(dependency).inc()


def outage_ended(dependency: str) -> None:
    if OUTAGES.pop(dependency, None) is not None:
        DEPENDENCY_UP.labels(dependency).set(1)


class AgentMetrics:
    """The shared metrics bound to one agent name; the methods an agent calls."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self._processed = EVENTS_PROCESSED.labels(agent)
        self._batch = BATCH_MESSAGES.labels(agent)
        self._event_age = EVENT_TO_STATE.labels(agent)
        self._append_age = APPEND_TO_STATE.labels(agent)
        self._last_write = LAST_WRITE.labels(agent)

    def crashed(self) -> None:
        AGENT_CRASHES.labels(self.agent).inc()

    def processed(self, n: int = 1) -> None:
        self._processed.inc(n)

    def replay_skipped(self, n: int) -> None:
        EVENTS_REPLAY_SKIPPED.labels(self.agent).inc(n)

    def replay_reset(self, n: int) -> None:
        REPLAY_RESETS.labels(self.agent).inc(n)

    def catalog_stale(self, n: int) -> None:
        CATALOG_STALE.labels(self.agent).inc(n)

    def rejected(self, reason: str, n: int = 1) -> None:
        EVENTS_REJECTED.labels(self.agent, reason).inc(n)

    def batch(self, n_messages: int) -> None:
        self._batch.observe(n_messages)

    def observe(self, stage: str, seconds: float) -> None:
        PROCESSING_SECONDS.labels(self.agent, stage).observe(seconds)

    @contextmanager
    def timed(self, stage: str = "batch") -> Iterator[None]:
        """Time a processing stage (recorded also when it raises)."""
        with PROCESSING_SECONDS.labels(self.agent, stage).time():
            yield

    @contextmanager
    def redis(self, op: str) -> Iterator[None]:
        """Time one Redis round trip labelled ``op`` (e.g. ``load``, ``cas``)."""
        with REDIS_SECONDS.labels(self.agent, op).time():
            yield

    def state_written(self, event_ts: Iterable[float], append_ts: Iterable[float],
                      now: float | None = None) -> None:
        """Observe freshness for events whose state was just written.

        ``event_ts``: the events' own timestamps; ``append_ts``: their Kafka record
        timestamps; both unix seconds. Negative ages (clock skew) count as 0.
        """
        now = time.time() if now is None else now
        observe_many(self._event_age, [now - ts for ts in event_ts])
        observe_many(self._append_age, [now - ts for ts in append_ts])
        self._last_write.set(now)


def observe_many(histogram: Histogram, amounts: list[float]) -> None:
    """``histogram.observe`` for many amounts (negative ones count as 0) at once: one bucket
    search each in C and one increment per touched bucket, instead of a locked update per
    amount (what lets agents keep their per-event histograms at per-batch cost). Uses the
    client's bucket layout (``_upper_bounds``, ``_buckets``, ``_sum``), checked by
    tests/test_metrics.py against ``observe``."""
    if not amounts:
        return
    bounds = histogram._upper_bounds  # sorted, ends with +Inf
    counts = Counter_(bisect.bisect_left(bounds, a) for a in amounts)
    buckets = histogram._buckets
    for index, n in counts.items():
        buckets[index].inc(n)
    histogram._sum.inc(sum(a for a in amounts if a > 0))


Check = Callable[[], bool | Awaitable[bool]]


class Health:
    """Liveness and readiness of one process.

    Liveness fails only after :meth:`fail` (an unrecoverable error: restart me). Readiness
    runs every registered check (sync or async, each bounded by ``check_timeout_s``) on each
    ``/readyz`` request; a check that raises or times out counts as not ready.
    """

    def __init__(self, check_timeout_s: float = 2.0) -> None:
        self.check_timeout_s = check_timeout_s
        self._checks: dict[str, Check] = {}
        self.broken: str | None = None

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def fail(self, reason: str) -> None:
        self.broken = reason

    async def readiness(self) -> dict[str, bool]:
        async def run(check: Check) -> bool:
            try:
                result = check()
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self.check_timeout_s)
                return bool(result)
            except Exception:
                return False

        names = list(self._checks)
        results = await asyncio.gather(*(run(self._checks[n]) for n in names))
        return dict(zip(names, results, strict=True))


def make_app(registry: CollectorRegistry = REGISTRY,
             health: Health | None = None) -> web.Application:
    """The aiohttp application serving ``/metrics``, ``/healthz`` and ``/readyz``."""
    health = health or Health()

    async def ready() -> tuple[bool, dict[str, bool]]:
        checks = await health.readiness()
        ok = health.broken is None and all(checks.values()) and not OUTAGES
        if registry is REGISTRY:
            READY.set(1 if ok else 0)
        return ok, checks

    async def metrics(_: web.Request) -> web.Response:
        await ready()  # keeps semirec_ready current for Prometheus without /readyz probes
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if health.broken:
            return web.json_response({"live": False, "reason": health.broken}, status=503)
        return web.json_response({"live": True})

    async def readyz(_: web.Request) -> web.Response:
        ok, checks = await ready()
        body: dict[str, object] = {"ready": ok, "checks": checks}
        if OUTAGES:  # retried outages under way, e.g. {"redis": "Error 111 connecting to ..."}
            body["outages"] = dict(OUTAGES)
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@dataclass
class MetricsServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


def bind(port: int, host: str = "0.0.0.0") -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (0: a free port); fails fast and clearly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    return sock


async def start_http(port: int = 0, *, host: str = "0.0.0.0", sock: socket.socket | None = None,
                     registry: CollectorRegistry = REGISTRY,
                     health: Health | None = None) -> MetricsServer:
    """Serve metrics and health in the running loop, on ``sock`` or a new :func:`bind`."""
    sock = sock or bind(port, host)
    runner = web.AppRunner(make_app(registry, health), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return MetricsServer(runner, sock.getsockname()[0], sock.getsockname()[1])


def metric_names(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """Every series name the registry exposes (with ``_total``/``_bucket``/... suffixes)."""
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names
