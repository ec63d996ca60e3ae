"""What every item encoder is, whatever runs its networks: features from
:class:`~semirec.encoders.features.FeatureExtractor`, then :meth:`BaseEncoder.fuse_features`.

Implementations: :class:`semirec.encoders.pipeline.ItemEncoder` (torch, eager),
:class:`semirec.encoders.exported.OnnxItemEncoder` (onnxruntime) and
:class:`semirec.encoders.triton_client.TritonItemEncoder` (tritonserver);
:func:`semirec.encoders.pipeline.get_encoder` chooses one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semirec.core.items import Item, ItemError, as_item
from semirec.encoders.cache import FeatureCache
from semirec.encoders.config import cache_dir
from semirec.encoders.features import FeatureExtractor, ItemFeatures


@dataclass(slots=True)
class EncodeResult:
    vectors: np.ndarray  # [len(ok), out_dim] float32
    ok: list[int]  # indices (into the input) of the encoded items
    errors: dict[int, ItemError] = field(default_factory=dict)


def default_cache() -> FeatureCache:
    return FeatureCache(cache_dir() / "features.sqlite")


class BaseEncoder:
    """Lenient and strict encoding over ``extractor`` (features) and :meth:`fuse_features`."""

    extractor: FeatureExtractor
    version: str
    batch_size: int

    def fuse_features(self, domains: Sequence[str], feats: ItemFeatures) -> np.ndarray:
        raise NotImplementedError

    def encode_lenient(self, items: Sequence[Item | dict[str, Any]]) -> EncodeResult:
        parsed: list[Item] = []
        errors: dict[int, ItemError] = {}
        index: list[int] = []
        for i, value in enumerate(items):
            try:
                parsed.append(as_item(value))
                index.append(i)
            except ItemError as exc:
                errors[i] = exc
        feats, ok, bad = self.extractor.extract(parsed)
        errors.update({index[j]: e for j, e in bad.items()})
        vectors = self.fuse_features([parsed[j].domain.value for j in ok], feats)
        return EncodeResult(vectors, [index[j] for j in ok], dict(sorted(errors.items())))

    def encode(self, items: Sequence[Item | dict[str, Any]]) -> np.ndarray:
        """``[N, out_dim]`` float32; raises the first item's :class:`ItemError` if any is bad."""
        result = self.encode_lenient(items)
        if result.errors:
            i, exc = next(iter(result.errors.items()))
            raise type(exc)(exc.reason, f"item {i}: {exc}")
        return result.vectors
