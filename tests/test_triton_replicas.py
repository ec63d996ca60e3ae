"""Two real tritonservers on one model repository (SEMIREC_TRITON_GRPC=a,b): promote and
rollback load both, a restarted one comes back on the `serving` alias, pruning asks both, and
the ranker spreads calls over both, survives one going away and shows version skew."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, EmbeddedStack
from semirec.serving import metrics
from semirec.serving.errors import RankerUnavailable
from semirec.serving.ranking import TritonRanker, TritonReplicas, triton_ranker
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, TrainConfig, paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.registry.export import example_batch
from semirec.trainer.registry.repository import MODEL, ModelRepository

D = 32


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small untrained SEMI rankers (different weights): exported as often as needed."""
    cfg = replace(paper("semi"), block=BlockConfig(dim=D, heads=4, ffn=D),
                  train=TrainConfig(batch_size=64, epochs=1, patience=1, seq_len=20))
    root = tmp_path_factory.mktemp("ckpt")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(checkpoint.save(root / f"semi{seed}", build(cfg).eval(), cfg))
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[EmbeddedStack], Path]]:
    """Two tritonservers (each on its own free ports) over one copy of triton_models/ without
    exported versions; each loads `ranker` from disk whenever it starts."""
    repo_dir = tmp_path_factory.mktemp("replicas") / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json"))
    with EmbeddedStack(["triton"], model_repository=repo_dir, triton_load=["ranker"]) as a, \
            EmbeddedStack(["triton"], model_repository=repo_dir, triton_load=["ranker"]) as b:
        assert a.addresses.triton_grpc != b.addresses.triton_grpc
        yield [a, b], repo_dir


def urls(stacks: list[EmbeddedStack]) -> list[str]:
    return [s.addresses.triton_grpc for s in stacks]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what}")
        time.sleep(0.1)


def served(url: str) -> str:
    """The version that answers a request naming none."""
    batch = example_batch(1, D, 2, 2, 3)
    inputs = []
    for name, value in batch.items():
        tensor = grpcclient.InferInput(name, list(value.shape),
                                       {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}
                                       [str(value.dtype)])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(url)
    return client.infer(MODEL, inputs, client_timeout=10).get_response().model_version


def answered(url: str) -> int:
    """Requests the server's ranker answered successfully (every version)."""
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(MODEL, as_json=True)
    return sum(int(m.get("inference_stats", {}).get("success", {}).get("count", 0))
               for m in stats["model_stats"])


def test_promote_and_rollback_converge_every_server_and_a_restart_comes_back_on_serving(
        servers, checkpoints) -> None:
    stacks, repo_dir = servers
    a, b = urls(stacks)
    repo = ModelRepository(repo_dir, f"{a},{b}")
    v1, v2 = repo.export(checkpoints[0]), repo.export(checkpoints[1])
    for version in (v1, v2):
        timings = repo.promote(version)
        assert timings["servers"] == 2 and timings["load_s"] > 0 and repo.unconverged == {}
        assert served(a) == served(b) == str(version)
        for url in (a, b):  # exactly that version is loaded (the old one unloads after the swap)
            wait_for(f"{url} holds only {version}", lambda u=url, v=version: repo.loaded(u) == {v})
    assert repo.rollback() == v1
    assert served(a) == served(b) == str(v1) and repo.aliases() == {"serving": v1, "previous": v2}
    assert f"specific: {{ versions: [ {v1} ] }}" in (repo_dir / MODEL / "config.pbtxt").read_text()
    # restarted, it loads the model from disk: the serving version, not the newest one
    stacks[1].pause("triton")
    stacks[1].resume("triton")
    assert served(b) == str(v1) and repo.loaded(b) == {v1}
    assert repo.ensure_serving() == v1 and repo.unconverged == {}


def test_a_server_down_during_a_promotion_is_reported_then_caught_up(
        servers, checkpoints) -> None:
    stacks, repo_dir = servers
    a, b = urls(stacks)
    repo = ModelRepository(repo_dir, f"{a},{b}")
    repo.promote(repo.export(checkpoints[0]))
    version = repo.export(checkpoints[1])
    stacks[1].pause("triton")
    try:
        env = {**os.environ, "SEMIREC_TRITON_GRPC": f"{a},{b}",
               "SEMIREC_MODEL_REPOSITORY": str(repo_dir)}
        out = subprocess.run([sys.executable, "-m", "semirec", "model", "promote", str(version),
                              "--json"], capture_output=True, text=True, env=env, timeout=300,
                             check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["serving"] == version and report["servers"] == 1
        assert list(report["failed"]) == [b] and "did not load" in report["failed"][b]
        assert served(a) == str(version)
    finally:
        stacks[1].resume("triton")
    assert served(b) == str(version)  # the alias written to config.pbtxt: no reload needed
    # a server that serves another version (loaded by hand) is caught up by ensure_serving
    grpcclient.InferenceServerClient(b).load_model(MODEL, config=repo.triton_config(version - 1))
    assert served(b) == str(version - 1)
    assert repo.ensure_serving() == version and served(b) == str(version)


def test_no_version_is_pruned_while_a_server_holds_it(servers, checkpoints) -> None:
    stacks, repo_dir = servers
    a, b = urls(stacks)
    roomy = ModelRepository(repo_dir, f"{a},{b}", keep=100)
    held = roomy.export(checkpoints[0])
    roomy.promote(roomy.export(checkpoints[1]))
    serving = roomy.export(checkpoints[0])
    roomy.promote(serving)  # serving, previous; `held` has no alias
    grpcclient.InferenceServerClient(b).load_model(MODEL, config=roomy.triton_config(held))
    wait_for("b holds only the unaliased version", lambda: roomy.loaded(b) == {held})
    wait_for("a holds only the serving version", lambda: roomy.loaded(a) == {serving})
    tight = ModelRepository(repo_dir, f"{a},{b}", keep=2)
    tight.export(checkpoints[1])  # would prune `held` and anything older: b still has it
    assert (repo_dir / MODEL / str(held)).is_dir()
    assert not any((repo_dir / MODEL / str(v)).exists() for v in range(1, held))  # none held
    assert tight.ensure_serving() == serving
    wait_for("b holds only the serving version", lambda: tight.loaded(b) == {serving})
    tight.export(checkpoints[1])
    assert not (repo_dir / MODEL / str(held)).exists()
    # a listed server that does not answer may hold anything: nothing is pruned meanwhile
    kept = tight.versions()
    stacks[1].pause("triton")
    try:
        tight.export(checkpoints[0])
        assert set(kept) < set(tight.versions())
    finally:
        stacks[1].resume("triton")
    tight.export(checkpoints[0])
    aliases = tight.aliases()
    assert set(tight.versions()) == {*tight.versions()[-2:], aliases["serving"], aliases["previous"]}


async def test_a_shared_memory_region_in_use_outlives_a_concurrent_drop(
        servers, checkpoints) -> None:
    """One call fails (RankerUnavailable) and drops the regions while another call still uses
    its region: that call writes on, and its region is destroyed when given back, not reused
    (found by benchmarks/scaleout.py: the recommendation worker crashed with a TypeError
    writing into a destroyed region)."""
    stacks, repo_dir = servers
    repo = ModelRepository(repo_dir, ",".join(urls(stacks)))
    repo.promote(repo.export(checkpoints[0]))
    ranker = TritonRanker(urls(stacks)[0], timeout_s=5, shared_memory=True)
    tensors = example_batch(1, D, 2, 2, 3)
    try:
        want, _ = await ranker.rank(tensors)
        held = await ranker._region(sum(v.nbytes for v in tensors.values()))  # a call's region
        await ranker._drop_regions()  # another call failed meanwhile
        held.write(tensors["video"], 0)  # the first call goes on writing its inputs
        await ranker._give_back(held)
        assert ranker._regions == [] and ranker._all_regions == []
        got, _ = await ranker.rank(tensors)  # a new region
        assert np.array_equal(got, want) and len(ranker._all_regions) == 1
    finally:
        await ranker.close()
    assert not ranker._all_regions


async def test_the_ranker_spreads_calls_survives_a_server_going_away_and_shows_skew(
        servers, checkpoints, caplog: pytest.LogCaptureFixture) -> None:
    stacks, repo_dir = servers
    a, b = urls(stacks)
    repo = ModelRepository(repo_dir, f"{a},{b}")
    serving = repo.export(checkpoints[0])
    repo.promote(serving)
    assert isinstance(triton_ranker(a, timeout_s=1), TritonRanker)  # one server: as ever
    assert isinstance(triton_ranker(f"{a},{b}", timeout_s=1), TritonReplicas)
    ranker = TritonReplicas([a, b], timeout_s=5, shared_memory=True, cooldown_s=0.5)
    tensors = example_batch(2, D, 4, 3, 10)
    try:
        before = [answered(a), answered(b)]
        for _ in range(6):
            scores, version = await ranker.rank(tensors)
            assert scores.shape == (2, 10) and version == f"ranker/{serving}"
        assert [answered(a) - before[0], answered(b) - before[1]] == [3, 3]  # round-robin
        assert await ranker.problem() is None

        stacks[1].pause("triton")  # b goes away: every call is still answered, by a
        retries = metrics.TRITON_RETRIES.labels(b)._value.get()
        before_a = answered(a)
        for _ in range(8):
            assert (await ranker.rank(tensors))[1] == f"ranker/{serving}"
        assert answered(a) - before_a == 8
        assert metrics.TRITON_RETRIES.labels(b)._value.get() - retries == 2  # then skipped
        assert ranker.breakers[1].opened >= 1 and await ranker.problem() is None

        stacks[1].resume("triton")  # back on the serving version; probed after the cooldown
        before_b = answered(b)
        deadline = time.monotonic() + 30
        while answered(b) == before_b and time.monotonic() < deadline:
            await ranker.rank(tensors)
            await asyncio.sleep(0.1)
        assert answered(b) > before_b and ranker.versions == {a: f"ranker/{serving}",
                                                              b: f"ranker/{serving}"}

        # b on another version: both answer, the skew is visible
        other = repo.export(checkpoints[1])
        grpcclient.InferenceServerClient(b).load_model(MODEL, config=repo.triton_config(other))
        with caplog.at_level(logging.WARNING, logger="semirec.serving.ranking"):
            for _ in range(4):
                await ranker.rank(tensors)
        assert ranker.versions == {a: f"ranker/{serving}", b: f"ranker/{other}"}
        assert metrics.TRITON_VERSION_SKEW._value.get() == 1
        assert metrics.TRITON_SERVER_VERSION.labels(b)._value.get() == other
        assert any("different versions" in r.getMessage() for r in caplog.records)
        repo.ensure_serving()
        for _ in range(4):
            await ranker.rank(tensors)
        assert metrics.TRITON_VERSION_SKEW._value.get() == 0 and ranker.skew() > 0

        # both away (the last test: they stay down): the caller (the recommender) falls back,
        # and a promotion fails without moving the alias
        for s in stacks:
            s.pause("triton")
        with pytest.raises(RankerUnavailable):
            await ranker.rank(tensors)
        assert await ranker.problem() is not None
        with pytest.raises(Exception, match="did not load"):
            repo.promote(other)
        assert repo.aliases()["serving"] == serving and set(repo.unconverged) == {a, b}
    finally:
        await ranker.close()
    assert np.isfinite(scores).all()

