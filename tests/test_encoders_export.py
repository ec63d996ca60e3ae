"""Exported encoders: ONNX matches torch, and tritonserver serves the same vectors."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from semirec.core.settings import Settings
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, EmbeddedStack
from semirec.encoders import export as export_module
from semirec.encoders.config import EncoderConfig
from semirec.encoders.export import export_repository
from semirec.encoders.exported import (
    INT8_MIN_COSINE,
    INT8_TEXT,
    OnnxItemEncoder,
    ensure_exported,
    exported_encoder,
)
from semirec.encoders.pipeline import ItemEncoder, get_encoder
from semirec.encoders.sample import sample_items
from semirec.encoders.triton_client import TritonItemEncoder
from semirec.encoders.triton_repo import ENGINE_VARIANT, render, specs

TOL = 1e-4  # float32 differences between torch, onnxruntime and the served models


@pytest.fixture(scope="module")
def exported(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The untrained encoder exported into the session's Triton model repository."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMIREC_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
        mp.delenv("SEMIREC_ENCODER_CHECKPOINT", raising=False)
        yield export_repository(stack.model_repository)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return sample_items(24, seed=5)


def test_committed_configs_are_the_rendered_ones() -> None:
    for spec in specs(EncoderConfig()):
        model = DEFAULT_MODEL_REPOSITORY / spec.name
        assert (model / "config.pbtxt").read_text() == render(spec, "python")
        assert (model / "configs" / f"{ENGINE_VARIANT}.pbtxt").read_text() == render(
            spec, ENGINE_VARIANT)
        assert (model / "1" / "model.py").is_file()


def test_onnx_matches_torch(exported: dict, stack: EmbeddedStack, items: list[dict]) -> None:
    assert set(exported["models"]) == {"text_encoder", "image_encoder", "fusion_video",
                                       "fusion_product"}
    for name, model in exported["models"].items():
        assert model["max_abs_diff"] < TOL, name
    reference = ItemEncoder(cache=None).encode(items)
    onnx = OnnxItemEncoder(Path(stack.model_repository), threads=1)
    assert onnx.version == exported["encoder_version"]
    assert np.abs(onnx.encode(items) - reference).max() < TOL


def test_triton_serves_the_in_process_vectors(exported: dict, stack: EmbeddedStack,
                                              items: list[dict]) -> None:
    client = grpcclient.InferenceServerClient(stack.addresses.triton_grpc)
    names = list(exported["models"])
    try:
        for name in names:
            client.load_model(name)
            assert client.is_model_ready(name), name
        served = TritonItemEncoder(stack.addresses.triton_grpc, EncoderConfig(),
                                   exported["encoder_version"])
        got = served.encode(items)
        reference = ItemEncoder(cache=None).encode(items)
        assert got.shape == reference.shape
        assert np.abs(got - reference).max() < TOL
        # concurrent requests of several sizes: the dynamic batcher merges them, the model
        # splits the results back per request
        pixels = np.random.default_rng(0).normal(size=(12, 3, 64, 64)).astype(np.float32)
        slices = [slice(0, 1), slice(1, 4), slice(4, 5), slice(5, 9), slice(9, 12)] * 2
        with ThreadPoolExecutor(max_workers=len(slices)) as pool:
            parts = list(pool.map(lambda sl: served.infer("image_encoder", {"pixels": pixels[sl]},
                                                          "image_features"), slices))
        alone = served.infer("image_encoder", {"pixels": pixels}, "image_features")
        for sl, part in zip(slices, parts, strict=True):
            assert np.abs(part - alone[sl]).max() < TOL
    finally:
        for name in names:
            client.unload_model(name)
        client.close()


def test_exported_encoder_is_exported_once_and_matches_torch(
        items: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the catalog agent and ``items encode`` use: ONNX exported into the cache dir on
    first use, reused afterwards, same vectors and version as eager torch."""
    monkeypatch.setenv("SEMIREC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SEMIREC_ENCODER_CHECKPOINT", raising=False)
    monkeypatch.setenv("SEMIREC_ENCODER_RUNTIME", "onnx")  # fp32 (the default is onnx-int8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = get_encoder()  # the fp32 runtime, in this test's cache dir
        reference = ItemEncoder(cache=None)
        assert isinstance(fast, OnnxItemEncoder)
        assert fast.repo == tmp_path / "onnx" / reference.version
        assert fast.version == reference.version
        assert fast.settings["graph_optimization_level"] == "ORT_ENABLE_ALL"
        assert np.abs(fast.encode(items) - reference.encode(items)).max() < TOL
        assert [p.name for p in (tmp_path / "onnx").iterdir()] == [reference.version]

        def no_second_export(*args: object, **kwargs: object) -> None:
            raise AssertionError("exported again")

        monkeypatch.setattr(export_module, "export_repository", no_second_export)
        assert ensure_exported() == fast.repo
        again = exported_encoder(cache=None).encode(items[:5])
        assert np.abs(again - reference.encode(items[:5])).max() < TOL
    finally:
        torch.set_num_threads(threads)


def test_int8_runtime_stays_close_to_fp32_and_is_marked(
        exported: dict, stack: EmbeddedStack, items: list[dict], tmp_path: Path) -> None:
    """``onnx-int8``: the text model quantised once beside the fp32 one; vectors close to the
    fp32 ones but not equal, under a version and cache space of their own."""
    source = Path(stack.model_repository)
    repo = tmp_path / "repo"
    for name in exported["models"]:  # a private copy: the int8 file must not land in Triton's
        if name == "text_encoder":
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "1" / "model.onnx").symlink_to(source / name / "1" / "model.onnx")
        else:
            repo.mkdir(exist_ok=True)
            (repo / name).symlink_to(source / name)
    fp32 = OnnxItemEncoder(repo, threads=1)
    int8 = OnnxItemEncoder(repo, threads=1, precision="int8")
    assert (repo / "text_encoder" / "1" / INT8_TEXT).is_file()
    assert int8.version == fp32.version + "+int8"
    assert int8.extractor.text_space == fp32.extractor.text_space + "+int8"
    assert int8.settings["precision"] == "int8"
    a, b = fp32.encode(items), int8.encode(items)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= INT8_MIN_COSINE
    assert np.abs(a - b).max() > TOL  # really the quantised model
    with pytest.raises(ValueError, match="precision"):
        OnnxItemEncoder(repo, precision="fp16")
    assert Settings.from_env({"SEMIREC_ENCODER_RUNTIME": "onnx"}).encoder_runtime == "onnx"
    assert Settings.from_env({}).encoder_runtime == "onnx-int8"  # the CPU default (issue 22)


def test_item_vectors_per_runtime_are_cached_apart(items: list[dict], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``semirec evaluate --encoder-runtime``: fp32 onnx vectors equal torch's (same cache file);
    int8 ones are close, and cached under their own version."""
    from semirec.trainer.offline.vectors import item_vectors

    monkeypatch.setenv("SEMIREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SEMIREC_ENCODER_CHECKPOINT", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vec_dir = tmp_path / "vectors"
        eager = item_vectors(items, cache_dir=vec_dir)
        int8 = item_vectors(items, cache_dir=vec_dir, runtime="onnx-int8")
        assert len(list(vec_dir.glob("*.npy"))) == 2
        assert np.abs(item_vectors(items, cache_dir=tmp_path / "v2", runtime="onnx") - eager).max() < TOL
        cos = (eager * int8).sum(1) / np.linalg.norm(eager, axis=1) / np.linalg.norm(int8, axis=1)
        assert cos.min() >= INT8_MIN_COSINE and np.abs(eager - int8).max() > TOL
    finally:
        torch.set_num_threads(threads)
