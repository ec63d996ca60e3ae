"""Prometheus metrics of the recommendation path (registered in semirec.core.metrics.REGISTRY)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from semirec.core.metrics import FRESHNESS_BUCKETS, LATENCY_BUCKETS, REGISTRY

RECOMMENDATIONS = Counter(
    "semirec_recommendations", "Recommendations published, by trigger (event, request) and "
    "whether the fallback ranked them.", ["trigger", "fallback"], registry=REGISTRY)
FALLBACKS = Counter(
    "semirec_recommendation_fallbacks", "Recommendations ranked without the model, by why "
    "(breaker_open, triton_error).", ["why"], registry=REGISTRY)
TRITON_ERRORS = Counter(
    "semirec_triton_errors", "Failed ranker calls to Triton.", registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "semirec_recommendation_stage_seconds", "Time per recommendation stage: recall (state read + "
    "recall), rank, total (one recommendation); for triggered ones also ingest (event -> Redis "
    "write), notice (-> notice fetched by the agent), queue (-> a ranking slot).",
    ["stage"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
FRESHNESS = Histogram(
    "semirec_recommendation_freshness_seconds", "Triggering event's Kafka timestamp to its "
    "recommendation published.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, *FRESHNESS_BUCKETS[7:]),
    registry=REGISTRY)
SKIPPED_ITEMS = Counter(
    "semirec_items_without_vector", "Candidates or sequence entries skipped because their item "
    "has no vector yet.", ["where"], registry=REGISTRY)
COALESCED = Counter(
    "semirec_user_updates_coalesced", "User-update notices merged into a newer one of the same "
    "user before ranking.", registry=REGISTRY)
BREAKER_OPEN = Gauge(
    "semirec_ranker_breaker_open", "1 while the ranker's circuit breaker is open or probing.",
    registry=REGISTRY)
FEED_RESETS = Counter(
    "semirec_catalog_feed_resets", "Catalog change feed found behind the position the serving "
    "index had read (emptied, or a Redis failover lost its last entries): read again whole.",
    registry=REGISTRY)
COUNT_FEED_RESETS = Counter(
    "semirec_count_feed_resets", "A shard of the videos' count feed no longer held the entries "
    "after the one the serving index had read (trimmed: the reader fell behind; emptied, or a "
    "Redis failover lost its newest entries): its counts read whole.",
    registry=REGISTRY)
CATALOG_ITEMS = Gauge(
    "semirec_serving_catalog_items", "Items in the serving index, by domain.", ["domain"],
    registry=REGISTRY)
TRITON_SERVER_VERSION = Gauge(
    "semirec_triton_server_version", "Ranker version the Triton replica last answered with (0: "
    "skipped, its circuit open), by server (SEMIREC_TRITON_GRPC lists several).", ["server"],
    registry=REGISTRY)
TRITON_VERSION_SKEW = Gauge(
    "semirec_triton_version_skew", "1 while the Triton replicas answer with different ranker "
    "versions (a promotion under way, or a replica that missed one).", registry=REGISTRY)
TRITON_VERSION_SKEW_SECONDS = Counter(
    "semirec_triton_version_skew_seconds", "Time the Triton replicas answered with different "
    "ranker versions.", registry=REGISTRY)
TRITON_RETRIES = Counter(
    "semirec_triton_retries", "Ranker calls retried on another Triton replica after one failed, "
    "by the server that failed.", ["server"], registry=REGISTRY)
