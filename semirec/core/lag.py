"""Exact consumer lag per group/topic/partition, in messages and in seconds.

The log-end offset is the high watermark of a fetch response, not ListOffsets(latest):
Tansu answers ListOffsets with the first offset of the last batch + 1, while fetch responses
carry the true high watermark on Tansu and on Apache Kafka alike. A throwaway consumer (no
group, nothing committed) is assigned the partitions, positioned at the group's committed
offset and fetches once: the response gives the high watermark, and its first record is the
oldest unconsumed message, whose timestamp gives the lag in seconds (as klag-exporter does).

Choices (documented in docs/operations.md):
- a partition without a committed offset (new, nonexistent or deleted group) lags by
  ``log_end - log_start``: everything retained is unconsumed, as for our workers, which
  start from the earliest offset (kafka-consumer-groups prints ``-`` there);
- a committed offset beyond the log end (topic recreated) reports lag 0;
- lag seconds is 0 when caught up, and ``None`` when records carry no timestamp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from semirec.core.settings import Settings


class LagError(RuntimeError):
    """Lag could not be measured (unknown topic, broker unreachable, no fetch answer)."""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing for this partition
    log_start: int
    log_end: int  # high watermark: offset of the next message to be written
    lag: int
    lag_seconds: float | None  # age of the oldest unconsumed message; 0 when caught up
    # the group member the partition is assigned to (DescribeGroups); None: no active member
    # has it, or the broker does not say (Tansu answers without assignments)
    consumer_id: str | None = None
    host: str | None = None
    client_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def total_lag(rows: Iterable[PartitionLag]) -> int:
    return sum(r.lag for r in rows)


def report(rows: Sequence[PartitionLag]) -> dict[str, object]:
    """The ``--json`` document."""
    ages = [r.lag_seconds for r in rows if r.lag_seconds is not None]
    return {"partitions": [r.as_dict() for r in rows], "total_lag": total_lag(rows),
            "max_lag_seconds": max(ages, default=0.0)}


async def _partitions(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> list[TopicPartition]:
    # list_topics() first: a Metadata request naming a missing topic may auto-create it.
    existing = set(await admin.list_topics())
    missing = [t for t in topics if t not in existing]
    if missing:
        raise LagError(f"topic(s) {', '.join(missing)} do not exist")
    tps = []
    for meta in await admin.describe_topics(list(topics)):
        if meta["error_code"]:
            raise LagError(f"topic {meta['topic']}: metadata error {meta['error_code']}")
        tps += [TopicPartition(meta["topic"], p["partition"]) for p in meta["partitions"]]
    return sorted(tps)


async def _committed(admin: AIOKafkaAdminClient, group: str,
                     tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    # Explicit partitions: Tansu answers an OffsetFetch without them with nothing.
    found = await admin.list_consumer_group_offsets(group, partitions=tps)
    return {tp: (found[tp].offset if tp in found and found[tp].offset >= 0 else None)
            for tp in tps}


class _DescribeGroups(Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1
                              | DescribeGroupsRequest_v2]):
    """DescribeGroups at versions 0-2 only: aiokafka 0.14 decodes a v3 answer with the v2
    schema (``DescribeGroupsRequest_v3.RESPONSE_TYPE``), which ignores v3's
    ``authorized_operations`` and misreads every group after the first."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(self._groups)


Member = tuple[str, str, str]  # consumer id, host, client id


def assigned_members(response: Any) -> dict[tuple[str, TopicPartition], Member]:
    """(group, partition) -> the member it is assigned to, from a DescribeGroups answer of a
    ``consumer`` group (members' assignments in the consumer protocol); members without a
    decodable assignment are left out."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    out: dict[tuple[str, TopicPartition], Member] = {}
    for error_code, group, _state, protocol_type, _protocol, members in response.groups:
        if error_code or protocol_type != "consumer":
            continue
        for member_id, client_id, client_host, _metadata, assignment in members:
            if not assignment:
                continue
            try:
                decoded = ConsumerProtocolMemberAssignment.decode(assignment)
            except Exception:  # not the consumer protocol's layout: nothing to say
                continue
            for topic, partitions in decoded.assignment:
                for partition in partitions:
                    out[(group, TopicPartition(topic, partition))] = (
                        member_id, client_host.lstrip("/"), client_id)
    return out


async def _members(admin: AIOKafkaAdminClient, groups: Sequence[str]) \
        -> dict[tuple[str, TopicPartition], Member]:
    """Who holds which partition; empty when the broker does not tell (a lag is still a lag)."""
    out: dict[tuple[str, TopicPartition], Member] = {}
    for group in groups:
        try:
            node = await admin.find_coordinator(group)
            out.update(assigned_members(await admin._send_request(_DescribeGroups([group]), node)))
        except Exception:  # membership is a nicety next to the lag: never fail the lag on it
            continue
    return out


async def _probe(consumer: AIOKafkaConsumer, start: dict[TopicPartition, int],
                 timeout_s: float) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Fetch once from ``start``: high watermarks and first-record timestamps (ms)."""
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    highwater: dict[TopicPartition, int] = {}
    first_ts: dict[TopicPartition, int] = {}
    pending = set(start)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
            raise LagError(f"no fetch answer within {timeout_s:.0f}s for {names}")
        batch = await consumer.getmany(timeout_ms=100)
        for tp, records in batch.items():
            if records and tp not in first_ts:
                first_ts[tp] = records[0].timestamp
                consumer.pause(tp)
        for tp in list(pending):
            hw = consumer.highwater(tp)
            if hw is not None and (start[tp] >= hw or tp in first_ts):
                highwater[tp] = hw
                pending.discard(tp)
    return highwater, first_ts


async def _all_partitions(admin: AIOKafkaAdminClient) -> list[TopicPartition]:
    topics = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
    return await _partitions(admin, topics) if topics else []


async def _group_topics(admin: AIOKafkaAdminClient, group: str,
                        tps: list[TopicPartition]) -> list[str]:
    """The topics among ``tps`` on which ``group`` has a committed offset."""
    committed = await _committed(admin, group, tps) if tps else {}
    return sorted({tp.topic for tp, off in committed.items() if off is not None})


@dataclass(frozen=True, slots=True)
class GroupTarget:
    group: str
    topics: list[str]
    exists: bool  # the group has committed offsets (or the broker lists it)


async def resolve_targets(settings: Settings, groups: Sequence[str], topics: Sequence[str], *,
                          timeout_s: float = 10.0) -> list[GroupTarget]:
    """Which groups on which topics, as ``kafka-consumer-groups --describe`` decides:

    - ``topics`` given: each group on those topics (with no ``groups``: ingest's group,
      SEMIREC_CONSUMER_GROUP or SEMIREC_INGEST_GROUP, and those of our other groups that have
      committed offsets there);
    - only ``groups``: each group on every topic it has committed offsets for (none: the
      group does not exist);
    - neither: our own groups (ingest's and any group the broker lists whose name starts with
      ``semirec``), each on its topics; ingest's group before its first commit is shown on the
      events topic (everything there is its backlog).
    """
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except Exception as exc:
        await admin.close()
        raise LagError(f"cannot reach Kafka at {settings.kafka}: {exc!r}") from exc
    try:
        try:
            listed = {g for g, *_ in await admin.list_consumer_groups()}
        except Exception:  # not every broker answers ListGroups (Tansu); offsets still tell
            listed = set()
        ours = sorted(g for g in listed if g.startswith("semirec") and g != settings.events_group)
        chosen = list(groups) or [settings.events_group, *ours]
        scope = await (_partitions(admin, topics) if topics else _all_partitions(admin))
        out = []
        for group in chosen:
            found = await _group_topics(admin, group, scope)
            exists = bool(found) or group in listed
            if topics and not groups and group != settings.events_group and not found:
                continue  # --topic alone: our other groups only where they consume it
            if topics:
                out.append(GroupTarget(group, list(topics), exists))
            elif found:
                out.append(GroupTarget(group, found, exists))
            elif not groups and group == settings.events_group:
                out.append(GroupTarget(group, [settings.topics.events], exists))
            else:
                out.append(GroupTarget(group, [], exists))
        return out
    finally:
        await admin.close()


async def measure_targets(settings: Settings, targets: Sequence[GroupTarget], *,
                          timeout_s: float = 10.0) -> list[PartitionLag]:
    """Lag rows of every target with topics, ordered by group/topic/partition."""
    rows: list[PartitionLag] = []
    for target in targets:
        if target.topics:
            rows += await measure_lag(settings, [target.group], target.topics, timeout_s=timeout_s)
    return rows


async def measure_lag(settings: Settings, groups: Sequence[str], topics: Sequence[str], *,
                      timeout_s: float = 10.0) -> list[PartitionLag]:
    """Lag of each group on each partition of ``topics``, ordered by group/topic/partition."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs(), request_timeout_ms=int(timeout_s * 1000))
    consumer = AIOKafkaConsumer(
        **settings.kafka_kwargs(), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=50, max_partition_fetch_bytes=64 * 1024,
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(asyncio.gather(admin.start(), consumer.start()), timeout_s)
    except Exception as exc:
        await asyncio.gather(admin.close(), consumer.stop(), return_exceptions=True)
        raise LagError(f"cannot reach Kafka at {settings.kafka}: {exc!r}") from exc
    try:
        tps = await _partitions(admin, topics)
        if not tps:
            return []
        log_start = await consumer.beginning_offsets(tps)  # earliest is right on Tansu too
        rows = []
        members = await _members(admin, groups)
        for group in groups:
            committed = await _committed(admin, group, tps)
            start = {tp: (log_start[tp] if committed[tp] is None else committed[tp]) for tp in tps}
            highwater, first_ts = await _probe(consumer, start, timeout_s)
            now_ms = time.time() * 1000
            for tp in tps:
                lag = max(0, highwater[tp] - start[tp])
                seconds: float | None = 0.0
                if lag:
                    ts = first_ts.get(tp, -1)
                    seconds = round(max(0.0, now_ms - ts) / 1000, 3) if ts >= 0 else None
                member = members.get((group, tp), (None, None, None))
                rows.append(PartitionLag(group, tp.topic, tp.partition, committed[tp],
                                         log_start[tp], highwater[tp], lag, seconds, *member))
        return rows
    finally:
        await asyncio.gather(consumer.stop(), admin.close(), return_exceptions=True)


# -- Prometheus exporter -------------------------------------------------------------------

LAG_METRICS = {
    "semirec_consumergroup_lag": "Messages the group has not consumed (log end - committed).",
    "semirec_consumergroup_lag_seconds": "Age of the group's oldest unconsumed message.",
    "semirec_consumergroup_committed_offset": "The group's committed offset (absent if none).",
    "semirec_topic_log_end_offset": "High watermark of the partition.",
    "semirec_lag_exporter_up": "1 when the last lag measurement succeeded.",
    "semirec_lag_exporter_last_success_timestamp_seconds": "Unix time of the last success.",
}


class LagCollector(Collector):
    """Serves the latest measurement; :class:`LagExporter` refreshes it."""

    def __init__(self) -> None:
        self.rows: list[PartitionLag] = []
        self.up = 0
        self.last_success = 0.0

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        def family(name: str, labels: list[str] | None = None, **kw: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, LAG_METRICS[name], labels=labels, **kw)

        labels = ["group", "topic", "partition"]
        lag = family("semirec_consumergroup_lag", labels)
        age = family("semirec_consumergroup_lag_seconds", labels)
        committed = family("semirec_consumergroup_committed_offset", labels)
        log_end = family("semirec_topic_log_end_offset", ["topic", "partition"])
        seen = set()
        for r in self.rows:
            key = [r.group, r.topic, str(r.partition)]
            lag.add_metric(key, r.lag)
            if r.lag_seconds is not None:
                age.add_metric(key, r.lag_seconds)
            if r.committed is not None:
                committed.add_metric(key, r.committed)
            if (r.topic, r.partition) not in seen:
                seen.add((r.topic, r.partition))
                log_end.add_metric([r.topic, str(r.partition)], r.log_end)
        yield from (lag, age, committed, log_end)
        yield family("semirec_lag_exporter_up", value=self.up)
        yield family("semirec_lag_exporter_last_success_timestamp_seconds", value=self.last_success)


class LagExporter:
    """Measure every ``interval_s`` into a :class:`LagCollector` (stale values never linger:
    a failed measurement keeps the last rows but sets ``semirec_lag_exporter_up`` to 0)."""

    def __init__(self, settings: Settings, groups: Sequence[str], topics: Sequence[str],
                 interval_s: float = 15.0) -> None:
        self.settings, self.groups, self.topics = settings, list(groups), list(topics)
        self.interval_s = interval_s
        self.collector = LagCollector()
        self.last_error: str | None = None

    async def refresh(self) -> None:
        try:
            targets = await resolve_targets(self.settings, self.groups, self.topics)
            rows = await measure_targets(self.settings, targets)
        except Exception as exc:  # keep serving; the up gauge says it failed
            self.collector.up = 0
            self.last_error = str(exc)
            return
        self.collector.rows, self.collector.up = rows, 1
        self.collector.last_success = time.time()
        self.last_error = None

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)
