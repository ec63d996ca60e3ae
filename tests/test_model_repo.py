"""The ranker's Triton model repository: batched graph, versions, aliases, promote/rollback,
and a hot swap under load, against the session's real tritonserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from semirec.core.settings import Settings
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, EmbeddedStack
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import BlockConfig, TrainConfig, paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.evaluate import EvalProtocol, prepare, train_model
from semirec.trainer.offline.toy import toy_world
from semirec.trainer.registry.export import (
    INPUTS,
    example_batch,
    export_batched_onnx,
    onnx_session,
    torch_batch_scores,
    torch_scores,
)
from semirec.trainer.registry.precision import has_vnni
from semirec.trainer.registry.repository import (
    ENGINE_VARIANT,
    MODEL,
    FencedError,
    Lease,
    ModelRepository,
    ModelRepositoryError,
    PromotionError,
    file_sha256,
    render,
)
from tests.conftest import settings_env

D = 32
TYPES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(name: str):
    return replace(paper(name), block=BlockConfig(dim=D, heads=4, ffn=D),
                   train=TrainConfig(batch_size=64, epochs=2, patience=1, seq_len=20))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small trained SEMI checkpoints (different seeds) and an untrained video-only one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    world = toy_world(users=60, events_per_user=30, dim=D, seed=3)
    data = prepare("toy", world.items, world.events, world.vectors, None,
                   EvalProtocol(hr3_negatives=5, hr10_negatives=5, max_rank_cases=20))
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for seed in (0, 1):
        model, info = train_model("semi", data, tiny("semi"), seed=seed)
        out[f"semi{seed}"] = checkpoint.save(root / f"semi{seed}", model, tiny("semi"),
                                             {"metrics": {"auc": info["val_auc"]}})
    torch.manual_seed(0)
    out["video"] = checkpoint.save(root / "video", build(tiny("semi_video")).eval(),
                                   tiny("semi_video"))
    torch.set_num_threads(threads)
    return out


def infer_inputs(batch: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name in INPUTS:
        tensor = grpcclient.InferInput(name, list(batch[name].shape), TYPES[str(batch[name].dtype)])
        tensor.set_data_from_numpy(batch[name])
        inputs.append(tensor)
    return inputs


# -- without services ---------------------------------------------------------------------------


def test_committed_configs_are_the_rendered_ones() -> None:
    model = DEFAULT_MODEL_REPOSITORY / MODEL
    assert (model / "config.pbtxt").read_text() == render(128, "python")
    assert (model / "configs" / f"{ENGINE_VARIANT}.pbtxt").read_text() == render(128, ENGINE_VARIANT)
    for variant in ("python", ENGINE_VARIANT):
        cfg = text_format.Parse(render(128, variant), model_config_pb2.ModelConfig())
        assert cfg.name == MODEL and cfg.max_batch_size > 0
        assert [t.name for t in cfg.input] == list(INPUTS) and cfg.output[0].name == "score"
        dims = {t.name: list(t.dims) for t in (*cfg.input, *cfg.output)}
        assert dims["video"] == [-1, 128] and dims["video_mask"] == [-1] and dims["score"] == [-1]
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0


def test_exported_versions_are_ignored_by_git_and_configs_are_not(repo_root: Path) -> None:
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=repo_root,
                              check=False).returncode == 0

    for path in ("triton_models/ranker/1/model.onnx", "triton_models/ranker/12/meta.json",
                 "triton_models/ranker/aliases.json", "triton_models/ranker/.tmp-ab12/model.onnx"):
        assert ignored(path), path
    for path in ("triton_models/ranker/config.pbtxt", "triton_models/ranker/configs/tensorrt.pbtxt"):
        assert not ignored(path), path


@pytest.mark.parametrize("name", ["semi", "semi_video"])
def test_batched_graph_declares_every_input_and_matches_torch(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = build(tiny(name)).eval()
    session = onnx_session(export_batched_onnx(model, tmp_path / "m.onnx", D))
    assert [i.name for i in session.get_inputs()] == list(INPUTS)  # video-only still declares all
    for kw in ({}, {"users": 1, "candidates": 1}, {"users": 5, "video": 1, "product": 3}):
        batch = example_batch(dim=D, **kw)
        ref = torch_batch_scores(model, batch)
        assert np.abs(session.run(["score"], batch)[0] - ref).max() < 1e-5, kw
        per_user = np.stack([torch_scores(model, {k: v[i] for k, v in batch.items()})
                             for i in range(len(ref))])
        np.testing.assert_allclose(per_user, ref, atol=1e-6)  # same scores as one user at a time


def test_export_writes_numbered_immutable_versions_and_prunes(tmp_path: Path, checkpoints) -> None:
    repo = ModelRepository(tmp_path / "models", keep=2)
    assert repo.versions() == [] and repo.list() == [] and repo.aliases() == {}
    first = repo.export(checkpoints["semi0"])
    second = repo.export(checkpoints["video"], metrics={"auc": 0.61})
    assert (first, second) == (1, 2)
    info = repo.info(first)
    assert info.sha256 == file_sha256(checkpoints["semi0"] / "model.safetensors")
    assert info.model == "semi" and info.dim == D and info.metrics["auc"] > 0.5
    assert repo.info(second).metrics == {"auc": 0.61} and repo.info(second).model == "semi_video"
    files = {p.name for p in (repo.dir / "1").iterdir()}
    assert {"model.onnx", "model.py", "meta.json", "checkpoint", "trtexec_args.txt"} <= files
    assert [p.name for p in repo.dir.iterdir() if p.name.startswith(".tmp")] == []
    _, cfg, _ = checkpoint.load(repo.checkpoint_dir(first))
    assert cfg == tiny("semi")
    third = repo.export(checkpoints["semi1"])
    assert repo.versions() == [2, 3]  # keep=2: version 1 pruned, never reused
    repo.dir.joinpath("3").rename(repo.dir / "3-gone")  # even when the newest disappears
    assert repo.export(checkpoints["semi1"]) == third + 1
    override = json.loads(repo.triton_config(third + 1))
    assert override["version_policy"] == {"specific": {"versions": [str(third + 1)]}}
    assert override["input"][0]["dims"] == ["-1", str(D)]
    with pytest.raises(ModelRepositoryError):
        repo.info(first)
    with pytest.raises(FileNotFoundError):
        repo.export(tmp_path)  # not a checkpoint


def test_promote_needs_a_triton_address(tmp_path: Path, checkpoints) -> None:
    repo = ModelRepository(tmp_path / "models")
    version = repo.export(checkpoints["video"])
    with pytest.raises(ModelRepositoryError, match="Triton"):
        repo.promote(version)
    with pytest.raises(ModelRepositoryError, match="previous"):
        repo.rollback()
    assert repo.aliases() == {}


def test_the_trainer_lease_has_one_holder_and_fences_a_stale_one(tmp_path: Path,
                                                                  checkpoints) -> None:
    """One holder at a time; an expired lease is taken over with the next epoch; the stale
    holder's export, promotion, checkpoint and renewal are refused (before Triton is asked)."""
    repo = ModelRepository(tmp_path / "models")
    assert repo.lease() is None
    first = repo.acquire_lease("a", ttl_s=0.5)
    assert first == 1
    held = repo.acquire_lease("b", ttl_s=30)
    assert isinstance(held, Lease) and held.holder == "a" and held.epoch == 1 and held.held()
    repo.renew_lease(first, ttl_s=0.5)
    time.sleep(0.6)  # "a" paused past its lease
    second = repo.acquire_lease("b", ttl_s=30)
    assert second == 2
    with pytest.raises(FencedError, match=r"epoch 1 is stale .*epoch 2, held by b"):
        repo.export(checkpoints["video"], fence=first)
    assert repo.versions() == []
    repo.renew_lease(second, ttl_s=1.0)
    before = repo.lease()
    version = repo.export(checkpoints["video"], fence=second)
    after = repo.lease()  # a fenced operation renews the lease when it ends
    assert before is not None and after is not None and after.expires_at > before.expires_at
    with pytest.raises(FencedError, match="another trainer took over"):
        repo.promote(version, fence=first)  # refused before Triton (there is none here)
    with pytest.raises(FencedError):
        repo.renew_lease(first, ttl_s=30)
    with pytest.raises(FencedError), repo.fenced(first):
        pass
    with repo.fenced(second):  # the active trainer's checkpoint is written under this
        pass
    repo.release_lease(first)  # a stale release changes nothing
    assert repo.lease() is not None and repo.lease().holder == "b"
    repo.release_lease(second)
    assert repo.acquire_lease("c", ttl_s=30) == 3  # released: taken at once
    assert json.loads((repo.dir / "aliases.json").read_text())["last_version"] == version


def test_concurrent_exports_get_distinct_version_numbers(tmp_path: Path, checkpoints) -> None:
    """Three `semirec model export` processes at once on one repository: 1, 2, 3."""
    env = {**os.environ, "SEMIREC_MODEL_REPOSITORY": str(tmp_path / "models")}
    procs = [subprocess.Popen([sys.executable, "-m", "semirec", "model", "export", "--json",
                               str(checkpoints[name])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for name in ("semi0", "semi1", "video")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    versions = sorted(json.loads(out.strip().splitlines()[-1])["version"] for out, _ in outs)
    assert versions == [1, 2, 3]
    repo = ModelRepository(tmp_path / "models")
    assert repo.versions() == [1, 2, 3]
    assert {repo.info(v).sha256 for v in versions} == {
        file_sha256(checkpoints[n] / "model.safetensors") for n in ("semi0", "semi1", "video")}


# -- against the session's tritonserver ---------------------------------------------------------


@pytest.fixture(scope="module")
def repo(stack: EmbeddedStack) -> ModelRepository:
    return ModelRepository(stack.model_repository, stack.addresses.triton_grpc)


def test_triton_scores_equal_the_in_process_model(repo: ModelRepository, checkpoints) -> None:
    version = repo.export(checkpoints["semi0"])
    timings = repo.promote(version)
    assert repo.aliases()["serving"] == version and timings["load_s"] > 0
    model, _, _ = checkpoint.load(checkpoints["semi0"])
    client = grpcclient.InferenceServerClient(repo.triton_grpc)
    batch = example_batch(3, D, 50, 50, 500, seed=11)
    result = client.infer(MODEL, infer_inputs(batch))
    assert result.get_response().model_version == str(version)
    np.testing.assert_allclose(result.as_numpy("score"), torch_batch_scores(model, batch), atol=1e-5)
    # concurrent single-user requests: the dynamic batcher may merge them into one execution,
    # each still gets its own user's scores
    requests = [example_batch(1, D, 50, 50, 500, seed=s) for s in range(12)]
    answers: dict[int, np.ndarray] = {}

    def send(i: int) -> None:
        c = grpcclient.InferenceServerClient(repo.triton_grpc)
        answers[i] = c.infer(MODEL, infer_inputs(requests[i])).as_numpy("score")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, req in enumerate(requests):
        np.testing.assert_allclose(answers[i], torch_batch_scores(model, req), atol=1e-5)


def test_triton_serves_the_cascade_as_exported(stack: EmbeddedStack, tmp_path: Path) -> None:
    from semirec.trainer.registry.export import cascade_diff
    from tests.test_ranker_cascade import K, batch, served

    model, cfg = served("semi+sim")
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc, deep_top=K)
    version = repo.export(checkpoint.save(tmp_path / "wide", model, cfg))
    assert repo.info(version).deep_top == K
    repo.promote(version)
    feeds = batch(model, 350, padding=150)  # as serving pads to SEMIREC_RECALL_CANDIDATES
    result = grpcclient.InferenceServerClient(repo.triton_grpc).infer(MODEL, infer_inputs(feeds))
    assert result.get_response().model_version == str(version)
    got, full = result.as_numpy("score"), torch_batch_scores(model, feeds)
    # user 0 has no history: a model without item identity has no wide order for it (all tied),
    # so which K get the whole model is the graph's tie-break; cascade_diff checks the K it chose
    assert cascade_diff(got[:, :350], full[:, :350], K) < 1e-5
    np.testing.assert_allclose(got[1:], torch_batch_scores(model, feeds, deep_top=K)[1:], atol=1e-5)
    for u in (1, 2):  # this model's top 10 lies within its wide part's best K
        np.testing.assert_array_equal(np.argsort(-got[u, :350], kind="stable")[:10],
                                      np.argsort(-full[u, :350], kind="stable")[:10])


def test_promote_rollback_and_a_failed_promotion(repo: ModelRepository, checkpoints) -> None:
    a, b = repo.export(checkpoints["semi0"]), repo.export(checkpoints["semi1"])
    client = grpcclient.InferenceServerClient(repo.triton_grpc)
    request = infer_inputs(example_batch(1, D, 5, 5, 10))

    def served() -> str:
        return client.infer(MODEL, request).get_response().model_version

    repo.promote(a)
    repo.promote(b)
    assert repo.aliases() == {"serving": b, "previous": a} and served() == str(b)
    assert not client.is_model_ready(MODEL, str(a))  # exactly the serving version is loaded
    assert repo.rollback() == a
    assert repo.aliases() == {"serving": a, "previous": b} and served() == str(a)
    broken = repo.export(checkpoints["semi1"])
    (repo.dir / str(broken) / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(PromotionError):
        repo.promote(broken)
    assert repo.aliases() == {"serving": a, "previous": b} and served() == str(a)
    assert [r.version for r in repo.list() if "serving" in r.aliases] == [a]
    client.unload_model(MODEL)  # as after a tritonserver restart in explicit mode
    deadline = time.monotonic() + 30
    while client.is_model_ready(MODEL) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert repo.ensure_serving() == a and served() == str(a)
    assert repo.ensure_serving() == a  # already serving: nothing to do


def test_hot_swap_under_load_fails_no_request(repo: ModelRepository, checkpoints) -> None:
    """Clients keep sending while two promotions swap versions: no request fails, every answer
    comes from the old or the new version, and the old one answers until the new one does."""
    old, new = repo.export(checkpoints["semi0"]), repo.export(checkpoints["semi1"])
    repo.promote(old)
    stop = threading.Event()
    log: list[tuple[float, float, str]] = []  # (sent, latency, version or error)
    batch = infer_inputs(example_batch(1, D, 50, 50, 500, seed=3))

    def client_loop() -> None:
        c = grpcclient.InferenceServerClient(repo.triton_grpc)
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                version = c.infer(MODEL, batch, client_timeout=10.0).get_response().model_version
            except Exception as exc:  # counted as a failed request
                version = f"error: {exc}"
            log.append((sent, time.perf_counter() - sent, version))

    threads = [threading.Thread(target=client_loop) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    swap_start = time.perf_counter()
    t1 = repo.promote(new)
    t2 = repo.rollback()
    swap_end = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    errors = [v for _, _, v in log if v.startswith("error")]
    assert errors == [] and len(log) > 50
    assert {v for _, _, v in log} == {str(old), str(new)} and t2 == old
    steady = [lat for s, lat, _ in log if s < swap_start]
    during = [lat for s, lat, _ in log if swap_start <= s <= swap_end]
    print(f"\nswap: load {t1['load_s']:.2f}s, {len(log)} requests, p99 steady "
          f"{np.percentile(steady, 99) * 1e3:.1f} ms, during {np.percentile(during, 99) * 1e3:.1f} ms")


def test_model_cli_export_promote_list_rollback(stack: EmbeddedStack, settings, checkpoints) -> None:
    env = {**settings_env(settings), "SEMIREC_MODEL_REPOSITORY": str(stack.model_repository)}

    def run(*args: str) -> dict | list:
        out = subprocess.run([sys.executable, "-m", "semirec", "model", *args, "--json"],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    before = repo.export(checkpoints["semi0"])
    repo.promote(before)
    exported = run("export", str(checkpoints["video"]), "--promote")
    assert exported["model"] == "semi_video" and exported["promote"]["load_s"] > 0
    assert exported["deep_top"] == 0  # the default cascade (150) needs a wide part: none here
    assert exported["sha256"] == file_sha256(checkpoints["video"] / "model.safetensors")
    rows = run("list")
    assert rows[0]["version"] == exported["version"] and rows[0]["aliases"] == ["serving"]
    back = run("rollback")
    assert back["serving"] == before and back["previous"] == exported["version"]
    bad = subprocess.run([sys.executable, "-m", "semirec", "model", "promote", "999999"],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def test_tensorrt_variant_builds_the_plan_before_the_version_appears(
        tmp_path: Path, checkpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our export logic around trtexec (a stand-in script here: no TensorRT on CPU machines)."""
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) '
                    'echo "$@" > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("TRTEXEC", str(fake))
    repo = ModelRepository(tmp_path / "models", variant=ENGINE_VARIANT)
    version = repo.export(checkpoints["video"])
    plan = (repo.dir / str(version) / "model.plan").read_text()
    assert "--maxShapes=video:64x255x32" in plan and "/model.onnx" in plan
    assert json.loads(repo.triton_config(version))["platform"] == "tensorrt_plan"
    monkeypatch.setenv("TRTEXEC", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ModelRepositoryError, match="trtexec"):
        repo.export(checkpoints["video"])
    assert repo.versions() == [version]


def test_a_version_names_its_model_with_its_additions() -> None:
    """`semirec model list` shows what was trained (`semi_ccl+sim+id`), not the bare network:
    the name is rebuilt from the config a version stores."""
    from semirec.trainer.nets.configs import ModelConfig, paper

    for name in ("semi", "semi_ccl+sim", "semi_ccl+sim+id", "cross_bst+id"):
        assert ModelConfig.from_dict(paper(name).to_dict()).full_name == name


# -- reduced precision (SEMIREC_RANKER_PRECISION=int8) ------------------------------------------

INT8_BOUND = 0.02  # max |P_int8 - P_fp32| on a trained small model (semirec.trainer.registry.precision)


def _top_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(np.argsort(-x)[:k]) & set(np.argsort(-y)[:k])) / k
                          for x, y in zip(a, b, strict=True)]))


def test_int8_copy_loads_and_scores_close_to_fp32(tmp_path: Path, checkpoints) -> None:
    import onnx

    from semirec.serving.ranking import OnnxRanker
    from semirec.trainer.registry.precision import INT8_ONNX, model_for

    repo = ModelRepository(tmp_path / "models", precision="int8")
    version = repo.export(checkpoints["semi0"])
    folder = repo.dir / str(version)
    meta = json.loads((folder / "meta.json").read_text())
    assert (folder / INT8_ONNX).is_file() and 0 < meta["int8_max_abs_diff"] <= INT8_BOUND
    ops = {n.op_type for n in onnx.load(folder / INT8_ONNX).graph.node}
    assert "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops  # really quantized
    assert 'string_value: "int8"' in render(D, "python", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        render(D, "python", precision="fp8")

    model, _, _ = checkpoint.load(checkpoints["semi0"])
    fp32 = OnnxRanker(folder / "model.onnx")
    int8 = OnnxRanker(model_for(folder / "model.onnx", "int8"))
    batch = example_batch(8, D, 20, 20, 200, seed=5)
    ref, got = torch_batch_scores(model, batch), int8.rank_sync(batch)
    np.testing.assert_allclose(fp32.rank_sync(batch), ref, atol=1e-5)
    diff = np.abs(got - ref)
    assert 0 < diff.max() <= INT8_BOUND, diff.max()  # another graph, close to fp32
    assert _top_overlap(got, ref) >= 0.8
    # an older version without the copy: the first user makes it (atomically), fp32 untouched
    (folder / INT8_ONNX).unlink()
    again = OnnxRanker(model_for(folder / "model.onnx", "int8")).rank_sync(batch)
    assert (folder / INT8_ONNX).is_file() and np.abs(again - ref).max() <= INT8_BOUND


def test_no_attention_score_of_the_served_graph_is_far_below_its_row(tmp_path: Path, checkpoints) -> None:
    """Every Softmax of the served graph, run by onnxruntime on users with padding, entries
    beyond the window and an empty domain, gets scores within 87 of their row's max: further
    below, e^x is under the smallest normal float and onnxruntime's exponential goes through
    denormals (6x slower on a Xeon). No per-candidate floor does it: padded keys are copies of a
    real one biased by -SPREAD (semirec.trainer.nets.layers.copy_into_padding), and the bias
    rides in the scores' MatMul (AttentionBlock._folded_scores)."""
    import onnx
    import onnxruntime as ort

    repo = ModelRepository(tmp_path / "models")
    graph = onnx.load(repo.dir / str(repo.export(checkpoints["semi0"])) / "model.onnx")
    made_by = {out: node.op_type for node in graph.graph.node for out in node.output}
    softmaxes = [node for node in graph.graph.node if node.op_type == "Softmax"]
    assert len(softmaxes) >= 5  # video, product, inter-domain, target attention x 2
    # no floor and no mask Add per candidate: the scores come straight from a MatMul
    assert all(made_by[node.input[0]] == "MatMul" for node in softmaxes)
    graph.graph.output.extend(onnx.ValueInfoProto(name=node.input[0]) for node in softmaxes)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    batch = example_batch(4, D, 50, 50, 200, seed=5)
    score, *scores = session.run(None, batch)
    model, _, _ = checkpoint.load(checkpoints["semi0"])
    np.testing.assert_allclose(score, torch_batch_scores(model, batch), atol=1e-5)
    lowest = np.log(np.finfo(np.float32).tiny)  # -87.3
    for node, x in zip(softmaxes, scores, strict=True):
        assert (x - x.max(-1, keepdims=True)).min() > lowest, node.name


def test_ranker_sessions_leave_the_int8_layer_norms_unfused(tmp_path: Path, checkpoints) -> None:
    """Every ranker session (Triton's stub, export, benchmarks) skips onnxruntime's
    SkipLayerNormalization fusion, which made the int8 graph slower (ranker_sessions.DISABLED_OPTIMIZERS)."""
    import onnx
    import onnxruntime as ort

    from semirec.core.ranker_sessions import session
    from semirec.trainer.registry.precision import INT8_ONNX

    repo = ModelRepository(tmp_path / "models", precision="int8")
    int8 = repo.dir / str(repo.export(checkpoints["semi0"])) / INT8_ONNX

    def ops(path: Path) -> set[str]:
        return {n.op_type for n in onnx.load(path).graph.node}

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "default.onnx")
    ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in ops(tmp_path / "default.onnx")  # what onnxruntime does alone
    session(int8, optimized_to=tmp_path / "ours.onnx")
    assert "SkipLayerNormalization" not in ops(tmp_path / "ours.onnx")
    assert "LayerNormalization" in ops(tmp_path / "ours.onnx")


def test_triton_serves_the_int8_copy_when_asked(stack: EmbeddedStack, checkpoints) -> None:
    repo = ModelRepository(stack.model_repository, stack.addresses.triton_grpc, precision="int8")
    version = repo.export(checkpoints["semi1"])
    assert json.loads(repo.triton_config(version))["parameters"]["precision"]["string_value"] == "int8"
    repo.promote(version)
    model, _, _ = checkpoint.load(checkpoints["semi1"])
    batch = example_batch(3, D, 50, 50, 500, seed=11)
    client = grpcclient.InferenceServerClient(repo.triton_grpc)
    scores = client.infer(MODEL, infer_inputs(batch)).as_numpy("score")
    diff = np.abs(scores - torch_batch_scores(model, batch))
    assert 0 < diff.max() <= INT8_BOUND, diff.max()
    fp32 = ModelRepository(stack.model_repository, stack.addresses.triton_grpc)
    fp32.promote(version)  # the same version back in fp32: the exported graph's scores
    np.testing.assert_allclose(client.infer(MODEL, infer_inputs(batch)).as_numpy("score"),
                               torch_batch_scores(model, batch), atol=1e-5)
    # auto (the default): the server picks by its own CPU, int8 only where it has VNNI
    auto = ModelRepository(stack.model_repository, stack.addresses.triton_grpc, precision="auto")
    auto.promote(version)
    got = client.infer(MODEL, infer_inputs(batch)).as_numpy("score")
    if has_vnni():
        np.testing.assert_allclose(got, scores, atol=1e-6)  # the int8 copy's, as above
    else:
        np.testing.assert_allclose(got, torch_batch_scores(model, batch), atol=1e-5)


def test_auto_precision_is_int8_only_on_a_cpu_with_vnni(tmp_path: Path, checkpoints,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from semirec.trainer.registry import precision
    from semirec.trainer.registry.precision import INT8_ONNX, model_for, resolve

    assert precision.DEFAULT_PRECISION == "auto" and Settings().ranker_precision == "auto"
    for vnni, expected in ((True, "int8"), (False, "fp32")):
        monkeypatch.setattr(precision, "has_vnni", lambda vnni=vnni: vnni)
        assert resolve("auto") == expected
        assert resolve("fp32") == "fp32" and resolve("int8") == "int8"  # explicit wins
    with pytest.raises(ValueError, match="precision"):
        resolve("fp16")
    # an AVX2-only exporter makes no int8 copy; a VNNI server that loads the version makes it
    monkeypatch.setattr(precision, "has_vnni", lambda: False)
    repo = ModelRepository(tmp_path / "models", precision="auto")
    folder = repo.dir / str(repo.export(checkpoints["semi0"]))
    assert not (folder / INT8_ONNX).exists()
    assert "int8_max_abs_diff" not in json.loads((folder / "meta.json").read_text())
    assert model_for(folder / "model.onnx", "auto") == folder / "model.onnx"
    monkeypatch.setattr(precision, "has_vnni", lambda: True)
    assert model_for(folder / "model.onnx", "auto") == folder / INT8_ONNX
    assert (folder / INT8_ONNX).is_file()


def test_the_python_backend_shim_serves_the_checkout_named_by_pythonpath(tmp_path: Path) -> None:
    """Triton's stub ignores PYTHONPATH (as ``python -E`` does): the shim must honour it, or a
    checkout's tests and benchmarks silently serve the installed semirec."""
    from semirec.trainer.registry.repository import MODEL_PY

    fake = tmp_path / "checkout" / "semirec" / "encoders"
    fake.mkdir(parents=True)
    for d in (fake.parent, fake):
        (d / "__init__.py").write_text("")
    (fake / "triton_onnx.py").write_text("TritonPythonModel = 'from the checkout'\n")
    shim = tmp_path / "model.py"
    shim.write_text(MODEL_PY)
    probe = (f"exec(open({str(shim)!r}).read()); import semirec.encoders.triton_onnx as m; "
             "print(m.TritonPythonModel if isinstance(m.TritonPythonModel, str) else 'installed')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "checkout")}
    out = subprocess.run([sys.executable, "-E", "-c", probe], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "from the checkout"
    env.pop("PYTHONPATH")  # unset: the installed package, as before
    out = subprocess.run([sys.executable, "-E", "-c", probe], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "installed"
