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
from dataclasses import replace
from pathlib import Path

from semirec.contracts import Domain, Event, encode_event
from semirec.kafka import ensure_topics, ingest_topics, producer, serving_topics
from semirec.recommendations import Recommendation, RecommendationRequest, encode
from semirec.settings import Settings
from semirec.stack import DEFAULT_MODEL_REPOSITORY, EmbeddedStack, free_port

DIM = 128  # the serving catalog's vector size
T0 = 1_700_000_000.0


def toy_ranker(directory: Path) -> Path:
    """An untrained small SEMI checkpoint (what it scores does not matter here, only that the
    model answers)."""
    import torch

    from trainer import checkpoint
    from trainer.configs import BlockConfig, TrainConfig, paper
    from trainer.registry import build

    torch.manual_seed(0)
    cfg = replace(paper("semi"), block=BlockConfig(dim=DIM, heads=4, ffn=DIM),
                  train=TrainConfig(batch_size=64, epochs=1, patience=1, seq_len=20))
    return checkpoint.save(directory, build(cfg).eval(), cfg)


def private_triton(workdir: Path) -> EmbeddedStack:
    """A tritonserver of the scenario's own over a copy of triton_models/ without versions."""
    repo_dir = workdir / f"triton-models-{time.monotonic_ns()}"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json"))
    return EmbeddedStack(["triton"], model_repository=repo_dir)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    from benchmarks.faults import env_for

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
                         down_s: float = 5.0) -> object:
    """tritonserver stopped (SIGTERM) under recommendation load, started again after
    ``down_s`` and its serving version reloaded; ``n`` = seconds of load after recovery."""
    from benchmarks.faults import Row, signal_worker
    from tests.kafka_utils import committed, consume_all
    from tests.serving_utils import Recommendations, put_catalog
    from trainer.model_repo import ModelRepository
    from trainer.toy import toy_world

    world = toy_world(users=30, videos=60, products=40, dim=DIM, events_per_user=2, seed=5)
    await put_catalog(settings.redis_url, world)
    users = [f"user-{i:03d}" for i in range(40)]
    products = [it["item_id"] for it in world.items if it["domain"] == "product"]
    row = Row("tritonserver stopped (SIGTERM) and restarted under recommendation load",
              f"{rate:g} requests/s + {rate:g} triggering clicks/s over {len(users)} users")
    triton = private_triton(workdir)
    triton.start()
    try:
        url = triton.addresses.triton_grpc
        assert url is not None
        settings = replace(settings, triton_grpc=url)
        repo = ModelRepository(triton.model_repository, url)
        repo.promote(repo.export(toy_ranker(workdir / f"ranker-{time.monotonic_ns()}")))
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
        group = await committed(settings, settings.consumer_group,
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
    finally:
        triton.stop()
        shutil.rmtree(triton.model_repository, ignore_errors=True)
    return row


def _answered(seen: list[Recommendation], user: str, event_id: str) -> bool:
    return any(r.user_id == user and r.event_id == event_id for r in seen)


async def _drain(recs, seconds: float) -> None:
    """Keep reading the recommendations topic for ``seconds``."""
    end = time.monotonic() + seconds
    with contextlib.suppress(AssertionError):
        await recs.wait(lambda s: time.monotonic() >= end, timeout=seconds + 5)
