"""Fault suite: inject a fault into the real stack under load, then compare what Redis holds
with what the event log implies (``semirec.core.sequences.replay`` of every valid event produced).

Each scenario is an ``async`` function ``(settings, n_events, workdir) -> Row``; the tests in
``tests/test_faults.py`` run them at small loads, ``python -m benchmarks.faults`` at the sizes of
docs/reliability.md (e.g. 100,000 events) on its own embedded stack (Tansu + redis-server) and
prints one row per fault, the last line one JSON object.

A row's ``lost``/``extra`` count sequence entries: missing from Redis / present although the
event log does not imply them (a retry or a replay applied twice). The goal is 0 and 0.

Usage: python -m benchmarks.faults [--events N] [--fuzz N] [--load-seconds S] [--only NAME ...]
       [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

import orjson
import redis

from benchmarks.fault_kit import Row, env_for, signal_worker
from benchmarks.faults_serving import fuzzed_requests, fuzzed_samples, triton_restart
from benchmarks.machine import finish, machine, print_describe
from semirec.core.contracts import ContractError, Event, encode_event, parse_event, validate_event
from semirec.core.faults import EXIT_AUTH, EXIT_UNAVAILABLE
from semirec.core.redis_client import sync_redis_client
from semirec.core.sequences import UserState, replay, unpack
from semirec.core.settings import Settings, Topics
from semirec.core.stack import LOCAL_GROUP_TIMINGS, free_port, redis_binary
from semirec.core.store import SequenceStore
from tests.kafka_utils import committed as committed_offsets
from tests.kafka_utils import consume_all, produce_raw

BASE_TS = 1_700_000_000
PASSWORD = "fault-suite-secret"


# -- the event log ---------------------------------------------------------------------------

def event_log(n: int, users: int, *, seed: int = 0, retries: float = 0.02) -> list[Event]:
    """``n`` valid events over ``users`` users (out of order by up to an hour, incomplete
    watches), plus producer retries of ``retries * n`` of them at random later positions."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        uid = f"user-{rng.randrange(users):05d}"
        video = rng.random() < 0.5
        body = {"event_id": f"ev-{i:08d}", "user_id": uid,
                "item_id": f"{'v' if video else 'p'}{rng.randrange(5000):05d}",
                "domain": "video" if video else "product", "action": "watch" if video else "click",
                "ts": BASE_TS + i + rng.uniform(-3600, 3600)}
        if video:
            body["complete"] = rng.random() < 0.8
        events.append(validate_event(body))
    for original in rng.sample(events, int(n * retries)):
        events.insert(rng.randint(events.index(original) + 1, len(events)), original)
    return events


def encoded(events: list[Event], seed: int = 1) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(e.user_id.encode(), encode_event(e, "json" if rng.random() < 0.5 else "msgpack"))
            for e in events]


# -- the stack, a worker, the comparison -----------------------------------------------------

def start_worker(settings: Settings, log: Path, **extra: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "semirec", "worker", "--agent", "ingest"],
                                env=env_for(settings, **extra), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def committed(settings: Settings) -> dict[int, int]:
    return await committed_offsets(settings, settings.consumer_group, settings.topics.events,
                                   settings.event_partitions)


async def wait_committed(settings: Settings, ends: dict[int, int] | int, proc=None,
                         timeout: float = 600) -> float:
    """Seconds until the group committed up to ``ends`` (or that many messages in all)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        got = await committed(settings)
        if (sum(got.values()) >= ends if isinstance(ends, int)
                else all(got.get(p, 0) >= e for p, e in ends.items())):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not caught up after {timeout}s")


async def stored_states(url: str) -> dict[str, UserState]:
    store = SequenceStore.from_url(url)
    try:
        ids = await store.user_ids()
        blobs = await store.load_blobs(ids)  # MGET per chunk of users
        return {uid: unpack(blob) for uid, blob in zip(ids, blobs, strict=True) if blob}
    finally:
        await store.close()


async def compare(settings: Settings, events: list[Event], row: Row) -> Row:
    """Fill ``row`` with what Redis lacks or has too much against the event log."""
    want = replay(events, seq_len=settings.seq_len, dedup_window=settings.dedup_window)
    got = await stored_states(settings.redis_url)
    for uid in set(want) | set(got):
        w, g = want.get(uid, UserState()), got.get(uid, UserState())
        if (w.video, w.product) != (g.video, g.product):
            row.users_wrong += 1
        for a, b in ((w.video, g.video), (w.product, g.product)):
            row.lost += len(set(a) - set(b))
            row.extra += len(b) - len(set(b) & set(a))
    return row


def load_text(events: list[Event], users: int) -> str:
    return f"{len(events):,} events ({users:,} users, retries included)"


# -- Redis processes the scenarios own ---------------------------------------------------------

class RedisServer:
    """A redis-server on a fixed port and directory, to stop and start again (AOF kept)."""

    def __init__(self, workdir: Path, *, password: str | None = None, fsync: str = "everysec"):
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password, self.fsync = password, fsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync,
                "--dir", str(self.dir)]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = sync_redis_client(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- scenarios --------------------------------------------------------------------------------

async def kill9_worker(settings: Settings, n: int, workdir: Path) -> Row:
    """kill -9 of the ingest worker once half the stream is committed (its last writes are in
    Redis, their offsets not yet committed), then a restart: the replay must be a no-op."""
    users = max(10, n // 250)
    events = event_log(n, users, seed=11)
    row = Row("kill -9 of an ingest worker mid-stream", load_text(events, users))
    ends = await produce_raw(settings, encoded(events))
    proc = start_worker(settings, workdir / "kill9-1.log", SEMIREC_COMMIT_INTERVAL_S="2")
    try:
        await wait_committed(settings, len(events) // 2, proc)
    finally:
        signal_worker(proc, signal.SIGKILL)
    proc = start_worker(settings, workdir / "kill9-2.log")
    try:
        row.seconds["caught_up_after_restart"] = round(await wait_committed(settings, ends, proc), 1)
    finally:
        signal_worker(proc, signal.SIGTERM)
    return await compare(settings, events, row)


async def redis_restart(settings: Settings, n: int, workdir: Path, *,
                        sig: int = signal.SIGTERM, fsync: str = "everysec",
                        down_s: float = 3.0) -> Row:
    """Redis (AOF) stopped with ``sig`` mid-stream and started again ``down_s`` later."""
    server = RedisServer(workdir, fsync=fsync)
    server.start()
    settings = replace(settings, redis_url=server.url)
    users = max(10, n // 250)
    events = event_log(n, users, seed=12)
    how = "restarted" if sig == signal.SIGTERM else "killed -9 and restarted"
    row = Row(f"Redis (AOF, appendfsync {fsync}) {how} mid-stream, down {down_s:g} s",
              load_text(events, users))
    ends = await produce_raw(settings, encoded(events))
    proc = start_worker(settings, workdir / f"redis-{sig}.log")
    try:
        await wait_committed(settings, len(events) // 3, proc)
        server.stop(sig)
        await asyncio.sleep(down_s)
        server.start()
        row.seconds["caught_up_after_redis_back"] = round(await wait_committed(settings, ends, proc), 1)
    finally:
        signal_worker(proc, signal.SIGTERM)
        await compare(settings, events, row)
        server.stop()
    return row


async def redis_wrong_password(settings: Settings, n: int, workdir: Path) -> Row:
    """Redis refusing the password: the worker stops at once with exit 77 and commits nothing;
    started again with the right password it applies everything."""
    server = RedisServer(workdir, password=PASSWORD)
    server.start()
    good = replace(settings, redis_url=server.url)
    wrong = replace(settings, redis_url=server.url.replace(PASSWORD, "wrong"))
    users = max(10, n // 250)
    events = event_log(n, users, seed=13)
    row = Row("Redis refusing the password (requirepass)", load_text(events, users))
    try:
        ends = await produce_raw(settings, encoded(events))
        log = workdir / "wrong-password.log"
        started = time.monotonic()
        proc = start_worker(wrong, log)
        try:
            code = proc.wait(120)
        finally:
            signal_worker(proc, signal.SIGKILL)
        row.seconds["worker_exit"] = round(time.monotonic() - started, 1)
        text = log.read_text()
        last = text.strip().splitlines()[-1]
        row.ok &= code == EXIT_AUTH and last.startswith("Error: Redis at") and PASSWORD not in text
        row.ok &= await committed(settings) == {}
        row.notes.append(f"exit {code}: {last[:90]}")
        proc = start_worker(good, workdir / "right-password.log")
        try:
            await wait_committed(settings, ends, proc)
        finally:
            signal_worker(proc, signal.SIGTERM)
        await compare(good, events, row)
    finally:
        server.stop()
    return row


async def sigterm_while_redis_down(settings: Settings, n: int, workdir: Path) -> Row:
    """SIGTERM while every batch waits for a Redis that is down: the worker stops within
    seconds and commits nothing; restarted with Redis up it applies everything."""
    users = max(10, n // 250)
    events = event_log(n, users, seed=14)
    row = Row("SIGTERM while Redis is down (closed port)", load_text(events, users))
    ends = await produce_raw(settings, encoded(events))
    down = replace(settings, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    log = workdir / "sigterm.log"
    proc = start_worker(down, log)
    try:
        deadline = time.monotonic() + 120
        while "retrying in" not in log.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        row.seconds["sigterm_to_exit"] = round(signal_worker(proc, signal.SIGTERM), 1)
    row.ok &= proc.returncode == 0 and row.seconds["sigterm_to_exit"] < 5
    row.ok &= await committed(settings) == {}
    proc = start_worker(settings, workdir / "after-sigterm.log")
    try:
        await wait_committed(settings, ends, proc)
    finally:
        signal_worker(proc, signal.SIGTERM)
    return await compare(settings, events, row)


async def broker_unreachable(settings: Settings, n: int, workdir: Path) -> Row:
    """The broker unreachable at start: exit 69 with one line, promptly."""
    row = Row("broker unreachable at worker start", "no events (nothing to consume)")
    log = workdir / "no-broker.log"
    started = time.monotonic()
    proc = start_worker(replace(settings, kafka=f"127.0.0.1:{closed_port()}"), log)
    code = proc.wait(120)
    row.seconds["worker_exit"] = round(time.monotonic() - started, 1)
    lines = log.read_text().strip().splitlines()
    row.ok = code == EXIT_UNAVAILABLE and len(lines) == 1 and "cannot reach Kafka" in lines[0]
    row.notes.append(f"exit {code}: {lines[-1][:90] if lines else ''}")
    return row


async def fuzzed_events(settings: Settings, n: int, workdir: Path) -> Row:
    """``n`` hypothesis-generated messages (valid and malformed of every kind) through a real
    worker: every valid event lands exactly, every other one in the dead-letter topic with the
    reason the contract gives."""
    from benchmarks.fuzz import fuzzed_messages  # hypothesis: a dev dependency

    messages = fuzzed_messages(n)
    valid, reasons = [], Counter()
    for key, value in messages:
        try:
            valid.append(parse_event(value, key))
        except ContractError as exc:
            reasons[exc.reason.value] += 1
    users = len({e.user_id for e in valid})
    row = Row("fuzzed events (hypothesis): valid and malformed mixed",
              f"{len(messages):,} messages: {len(valid):,} valid ({users:,} users), "
              f"{sum(reasons.values()):,} malformed of {len(reasons)} reasons")
    ends = await produce_raw(settings, messages)
    proc = start_worker(settings, workdir / "fuzz.log")
    try:
        await wait_committed(settings, ends, proc)
    finally:
        signal_worker(proc, signal.SIGTERM)
    letters = await consume_all(settings, settings.topics.events_dlq, sum(reasons.values()), 60)
    got = Counter(orjson.loads(r.value)["reason"] for r in letters)
    row.ok &= got == reasons
    if got != reasons:
        row.notes.append(f"dead letters {dict(got)} != contract {dict(reasons)}")
    row.notes.append("reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    return await compare(settings, valid, row)



Scenario = Callable[[Settings, int, Path], Awaitable[Row]]


async def _redis_kill9(settings: Settings, n: int, workdir: Path) -> Row:
    return await redis_restart(settings, n, workdir, sig=signal.SIGKILL, fsync="always")


SCENARIOS: dict[str, Scenario] = {
    "kill9-worker": kill9_worker,
    "redis-restart": redis_restart,
    "redis-kill9": _redis_kill9,
    "redis-password": redis_wrong_password,
    "sigterm-redis-down": sigterm_while_redis_down,
    "broker-unreachable": broker_unreachable,
    "fuzz-events": fuzzed_events,
    "triton-restart": triton_restart,
    "fuzz-requests": fuzzed_requests,
    "fuzz-samples": fuzzed_samples,
}


def fresh(settings: Settings, name: str) -> Settings:
    """Topics and a group of their own for one scenario."""
    tag = f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    topics = Topics(**{f.name: f"{getattr(settings.topics, f.name)}-{tag}" for f in fields(Topics)})
    return replace(settings, topics=topics, consumer_group=f"faults-{tag}")


async def main_async(args: argparse.Namespace) -> list[Row]:
    from semirec.core.stack import EmbeddedStack

    rows = []
    with tempfile.TemporaryDirectory(prefix="semirec-faults-") as tmp, \
            EmbeddedStack(("kafka", "redis")) as stack:
        base = Settings.from_env({**stack.addresses.env(), **LOCAL_GROUP_TIMINGS})
        for name, scenario in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            sync_redis_client(base.redis_url).flushdb()
            n = args.fuzz if name.startswith("fuzz") else \
                args.load_seconds if name == "triton-restart" else args.events
            started = time.monotonic()
            row = await scenario(fresh(base, name), n, Path(tmp))
            row.seconds["scenario"] = round(time.monotonic() - started, 1)
            rows.append(row)
            if not args.json:
                print(f"{'exact' if row.exact else 'WRONG'} | {row.fault} | {row.load} | lost "
                      f"{row.lost}, extra {row.extra}, users wrong {row.users_wrong} | "
                      f"{row.seconds} | {'; '.join(row.notes)}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--load-seconds", type=int, default=30,
                        help="triton-restart: seconds of load after the model answers again")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    parser.add_argument("--json", action="store_true", help="only the final JSON line")
    args = parser.parse_args()
    at_start = machine()
    rows = asyncio.run(main_async(args))
    out = finish({"rows": [{**asdict(r), "exact": r.exact} for r in rows],
                  "all_exact": all(r.exact for r in rows), "load_avg": os.getloadavg()[0]}, at_start)
    print_describe(out["machine"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
