"""Fault-suite scenarios of the recommendation path (``benchmarks.faults`` runs them with the
others): tritonserver stopped and restarted under recommendation load.

A real ``semirec worker --agent ingest --agent recommend`` serves a toy catalog with an
(untrained) SEMI ranker promoted in a tritonserver of the scenario's own; a load generator
sends recommendation requests and product clicks (each click triggers a recommendation through
ingest's ``user-updates``) at a steady rate while tritonserver is stopped, started again and
its serving version reloaded (``ModelRepository.load_serving``, what ``semirec model load``
does). The row says whether every request was answered, whether every answer generated while
tritonserver was down says ``fallback: true``, how long the model took to answer again, and
whether anything was dead-lettered or left uncommitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from benchmarks.fault_kit import Row, env_for, signal_worker
from semirec.core.contracts import Domain, Event, encode_event
from semirec.core.kafka import ensure_topics, ingest_topics, producer, serving_topics
from semirec.core.recommendations import Recommendation, RecommendationRequest, encode
from semirec.core.settings import Settings
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, EmbeddedStack, free_port

DIM = 128  # the serving catalog's vector size
T0 = 1_700_000_000.0


def toy_ranker(directory: Path, dim: int = DIM) -> Path:
    """An untrained small SEMI checkpoint (what it scores does not matter here, only that the
    model answers)."""
    import torch

    from semirec.trainer.nets import checkpoint
    from semirec.trainer.nets.configs import BlockConfig, TrainConfig, paper
    from semirec.trainer.nets.zoo import build

    torch.manual_seed(0)
    cfg = replace(paper("semi"), block=BlockConfig(dim=dim, heads=4, ffn=dim),
                  train=TrainConfig(batch_size=64, epochs=1, patience=1, seq_len=20))
    return checkpoint.save(directory, build(cfg).eval(), cfg)


def private_triton(workdir: Path) -> EmbeddedStack:
    """A tritonserver of the scenario's own over a copy of triton_models/ without versions."""
    repo_dir = workdir / f"triton-models-{time.monotonic_ns()}"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json"))
    return EmbeddedStack(["triton"], model_repository=repo_dir)


@contextlib.asynccontextmanager
async def served_ranker(settings: Settings, workdir: Path) \
        -> AsyncIterator[tuple[Settings, EmbeddedStack, Any]]:
    """A private tritonserver serving a toy ranker over a toy catalog (dim 128) in Redis;
    yields the settings pointing at it, the stack and its ModelRepository."""
    from semirec.trainer.offline.toy import toy_world
    from semirec.trainer.registry.repository import ModelRepository
    from tests.serving_utils import put_catalog

    world = toy_world(users=30, videos=60, products=40, dim=DIM, events_per_user=2, seed=5)
    await put_catalog(settings.redis_url, world)
    triton = private_triton(workdir)
    triton.start()
    try:
        url = triton.addresses.triton_grpc
        assert url is not None
        repo = ModelRepository(triton.model_repository, url)
        repo.promote(repo.export(toy_ranker(workdir / f"ranker-{time.monotonic_ns()}")))
        yield replace(settings, triton_grpc=url), triton, repo
    finally:
        triton.stop()
        shutil.rmtree(triton.model_repository, ignore_errors=True)


def start_worker(settings: Settings, log: Path, *agents: str, **env: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "semirec", "worker"]
    for agent in agents:
        argv += ["--agent", agent]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=worker_env(settings, **env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return env_for(settings, SEMIREC_TRITON_GRPC=settings.triton_grpc, **extra)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (a Prometheus text exposition) matching ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


class Load:
    """Requests and product clicks at ``rate`` per second each, until stopped."""

    def __init__(self, settings: Settings, users: list[str], products: list[str],
                 rate: float) -> None:
        self.settings, self.users, self.products, self.rate = settings, users, products, rate
        self.requests: dict[str, str] = {}  # request_id -> user_id
        self.sent_at: dict[str, float] = {}
        self.last_event: dict[str, str] = {}  # user -> newest event_id sent
        self.request_ends: dict[int, int] = {}
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        prod = producer(self.settings)
        await prod.start()
        topics = self.settings.topics
        try:
            i = 0
            started = time.monotonic()
            while not self.stopped.is_set():
                user = self.users[i % len(self.users)]
                rid = f"req-{i:06d}"
                req = RecommendationRequest(request_id=rid, user_id=user, k=5, at=T0 + i)
                clicker = self.users[(i * 7 + 3) % len(self.users)]
                event = Event(f"ev-{i:06d}", clicker, self.products[i % len(self.products)],
                              Domain.PRODUCT, "click", T0 + i)
                meta = await (await prod.send(topics.recommendation_requests, encode(req),
                                              key=user.encode()))
                self.requests[rid], self.sent_at[rid] = user, time.time()
                self.request_ends[meta.partition] = max(self.request_ends.get(meta.partition, 0),
                                                        meta.offset + 1)
                await (await prod.send(topics.events, encode_event(event), key=clicker.encode()))
                self.last_event[clicker] = event.event_id
                i += 1
                await asyncio.sleep(max(0.0, started + i / self.rate - time.monotonic()))
        finally:
            await prod.stop()


async def triton_restart(settings: Settings, n: int, workdir: Path, *, rate: float = 10.0,
                         down_s: float = 5.0) -> Row:
    """tritonserver stopped (SIGTERM) under recommendation load, started again after
    ``down_s`` and its serving version reloaded; ``n`` = seconds of load after recovery."""
    from tests.kafka_utils import committed, consume_all
    from tests.serving_utils import Recommendations

    users = [f"user-{i:03d}" for i in range(40)]
    products = [f"p{i}" for i in range(40)]
    row = Row("tritonserver stopped (SIGTERM) and restarted under recommendation load",
              f"{rate:g} requests/s + {rate:g} triggering clicks/s over {len(users)} users")
    async with served_ranker(settings, workdir) as (settings, triton, repo):
        await ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)})
        metrics_port = free_port()
        log = workdir / f"triton-restart-{metrics_port}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "semirec", "worker", "--agent", "ingest", "--agent",
                 "recommend", "--metrics-port", str(metrics_port)],
                env=worker_env(settings, SEMIREC_RANK_TIMEOUT_MS="1000"), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        load = Load(settings, users, products, rate)
        try:
            async with Recommendations(settings) as recs:
                task = asyncio.create_task(load.run())

                def model_answers_since(t: float):
                    def done(seen: list[Recommendation]) -> bool:
                        if proc.poll() is not None:
                            raise RuntimeError(f"worker exited with {proc.returncode}")
                        return any(not r.fallback and r.generated_at > t for r in seen)
                    return done

                try:
                    await recs.wait(model_answers_since(0.0), timeout=180)
                    await _drain(recs, 3.0)
                    t_stop = time.time()
                    triton.pause("triton")
                    t_down = time.time()
                    await _drain(recs, down_s)
                    t_resume = time.time()
                    triton.resume("triton")
                    t_up = time.time()
                    await asyncio.to_thread(repo.load_serving)
                    t_loaded = time.time()
                    await recs.wait(model_answers_since(t_loaded), timeout=120)
                    t_recovered = min(r.generated_at for r in recs.seen
                                      if not r.fallback and r.generated_at > t_loaded)
                    await _drain(recs, n)
                finally:
                    load.stopped.set()
                    await task
                wanted = set(load.requests)
                await recs.wait(lambda s: wanted <= {r.request_id for r in s}
                                and all(_answered(s, u, e) for u, e in load.last_event.items()),
                                timeout=120)
                await _drain(recs, 1.0)
            seen = list(recs.seen)
            row.ok &= proc.poll() is None
            text = scrape(metrics_port)
        finally:
            code = signal_worker(proc, 15)
            row.notes.append(f"worker stopped in {code:.1f} s")
        answers = [r for r in seen if r.request_id is not None]
        triggered = [r for r in seen if r.event_id is not None]
        per_request: dict[str, int] = {}
        for r in answers:
            per_request[r.request_id] = per_request.get(r.request_id, 0) + 1
        unanswered = len(set(load.requests) - set(per_request))
        twice = sum(c - 1 for c in per_request.values())

        def phase(a: float, b: float) -> list[Recommendation]:
            return [r for r in seen if a <= r.generated_at < b]

        down = phase(t_down, t_up)
        before, after = phase(0, t_stop), phase(t_recovered, float("inf"))
        row.lost = unanswered
        row.extra = twice
        row.ok &= all(r.fallback and r.model_version == "fallback" and r.items for r in down)
        row.ok &= bool(down) and all(r.items for r in seen)
        fallbacks_seen = sum(r.fallback for r in seen)
        counted = metric_sum(text, "semirec_recommendations_total", fallback="true")
        row.ok &= counted == fallbacks_seen
        letters = await consume_all(settings, settings.topics.events_dlq, 0, 2)
        row.ok &= not letters
        group = await committed(settings, settings.events_group,
                                settings.topics.recommendation_requests, settings.event_partitions)
        row.ok &= all(group.get(p, 0) >= e for p, e in load.request_ends.items())
        row.ok &= "Traceback" not in log.read_text(errors="replace")
        row.seconds.update({
            "triton_down": round(t_up - t_down, 1), "restart": round(t_up - t_resume, 1),
            "reload": round(t_loaded - t_up, 1),
            "model_again_after_reload": round(t_recovered - t_loaded, 2)})
        row.notes += [
            f"{len(load.requests)} requests: {len(set(per_request))} answered, {unanswered} "
            f"unanswered, {twice} answered twice",
            f"{len(triggered)} triggered recommendations; newest click of all "
            f"{len(load.last_event)} users answered",
            f"while down: {len(down)} answers, {sum(r.fallback for r in down)} fallback",
            f"before the stop: {sum(r.fallback for r in before)} of {len(before)} fallback; "
            f"after recovery: {sum(r.fallback for r in after)} of {len(after)} fallback",
            f"fallback answers seen {fallbacks_seen}, counted {counted:g} "
            f"(semirec_recommendations_total{{fallback=\"true\"}}), "
            f"triton errors {metric_sum(text, 'semirec_triton_errors_total'):g}",
            f"dead letters {len(letters)}; request offsets committed {group}"]
    return row


def _answered(seen: list[Recommendation], user: str, event_id: str) -> bool:
    return any(r.user_id == user and r.event_id == event_id for r in seen)


async def _drain(recs, seconds: float) -> None:
    """Keep reading the recommendations topic for ``seconds``."""
    end = time.monotonic() + seconds
    with contextlib.suppress(AssertionError):
        await recs.wait(lambda s: time.monotonic() >= end, timeout=seconds + 5)


async def fuzzed_requests(settings: Settings, n: int, workdir: Path) -> Row:
    """``n`` hypothesis-drawn recommendation requests (valid and malformed mixed) through a
    real recommendation agent ranking with a real tritonserver: every valid request answered
    once, every other one dead-lettered with the reason the contract gives."""
    from benchmarks.fuzz import collect, request_message
    from semirec.core.contracts import ContractError
    from semirec.core.recommendations import parse_recommendation, parse_request
    from tests.kafka_utils import committed, consume_all, produce_raw

    messages = collect(request_message(), n)
    valid: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    for key, value in messages:
        try:
            req = parse_request(value, key)
        except ContractError as exc:
            reasons[exc.reason.value] += 1
        else:
            valid[(req.user_id, req.request_id)] += 1
    row = Row("fuzzed recommendation requests (hypothesis): valid and malformed mixed",
              f"{len(messages):,} messages: {sum(valid.values()):,} valid ({len(valid):,} "
              f"distinct request ids), {sum(reasons.values()):,} malformed of {len(reasons)} "
              "reasons")
    async with served_ranker(settings, workdir) as (settings, _, _):
        await ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)})
        topic = settings.topics.recommendation_requests
        ends = await produce_raw(settings, messages, topic=topic)
        log = workdir / f"fuzz-requests-{time.monotonic_ns()}.log"
        proc = start_worker(settings, log, "recommend", SEMIREC_RANK_TIMEOUT_MS="2000")
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail}")
                got = await committed(settings, settings.events_group, topic,
                                      settings.event_partitions)
                if all(got.get(p, 0) >= e for p, e in ends.items()):
                    break
                if time.monotonic() - started > 600:
                    raise TimeoutError(f"requests not committed: {got} < {ends}")
                await asyncio.sleep(0.3)
            row.seconds["all_committed"] = round(time.monotonic() - started, 1)
        finally:
            signal_worker(proc, 15)
    letters = await consume_all(settings, settings.topics.events_dlq, sum(reasons.values()), 60)
    got_reasons = Counter(orjson.loads(r.value)["reason"] for r in letters)
    recs = [parse_recommendation(r.value) for r in
            await consume_all(settings, settings.topics.recommendations, len(valid), 60)]
    answered = Counter((r.user_id, r.request_id) for r in recs)
    row.lost = sum(1 for pair in valid if pair not in answered)
    row.extra = sum(c - 1 for c in answered.values()) + sum(1 for p in answered if p not in valid)
    row.ok &= got_reasons == reasons and "Traceback" not in log.read_text(errors="replace")
    if got_reasons != reasons:
        row.notes.append(f"dead letters {dict(got_reasons)} != contract {dict(reasons)}")
    model = sum(not r.fallback for r in recs)
    row.notes += ["reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
                  f"{len(recs)} answers ({model} ranked by the model, {len(recs) - model} "
                  f"fallback)"]
    return row


async def fuzzed_samples(settings: Settings, n: int, workdir: Path) -> Row:
    """``n`` hypothesis-drawn training samples (valid and malformed mixed) through the
    incremental trainer (in process, from an untrained checkpoint): every valid sample queued
    and trained in one round, every other one dead-lettered with the contract's reason, every
    offset committed with the checkpoint."""
    import logging

    from benchmarks.fuzz import collect, sample_message
    from semirec.core.contracts import ContractError
    from semirec.core.samples import decode_sample
    from semirec.trainer.online.learner import OnlineConfig
    from semirec.trainer.online.service import OnlineTrainer
    from semirec.trainer.registry.repository import ModelRepository
    from tests.kafka_utils import committed, consume_all, produce_raw

    logging.getLogger("semirec.trainer.online.service").setLevel(logging.ERROR)  # one line per letter
    dim = 32
    messages = collect(sample_message(), n)
    valid: set[str] = set()
    reasons: Counter[str] = Counter()
    for key, value in messages:
        try:
            valid.add(decode_sample(value, key, check_key=True).event_id)
        except ContractError as exc:
            reasons[exc.reason.value] += 1
    n_valid = len(messages) - sum(reasons.values())
    row = Row("fuzzed training samples (hypothesis) through the incremental trainer",
              f"{len(messages):,} messages: {n_valid:,} valid ({len(valid):,} distinct event "
              f"ids: one kept per event_id), {sum(reasons.values()):,} malformed of "
              f"{len(reasons)} reasons")
    await _put_vectors(settings.redis_url, dim)
    await ensure_topics(settings, {settings.topics.samples: settings.event_partitions,
                                   settings.topics.events_dlq: settings.event_partitions})
    ends = await produce_raw(settings, messages, topic=settings.topics.samples)
    tag = time.monotonic_ns()
    online = OnlineConfig(round_samples=10**7, min_round_samples=10**7, round_seconds=1e9,
                          passes=1)
    trainer = OnlineTrainer(settings, online, state_dir=workdir / f"trainer-{tag}",
                            repo=ModelRepository(workdir / f"models-{tag}"),  # no Triton: no swap
                            init=toy_ranker(workdir / f"init-{tag}", dim))
    started = time.monotonic()
    await trainer.start()
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(trainer.run(stop))
        while not all(trainer.offsets.get(p, 0) >= e for p, e in ends.items()):
            if task.done():
                task.result()
                raise RuntimeError("the trainer stopped")
            if time.monotonic() - started > 600:
                raise TimeoutError(f"samples not consumed: {trainer.offsets} < {ends}")
            await asyncio.sleep(0.2)
        stop.set()
        await task
        row.seconds["consumed"] = round(time.monotonic() - started, 1)
        assert trainer.learner is not None
        queued = {s.event_id for s in trainer.learner.pending}
        record = await trainer.round()  # trains on every queued sample, checkpoints, commits
    finally:
        await trainer.stop()
    letters = await consume_all(settings, settings.topics.events_dlq, sum(reasons.values()), 60)
    got_reasons = Counter(orjson.loads(r.value)["reason"] for r in letters)
    stages = Counter(orjson.loads(r.value)["stage"] for r in letters)
    done = await committed(settings, settings.trainer_group, settings.topics.samples,
                           settings.event_partitions)
    row.lost = len(valid - queued)
    row.extra = len(queued - valid)
    used = record.trained + record.holdout + record.skipped_without_vector
    row.ok &= got_reasons == reasons and set(stages) <= {"trainer"} and used == len(valid)
    row.ok &= all(done.get(p, 0) >= e for p, e in ends.items())
    if got_reasons != reasons:
        row.notes.append(f"dead letters {dict(got_reasons)} != contract {dict(reasons)}")
    row.notes += ["reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
                  f"round: {record.trained} trained, {record.holdout} held out, "
                  f"{record.skipped_without_vector} without a vector; offsets committed {done}"]
    return row


async def _put_vectors(redis_url: str, dim: int) -> None:
    import numpy as np

    from semirec.core.contracts import Domain
    from semirec.core.item_store import ItemStore, ItemVector

    rng = np.random.default_rng(0)
    store = ItemStore.from_url(redis_url)
    try:
        await store.put_many(ItemVector(f"{d[0]}{i}", Domain(d), rng.normal(size=dim), "fuzz")
                             for d, count in (("video", 60), ("product", 40))
                             for i in range(count))
    finally:
        await store.close()
