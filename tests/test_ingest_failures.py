"""Issue 9: oversized messages and unexpected errors never cost a valid event (real broker, Redis,
real worker processes), and health says so while it happens."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson

from semirec.cli.worker import SHUTDOWN_GRACE_S
from semirec.core.contracts import Event, parse_event, validate_event
from semirec.core.dead_letters import parse_dead_letter
from semirec.core.kafka import ensure_topics, ingest_topics, producer
from semirec.core.sequences import UserState, apply, replay
from semirec.core.stack import free_port
from semirec.streams.batches import EXIT_UNEXPECTED
from tests.conftest import settings_env
from tests.event_script import BASE_TS, encode, scripted_events
from tests.kafka_utils import committed, consume_all, wait_committed
from tests.test_ingest import comparable, stored_states
from tests.workers import logged_gaps, running_worker, stop


async def produce_big(settings, messages) -> dict[int, int]:
    """Like ``produce_raw`` but with an 8 MB request limit, as any other producer may have."""
    await ensure_topics(settings, ingest_topics(settings))
    prod = producer(settings, max_request_size=8_000_000)
    await prod.start()
    try:
        futures = [await prod.send(settings.topics.events, value, key=key) for key, value in messages]
        ends: dict[int, int] = {}
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        await prod.stop()


def oversized(user: str, n_chars: int) -> bytes:
    return orjson.dumps({"event_id": f"big-{n_chars}", "user_id": user, "item_id": "B" * n_chars,
                         "domain": "product", "action": "click", "ts": BASE_TS})


def expected_states(events: list[Event]) -> dict:
    return comparable({u: s for u, s in replay(events).items() if s.video or s.product})


def merged(ends: dict[int, int], more: dict[int, int]) -> dict[int, int]:
    return {p: max(ends.get(p, 0), more.get(p, 0)) for p in set(ends) | set(more)}


async def test_oversized_events_are_dead_lettered_truncated_and_nothing_is_lost(
        settings, redis_client, tmp_path) -> None:
    events = scripted_events(users=24, per_user=70, seed=21)
    messages = encode(events)
    big = {b"user-1": oversized("user-1", 800_000), b"user-2": oversized("user-2", 5_000_000)}
    messages.insert(len(messages) // 3, (b"user-1", big[b"user-1"]))
    messages.insert(2 * len(messages) // 3, (b"user-2", big[b"user-2"]))
    with running_worker(settings, tmp_path / "worker1.log") as proc:
        ends = await produce_big(settings, messages)
        await wait_committed(settings, ends, proc=proc)  # no partition stuck
        states = await stored_states(settings)
    assert comparable(states) == expected_states(events)

    letters = [parse_dead_letter(r.value)
               for r in await consume_all(settings, settings.topics.events_dlq, 2)]
    assert len(letters) == 2
    for letter in letters:
        original = big[letter.key()]
        prefix = letter.original()
        assert letter.reason == "too_large" and letter.stage == "ingest"
        assert letter.truncated is True and original.startswith(prefix) and prefix
        assert letter.original_bytes == len(original)
        assert letter.original_sha256 == hashlib.sha256(original).hexdigest()

    # restart: nothing is re-dead-lettered or re-applied, and the stream goes on
    more = scripted_events(users=6, per_user=40, seed=22)
    with running_worker(settings, tmp_path / "worker2.log") as proc:
        ends = merged(ends, await produce_big(settings, encode(more)))
        await wait_committed(settings, ends, proc=proc)
        states = await stored_states(settings)
    assert comparable(states) == expected_states(events + more)
    assert len(await consume_all(settings, settings.topics.events_dlq, 2)) == 2
    log = (tmp_path / "worker1.log").read_text() + (tmp_path / "worker2.log").read_text()
    assert "unexpected error" not in log and "Traceback" not in log
    # each start went on without faust's 1 s for tables to register (semirec.streams.app), and
    # each stop closed the loop after SHUTDOWN_GRACE_S, not after mode's fixed 1 s
    starts = logged_gaps(log, "[^--TableManager]: Starting", "[^---Recovery]: Starting")
    assert len(starts) == 2 and all(w < 1.0 for w in starts), starts
    stops = logged_gaps(log, "[^Worker]: Gathering all futures", "[^Worker]: Closing event loop")
    assert len(stops) == 2 and all(SHUTDOWN_GRACE_S <= w < 1.0 for w in stops), stops


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def crash_count(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('semirec_agent_crashes_total{agent="ingest"}'):
            return float(line.split()[-1])
    return 0.0


async def test_unexpected_error_mid_batch_stops_the_worker_and_loses_nothing(
        settings, redis_client, tmp_path) -> None:
    """An error after half of a batch's users are written: the worker says so, fails /readyz,
    counts the crash and exits non-zero without committing past unwritten state; a restart
    replays the batch and ends with the exact state."""
    events = scripted_events(users=30, per_user=80, seed=31)
    marker = validate_event({"event_id": "boom", "user_id": "user-4", "item_id": "p-boom",
                             "domain": "product", "action": "click", "ts": BASE_TS + 99})
    events.insert(len(events) // 2, marker)
    ends = await produce_big(settings, encode(events))  # all there first: big batches
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**settings_env(settings), "FAULT_FLAG": str(tmp_path / "fault.flag"),
           "FAULT_EVENT_ID": "boom", "SEMIREC_CRASH_EXIT_DELAY_S": "4",
           "SEMIREC_COMMIT_INTERVAL_S": "0.2"}
    log1 = tmp_path / "worker1.log"
    with open(log1, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.faulty_worker", "--metrics-port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "stopped by an unexpected error" not in log1.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log1.read_text()[-3000:]
            await asyncio.sleep(0.05)
        assert readyz(url) == 503
        assert crash_count(url) == 1.0
        assert proc.wait(30) == EXIT_UNEXPECTED
    finally:
        stop(proc)
    assert "injected fault" in log1.read_text()

    done = await committed(settings, settings.consumer_group, settings.topics.events,
                           settings.event_partitions)
    written = await stored_states(settings)
    records = await consume_all(settings, settings.topics.events, sum(ends.values()))
    boom = next(r for r in records if r.key == b"user-4" and b"boom" in r.value)
    assert done.get(boom.partition, 0) <= boom.offset, "the failed batch was committed"
    # every event below a committed offset is in its user's stored state: the stored applied
    # offsets reach at least those of the state built from the committed records alone
    reference: dict[str, UserState] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.offset < done.get(r.partition, 0):
            event = parse_event(r.value, r.key)
            apply(reference.setdefault(event.user_id, UserState()), [(event, r.offset)],
                  partition=r.partition)
    for uid, ref in reference.items():
        for p, off in ref.applied.items():
            assert written[uid].applied.get(p, -1) >= off, f"{uid} misses committed events"
    # and part of the failed batch is durable beyond the commit: the replay has work to skip
    assert any(off >= done.get(p, 0) for s in written.values() for p, off in s.applied.items())

    with running_worker(settings, tmp_path / "worker2.log", **{
            k: v for k, v in env.items() if k.startswith("FAULT")}) as proc2:
        await wait_committed(settings, ends, proc=proc2)
        states = await stored_states(settings)
    assert comparable(states) == expected_states(events)
