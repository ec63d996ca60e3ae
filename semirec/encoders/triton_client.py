"""Encode items through Triton: the same pipeline, with the networks served by tritonserver.

Tokenisation, image decoding and the feature cache stay in the client; ``text_encoder``,
``image_encoder`` and ``fusion_<domain>`` run on the server (python/onnxruntime on CPU,
TensorRT on GPU; same names and tensors). Requests are sent in chunks of at most the models'
``max_batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semirec.encoders.base import BaseEncoder
from semirec.encoders.cache import FeatureCache
from semirec.encoders.config import EncoderConfig
from semirec.encoders.features import FeatureExtractor, ItemFeatures
from semirec.encoders.triton_repo import FUSION_MODELS, IMAGE_MODEL, MAX_BATCH, TEXT_MODEL

_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(bool): "BOOL"}


class TritonItemEncoder(BaseEncoder):
    def __init__(self, url: str, config: EncoderConfig, version: str, *,
                 cache: FeatureCache | None = None, timeout_s: float = 60.0) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.config = config
        self.version = version
        self.batch_size = MAX_BATCH
        self.timeout_s = timeout_s
        self.extractor = FeatureExtractor(config, cache, image_fn=self._images, batch_size=MAX_BATCH)
        if config.text_backbone == "minilm":
            self.extractor.text_fn = self._texts

    def infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        """One request per chunk of at most ``MAX_BATCH`` rows; rows keep their order."""
        n = len(next(iter(inputs.values())))
        parts = []
        for start in range(0, n, MAX_BATCH):
            tensors = []
            for name, value in inputs.items():
                chunk = np.ascontiguousarray(value[start:start + MAX_BATCH])
                tensor = self._grpc.InferInput(name, list(chunk.shape), _DTYPES[chunk.dtype])
                tensor.set_data_from_numpy(chunk)
                tensors.append(tensor)
            result = self.client.infer(model, tensors, client_timeout=self.timeout_s,
                                       outputs=[self._grpc.InferRequestedOutput(output)])
            parts.append(result.as_numpy(output))
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.extractor.text_backbone.run_batches(
            texts, lambda feeds: self.infer(TEXT_MODEL, feeds, "text_features"))

    def _images(self, pixels: np.ndarray) -> np.ndarray:
        return self.infer(IMAGE_MODEL, {"pixels": pixels}, "image_features")

    def fuse_features(self, domains: Sequence[str], feats: ItemFeatures) -> np.ndarray:
        out = np.zeros((len(feats), self.config.out_dim), np.float32)
        for domain, model in FUSION_MODELS.items():
            rows = np.flatnonzero(np.asarray(domains) == domain)
            if len(rows) == 0:
                continue
            f = feats.take(rows)
            out[rows] = self.infer(model, {
                "text_features": f.text, "image_features": f.images, "image_mask": f.image_mask,
                "category_id": f.category[:, None], "tag_ids": f.tags}, "item_vector")
        return out
