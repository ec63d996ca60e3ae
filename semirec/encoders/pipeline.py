"""Items -> 128-d vectors in process: backbones (cached) -> per-domain fusion (torch, eager).

:func:`encode_items` is the stable entry point used by the rest of the project;
:class:`ItemEncoder` adds the lenient mode that the catalog agent and the bulk CLI need
(bad items reported per index, the rest encoded).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semirec.core.items import Item
from semirec.encoders import checkpoint as ckpt_io
from semirec.encoders.base import BaseEncoder, default_cache
from semirec.encoders.cache import FeatureCache
from semirec.encoders.config import EncoderConfig, cache_dir
from semirec.encoders.features import FeatureExtractor, ItemFeatures
from semirec.encoders.fusion import ItemFusion


def fuse(fusion: ItemFusion, domains: Sequence[str], feats: ItemFeatures,
         batch_size: int = 64) -> np.ndarray:
    """Run each domain's fusion over its rows, in batches; rows keep the input order."""
    out = np.zeros((len(feats), fusion[fusion.DOMAINS[0]].out_dim), np.float32)
    with torch.inference_mode():
        for domain in fusion.DOMAINS:
            rows = np.flatnonzero(np.asarray(domains) == domain)
            for start in range(0, len(rows), batch_size):
                part = rows[start:start + batch_size]
                f = feats.take(part)
                out[part] = fusion[domain](
                    torch.from_numpy(f.text), torch.from_numpy(f.images),
                    torch.from_numpy(f.image_mask), torch.from_numpy(f.category),
                    torch.from_numpy(f.tags),
                ).numpy()
    return out


class ItemEncoder(BaseEncoder):
    """The in-process torch encoder: ``encode(items)`` and ``encode_lenient(items)``."""

    def __init__(self, checkpoint: Path | str | None = None, *, cache: FeatureCache | bool | None = True,
                 config: EncoderConfig | None = None, batch_size: int = 64) -> None:
        self.checkpoint = ckpt_io.read(checkpoint, config)
        self.config = self.checkpoint.config
        self.version = self.checkpoint.version
        self.fusion = ckpt_io.load_fusion(self.checkpoint)
        self.batch_size = batch_size
        store = default_cache() if cache is True else (cache or None)
        self.extractor = FeatureExtractor(self.config, store, batch_size=batch_size)

    def fuse_features(self, domains: Sequence[str], feats: ItemFeatures) -> np.ndarray:
        return fuse(self.fusion, domains, feats, self.batch_size)


RUNTIMES = ("onnx", "onnx-int8", "torch")


def runtime_setting() -> str:
    """``$SEMIREC_ENCODER_RUNTIME``: ``onnx-int8`` (default), ``onnx`` (fp32) or ``torch``."""
    from semirec.core.settings import Settings

    return Settings.from_env().encoder_runtime


@functools.lru_cache(maxsize=4)
def _encoder(path: Path | None, stamp: float, batch_size: int, runtime: str,
             cache: Path) -> BaseEncoder:  # cache: its feature cache and ONNX exports live there
    if runtime in ("onnx", "onnx-int8"):
        from semirec.encoders.exported import exported_encoder

        return exported_encoder(path, batch_size=batch_size,
                                precision="int8" if runtime == "onnx-int8" else "fp32")
    return ItemEncoder(path, batch_size=batch_size)


def get_encoder(checkpoint: Path | str | None = None, batch_size: int = 64,
                runtime: str | None = None) -> BaseEncoder:
    """A process-wide encoder per checkpoint (reloaded when the file changes).

    ``runtime``: ``"onnx"`` (the exported models under onnxruntime, exported on first use;
    1.3-1.4x less CPU per item than eager, docs/encoders.md), ``"onnx-int8"`` (the same with an
    int8 text model: less CPU again, vectors within cosine ~0.99 and version ``+int8``; the
    default, the rankers lose nothing on its vectors, docs/results.md),
    ``"torch"`` (eager), or ``None`` for ``$SEMIREC_ENCODER_RUNTIME``. ``onnx`` and ``torch``
    give the same vectors within 1e-4 and the same version.
    """
    runtime = runtime or runtime_setting()
    if runtime not in RUNTIMES:
        raise ValueError(f"encoder runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = ckpt_io.resolve(checkpoint)
    return _encoder(path, path.stat().st_mtime if path else 0.0, batch_size, runtime, cache_dir())


def encode_items(items: Sequence[Item | dict[str, Any]], *, checkpoint: Path | None = None,
                 batch_size: int = 64) -> np.ndarray:
    """Encode items (contract dicts or :class:`Item`) to ``[N, 128]`` float32 L2-normalised vectors.

    Deterministic for a given checkpoint (``None``: ``$SEMIREC_ENCODER_CHECKPOINT`` or the
    seeded untrained fusion). Raises :class:`semirec.core.items.ItemError` for a malformed item.
    """
    return get_encoder(checkpoint, batch_size, runtime="torch").encode(items)


def encoder_version(checkpoint: Path | None = None) -> str:
    """The version string stored next to vectors made with ``checkpoint``."""
    return ckpt_io.read(checkpoint).version
