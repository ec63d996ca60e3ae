"""Exact consumer lag on the real broker (Tansu, whose ListOffsets answer is wrong)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import DeleteGroupsRequest
from click.testing import CliRunner

from semirec.cli.lag import lag as lag_cli
from semirec.core.lag import LagError, measure_lag, report
from semirec.core.settings import Settings
from tests.conftest import settings_env

PARTITIONS = 4
HOUR_AGO_MS = int(time.time() * 1000) - 3_600_000


async def create_topic(settings: Settings, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(settings: Settings, topic: str, n: int, *, start: int = 0) -> list:
    """``n`` keyed messages (20 users) with timestamps an hour ago + i seconds; metadata back."""
    prod = AIOKafkaProducer(**settings.kafka_kwargs(), linger_ms=5)
    await prod.start()
    try:
        futures = [await prod.send(topic, b"v%d" % i, key=b"user-%d" % (i % 20),
                                   timestamp_ms=HOUR_AGO_MS + i * 1000)
                   for i in range(start, start + n)]
        return list(await asyncio.gather(*futures))
    finally:
        await prod.stop()


async def consume_and_commit(settings: Settings, topic: str, m: int) -> Counter[int]:
    """A real group member consumes exactly ``m`` messages and commits its positions."""
    consumer = AIOKafkaConsumer(
        topic, **settings.kafka_kwargs(), group_id=settings.consumer_group,
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=2000, heartbeat_interval_ms=500, rebalance_timeout_ms=2000)
    await consumer.start()
    consumed: Counter[int] = Counter()
    try:
        deadline = time.monotonic() + 30
        while sum(consumed.values()) < m and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=m - sum(consumed.values()))
            for tp, records in batch.items():
                consumed[tp.partition] += len(records)
        assert sum(consumed.values()) == m
        await consumer.commit()
    finally:
        await consumer.stop()
    return consumed


async def delete_group(settings: Settings, group: str) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        coordinator = await admin.find_coordinator(group)
        resp = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
        assert [code for _, code in resp.results] == [0]
    finally:
        await admin.close()


async def test_lag_is_exact_per_partition_and_ages_oldest_unconsumed(settings: Settings) -> None:
    topic = settings.topics.events
    await create_topic(settings, topic)
    sent = await produce(settings, topic, 200)
    produced = Counter(meta.partition for meta in sent)
    assert len(produced) == PARTITIONS  # keys spread over every partition

    consumed = await consume_and_commit(settings, topic, 130)
    rows = await measure_lag(settings, [settings.consumer_group], [topic])

    assert [(r.topic, r.partition) for r in rows] == [(topic, p) for p in range(PARTITIONS)]
    ts_at = {(m.partition, m.offset): HOUR_AGO_MS + i * 1000 for i, m in enumerate(sent)}
    now_ms = time.time() * 1000
    for r in rows:
        assert r.log_start == 0
        assert r.log_end == produced[r.partition]
        assert r.committed in ((consumed[r.partition],) if consumed[r.partition] else (0, None))
        assert r.lag == produced[r.partition] - consumed[r.partition]
        if r.lag:  # age of the message at the committed offset
            expected = (now_ms - ts_at[(r.partition, consumed[r.partition])]) / 1000
            assert r.lag_seconds == pytest.approx(expected, abs=5)
            assert r.lag_seconds > 3000
        else:
            assert r.lag_seconds == 0.0
    assert report(rows)["total_lag"] == 200 - 130

    # more traffic: lag grows by exactly what was produced, per partition
    more = Counter(meta.partition for meta in await produce(settings, topic, 57, start=200))
    again = {r.partition: r.lag for r in await measure_lag(settings, [settings.consumer_group],
                                                            [topic])}
    assert again == {p: produced[p] + more[p] - consumed[p] for p in range(PARTITIONS)}

    # a group that never committed lags by everything retained; so does a deleted group
    await delete_group(settings, settings.consumer_group)
    both = await measure_lag(settings, ["never-joined", settings.consumer_group], [topic])
    assert len(both) == 2 * PARTITIONS
    for r in both:
        assert r.committed is None
        assert r.lag == r.log_end - r.log_start == produced[r.partition] + more[r.partition]
        assert r.lag_seconds > 3000  # the first message ever written is an hour old


async def test_empty_topic_has_zero_lag(settings: Settings) -> None:
    topic = settings.topics.events
    await create_topic(settings, topic, 3)
    rows = await measure_lag(settings, [settings.consumer_group], [topic])
    assert [(r.partition, r.committed, r.log_end, r.lag, r.lag_seconds) for r in rows] == [
        (p, None, 0, 0, 0.0) for p in range(3)
    ]


async def test_unknown_topic_is_a_clear_error_and_is_not_created(settings: Settings) -> None:
    topic = settings.topics.items
    with pytest.raises(LagError, match=f"{topic} do not exist"):
        await measure_lag(settings, [settings.consumer_group], [topic])
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


async def test_unreachable_broker_is_a_clear_error(settings: Settings) -> None:
    from semirec.core.stack import free_port

    dead = replace(settings, kafka=f"127.0.0.1:{free_port()}")
    with pytest.raises(LagError, match="cannot reach Kafka"):
        await measure_lag(dead, ["g"], ["t"], timeout_s=2)


async def test_cli_json_and_table(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    topic = settings.topics.events
    await create_topic(settings, topic)
    produced = Counter(m.partition for m in await produce(settings, topic, 40))
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()

    result = await asyncio.to_thread(runner.invoke, lag_cli, ["--json"])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)  # stderr notes that the group has committed nothing yet
    # other tests' semirec* groups on this shared broker are listed too: look at ours
    mine = [p for p in doc["partitions"] if p["group"] == settings.consumer_group]
    assert sum(p["lag"] for p in mine) == 40 and doc["total_lag"] >= 40
    assert {p["partition"]: p["lag"] for p in mine} == dict(produced)
    assert set(mine[0]) >= {"group", "topic", "partition", "committed", "log_end",
                            "lag", "lag_seconds"}
    assert all(p["committed"] is None and p["topic"] == topic for p in mine)

    result = await asyncio.to_thread(runner.invoke, lag_cli, ["--topic", topic])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET",
                              "LAG", "LAG-SECONDS", "CONSUMER-ID", "HOST", "CLIENT-ID"]
    assert lines[-1].split()[:2] == ["TOTAL", "40"]

    result = await asyncio.to_thread(runner.invoke, lag_cli, ["--topic", "no-such-topic"])
    assert result.exit_code == 1
    assert "no-such-topic do not exist" in result.output


def _spawn_lag(settings: Settings, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "semirec", "lag", *args],
                            env=settings_env(settings), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_watch_prints_samples_with_a_trend(settings: Settings) -> None:
    topic = settings.topics.events
    await create_topic(settings, topic)
    await produce(settings, topic, 30)
    # --topic: this test's group only (without it, every semirec* group on the shared broker)
    proc = _spawn_lag(settings, "--watch", "0.3", "--json", "--topic", topic)
    try:
        samples = [orjson.loads(await asyncio.to_thread(proc.stdout.readline)) for _ in range(2)]
        assert [s["total_lag"] for s in samples] == [30, 30]
        assert samples[1]["ts"] > samples[0]["ts"]
    finally:
        _stop(proc)
    await produce(settings, topic, 8, start=30)
    proc = _spawn_lag(settings, "--watch", "0.3", "--topic", topic)
    try:
        out = ""
        while out.count("TREND") < 3:  # two complete tables
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, proc.stderr.read()
            out += line
    finally:
        _stop(proc)
    first, second = out.split("TREND")[1:3]
    assert "TOTAL" in first and "38" in first
    # the second table compares with the first: no change, so a flat arrow and +0
    total = next(line for line in second.splitlines() if line.startswith("TOTAL"))
    assert total.split()[1:] == ["38", total.split()[2], "→", "+0", "(+0.0/s)"]


async def test_serve_exports_exact_gauges(settings: Settings) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from semirec.core.stack import free_port

    topic = settings.topics.events
    await create_topic(settings, topic)
    produced = Counter(m.partition for m in await produce(settings, topic, 90))
    consumed = await consume_and_commit(settings, topic, 25)
    port = free_port()
    proc = _spawn_lag(settings, "--serve", str(port), "--watch", "0.5")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:  # ready once the first measurement has succeeded
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "lag exporter never became ready"
            await asyncio.sleep(0.2)
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}

    def key(name: str, p: int) -> tuple:
        return (name, (("group", settings.consumer_group), ("partition", str(p)),
                       ("topic", topic)))

    for p in range(PARTITIONS):
        assert samples[key("semirec_consumergroup_lag", p)] == produced[p] - consumed[p]
        assert samples[("semirec_topic_log_end_offset",
                        (("partition", str(p)), ("topic", topic)))] == produced[p]
    assert samples[("semirec_lag_exporter_up", ())] == 1


async def test_group_without_topic_lists_the_groups_own_topics(settings: Settings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Like kafka-consumer-groups --describe --group G: the topics G has offsets for (here not
    the events topic, which does not even exist); a misspelt group is said not to exist."""
    topic, other = settings.topics.items, settings.topics.samples
    for t in (topic, other):
        await create_topic(settings, t)
    produced = Counter(m.partition for m in await produce(settings, topic, 40))
    await produce(settings, other, 10)
    consumed = await consume_and_commit(settings, topic, 15)
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    for argv in (["--group", settings.consumer_group, "--json"], ["--json"]):
        result = await asyncio.to_thread(runner.invoke, lag_cli, argv)
        assert result.exit_code == 0, result.output
        doc = orjson.loads(result.output)
        # with no option, every semirec* group the broker lists is ours (other tests' too)
        ours = [p for p in doc["partitions"] if p["group"] == settings.consumer_group]
        assert {p["topic"] for p in ours} == {topic}
        assert {p["partition"]: p["lag"] for p in ours} == {
            p: produced[p] - consumed[p] for p in range(PARTITIONS)}
        assert doc["groups"][0] == {"group": settings.consumer_group, "topics": [topic],
                                    "exists": True}

    result = await asyncio.to_thread(runner.invoke, lag_cli, ["--group", "no-such-group"])
    assert result.exit_code == 1
    assert "consumer group 'no-such-group' does not exist" in result.output

    result = await asyncio.to_thread(runner.invoke, lag_cli,
                                     ["--group", "no-such-group", "--topic", topic, "--json"])
    assert result.exit_code == 0
    doc = orjson.loads(result.stdout)
    assert doc["groups"] == [{"group": "no-such-group", "topics": [topic], "exists": False}]
    assert doc["total_lag"] == 40
    assert "has committed nothing yet" in result.stderr


# -- members (CONSUMER-ID, HOST, CLIENT-ID) ---------------------------------------------------

def test_members_come_from_the_consumer_protocol_assignments() -> None:
    """Our decoding of a DescribeGroups answer (Tansu answers without assignments, so the
    assignment bytes are built here, in the consumer protocol's layout)."""
    from aiokafka import TopicPartition
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
    from aiokafka.protocol.admin import DescribeGroupsResponse_v2

    from semirec.core.lag import _DescribeGroups, assigned_members

    def assignment(*parts: tuple[str, list[int]]) -> bytes:
        return ConsumerProtocolMemberAssignment(0, list(parts), b"").encode()

    answer = DescribeGroupsResponse_v2(0, [
        (0, "g", "Stable", "consumer", "range", [
            ("c1-uuid", "c1", "/10.0.0.1", b"", assignment(("t", [0, 2]))),
            ("c2-uuid", "c2", "/10.0.0.2", b"", assignment(("t", [1]), ("u", [0]))),
            ("idle", "c3", "/10.0.0.3", b"", b"")]),
        (16, "gone", "", "", "", []),  # an error code: nothing
        (0, "conn", "Stable", "connect", "x", [("w", "w", "/h", b"", b"\x00")])])
    got = assigned_members(answer)
    assert got == {("g", TopicPartition("t", 0)): ("c1-uuid", "10.0.0.1", "c1"),
                   ("g", TopicPartition("t", 2)): ("c1-uuid", "10.0.0.1", "c1"),
                   ("g", TopicPartition("t", 1)): ("c2-uuid", "10.0.0.2", "c2"),
                   ("g", TopicPartition("u", 0)): ("c2-uuid", "10.0.0.2", "c2")}
    # never v3: aiokafka decodes a v3 answer with the v2 schema
    assert max(c.API_VERSION for c in _DescribeGroups._CLASSES) == 2


async def test_describe_groups_decodes_on_the_broker_and_the_table_has_member_columns(
        settings: Settings) -> None:
    from semirec.core.lag import _DescribeGroups

    topic = settings.topics.events
    await create_topic(settings, topic)
    await produce(settings, topic, 20)
    consumer = AIOKafkaConsumer(
        topic, **settings.kafka_kwargs(), group_id=settings.consumer_group, client_id="lag-test",
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=2000, heartbeat_interval_ms=500, rebalance_timeout_ms=2000)
    await consumer.start()
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        await consumer.getmany(timeout_ms=500)
        await consumer.commit()
        node = await admin.find_coordinator(settings.consumer_group)
        answer = await admin._send_request(_DescribeGroups([settings.consumer_group]), node)
        (code, group, state, _ptype, _proto, members), = answer.groups
        assert code == 0 and group == settings.consumer_group and state == "Stable"
        assert [m[0].startswith("lag-test") for m in members] == [True]
        rows = await measure_lag(settings, [settings.consumer_group], [topic])
        assert len(rows) == PARTITIONS and report(rows)["partitions"][0].keys() >= {
            "consumer_id", "host", "client_id"}
        # Tansu answers without client id, host or assignment: nothing to attribute
        assert {(r.consumer_id, r.host, r.client_id) for r in rows} <= {
            (None, None, None), *{(m[0], m[2].lstrip("/"), m[1]) for m in members}}
    finally:
        await admin.close()
        await consumer.stop()
    res = await asyncio.to_thread(CliRunner().invoke, lag_cli, [
        "--group", settings.consumer_group, "--topic", topic], env=settings_env(settings))
    assert res.exit_code == 0, res.output
    assert all(c in res.output for c in ("CONSUMER-ID", "HOST", "CLIENT-ID"))
