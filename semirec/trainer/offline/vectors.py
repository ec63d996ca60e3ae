"""Item vectors for evaluation, cached on disk so a run does not re-encode the catalog.

The cache key is a digest of the items' content and the encoder version, so a new catalog or a
new encoder checkpoint gets new vectors. Files are plain ``.npy`` read with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> Path:
    from semirec.encoders.config import cache_dir

    return cache_dir() / "item-vectors"


def catalog_digest(items: Sequence[Mapping[str, Any]], encoder_version: str) -> str:
    h = hashlib.blake2b(encoder_version.encode(), digest_size=16)
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()


def item_vectors(
    items: Sequence[Mapping[str, Any]],
    *,
    checkpoint: Path | None = None,
    cache_dir: Path | None = None,
    runtime: str = "torch",
) -> np.ndarray:
    """``[len(items), 128]`` float32 vectors from :func:`encoders.encode_items` (``runtime``
    ``torch``), or from the exported ``onnx`` / ``onnx-int8`` encoder; cached per version."""
    from semirec.encoders import encode_items, encoder_version
    from semirec.encoders.pipeline import get_encoder

    version = encoder_version(checkpoint) + ("+int8" if runtime == "onnx-int8" else "")
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    path = directory / f"{catalog_digest(items, version)}.npy"
    if path.is_file():
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape[0] == len(items):
            return vectors
    encoded = (encode_items(list(items), checkpoint=checkpoint) if runtime == "torch"
               else get_encoder(checkpoint, runtime=runtime).encode(list(items)))
    vectors = np.ascontiguousarray(encoded, np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    tmp.replace(path)
    return vectors
