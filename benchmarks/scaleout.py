"""Scale-out on one machine (issue 23, item 6): the whole stack scaled out, faults injected
mid-stream, exact state checked.

The stack (``EmbeddedStack(redis_cluster=True, partitions=3, tritons=2)``: what ``semirec stack
up --redis-cluster --partitions 3 --tritons 2`` starts): one Tansu broker, a Redis Cluster of 3
masters with one replica each, every topic with 3 partitions, 2 tritonservers on one model
repository. On it: 3 ingest workers, 2 recommendation workers (each a ``semirec worker``
process, one consumer group per agent) and 2 ``semirec trainer
run`` processes (one holds the lease, the other waits fenced). A toy world's catalog is in the
cluster and two toy rankers are exported; the first serves on both Tritons.

1. Ingest throughput, same run: a backlog of the world's events over 3 partitions, drained by
   1 worker, then another backlog (other users) by 3 workers (once each owns a partition).
2. A stream of the remaining users' events (with producer retries) and recommendation requests
   at steady rates; mid-stream: kill -9 of one ingest worker and of one recommendation worker
   (each restarted at once), one tritonserver stopped and started again, a model
   promoted then rolled back (registry API: loaded on both Tritons), one Redis master failed
   over to its replica (``CLUSTER FAILOVER``).
3. Then: Redis against a replay of every event produced (``users_wrong``), every request
   answered (``requests_unanswered``), groups caught up (``final_lag``), one trainer active.

The trainers do not train here (no round within the run): the promotion is made by hand,
through both real Tritons, while the active trainer holds the lease.

Usage: python -m benchmarks.scaleout [--json] [--quick] [--throughput-events N]
       [--stream-seconds S] [--event-rate R] [--request-rate R]
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.fault_kit import Row, signal_worker
from benchmarks.faults import compare
from benchmarks.faults_serving import DIM, metric_sum, toy_ranker
from benchmarks.machine import finish, machine, print_describe
from semirec.core.contracts import Domain, Event, encode_event
from semirec.core.recommendations import Recommendation, RecommendationRequest, encode
from semirec.core.settings import Settings
from semirec.core.stack import (
    COMPONENTS,
    DEFAULT_MODEL_REPOSITORY,
    LOCAL_GROUP_TIMINGS,
    EmbeddedStack,
    free_ports,
)

PARTITIONS = 3
INGEST_WORKERS, REC_WORKERS, TRAINERS, TRITONS = 3, 2, 2, 2


@dataclass(frozen=True)
class Size:
    throughput_events: int = 30_000  # per throughput phase (1 worker, then 3)
    stream_seconds: float = 40.0
    event_rate: float = 50.0  # stream events per second
    request_rate: float = 10.0  # recommendation requests per second
    seed: int = 7


QUICK = Size(throughput_events=8000, stream_seconds=24.0, event_rate=40.0, request_rate=8.0)


# -- processes --------------------------------------------------------------------------------

class Procs:
    """The scenario's worker and trainer processes, by name; logs under ``workdir``."""

    def __init__(self, settings: Settings, env: dict[str, str], workdir: Path) -> None:
        self.settings, self.env, self.dir = settings, env, workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, argv: list[str], port: int, **extra: str) -> subprocess.Popen:
        env = {**self.env, "SEMIREC_METRICS_PORT": str(port), **extra}
        self.argv[name], self.ports[name] = (argv, env), port
        return self._spawn(name)

    def _spawn(self, name: str) -> subprocess.Popen:
        argv, env = self.argv[name]
        with open(self.dir / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "semirec", *argv], env=env,
                                                stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return self.procs[name]

    def kill9_and_restart(self, name: str) -> dict[str, Any]:
        """SIGKILL the process (its group), check it is gone, start it again (same env)."""
        old = self.procs[name]
        signal_worker(old, signal.SIGKILL)
        gone = old.returncode == -signal.SIGKILL and not Path(f"/proc/{old.pid}").exists()
        new = self._spawn(name)
        return {"name": name, "killed_pid": old.pid, "returncode": old.returncode,
                "killed_pid_gone": gone, "restarted_pid": new.pid}

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def metrics(self, name: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics",
                                    timeout=5) as resp:
            return resp.read().decode()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            signal_worker(proc, signal.SIGKILL, timeout=20)  # what SIGTERM left after 20 s


async def wait_until(what: str, check, procs: Procs, timeout: float, every: float = 0.2) -> float:
    """Seconds until ``check()`` (sync or async) is true; raises after ``timeout``."""
    started = time.monotonic()
    while True:
        procs.check_alive()
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not true after {timeout:.0f}s: {what}")
        await asyncio.sleep(every)


# -- the world and what is produced ----------------------------------------------------------

@dataclass
class World:
    catalog: Any  # ToyWorld: items and vectors (the events are split below)
    tp1: list[Event]  # backlog drained by one worker
    tp3: list[Event]  # backlog drained by three workers
    stream: list[Event]  # streamed with the faults (retries included)
    products: list[str]


def make_world(size: Size) -> World:
    """One toy world (dim 128): its users split in three disjoint sets, in user order."""
    from semirec.trainer.offline.toy import toy_world

    per_user = 40
    stream_n = int(size.stream_seconds * size.event_rate)
    users = math.ceil((2 * size.throughput_events + stream_n) / per_user) + 3
    world = toy_world(users=users, videos=60, products=40, dim=DIM, events_per_user=per_user,
                      seed=size.seed)
    by_user: dict[str, list[Event]] = {}
    for e in world.events:
        by_user.setdefault(e.user_id, []).append(e)
    order = sorted(by_user, key=lambda u: int(u[1:]))
    parts: list[list[str]] = [[], [], []]
    counts = [0, 0, 0]
    wanted = [size.throughput_events, size.throughput_events, stream_n]
    for u in order:
        k = next((i for i in range(3) if counts[i] < wanted[i]), 2)
        parts[k].append(u)
        counts[k] += len(by_user[u])
    chosen = [set(p) for p in parts]
    split = [[e for e in world.events if e.user_id in c] for c in chosen]
    rng = random.Random(size.seed)
    stream = split[2][:stream_n]
    for original in rng.sample(stream, len(stream) // 50):  # 2% producer retries, later on
        stream.insert(rng.randint(stream.index(original) + 1, len(stream)), original)
    products = [it["item_id"] for it in world.items if it["domain"] == "product"]
    return World(world, split[0], split[1], stream, products)


def encoded(events: list[Event]) -> list[tuple[bytes, bytes]]:
    return [(e.user_id.encode(), encode_event(e, "json" if i % 2 else "msgpack"))
            for i, e in enumerate(events)]


class Produced:
    """Every event sent to ``events`` (for the replay), every request id sent."""

    def __init__(self, settings: Settings) -> None:
        from semirec.core.kafka import producer

        self.settings = settings
        self.producer = producer(settings)
        self.events: list[Event] = []
        self.requests: dict[str, str] = {}  # request_id -> user_id
        self._probes = 0

    async def send_events(self, events: list[Event]) -> None:
        futures = [await self.producer.send(self.settings.topics.events, value, key=key)
                   for key, value in encoded(events)]
        self.events += events
        await asyncio.gather(*futures)

    async def probe(self) -> None:
        """One event on each partition of ``events`` (a fresh user each)."""
        futures = []
        for p in range(PARTITIONS):
            self._probes += 1
            e = Event(f"probe-{self._probes}", f"probe-{self._probes}", "p1", Domain.PRODUCT,
                      "click", 1_600_000_000.0 + self._probes)
            futures.append(await self.producer.send(self.settings.topics.events, encode_event(e),
                                                    key=e.user_id.encode(), partition=p))
            self.events.append(e)
        await asyncio.gather(*futures)

    async def request(self, rid: str, user: str, at: float) -> None:
        req = RecommendationRequest(request_id=rid, user_id=user, k=5, at=at)
        await self.producer.send(self.settings.topics.recommendation_requests, encode(req),
                                 key=user.encode())
        self.requests[rid] = user


class Answers:
    """Everything published on ``recommendations`` since the start (a background reader)."""

    def __init__(self, settings: Settings) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(settings.topics.recommendations,
                                         **settings.consumer_kwargs(),
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.seen: list[Recommendation] = []

    async def run(self, stop: asyncio.Event) -> None:
        from semirec.core.recommendations import parse_recommendation

        await self.consumer.start()
        try:
            while not stop.is_set():
                for records in (await self.consumer.getmany(timeout_ms=200)).values():
                    self.seen.extend(parse_recommendation(r.value) for r in records)
        finally:
            await self.consumer.stop()

    def per_request(self) -> Counter[str]:
        return Counter(r.request_id for r in self.seen if r.request_id is not None)


# -- measurements -----------------------------------------------------------------------------

def processed(procs: Procs, names: list[str]) -> dict[str, float]:
    return {n: metric_sum(procs.metrics(n), "semirec_events_processed_total", agent="ingest")
            for n in names}


async def throughput(produced: Produced, procs: Procs, names: list[str],
                     events: list[Event]) -> float:
    """Events/s of ``names`` draining ``events`` (sent as fast as the producer goes): from the
    first send until the workers counted all of them (their /metrics, every 0.1 s)."""
    before = sum(processed(procs, names).values())
    started = time.monotonic()
    await produced.send_events(events)

    def done() -> bool:
        return sum(processed(procs, names).values()) >= before + len(events)

    seconds = (time.monotonic() - started) + await wait_until(
        f"{len(events)} events ingested by {names}", done, procs, 300, every=0.1)
    return round(len(events) / seconds, 1)


async def balanced(produced: Produced, procs: Procs, names: list[str]) -> None:
    """Until each worker of ``names`` handled one of the 3 probes (one per partition): each
    owns a partition (the group has settled)."""
    await wait_until(f"{names} ready", lambda: all(_ready(procs, n) for n in names), procs, 120)
    deadline = time.monotonic() + 120
    while True:
        before = processed(procs, names)
        await produced.probe()
        await wait_until("probes ingested", lambda b=before: sum(processed(procs, names).values())
                         >= sum(b.values()) + PARTITIONS, procs, 60, every=0.1)
        after = processed(procs, names)
        if all(after[n] > before[n] for n in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ingest group did not spread over {names}")
        await asyncio.sleep(1.0)


def trainers_active(procs: Procs) -> int:
    """How many trainers hold the lease now (``semirec_trainer_active``)."""
    return int(sum(metric_sum(procs.metrics(f"trainer-{i}"), "semirec_trainer_active")
                   for i in range(TRAINERS)))


def redis_ops(cluster: Any) -> tuple[dict[str, int], dict[str, int]]:
    """``total_commands_processed`` of every master and of every replica now."""
    from semirec.core.redis_cluster import _ask

    masters, replicas = {}, {}
    for port in cluster.ports:
        if cluster.procs[port].poll() is not None:
            continue
        info = dict(line.split(":", 1) for line in _ask(port, "INFO", "all").splitlines()
                    if ":" in line)
        target = masters if info.get("role") == "master" else replicas
        target[f"127.0.0.1:{port}"] = int(info["total_commands_processed"])
    return masters, replicas


def role(port: int) -> str:
    from semirec.core.redis_cluster import _ask

    text = _ask(port, "INFO", "replication")
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith("role:")), "?")


async def total_lag(settings: Settings) -> int:
    from semirec.core.lag import measure_lag

    t = settings.topics
    rows = await measure_lag(settings, [settings.ingest_group], [t.events])
    rows += await measure_lag(settings, [settings.recommend_group],
                              [t.user_updates, t.recommendation_requests])
    return sum(r.lag for r in rows)


# -- the scenario -----------------------------------------------------------------------------

async def scenario(size: Size, workdir: Path) -> dict[str, Any]:
    """Run everything on a stack of its own under ``workdir``; the report (see the module doc)."""
    from semirec.core.item_store import ItemStore, ItemVector
    from semirec.core.redis_client import redis_client
    from semirec.trainer.registry.repository import ModelRepository

    timings: dict[str, float] = {}
    t_start = time.monotonic()
    world = make_world(size)
    repo_dir = workdir / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json"))
    stack = EmbeddedStack(COMPONENTS, directory=workdir / "stack", model_repository=repo_dir,
                          redis_cluster=True, partitions=PARTITIONS, tritons=TRITONS,
                          triton_load=["ranker"])
    with stack:
        timings["stack_up"] = round(time.monotonic() - t_start, 1)
        cluster = stack.cluster
        assert cluster is not None
        env = {**{k: v for k, v in os.environ.items() if k != "SEMIREC_CONSUMER_GROUP"},
               **LOCAL_GROUP_TIMINGS, **stack.addresses.env(),
               "SEMIREC_MODEL_REPOSITORY": str(repo_dir),
               # one machine, 2 cores: a ranker call may wait its turn for a core
               "SEMIREC_RANK_TIMEOUT_MS": "1000",
               "SEMIREC_TRAINER_STATE_DIR": str(workdir / "trainer")}
        settings = Settings.from_env(env)
        servers = settings.triton_grpc.split(",")
        client = redis_client(settings.redis_url)
        try:
            await ItemStore(client).put_many(
                (ItemVector(it["item_id"], Domain(it["domain"]), vec, "toy")
                 for it, vec in zip(world.catalog.items, world.catalog.vectors, strict=True)),
                {it["item_id"]: it["title"] for it in world.catalog.items})
        finally:
            await client.aclose()
        repo = ModelRepository(repo_dir, settings.triton_grpc)
        ranker = toy_ranker(workdir / "ranker")  # (its scores do not matter here)
        v1, v2 = repo.export(ranker), repo.export(ranker)  # two versions to swap between
        await asyncio.to_thread(repo.promote, v1)
        timings["catalog_and_model"] = round(time.monotonic() - t_start - timings["stack_up"], 1)

        procs = Procs(settings, env, workdir)
        ports = free_ports(INGEST_WORKERS + REC_WORKERS + TRAINERS)
        produced = Produced(settings)
        await produced.producer.start()
        stop_reader = asyncio.Event()
        answers = Answers(settings)
        reader = asyncio.create_task(answers.run(stop_reader))
        faults: dict[str, Any] = {}
        active_samples: list[int] = []
        try:
            for i in range(TRAINERS):  # the first takes the lease, the second waits for it
                procs.start(f"trainer-{i}", ["trainer", "run", "--round-samples", "10000000",
                                             "--round-seconds", "1000000"], ports.pop())
                if i == 0:
                    await wait_until("trainer-0 active", lambda: trainers_active_safe(procs, 0),
                                     procs, 120)
            ingest = [f"ingest-{i}" for i in range(INGEST_WORKERS)]
            rec = [f"recommend-{i}" for i in range(REC_WORKERS)]
            # dynamic membership (no SEMIREC_INSTANCE_ID): on the Tansu broker a group of two or
            # more static members rebalances every ~6.5 s (docs/operations.md, "Proof on one
            # machine"); a restarted worker rejoins and the group rebalances once
            procs.start(ingest[0], ["worker", "--agent", "ingest"], ports.pop())
            for name in rec:
                procs.start(name, ["worker", "--agent", "recommend"], ports.pop())
            await balanced(produced, procs, ingest[:1])
            t0 = time.monotonic()
            rate_1 = await throughput(produced, procs, ingest[:1], world.tp1)
            timings["throughput_1_worker"] = round(time.monotonic() - t0, 1)
            for name in ingest[1:]:
                procs.start(name, ["worker", "--agent", "ingest"], ports.pop())
            await balanced(produced, procs, ingest)
            t0 = time.monotonic()
            rate_3 = await throughput(produced, procs, ingest, world.tp3)
            timings["throughput_3_workers"] = round(time.monotonic() - t0, 1)
            await wait_until("both recommendation workers ready", lambda: all(
                _ready(procs, n) for n in rec), procs, 120)
            active_samples.append(trainers_active(procs))

            # -- the stream, with the faults ---------------------------------------------------
            t_stream, t_stream_wall = time.monotonic(), time.time()
            stream_done = asyncio.Event()
            load = asyncio.create_task(stream(produced, world, size, stream_done))

            async def at(fraction: float) -> None:
                await asyncio.sleep(max(0.0, t_stream + fraction * size.stream_seconds
                                        - time.monotonic()))
                procs.check_alive()
                active_samples.append(trainers_active(procs))

            await at(0.15)
            faults["ingest_kill9"] = procs.kill9_and_restart(ingest[1])
            await at(0.30)
            faults["recommend_kill9"] = procs.kill9_and_restart(rec[1])
            await at(0.40)
            stack.pause("triton-2")
            faults["triton_stopped"] = {"server": servers[1],
                                        "dead": stack.procs["triton-2"].poll() is not None}
            await at(0.52)
            await asyncio.to_thread(stack.resume, "triton-2")  # loads `serving` from disk
            faults["triton_stopped"]["restarted_serves"] = sorted(repo.loaded(servers[1]) or ())
            await at(0.58)
            promoted = await asyncio.to_thread(repo.promote, v2)
            faults["promote"] = {"version": v2, "servers": promoted["servers"],
                                 "unconverged": dict(repo.unconverged)}
            await at(0.70)
            back = await asyncio.to_thread(repo.rollback)
            faults["rollback"] = {"version": back, "servers": repo.last_promotion["servers"],
                                  "unconverged": dict(repo.unconverged),
                                  "serving": repo.aliases().get("serving")}
            await at(0.80)
            old_master = cluster.master_ports()[0]
            replica = cluster.replica_of(old_master)
            await asyncio.to_thread(cluster.failover, replica)
            deadline = time.monotonic() + 30  # the old master learns it by gossip
            while role(old_master) != "slave" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            faults["redis_failover"] = {"old_master": old_master, "new_master": replica,
                                        "old_master_role": role(old_master),
                                        "new_master_role": role(replica)}
            await load
            timings["stream"] = round(time.monotonic() - t_stream, 1)

            # -- drained? ----------------------------------------------------------------------
            t_drain = time.monotonic()
            wanted = set(produced.requests)
            with contextlib.suppress(TimeoutError):
                await wait_until("every request answered", lambda: wanted <= set(
                    answers.per_request()), procs, 90)
            lag = -1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                procs.check_alive()
                lag = await total_lag(settings)
                if lag == 0:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)  # answers published just before the last commit
            timings["drain"] = round(time.monotonic() - t_drain, 1)
            active_samples.append(trainers_active(procs))
            skew = sum(metric_sum(procs.metrics(n), "semirec_triton_version_skew_seconds_total")
                       for n in rec)
            waiting_logged = "another trainer is active" in \
                (workdir / "trainer-1.log").read_text(errors="replace")
            masters, replicas = redis_ops(cluster)
        finally:
            stop_reader.set()
            await reader
            await produced.producer.stop()
            procs.stop_all()
        row = await compare(settings, produced.events, Row("scale-out", ""))
    per_request = answers.per_request()
    return {
        "users_wrong": row.users_wrong,
        "entries_lost": row.lost,
        "entries_extra": row.extra,
        "users": len({e.user_id for e in produced.events}),
        "events_produced": len(produced.events),
        "requests_sent": len(produced.requests),
        "requests_unanswered": len(set(produced.requests) - set(per_request)),
        "requests_answered_twice": sum(c - 1 for c in per_request.values() if c > 1),
        "recommendations_seen": len(answers.seen),
        "fallbacks": sum(r.fallback for r in answers.seen),
        # of which generated before the stream (the throughput backlogs' triggered answers)
        "fallbacks_before_stream": sum(r.fallback for r in answers.seen
                                       if r.generated_at < t_stream_wall),
        "final_lag": lag,
        "version_skew_s": round(skew, 2),
        "trainers_promoting": max(active_samples),
        "trainers_active_samples": active_samples,
        "trainer_waiting_logged": waiting_logged,
        "events_per_s_1_worker": rate_1,
        "events_per_s_3_workers": rate_3,
        "redis_ops_per_node": masters,
        "redis_ops_per_replica": replicas,
        "faults": faults,
        "size": asdict(size),
        "seconds": {**timings, "total": round(time.monotonic() - t_start, 1)},
    }


def trainers_active_safe(procs: Procs, i: int) -> bool:
    try:
        return metric_sum(procs.metrics(f"trainer-{i}"), "semirec_trainer_active") == 1
    except OSError:  # its metrics port is not up yet
        return False


def _ready(procs: Procs, name: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{procs.ports[name]}/readyz",
                                    timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


async def stream(produced: Produced, world: World, size: Size, done: asyncio.Event) -> None:
    """The stream's events at ``event_rate`` and requests at ``request_rate`` (users of the
    stream, at the event time reached), paced over ``stream_seconds``."""
    events = world.stream
    users = sorted({e.user_id for e in events})
    rng = random.Random(size.seed)
    n_req = int(size.stream_seconds * size.request_rate)
    started = time.monotonic()
    ev_i = req_i = 0
    last_ts = events[0].ts
    while ev_i < len(events) or req_i < n_req:
        now = time.monotonic() - started
        due_ev = min(len(events), int(now * size.event_rate) + 1)
        if due_ev > ev_i:
            batch = events[ev_i:due_ev]
            await produced.send_events(batch)
            last_ts = max(last_ts, *(e.ts for e in batch))
            ev_i = due_ev
        due_req = min(n_req, int(now * size.request_rate) + 1)
        while req_i < due_req:
            await produced.request(f"req-{req_i:06d}", rng.choice(users), last_ts)
            req_i += 1
        await asyncio.sleep(0.02)
    await produced.producer.flush()
    done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="only the final JSON line on stdout")
    parser.add_argument("--quick", action="store_true", help=f"the test's size: {QUICK}")
    parser.add_argument("--throughput-events", type=int)
    parser.add_argument("--stream-seconds", type=float)
    parser.add_argument("--event-rate", type=float)
    parser.add_argument("--request-rate", type=float)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs)")
    args = parser.parse_args()
    size = QUICK if args.quick else Size()
    size = replace(size, **{k: v for k, v in (
        ("throughput_events", args.throughput_events), ("stream_seconds", args.stream_seconds),
        ("event_rate", args.event_rate), ("request_rate", args.request_rate)) if v is not None})
    at_start = machine()
    with contextlib.ExitStack() as keep:
        if args.keep is None:
            workdir = Path(keep.enter_context(tempfile.TemporaryDirectory(prefix="semirec-scaleout-")))
        else:
            workdir = args.keep
            workdir.mkdir(parents=True, exist_ok=True)
        out = finish(asyncio.run(scenario(size, workdir)), at_start)
    print_describe(out["machine"])
    if not args.json:
        for key in ("users_wrong", "requests_sent", "requests_unanswered",
                    "requests_answered_twice", "final_lag", "fallbacks", "version_skew_s",
                    "trainers_promoting", "events_per_s_1_worker", "events_per_s_3_workers"):
            print(f"{key}: {out[key]}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
