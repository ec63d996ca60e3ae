"""One typed settings object, read from ``SEMIREC_*`` environment variables.

Every process (worker, CLI, trainer, tests) builds its view of the world from
:func:`Settings.from_env`; nothing else reads the environment for addresses or secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from semirec.core.recommendations import MAX_K
from semirec.core.urls import redact, redis_url_problem

# the repository checkout (an editable install): semirec/core/settings.py -> ../../
REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_MODEL_REPOSITORY = REPO_ROOT / "triton_models"
# SEMIREC_RANKER_PRECISION's values (semirec.trainer.registry.precision resolves them)
RANKER_PRECISIONS = ("auto", "fp32", "int8")


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _check_redis_url(url: str) -> None:
    if problem := redis_url_problem(url):
        raise SettingsError(f"SEMIREC_REDIS_URL={redact(url)!r}: {problem}")


def _check_kafka(servers: str) -> None:
    for server in servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"SEMIREC_KAFKA={servers!r}: expected host:port[,host:port...], "
                                f"got {server.strip()!r}")


def triton_servers(addresses: str) -> list[str]:
    """``SEMIREC_TRITON_GRPC`` as a list: ``host:port[,host:port...]`` (replicas serving one
    model repository)."""
    return [a.strip() for a in addresses.split(",")]


def _check_triton(addresses: str) -> None:
    """tritonclient's gRPC address is ``host:port`` (no scheme: ``http://...`` fails only at the
    first call, as a DNS error); several replicas are comma-separated, each once."""
    servers = triton_servers(addresses)
    for address in servers:
        host, sep, port = address.rpartition(":")
        if "/" in address or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"SEMIREC_TRITON_GRPC={addresses!r}: expected host:port[,host:port...] "
                                "(Triton's gRPC port, no scheme), e.g. 127.0.0.1:8001")
    if len(set(servers)) != len(servers):
        raise SettingsError(f"SEMIREC_TRITON_GRPC={addresses!r} names a server twice")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Client-side Kafka security; all optional (PLAINTEXT when nothing is set)."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (producer, consumer, admin)."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        if self.protocol.startswith("SASL"):
            kw.update(
                sasl_mechanism=self.sasl_mechanism or "PLAIN",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kw


@dataclass(frozen=True, slots=True)
class Topics:
    events: str = "events"
    items: str = "items"
    recommendations: str = "recommendations"
    recommendation_requests: str = "recommendation-requests"
    events_dlq: str = "events-dlq"
    user_updates: str = "user-updates"  # ingest -> recommendation agent: a user's state changed
    samples: str = "samples"  # ingest -> trainer: point-in-time training samples
    model_updates: str = "model-updates"  # trainer -> everyone: a model version was promoted


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: str = "127.0.0.1:9092"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    redis_url: str = "redis://127.0.0.1:6379/0"
    triton_grpc: str = "127.0.0.1:8001"
    topics: Topics = field(default_factory=Topics)
    seq_len: int = 50
    time_bucket_s: int = 3600
    dedup_window: int = 64
    event_partitions: int = 4
    topic_replication: int = 1
    # Kafka consumer groups: each agent has its own (a worker running one agent joins it); a
    # worker running several agents joins "semirec-<agents, sorted, joined by '-'>"; a non-empty
    # SEMIREC_CONSUMER_GROUP puts every agent of the worker in that one group instead.
    consumer_group: str = ""
    ingest_group: str = "semirec-ingest"
    catalog_group: str = "semirec-catalog"
    recommend_group: str = "semirec-recommend"
    # Static group membership (Kafka group.instance.id): a worker restarted with the same id
    # within the session timeout gets its partitions back without a rebalance. Unique per
    # worker process (e.g. the pod or host name); "" = dynamic membership.
    instance_id: str = ""
    batch_max: int = 5000  # events per ingest batch under backlog (docs/ingest.md: -15% CPU vs 2,000)
    batch_within_s: float = 0.05
    encoder_checkpoint: str = ""  # item-encoder checkpoint dir; "" = the untrained fusion
    # "onnx-int8" (exported, int8 text model; the CPU default since issue 22), "onnx" (exported,
    # fp32, 1e-4 parity with torch) or "torch" (eager)
    encoder_runtime: str = "onnx-int8"
    cache_dir: str = ""  # backbone-feature cache; "" = ~/.cache/semirec
    state_cache_users: int = 20_000  # decoded user states kept by each ingest worker (LRU)
    # Kafka group timings. Production defaults; local stacks export shorter ones.
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 3.0
    rebalance_timeout_s: float = 10.0
    commit_interval_s: float = 1.0
    # Longest a fetch waits for data (faust hard-codes 1.5 s); a broker that holds fetches until
    # then (Tansu) adds it to every hop of a quiet stream, so local stacks export 50.
    fetch_max_wait_ms: int = 500
    # The same for a worker running the recommendation agent (0: fetch_max_wait_ms; not used with
    # recommend_inline, which has no user-updates hop): on Tansu the user-updates hop waits up to
    # this for every notice (freshness), at the cost of more empty fetches while idle; the
    # embedded stack exports 25.
    rec_fetch_max_wait_ms: int = 0
    # 1 = a worker that runs both the ingest and the recommendation agents hands ingest's changed
    # users to its recommender in the same process (no user-updates notice, no second consumer
    # of it: docs/serving.md); a worker running only one of them ignores it
    recommend_inline: int = 0
    # Triton model repository (the ranker's versions and aliases); "" = the repo's triton_models/
    model_repository: str = ""
    model_keep_versions: int = 5  # ranker versions kept besides the aliased ones
    triton_model_config: str = ""  # "" = config.pbtxt (CPU); "tensorrt" = configs/tensorrt.pbtxt
    # the ranker's onnxruntime graph in Triton's python backend (CPU): "int8" (dynamic int8
    # MatMul weights, model.int8.onnx; parity measured in docs/serving.md), "fp32" (model.onnx
    # as exported) or "auto" (int8 where the serving CPU has VNNI, else fp32)
    ranker_precision: str = "auto"
    # The ranker's graph as a cascade (set at export: semirec model export, the online trainer,
    # the demo): every candidate by the model's wide part (linear term + item identity), the whole
    # network for the wide part's best this many only, the rest below them in the wide part's
    # order; 0 = the whole network for every candidate (docs/serving.md, benchmarks/cascade.py)
    ranker_deep_top: int = 150
    log_samples: int = 1  # 1 = ingest logs a point-in-time training sample per watch (`samples`)
    trainer_group: str = "semirec-trainer"  # the incremental trainer's consumer group
    trainer_state_dir: str = "runs/trainer"  # its crash-safe checkpoints (model+optimizer+offsets)
    # One active trainer: the lease in the model repository lasts this long unless renewed (every
    # third of it); a second trainer waits and takes over this long after the active one died.
    trainer_lease_s: float = 15.0
    # An agent whose batch has been in flight this long reports not ready (/readyz).
    batch_stuck_s: float = 60.0
    # After an unexpected agent error the worker keeps /metrics up this long, then exits (70).
    crash_exit_delay_s: float = 15.0
    # Port of a worker's /metrics, /healthz, /readyz; 0 = not served (containers set 9400).
    metrics_port: int = 0
    # Serving (the recommendation agent, `semirec recommend`, benchmarks/serving.py)
    recall_candidates: int = 500  # candidates recalled (and ranked) per recommendation
    rank_timeout_ms: int = 100  # time budget of one Triton call before falling back
    # 1 = the ranker's inputs go through system shared memory (Triton on the same host: no 2 MB
    # protobuf per call on either side); the embedded stack exports 1
    triton_shared_memory: int = 0
    popularity_window_hours: int = 24  # event-time window of the popularity source
    rec_concurrency: int = 16  # recommendations in flight per agent
    rank_batch: int = 8  # users ranked in one Triton call (one gRPC request, one model run)
    # how long the recommendation agents (inline: ingest) may hold a batch open for more, only while the
    # last second's rate predicts another within it (a quiet stream never waits): fuller Triton
    # calls under load, for latency at 50-150/s (docs/serving.md: measured, off by default); 0 = off
    rank_linger_ms: int = 0
    publish_candidates: int = 0  # 1 = recommendations carry every candidate id (diagnostics)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        base = cls()

        def get(name: str, default: Any) -> Any:
            raw = env.get(f"SEMIREC_{name}")
            if raw is None or raw == "":
                return default
            try:
                return type(default)(raw) if default is not None else raw
            except ValueError as exc:
                raise SettingsError(f"SEMIREC_{name}={raw!r}: expected {type(default).__name__}") from exc

        sec_defaults = KafkaSecurity()
        security = KafkaSecurity(
            protocol=get("KAFKA_SECURITY_PROTOCOL", sec_defaults.protocol).upper(),
            sasl_mechanism=get("KAFKA_SASL_MECHANISM", None),
            sasl_username=get("KAFKA_SASL_USERNAME", None),
            sasl_password=get("KAFKA_SASL_PASSWORD", None),
            ssl_cafile=get("KAFKA_SSL_CAFILE", None),
            ssl_certfile=get("KAFKA_SSL_CERTFILE", None),
            ssl_keyfile=get("KAFKA_SSL_KEYFILE", None),
        )
        if security.protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise SettingsError(f"SEMIREC_KAFKA_SECURITY_PROTOCOL={security.protocol!r} is unknown")
        if security.protocol.startswith("SASL") and not (
            security.sasl_username and security.sasl_password
        ):
            raise SettingsError(
                "SASL needs SEMIREC_KAFKA_SASL_USERNAME and SEMIREC_KAFKA_SASL_PASSWORD"
            )
        topics = Topics(
            **{
                f.name: get(f"TOPIC_{f.name.upper()}", getattr(base.topics, f.name))
                for f in fields(Topics)
            }
        )
        scalars = {
            f.name: get(f.name.upper(), getattr(base, f.name))
            for f in fields(cls)
            if f.name not in ("security", "topics")
        }
        scalars["redis_url"] = get("REDIS_URL", base.redis_url)
        settings = replace(base, security=security, topics=topics, **scalars)
        settings.validate()
        return settings

    @property
    def model_repository_path(self) -> Path:
        return Path(self.model_repository) if self.model_repository else REPO_MODEL_REPOSITORY

    def validate(self) -> None:
        _check_redis_url(self.redis_url)
        _check_kafka(self.kafka)
        _check_triton(self.triton_grpc)
        if self.fetch_max_wait_ms < 0 or self.rec_fetch_max_wait_ms < 0:
            raise SettingsError("SEMIREC_FETCH_MAX_WAIT_MS and SEMIREC_REC_FETCH_MAX_WAIT_MS must be >= 0")
        if self.recommend_inline not in (0, 1):
            raise SettingsError(f"SEMIREC_RECOMMEND_INLINE must be 0 or 1, got {self.recommend_inline}")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"SEMIREC_METRICS_PORT must be 0..65535, got {self.metrics_port}")
        if not 1 <= self.seq_len <= 255:
            raise SettingsError(f"SEMIREC_SEQ_LEN must be 1..255, got {self.seq_len}")
        if self.time_bucket_s <= 0:
            raise SettingsError(f"SEMIREC_TIME_BUCKET_S must be > 0, got {self.time_bucket_s}")
        if not 0 <= self.dedup_window <= 65535:
            raise SettingsError(f"SEMIREC_DEDUP_WINDOW must be 0..65535, got {self.dedup_window}")
        if self.event_partitions < 1:
            raise SettingsError("SEMIREC_EVENT_PARTITIONS must be >= 1")
        if self.encoder_runtime not in ("onnx", "onnx-int8", "torch"):
            raise SettingsError("SEMIREC_ENCODER_RUNTIME must be onnx, onnx-int8 or torch, "
                                f"got {self.encoder_runtime!r}")
        if self.model_keep_versions < 2:
            raise SettingsError("SEMIREC_MODEL_KEEP_VERSIONS must be >= 2 (serving and previous)")
        if self.triton_model_config not in ("", "tensorrt"):
            raise SettingsError(
                f"SEMIREC_TRITON_MODEL_CONFIG must be '' or 'tensorrt', got {self.triton_model_config!r}")
        if self.ranker_precision not in RANKER_PRECISIONS:
            raise SettingsError(
                f"SEMIREC_RANKER_PRECISION must be auto, fp32 or int8, got {self.ranker_precision!r}")
        if not (self.ranker_deep_top == 0 or MAX_K <= self.ranker_deep_top <= 10_000):
            raise SettingsError(f"SEMIREC_RANKER_DEEP_TOP must be 0 (off) or {MAX_K}..10000 (a "
                                f"request may ask for {MAX_K}), got {self.ranker_deep_top}")
        if not 1 <= self.recall_candidates <= 10_000:
            raise SettingsError(f"SEMIREC_RECALL_CANDIDATES must be 1..10000, got {self.recall_candidates}")
        if self.rank_timeout_ms <= 0 or self.rec_concurrency < 1 or self.popularity_window_hours < 1 \
                or not 1 <= self.rank_batch <= 64 or self.rank_linger_ms < 0:
            raise SettingsError("SEMIREC_RANK_TIMEOUT_MS, SEMIREC_REC_CONCURRENCY and "
                                "SEMIREC_POPULARITY_WINDOW_HOURS must be positive, "
                                "SEMIREC_RANK_BATCH 1..64 (the ranker's max_batch_size), "
                                "SEMIREC_RANK_LINGER_MS >= 0")

    def group_for(self, agents: Sequence[str]) -> str:
        """The consumer group a worker running ``agents`` joins (see ``consumer_group``)."""
        if self.consumer_group:
            return self.consumer_group
        if len(agents) == 1:
            return getattr(self, f"{agents[0]}_group")
        return "semirec-" + "-".join(sorted(agents))

    @property
    def events_group(self) -> str:
        """The group whose backlog on the events topic is ingest's (tools' default)."""
        return self.consumer_group or self.ingest_group

    def kafka_kwargs(self) -> dict[str, Any]:
        """``bootstrap_servers`` plus security options for any aiokafka client."""
        return {"bootstrap_servers": self.kafka, **self.security.client_kwargs()}

    def consumer_kwargs(self) -> dict[str, Any]:
        """:meth:`kafka_kwargs` plus the fetch long-poll, for aiokafka consumers."""
        return {**self.kafka_kwargs(), "fetch_max_wait_ms": self.fetch_max_wait_ms}
