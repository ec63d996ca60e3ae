"""The incremental trainer service against the real broker, redis-server and tritonserver:
rounds, gated promotion into Triton, the model-updates announcement, kill -9 and resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import tritonclient.grpc as grpcclient
from aiokafka import AIOKafkaConsumer

from semirec.core.contracts import Domain
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.model_updates import MODEL_UPDATE_KEY, ModelUpdate, parse_model_update
from semirec.core.samples import encode_sample
from semirec.core.stack import EmbeddedStack
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.online.gate import GateConfig
from semirec.trainer.online.learner import (
    BUFFERS,
    CURRENT,
    STATE,
    ItemTable,
    Learner,
    OnlineConfig,
    samples_from_events,
)
from semirec.trainer.online.service import OnlineTrainer
from semirec.trainer.registry.repository import FencedError, ModelRepository
from tests.conftest import settings_env
from tests.kafka_utils import committed, produce_raw
from tests.online_utils import drifting_world

D = 32
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A drifting world, its samples after the shift, and a checkpoint trained before it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    w = drifting_world(seed=5, dim=D, users=120)
    table = ItemTable(D)
    table.add([it["item_id"] for it in w.items], w.vectors)
    samples = samples_from_events(w.events)
    cfg = replace(paper("semi"), block=BlockConfig(dim=D, heads=4, ffn=D))
    torch.manual_seed(0)
    learner = Learner(build(cfg), cfg, OnlineConfig(passes=3, holdout_fraction=0.0))
    learner.add([s for s in samples if s.ts < w.shift_ts])
    learner.accept(learner.round(table))
    ckpt = checkpoint.save(tmp_path_factory.mktemp("pre") / "ckpt", learner.model, cfg)
    torch.set_num_threads(threads)
    return w, [s for s in samples if s.ts >= w.shift_ts], ckpt


async def put_vectors(settings, w) -> None:
    store = ItemStore.from_url(settings.redis_url)
    try:
        await store.put_many(ItemVector(it["item_id"], Domain(it["domain"]), v, "test")
                             for it, v in zip(w.items, w.vectors, strict=True))
    finally:
        await store.close()


async def produce_samples(settings, samples) -> dict[int, int]:
    return await produce_raw(settings, [(s.user_id.encode(), encode_sample(s)) for s in samples],
                             topic=settings.topics.samples)


async def read_updates(settings, count: int, timeout: float = 30.0) -> list[ModelUpdate]:
    consumer = AIOKafkaConsumer(settings.topics.model_updates, auto_offset_reset="earliest",
                                **settings.kafka_kwargs())
    await consumer.start()
    out: list[ModelUpdate] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                assert all(m.key == MODEL_UPDATE_KEY for m in messages)
                out += [parse_model_update(m.value) for m in messages]
    finally:
        await consumer.stop()
    return out


async def test_rounds_promote_into_triton_and_announce(settings, stack: EmbeddedStack, world,
                                                        redis_client, tmp_path: Path) -> None:
    w, post, ckpt = world
    await put_vectors(settings, w)
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    start = repo.export(ckpt)
    repo.promote(start)
    ends = await produce_samples(settings, post[:1200])
    online = OnlineConfig(round_samples=400, min_round_samples=50, round_seconds=1.0,
                          gate=GateConfig(min_samples=50, min_positives=5))
    trainer = OnlineTrainer(settings, online, state_dir=tmp_path / "state", repo=repo)
    await trainer.start()
    try:
        await asyncio.wait_for(trainer.run(max_rounds=2), 120)
    finally:
        await trainer.stop()
    promoted = [r.promotion for r in trainer.rounds if r.promotion is not None]
    assert len(trainer.rounds) == 2 and promoted, trainer.rounds  # post-shift: the old model lost
    first = next(r for r in trainer.rounds if r.promoted)
    assert first.candidate["auc"] > first.serving["auc"] and first.exported == promoted[0].version
    assert repo.aliases()["serving"] == promoted[-1].version > start
    client = grpcclient.InferenceServerClient(stack.addresses.triton_grpc)
    assert client.is_model_ready("ranker", str(promoted[-1].version))
    updates = await read_updates(settings, len(promoted))
    assert [u.version for u in updates] == [p.version for p in promoted]
    assert updates[0].model_version == f"ranker/{promoted[0].version}"
    assert updates[0].samples_trained == first.trained > 0
    assert updates[0].freshness == promoted[0].freshness and updates[0].freshness.p95_s > 0
    assert "auc" in updates[0].metrics and updates[0].previous_version == start
    # offsets are committed only with a durable checkpoint, and they are the checkpoint's
    state = json.loads((tmp_path / "state" / (tmp_path / "state" / CURRENT).read_text().strip()
                        / STATE).read_text())
    got = await committed(settings, settings.trainer_group, settings.topics.samples,
                          settings.event_partitions)
    assert got == {int(p): o for p, o in state["offsets"].items()}
    # a round takes at most round_samples: 400 new, then 80 held out + 320 new
    assert sum(got.values()) == 720 < sum(ends.values())
    assert state["serving_version"] == promoted[-1].version


async def test_two_trainers_one_active_takeover_and_a_stale_one_fenced(
        settings, stack: EmbeddedStack, world, redis_client, tmp_path: Path) -> None:
    """Two trainers on one topic, repository and state folder: only the lease holder trains and
    promotes, the other waits; when it stops, the other takes over from its checkpoint and the
    committed offsets. A holder paused past its lease is fenced: its round exports, promotes,
    checkpoints and commits nothing."""
    w, post, ckpt = world
    await put_vectors(settings, w)
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    repo.promote(repo.export(ckpt))
    await produce_samples(settings, post[:1600])
    settings = replace(settings, trainer_group=f"trainer-{settings.consumer_group}")
    online = OnlineConfig(round_samples=400, min_round_samples=50, round_seconds=1.0,
                          gate=GateConfig(min_samples=50, min_positives=5))

    def trainer() -> OnlineTrainer:
        return OnlineTrainer(settings, online, state_dir=tmp_path / "state", repo=repo,
                             lease_s=3.0)

    a, b, c = trainer(), trainer(), trainer()
    assert await a.start()
    waiting = asyncio.create_task(b.start())
    try:
        await asyncio.wait_for(a.run(max_rounds=2), 120)
        await asyncio.sleep(0.5)
        assert not waiting.done() and b.epoch is None and b.learner is None  # b waits
        promoted_a = [r.promotion.version for r in a.rounds if r.promotion is not None]
        assert promoted_a, a.rounds
        assert repo.aliases()["serving"] == promoted_a[-1]
        offsets_a = dict(a.offsets)
        epoch_a = a.epoch
        await a.stop()  # releases the lease: b takes over at once
        assert await asyncio.wait_for(waiting, 10)
        assert b.epoch == epoch_a + 1  # type: ignore[operator]
        assert b.offsets == offsets_a and b.serving_version == promoted_a[-1]
        assert b.learner is not None and b.learner.rounds == 2  # a's checkpoint, not a fresh start
        await asyncio.wait_for(b.run(max_rounds=1), 120)
        assert sum(b.offsets.values()) > sum(offsets_a.values())
        # b is paused past its lease (no renewal): c takes over, b is fenced
        assert b._heartbeat is not None
        b._heartbeat.cancel()
        assert await asyncio.wait_for(c.start(), 10)
        assert c.epoch == b.epoch + 1  # type: ignore[operator]
        assert c.offsets == b.offsets and c.learner is not None and c.learner.rounds == 3
        aliases = repo.aliases()
        versions = repo.versions()
        with pytest.raises(FencedError, match="another trainer took over"):
            await asyncio.wait_for(b.run(max_rounds=1), 120)
        assert repo.aliases() == aliases and repo.versions() == versions  # no export, no swap
        state = _state(tmp_path / "state")
        assert state is not None and state[0]["epoch"] == b.epoch  # b's last good checkpoint
        got = await committed(settings, settings.trainer_group, settings.topics.samples,
                              settings.event_partitions)
        assert got == {int(p): o for p, o in state[0]["offsets"].items()} == c.offsets
        await asyncio.wait_for(c.run(max_rounds=1), 120)  # c trains on
        state = _state(tmp_path / "state")
        assert state is not None and state[0]["epoch"] == c.epoch and state[0]["rounds"] == 4
        names = sorted(p.name for p in (tmp_path / "state").glob("ckpt-*"))
        assert names[-1].endswith(f"-e{c.epoch}"), names
    finally:
        waiting.cancel()
        for t in (a, b, c):
            await t.stop()


def _state(root: Path) -> tuple[dict, dict] | None:
    try:
        folder = root / (root / CURRENT).read_text().strip()
        return json.loads((folder / STATE).read_text()), json.loads((folder / BUFFERS).read_text())
    except (OSError, ValueError):
        return None


async def test_kill_9_of_the_active_trainer_the_waiting_one_loses_no_sample(
        settings, stack: EmbeddedStack, world, redis_client, tmp_path: Path) -> None:
    """Two real `semirec trainer run` on one topic, repository and state folder: one is active,
    the other waits. The active one is killed with SIGKILL after its first checkpoint; the
    waiting one takes over when the lease expires: every sample ends up trained or held exactly
    once, except at most one round's worth that the killed process had trained after its last
    checkpoint."""
    w, post, ckpt = world
    await put_vectors(settings, w)
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    repo.promote(repo.export(ckpt))
    samples = post[:2000]
    await produce_samples(settings, samples)
    env = {**settings_env(settings), "SEMIREC_MODEL_REPOSITORY": str(stack.model_repository),
           "SEMIREC_TRAINER_GROUP": f"trainer-{settings.consumer_group}",
           # the killed trainer's lease expires soon; long enough that a busy machine (two
           # trainers, Triton, the broker on 2 cores) cannot starve the active one's renewal
           "SEMIREC_TRAINER_LEASE_S": "10"}
    root = tmp_path / "state"
    argv = [sys.executable, "-m", "semirec", "trainer", "run", "--state", str(root),
            "--round-samples", "400", "--min-round-samples", "50", "--round-seconds", "1"]
    logs = [tmp_path / f"trainer-{i}.log" for i in range(2)]

    def spawn(log: Path) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))

    procs = [spawn(log) for log in logs]

    def tails() -> str:
        return "\n".join(log.read_text()[-3000:] for log in logs)

    async def wait_for(check, alive: list[subprocess.Popen], timeout: float = 180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in alive):
                raise AssertionError(tails())
            if (got := _state(root)) is not None and check(*got):
                return got
            await asyncio.sleep(0.1)
        raise AssertionError("timed out:\n" + tails())

    try:
        await wait_for(lambda state, _: state["rounds"] >= 1, procs)
        lease = repo.lease()
        assert lease is not None
        active = next(i for i, p in enumerate(procs) if f":{p.pid}:" in lease.holder)
        survivor = procs[1 - active]
        os.kill(procs[active].pid, signal.SIGKILL)
        procs[active].wait()
        killed_at = _state(root)
        assert killed_at is not None
        _, buffers = await wait_for(
            lambda state, _: sum(state["offsets"].values()) >= len(samples)
            and state["rounds"] > killed_at[0]["rounds"], [survivor])
        text = logs[1 - active].read_text()
        assert "another trainer is active" in text and \
            f"active trainer: lease epoch {lease.epoch + 1}" in text, text[-3000:]
        assert "active trainer" in logs[active].read_text()
        assert "another trainer is active" not in logs[active].read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    held = [s["event_id"] for s in buffers["replay"]] + [s["event_id"] for s in buffers["pending"]]
    assert set(held) == {s.event_id for s in samples}  # none lost
    twice = sum(n - 1 for n in Counter(held).values())
    assert twice <= 400, twice  # at most one round trained again


async def test_publish_records_a_rejection_and_the_history_is_bounded(tmp_path: Path) -> None:
    """The publish step alone (no Kafka, no Triton: a rejected round touches neither): a typed
    record with the gate's reasons; the trainer keeps only the newest ``history`` records."""
    from dataclasses import FrozenInstanceError

    from semirec.core.settings import Settings
    from semirec.trainer.online.gate import judge
    from semirec.trainer.online.learner import RoundResult

    trainer = OnlineTrainer(Settings(), state_dir=tmp_path / "state",
                            repo=ModelRepository(tmp_path / "models"), history=2)
    metrics = {"n": 10.0, "positives": 5.0, "auc": float("nan")}
    result = RoundResult(judge(metrics, metrics), None, None, [], [], 3, 0.1)  # type: ignore[arg-type]
    for _ in range(3):
        trainer.rounds.append(await trainer.publish(result, None))  # as round() does
    assert len(trainer.rounds) == 2
    record = trainer.rounds[-1]
    assert not record.promoted and record.exported is None and record.skipped_without_vector == 3
    assert record.reasons[0].startswith("too_few_samples") and record.candidate["auc"] is None
    with pytest.raises(FrozenInstanceError):
        record.trained = 1  # type: ignore[misc]


async def test_a_passed_candidate_whose_export_fails_is_rejected_and_the_trainer_goes_on(
        world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real int8 export whose copy misses its parity bound (the bound forced below zero here,
    as an AVX2-only CPU did with 8-bit weights): the round is rejected with ``export_failed``,
    the learner keeps its model, the checkpoint is still written, no version appears."""
    from semirec.core.settings import Settings
    from semirec.trainer.registry import precision

    w, after, ckpt = world
    model, cfg, _ = checkpoint.load(ckpt)
    learner = Learner(model, cfg, OnlineConfig(passes=1))
    learner.add(after[:200])
    repo = ModelRepository(tmp_path / "models", precision="int8")
    trainer = OnlineTrainer(Settings(), state_dir=tmp_path / "state", repo=repo)
    trainer.learner, trainer.table = learner, ItemTable(D)
    trainer.table.add([it["item_id"] for it in w.items], w.vectors)
    result = learner.round(trainer.table)
    result.verdict = replace(result.verdict, promote=True, reasons=())  # as if the gate passed
    monkeypatch.setattr(precision, "INT8_MAX_DIFF", -1.0)

    version = await trainer.persist(result)
    assert version is None and learner.model is model and repo.versions() == []
    assert not result.verdict.promote
    assert result.verdict.reasons[-1].startswith("export_failed int8 ranker: scores differ")
    assert (tmp_path / "state" / CURRENT).is_file() and learner.rounds == 1  # settled
    record = await trainer.publish(result, version)
    assert record.exported is None and record.reasons[-1].startswith("export_failed")


async def test_a_model_with_item_identity_and_recency_is_fine_tuned_and_served(
        settings, stack: EmbeddedStack, world, redis_client, tmp_path: Path) -> None:
    """``semi+sim+rec+id`` (what the demo can serve): the trainer counts items from the
    samples, fine-tunes, promotes into Triton, and the promoted version answers with the
    identity inputs."""
    import numpy as np

    from semirec.trainer.registry.export import example_batch

    w, post, _ = world
    cfg = replace(paper("semi+sim+rec+id"), block=BlockConfig(dim=D, heads=4, ffn=D),
                  id_buckets=4096)
    torch.manual_seed(0)
    ckpt = checkpoint.save(tmp_path / "pre", build(cfg), cfg)
    await put_vectors(settings, w)
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    start = repo.export(ckpt)
    repo.promote(start)
    await produce_samples(settings, post[:800])
    online = OnlineConfig(round_samples=400, min_round_samples=50, round_seconds=1.0,
                          gate=GateConfig(min_samples=50, min_positives=5))
    trainer = OnlineTrainer(settings, online, state_dir=tmp_path / "state", repo=repo)
    await trainer.start()
    try:
        await asyncio.wait_for(trainer.run(max_rounds=2), 180)
    finally:
        await trainer.stop()
    assert trainer.learner is not None and trainer.learner.counts.counts
    # every consumed sample counted once (two rounds: 400 new, then 80 held out + 320 new)
    assert sum(n for n, _ in trainer.learner.counts.counts.values()) == len(trainer.learner.seen) \
        == 720
    promoted = [r.promotion for r in trainer.rounds if r.promotion is not None]
    assert promoted, trainer.rounds  # an untrained start loses to any fine-tuned candidate
    client = grpcclient.InferenceServerClient(stack.addresses.triton_grpc)
    version = str(promoted[-1].version)
    names = {i.name for i in client.get_model_metadata("ranker", version).inputs}
    assert {"candidate_bucket", "candidate_watches", "candidate_completes"} <= names
    feeds = example_batch(1, D, 3, 3, 4, identity=True)
    feeds["candidate_bucket"] %= 4096
    inputs = []
    for name, value in feeds.items():
        dtype = {np.float32: "FP32", np.int64: "INT64", np.bool_: "BOOL"}[value.dtype.type]
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    scores = client.infer("ranker", inputs, model_version=version).as_numpy("score")
    assert scores.shape == (1, 4) and np.isfinite(scores).all()
