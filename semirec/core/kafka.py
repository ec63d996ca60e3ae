"""Kafka client helpers shared by CLI verbs, agents and tools (aiokafka)."""

from __future__ import annotations

from contextlib import suppress

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from semirec.core.faults import FatalError, Fault
from semirec.core.settings import Settings


def producer(settings: Settings, **kw) -> AIOKafkaProducer:
    """A producer with acks=all; idempotence stays off (Tansu has none, Kafka does not need it
    here: the ingest agent de-duplicates by event_id)."""
    opts = {"acks": "all", "linger_ms": 5, "max_batch_size": 256 * 1024, **kw}
    return AIOKafkaProducer(**settings.kafka_kwargs(), **opts)


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.kafka_kwargs())


async def ensure_topics(settings: Settings, partitions: dict[str, int], *,
                        check: bool = False) -> list[str]:
    """Create the named topics that do not exist yet; returns the names created. With ``check``,
    a topic that exists with another partition count than ``partitions`` says is a
    configuration fault (:class:`FatalError`, exit 78): per-user state, notices and samples are
    keyed by user and partition, so every worker must agree with the topics."""
    client = admin(settings)
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [name for name in partitions if name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # created concurrently by another process
                await client.create_topics(
                    [NewTopic(n, partitions[n], settings.topic_replication) for n in missing]
                )
        existing_wanted = sorted(set(partitions) - set(missing))
        if check and existing_wanted:  # (no names at all would describe every topic)
            for topic in await client.describe_topics(existing_wanted):
                name, have = topic["topic"], len(topic["partitions"])
                if name in partitions and have and have != partitions[name]:
                    raise FatalError(Fault("config", partition_mismatch(name, have, partitions[name])))
        return missing
    finally:
        await client.close()


def partition_mismatch(topic: str, have: int, want: int) -> str:
    return (f"topic {topic!r} has {have} partitions but SEMIREC_EVENT_PARTITIONS={want}: set "
            f"SEMIREC_EVENT_PARTITIONS={have}, or grow every semirec topic to {want} "
            "(kafka-topics --alter --partitions; docs/operations.md, Scaling out)")


def ingest_topics(settings: Settings) -> dict[str, int]:
    """Topics the ingest path needs, with their partition counts."""
    return {settings.topics.events: settings.event_partitions,
            settings.topics.events_dlq: settings.event_partitions,
            settings.topics.user_updates: settings.event_partitions,
            **({settings.topics.samples: settings.event_partitions} if settings.log_samples else {})}


def serving_topics(settings: Settings) -> dict[str, int]:
    """Topics the recommendation agent reads and writes."""
    t = settings.topics
    return {t.user_updates: settings.event_partitions,
            t.recommendation_requests: settings.event_partitions,
            t.recommendations: settings.event_partitions,
            t.events_dlq: settings.event_partitions}
