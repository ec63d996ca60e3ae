"""The exported encoder in process: the ONNX models of a Triton repository run by onnxruntime.

Same pipeline and cache as :class:`semirec.encoders.pipeline.ItemEncoder` (tokenisation, length
groups and image decoding are shared); only the three networks are swapped for onnxruntime
sessions. The catalog agent and ``semirec items encode`` use it (:func:`exported_encoder`:
the models are exported once per encoder version into ``$SEMIREC_CACHE_DIR/onnx/``); the
benchmark compares it with eager torch.

Session settings (:func:`session_options`, measured in docs/encoders.md): full graph
optimisation is what makes the image model fast (its NCHWc convolution kernels; at the
"extended" level it is 5x slower); threads default to 1 with no spinning, because the
machines this runs on are small and shared.

``precision="int8"`` (runtime ``onnx-int8``) swaps the text model, ~80% of the work, for an
int8 copy made by onnxruntime's dynamic quantization (per-channel weights, the CPU's VNNI
kernels): ~2.5x less CPU for titles, but vectors that differ from torch's by design (cosine
~0.99, checked against :data:`INT8_MIN_COSINE` when the copy is made; docs/encoders.md). Its
vectors carry the version ``<encoder version>+int8`` and its text features a cache space of
their own, so they never mix unmarked with the fp32 ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semirec.core import durable
from semirec.encoders.base import BaseEncoder, default_cache
from semirec.encoders.cache import FeatureCache
from semirec.encoders.config import EncoderConfig, cache_dir
from semirec.encoders.features import FeatureExtractor, ItemFeatures
from semirec.encoders.text import Feeds
from semirec.encoders.triton_repo import FUSION_MODELS, IMAGE_MODEL, TEXT_MODEL

log = logging.getLogger(__name__)
PARITY_TOL = 1e-4  # max |onnxruntime - torch| an export must meet to be used
INT8_MIN_COSINE = 0.97  # min cosine of int8 vs fp32 title features an int8 copy must meet
INT8_TEXT = "model.int8.onnx"  # the int8 copy, beside the text model's model.onnx
PRECISIONS = ("fp32", "int8")
SPIN = "0"  # session.intra_op.allow_spinning: no busy-waiting threads on a shared machine


def session_options(threads: int = 1) -> Any:
    """The onnxruntime session options every encoder session uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", SPIN)
    return options


def describe_session(options: Any) -> dict[str, Any]:
    """The settings of ``options`` that matter for speed, as plain values (for reports)."""
    import onnxruntime as ort

    return {
        "onnxruntime": ort.__version__,
        "providers": ["CPUExecutionProvider"],
        "graph_optimization_level": options.graph_optimization_level.name,
        "execution_mode": options.execution_mode.name,
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "allow_spinning": options.get_session_config_entry("session.intra_op.allow_spinning"),
        "enable_cpu_mem_arena": options.enable_cpu_mem_arena,
    }


class OnnxItemEncoder(BaseEncoder):
    def __init__(self, repo: Path, *, threads: int = 1, cache: FeatureCache | None = None,
                 batch_size: int = 64, precision: str = "fp32") -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        info = json.loads((repo / FUSION_MODELS["video"] / "1" / "export.json").read_text())
        self.repo = repo
        self.precision = precision
        self.config = EncoderConfig.from_dict(info["config"])
        self.version = info["encoder_version"] + ("+int8" if precision == "int8" else "")
        self.batch_size = batch_size
        self.options = session_options(threads)

        def session(name: str, file: str = "model.onnx") -> ort.InferenceSession:
            return ort.InferenceSession(str(repo / name / "1" / file), self.options,
                                        providers=["CPUExecutionProvider"])

        self.image_session = session(IMAGE_MODEL)
        self.fusion_sessions = {d: session(name) for d, name in FUSION_MODELS.items()}
        self.extractor = FeatureExtractor(self.config, cache, image_fn=self._images,
                                          batch_size=batch_size)
        if self.config.text_backbone == "minilm":
            if precision == "int8":
                self.text_session = session(TEXT_MODEL, ensure_int8_text(repo).name)
                self.extractor.text_space += "+int8"
            else:
                self.text_session = session(TEXT_MODEL)
            self.extractor.text_fn = self._texts

    @property
    def settings(self) -> dict[str, Any]:
        return {**describe_session(self.options), "precision": self.precision}

    def _text_batch(self, feeds: Feeds) -> np.ndarray:
        return self.text_session.run(["text_features"], feeds)[0]

    def _texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.extractor.text_backbone.run_batches(texts, self._text_batch)

    def _images(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([
            self.image_session.run(["image_features"], {"pixels": pixels[i:i + self.batch_size]})[0]
            for i in range(0, len(pixels), self.batch_size)
        ])

    def fuse_features(self, domains: Sequence[str], feats: ItemFeatures) -> np.ndarray:
        out = np.zeros((len(feats), self.config.out_dim), np.float32)
        for domain, sess in self.fusion_sessions.items():
            rows = np.flatnonzero(np.asarray(domains) == domain)
            for start in range(0, len(rows), self.batch_size):
                part = rows[start:start + self.batch_size]
                f = feats.take(part)
                out[part] = sess.run(["item_vector"], {
                    "text_features": f.text, "image_features": f.images,
                    "image_mask": f.image_mask, "category_id": f.category[:, None],
                    "tag_ids": f.tags})[0]
        return out


def _complete(repo: Path, version: str) -> bool:
    """Whether ``repo`` holds every model of an export of ``version``."""
    marker = repo / FUSION_MODELS["video"] / "1" / "export.json"
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    names = [IMAGE_MODEL, *FUSION_MODELS.values()]
    if info["config"].get("text_backbone", "minilm") == "minilm":
        names.append(TEXT_MODEL)
    return info["encoder_version"] == version and all(
        (repo / n / "1" / "model.onnx").is_file() for n in names)


def ensure_exported(checkpoint: Path | str | None = None, root: Path | None = None) -> Path:
    """The ONNX repository of ``checkpoint``'s encoder under ``root`` (default
    ``$SEMIREC_CACHE_DIR/onnx``), exported and checked against torch on first use.

    Exports go to a temporary folder that is renamed into place, so concurrent processes
    never see a partial repository. Raises ``RuntimeError`` when an export misses
    :data:`PARITY_TOL`.
    """
    from semirec.encoders import checkpoint as ckpt_io
    from semirec.encoders.export import export_repository

    version = ckpt_io.read(checkpoint).version
    root = root or cache_dir() / "onnx"
    repo = root / version
    if _complete(repo, version):
        return repo
    root.mkdir(parents=True, exist_ok=True)
    log.info("exporting encoder %s to ONNX in %s (once per version)", version, repo)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        report = export_repository(tmp, ckpt_io.resolve(checkpoint))
        worst = max(m["max_abs_diff"] for m in report["models"].values())
        if worst >= PARITY_TOL:
            raise RuntimeError(f"ONNX export of {version} differs from torch by {worst:.2e}")
        if repo.exists():  # an incomplete or stale folder (a complete one returned above)
            if _complete(repo, version):
                return repo  # another process finished first
            shutil.rmtree(repo)
        os.replace(tmp, repo)
    except OSError:
        if not _complete(repo, version):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return repo


def ensure_int8_text(repo: Path) -> Path:
    """The int8 copy of ``repo``'s text model (made once, beside it; atomic like the export).

    Raises ``RuntimeError`` when its title features fall below :data:`INT8_MIN_COSINE` of the
    fp32 model's on the sample catalog's titles."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from semirec.encoders.sample import sample_items
    from semirec.encoders.text import TextBackbone

    folder = repo / TEXT_MODEL / "1"

    def build(tmp: Path) -> None:
        quantize_dynamic(folder / "model.onnx", tmp, weight_type=QuantType.QInt8,
                         per_channel=True)
        titles = [item["title"] for item in sample_items(64, seed=0)]
        backbone, options = TextBackbone(), session_options()
        feats = []
        for path in (folder / "model.onnx", tmp):
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            out = backbone.run_batches(titles, lambda f, s=sess: s.run(["text_features"], f)[0])
            feats.append(out / np.linalg.norm(out, axis=1, keepdims=True))
        worst = float((feats[0] * feats[1]).sum(axis=1).min())
        if worst < INT8_MIN_COSINE:
            raise RuntimeError(f"int8 text model: cosine to fp32 {worst:.3f} < {INT8_MIN_COSINE}")
        log.info("int8 text model in %s (min cosine to fp32 %.4f)", folder / INT8_TEXT, worst)

    return durable.build_once(folder / INT8_TEXT, build)


def exported_encoder(checkpoint: Path | str | None = None, *, batch_size: int = 64,
                     threads: int = 1, cache: FeatureCache | bool | None = True,
                     precision: str = "fp32") -> OnnxItemEncoder:
    """The onnxruntime encoder of ``checkpoint`` (``None``: as :class:`ItemEncoder`), with the
    default feature cache unless ``cache`` says otherwise."""
    store = default_cache() if cache is True else (cache or None)
    return OnnxItemEncoder(ensure_exported(checkpoint), threads=threads, cache=store,
                           batch_size=batch_size, precision=precision)
