"""The faust application factory: one place that maps :class:`Settings` to faust."""

from __future__ import annotations

import tempfile
from typing import Any

import faust
from faust.tables import TableManager as FaustTableManager

from semirec.core.settings import Settings


def broker_credentials(settings: Settings) -> Any:
    sec = settings.security
    if sec.protocol == "PLAINTEXT":
        return None
    ssl_context = settings.security.client_kwargs().get("ssl_context")
    if sec.protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.sasl_username, password=sec.sasl_password,
            mechanism=sec.sasl_mechanism or "PLAIN", ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


PRODUCER_BATCH_BYTES = 512 * 1024  # below the 1,000,000-byte request limit (docs/contracts.md)


class TableManager(FaustTableManager):
    """faust's table manager, without its fixed 1 s sleep at start when the app has no tables.

    faust's ``on_start`` sleeps a second so that tables can still register; its conductor
    subscribes to the topics only after that, so every worker start waited a second. Tables are
    declared before a worker starts, and ours declares none (user state lives in Redis): with no
    table the manager goes straight on; with tables it starts as faust's does."""

    async def on_start(self) -> None:
        if len(self):
            await super().on_start()
            return
        await self._update_channels()
        await self.recovery.start()


def create_app(settings: Settings, *, app_id: str | None = None) -> faust.App:
    """A faust app wired to our broker; no faust tables (user state lives in Redis). Its agents'
    shared state is its :class:`semirec.streams.runtime.WorkerRuntime`, reached with
    :func:`semirec.streams.runtime.runtime_of`."""
    from semirec.streams.batch_transport import use_batch_transport
    from semirec.streams.runtime import RUNTIME_ATTR, WorkerRuntime

    brokers = [f"kafka://{h.strip()}" for h in settings.kafka.split(",") if h.strip()]
    app = faust.App(
        app_id or settings.events_group,  # the consumer group (cli/worker.py: group_for)
        broker=brokers,
        broker_credentials=broker_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=settings.batch_max,
        consumer_auto_offset_reset="earliest",
        # static membership (SEMIREC_INSTANCE_ID): a restart within the session timeout keeps
        # the worker's partitions, no rebalance of the whole group
        consumer_group_instance_id=settings.instance_id or None,
        # Do not wait for in-flight batches on stop or rebalance: a batch retrying an outage may
        # never finish, and SIGTERM must stop the worker within seconds. Nothing is lost: agents
        # ack a batch only after writing it, only acked offsets are committed, and a replay of
        # an unacked batch is a no-op (applied offsets in the state, compare-and-set writes).
        stream_wait_empty=False,
        producer_acks=-1,
        # record batches up to 512 KiB (faust's default is 16 KiB): aiokafka keeps one request
        # in flight per partition, so the ingest agent's training samples (~2 KB each) and
        # notices would otherwise wait for one broker round trip per few records
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        topic_partitions=settings.event_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        store="memory://",
        TableManager=TableManager,
        datadir=tempfile.mkdtemp(prefix="semirec-faust-"),
        web_enabled=False,
        autodiscover=False,
    )
    # every worker consumes through the batch transport (agents that claim no topic keep
    # faust's per-message path) with our fetch long-poll (SEMIREC_FETCH_MAX_WAIT_MS)
    setattr(app, RUNTIME_ATTR, WorkerRuntime(fetch_max_wait_ms=settings.fetch_max_wait_ms))
    use_batch_transport(app)
    return app


def raw_topic(app: faust.App, name: str, partitions: int) -> faust.TopicT:
    """A topic whose keys and values reach agents as bytes (we decode and validate ourselves)."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)
