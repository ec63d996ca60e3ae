"""Redis goes away mid-stream: the worker retries, commits nothing it has not written, and
converges to the exact state once Redis is back."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import redis

from semirec.core.contracts import Event, parse_event
from semirec.core.sequences import replay
from semirec.core.stack import free_port, redis_binary
from tests.event_script import encode, scripted_events
from tests.kafka_utils import committed, consume_all, produce_raw, wait_committed
from tests.test_ingest import comparable, stored_states
from tests.workers import running_worker


def start_redis(port: int, data: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                             "--dir", str(data)], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if redis.Redis(port=port).ping():
                return proc
        except redis.ConnectionError:
            pass
        time.sleep(0.02)
    raise AssertionError("redis did not start")


async def needing_a_write(settings, before: list[Event], first: dict[int, int],
                          done: dict[int, int]) -> list[str]:
    """Event ids committed past ``first`` (what Redis held) that would change a sequence.

    Only those must wait for Redis: a batch of nothing but incomplete watches or re-sent ids of
    cached users needs no write, so whether one is committed depends on batch boundaries."""
    seen = {e.event_id for e in before}
    records = await consume_all(settings, settings.topics.events, sum(done.values()))
    beyond = [parse_event(r.value, r.key) for r in records
              if first.get(r.partition, 0) <= r.offset < done.get(r.partition, 0)]
    return [e.event_id for e in beyond if e.appends and e.event_id not in seen]


async def test_worker_survives_a_redis_outage(settings, tmp_path) -> None:
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    settings = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")
    events = scripted_events(users=15, per_user=120, seed=5)
    messages = encode(events)
    half = len(messages) // 2
    redis_proc = start_redis(port, data)
    try:
        with running_worker(settings, tmp_path / "worker.log") as proc:
            first = await produce_raw(settings, messages[:half])
            await wait_committed(settings, first, proc=proc)
            redis_proc.terminate()
            redis_proc.wait()
            ends = await produce_raw(settings, messages[half:])
            await asyncio.sleep(3)  # the worker now fails to reach Redis and retries
            assert proc.poll() is None, "the worker died instead of retrying"
            done = await committed(settings, settings.consumer_group, settings.topics.events,
                                   settings.event_partitions)
            assert all(done[p] >= end for p, end in first.items())
            unwritten = await needing_a_write(settings, events[:half], first, done)
            assert not unwritten, f"offsets were committed for events never written: {unwritten}"
            redis_proc = start_redis(port, data)  # same port, same AOF
            await wait_committed(settings, ends, proc=proc)
            states = await stored_states(settings)
    finally:
        redis_proc.terminate()
        redis_proc.wait()
    expected = {u: s for u, s in replay(events).items() if s.video or s.product}
    assert comparable(states) == comparable(expected)
    assert "retrying" in (tmp_path / "worker.log").read_text()
