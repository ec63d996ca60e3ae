"""The shared metrics module: agent metrics, /metrics, /healthz and /readyz over real HTTP."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from semirec.core.contracts import validate_event
from semirec.core.metrics import REGISTRY, AgentMetrics, Health, metric_names, start_http
from tests.conftest import settings_env


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_agent_metrics_count_time_and_freshness() -> None:
    agent = f"test-{uuid.uuid4().hex[:6]}"
    m = AgentMetrics(agent)
    m.processed(7)
    m.rejected("bad_type")
    m.rejected("bad_type", 2)
    m.rejected("undecodable")
    m.batch(10)
    with m.timed("batch"):
        pass
    with pytest.raises(RuntimeError), m.redis("cas"):
        raise RuntimeError("a failed call is still timed")
    m.state_written([90.0, 99.5, 101.0], [99.0], now=100.0)

    assert value("semirec_events_processed_total", agent=agent) == 7
    assert value("semirec_events_rejected_total", agent=agent, reason="bad_type") == 3
    assert value("semirec_events_rejected_total", agent=agent, reason="undecodable") == 1
    assert value("semirec_processing_seconds_count", agent=agent, stage="batch") == 1
    assert value("semirec_redis_call_seconds_count", agent=agent, op="cas") == 1
    assert value("semirec_batch_messages_sum", agent=agent) == 10
    # ages 10, 0.5 and (skewed, clamped) 0; buckets are cumulative
    assert value("semirec_event_to_state_seconds_count", agent=agent) == 3
    assert value("semirec_event_to_state_seconds_sum", agent=agent) == 10.5
    assert value("semirec_event_to_state_seconds_bucket", agent=agent, le="0.5") == 2
    assert value("semirec_event_to_state_seconds_bucket", agent=agent, le="5.0") == 2
    assert value("semirec_event_to_state_seconds_bucket", agent=agent, le="10.0") == 3
    assert value("semirec_append_to_state_seconds_sum", agent=agent) == 1.0
    assert value("semirec_last_state_write_timestamp_seconds", agent=agent) == 100.0


def test_metric_names_cover_series_suffixes() -> None:
    names = metric_names()
    assert {"semirec_events_processed_total", "semirec_events_rejected_total",
            "semirec_append_to_state_seconds_bucket", "semirec_redis_call_seconds_count",
            "semirec_ready", "process_cpu_seconds_total"} <= names


async def test_http_endpoints_serve_metrics_liveness_and_readiness() -> None:
    health = Health(check_timeout_s=0.2)
    flags = {"kafka": False}

    async def slow() -> bool:
        await asyncio.sleep(5)
        return True

    health.add_check("kafka", lambda: flags["kafka"])
    server = await start_http(0, host="127.0.0.1", health=health)
    agent = f"test-{uuid.uuid4().hex[:6]}"
    AgentMetrics(agent).rejected("missing_field", 4)
    try:
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> tuple[int, str]:
                async with http.get(server.url + path) as resp:
                    return resp.status, await resp.text()

            status, text = await get("/metrics")
            assert status == 200
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for fam in text_string_to_metric_families(text) for s in fam.samples}
            key = ("semirec_events_rejected_total", (("agent", agent), ("reason", "missing_field")))
            assert samples[key] == 4

            assert (await get("/healthz"))[0] == 200
            status, text = await get("/readyz")
            assert (status, text) == (503, '{"ready": false, "checks": {"kafka": false}}')
            assert value("semirec_ready") == 0
            flags["kafka"] = True
            status, text = await get("/metrics")  # a scrape alone re-evaluates readiness
            assert "\nsemirec_ready 1.0\n" in text
            assert (await get("/readyz"))[0] == 200

            async def ping() -> bool:
                return True

            health.add_check("redis", ping)
            assert (await get("/readyz"))[0] == 200
            health.add_check("slow", slow)  # a check that hangs counts as not ready
            status, text = await get("/readyz")
            assert status == 503 and '"slow": false' in text and '"redis": true' in text

            health.fail("agent crashed")
            status, text = await get("/healthz")
            assert (status, text) == (503, '{"live": false, "reason": "agent crashed"}')
            assert (await get("/nope"))[0] == 404
    finally:
        await server.close()


async def test_port_in_use_is_a_clear_error() -> None:
    first = await start_http(0, host="127.0.0.1")
    try:
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{first.port}"):
            await start_http(first.port, host="127.0.0.1")
    finally:
        await first.close()


# -- the real worker: a scrape after processing a real stream ------------------------------

def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def wait_ready(url: str, proc, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                return orjson.loads(resp.read())
        except (OSError, urllib.error.HTTPError):
            assert time.monotonic() < deadline, "worker never became ready"
            await asyncio.sleep(0.2)


async def test_worker_metrics_count_exactly_what_it_processed(settings, redis_client,
                                                              tmp_path) -> None:
    from semirec.core.lag import measure_lag
    from semirec.core.stack import free_port
    from tests.event_script import MALFORMED, encode, scripted_events
    from tests.kafka_utils import produce_raw
    from tests.workers import running_worker

    events = scripted_events(users=6, per_user=25)
    now = time.time()
    fresh = [validate_event({"event_id": f"fresh-{i}", "user_id": f"user-{i}", "item_id": "p1",
                             "domain": "product", "action": "click", "ts": now - 30})
             for i in range(7)]
    messages = encode(events + fresh)
    for i, (key, value, _) in enumerate(MALFORMED):
        messages.insert(11 * i + 3, (key, value))
    valid = len(events) + len(fresh)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_worker(settings, tmp_path / "worker.log", "--metrics-port", str(port)) as proc:
        assert await wait_ready(url, proc) == {"ready": True,
                                               "checks": {"kafka": True, "redis": True,
                                                          "agents": True}}
        await produce_raw(settings, messages)
        deadline = time.monotonic() + 60
        while sum(r.lag for r in await measure_lag(settings, [settings.consumer_group],
                                                   [settings.topics.events])) > 0:
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not catch up"
            await asyncio.sleep(0.3)
        samples = scrape(f"{url}/metrics")
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"agent": "ingest", **labels}.items())))]

    assert get("semirec_events_processed_total") == valid
    rejected = {labels[1][1]: v for (name, labels), v in samples.items()
                if name == "semirec_events_rejected_total"}
    assert rejected == Counter(m[2] for m in MALFORMED)
    assert get("semirec_batch_messages_sum") == len(messages)
    assert get("semirec_processing_seconds_count", stage="batch") == get(
        "semirec_batch_messages_count")
    assert get("semirec_processing_seconds_count", stage="dlq") >= 1
    assert get("semirec_redis_call_seconds_count", op="load") >= 1
    assert get("semirec_redis_call_seconds_count", op="cas") >= 1
    # event time: the scripted events are years old, only the fresh ones are within a minute
    assert get("semirec_event_to_state_seconds_count") == valid
    assert get("semirec_event_to_state_seconds_bucket", le="10.0") == 0
    assert get("semirec_event_to_state_seconds_bucket", le="60.0") == len(fresh)
    # append time: every message was produced moments ago
    assert get("semirec_append_to_state_seconds_count") == valid
    assert get("semirec_append_to_state_seconds_bucket", le="60.0") == valid
    assert get("semirec_last_state_write_timestamp_seconds") >= now
    assert samples[("semirec_ready", ())] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0


async def test_worker_with_a_taken_metrics_port_fails_fast(settings, tmp_path) -> None:
    taken = await start_http(0, host="0.0.0.0")
    try:
        env = {**settings_env(settings), "SEMIREC_METRICS_PORT": str(taken.port)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "semirec", "worker", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await taken.close()
    assert proc.returncode == 1
    assert f"Error: cannot serve metrics on 0.0.0.0:{taken.port}" in out.decode()
    assert "Traceback" not in out.decode()


def test_observe_many_equals_observe_one_by_one() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from semirec.core.metrics import FRESHNESS_BUCKETS, observe_many

    amounts = [-3.0, 0.0, 0.01, 0.011, 5.0, 86400.0, 1e9, 2.5, 2.5]
    registry = CollectorRegistry()
    one = Histogram("one", "", buckets=FRESHNESS_BUCKETS, registry=registry)
    many = Histogram("many", "", buckets=FRESHNESS_BUCKETS, registry=registry)
    for a in amounts:
        one.observe(max(0.0, a))
    observe_many(many, amounts)

    def samples(name: str) -> list[tuple[str, dict, float]]:
        return [(s.name.replace(name, ""), s.labels, s.value)
                for fam in registry.collect() if fam.name == name for s in fam.samples
                if not s.name.endswith("_created")]

    assert samples("many") == samples("one")
