"""Export the encoders to ONNX inside a Triton model repository, checked against torch.

Per model (see :mod:`semirec.encoders.triton_repo`): ``<repo>/<name>/1/model.onnx`` (TorchScript-based
exporter, opset 17, dynamic batch/sequence/frame/tag axes), ``1/model.py`` (python-backend
shim), ``1/trtexec_args.txt`` (shapes for the TensorRT build), ``1/export.json`` (encoder
version) and both configs. Each export is run with onnxruntime on fresh random inputs of other
shapes than the trace and compared with torch (``max_abs_diff`` in the report).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semirec.encoders import checkpoint as ckpt_io
from semirec.encoders.config import EncoderConfig
from semirec.encoders.fusion import FusionEncoder
from semirec.encoders.image import ImageBackbone
from semirec.encoders.text import load_minilm
from semirec.encoders.triton_repo import (
    ENGINE_VARIANT,
    FUSION_MODELS,
    IMAGE_MODEL,
    MODEL_PY,
    TEXT_MODEL,
    ModelSpec,
    render,
    specs,
    trtexec_shapes,
)

OPSET = 17


class FusionForExport(nn.Module):
    """The fusion with Triton's tensor layout (``category_id`` is ``[B, 1]``)."""

    def __init__(self, fusion: FusionEncoder) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, text_features: torch.Tensor, image_features: torch.Tensor,
                image_mask: torch.Tensor, category_id: torch.Tensor,
                tag_ids: torch.Tensor) -> torch.Tensor:
        return self.fusion(text_features, image_features, image_mask, category_id[:, 0], tag_ids)


def sample_inputs(spec: ModelSpec, cfg: EncoderConfig, batch: int, var: int,
                  seed: int) -> dict[str, np.ndarray]:
    """Random inputs for ``spec`` with ``var`` in every variable dimension."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = [batch, *(var if d == -1 else d for d in t.dims)]
        if t.name == "input_ids":
            out[t.name] = rng.integers(1000, 20000, size=shape, dtype=np.int64)
            out[t.name][:, 0] = 101  # [CLS]
        elif t.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[0, max(1, var // 2):] = 0  # one padded row
            out[t.name] = mask
        elif t.name == "image_mask":
            mask = np.ones(shape, bool)
            mask[0, 1:] = False
            out[t.name] = mask
        elif t.name == "category_id":
            out[t.name] = rng.integers(0, cfg.category_buckets, size=shape, dtype=np.int64)
        elif t.name == "tag_ids":
            out[t.name] = rng.integers(0, cfg.tag_buckets, size=shape, dtype=np.int64)
        elif t.name == "text_features":
            v = rng.normal(size=shape).astype(np.float32)
            out[t.name] = v / np.linalg.norm(v, axis=1, keepdims=True)
        else:
            out[t.name] = rng.normal(size=shape).astype(np.float32)
    return out


def _dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in (*spec.inputs, *spec.outputs):
        axes[t.name] = {0: "batch"}
        for i, d in enumerate(t.dims, start=1):
            if d == -1:
                axes[t.name][i] = f"{t.name}_{i}"
    return axes


def _export_one(module: nn.Module, spec: ModelSpec, cfg: EncoderConfig, path: Path) -> float:
    module = module.eval()
    trace = sample_inputs(spec, cfg, batch=2, var=3, seed=0)
    args = tuple(torch.from_numpy(trace[t.name]) for t in spec.inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[t.name for t in spec.inputs],
                          output_names=[t.name for t in spec.outputs],
                          dynamic_axes=_dynamic_axes(spec), do_constant_folding=True)
    tmp.replace(path)
    return check_onnx(module, spec, cfg, path)


def check_onnx(module: nn.Module, spec: ModelSpec, cfg: EncoderConfig, path: Path) -> float:
    """Max |onnxruntime - torch| on inputs of other shapes than the trace."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, var, seed in ((5, 4, 1), (1, 1, 2)):
        feeds = sample_inputs(spec, cfg, batch=batch, var=var, seed=seed)
        with torch.inference_mode():
            ref = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs)).numpy()
        got = session.run([spec.outputs[0].name], feeds)[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def modules(info: ckpt_io.Checkpoint) -> dict[str, nn.Module]:
    """The torch modules behind each exported model, by model name."""
    cfg = info.config
    fusion = ckpt_io.load_fusion(info)
    out: dict[str, nn.Module] = {}
    if cfg.text_backbone == "minilm":
        _tokenizer, pooled = load_minilm()
        out[TEXT_MODEL] = pooled
    out[IMAGE_MODEL] = ImageBackbone(cfg.image_size)
    for domain, name in FUSION_MODELS.items():
        out[name] = FusionForExport(fusion[domain])
    return out


def write_configs(repo: Path, cfg: EncoderConfig) -> None:
    for spec in specs(cfg):
        model_dir = repo / spec.name
        (model_dir / "configs").mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(render(spec, "python"))
        (model_dir / "configs" / f"{ENGINE_VARIANT}.pbtxt").write_text(render(spec, ENGINE_VARIANT))
        (model_dir / "1").mkdir(exist_ok=True)
        (model_dir / "1" / "model.py").write_text(MODEL_PY)


def export_repository(repo: Path, checkpoint: Path | None = None) -> dict[str, Any]:
    """Export every encoder model into ``repo``; returns a report (diffs, version, paths)."""
    info = ckpt_io.read(checkpoint)
    cfg = info.config
    write_configs(repo, cfg)
    built = modules(info)
    report: dict[str, Any] = {"repository": str(repo), "encoder_version": info.version, "models": {}}
    for spec in specs(cfg):
        version_dir = repo / spec.name / "1"
        diff = _export_one(built[spec.name], spec, cfg, version_dir / "model.onnx")
        (version_dir / "trtexec_args.txt").write_text(trtexec_shapes(spec) + "\n")
        (version_dir / "export.json").write_text(json.dumps(
            {"encoder_version": info.version, "config": cfg.to_dict(), "max_abs_diff": diff},
            indent=2))
        report["models"][spec.name] = {
            "onnx": str(version_dir / "model.onnx"), "max_abs_diff": diff,
            "bytes": (version_dir / "model.onnx").stat().st_size,
        }
    if cfg.text_backbone != "minilm":
        report["note"] = f"{cfg.text_backbone} is numpy-only: text features are computed by the client"
    return report

