"""The exported encoder in process: the ONNX models of a Triton repository run by onnxruntime.

Same pipeline and cache as :class:`encoders.pipeline.ItemEncoder` (tokenisation and image
decoding are shared); only the three networks are swapped for onnxruntime sessions. Used by
the benchmark (eager torch vs exported) and by the export checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.cache import FeatureCache
from encoders.config import EncoderConfig
from encoders.features import FeatureExtractor, ItemFeatures
from encoders.pipeline import BaseEncoder
from encoders.triton_repo import FUSION_MODELS, IMAGE_MODEL, TEXT_MODEL


class OnnxItemEncoder(BaseEncoder):
    def __init__(self, repo: Path, *, threads: int = 1, cache: FeatureCache | None = None,
                 batch_size: int = 64) -> None:
        import onnxruntime as ort

        info = json.loads((repo / FUSION_MODELS["video"] / "1" / "export.json").read_text())
        self.config = EncoderConfig.from_dict(info["config"])
        self.version = info["encoder_version"]
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), options,
                                        providers=["CPUExecutionProvider"])

        self.image_session = session(IMAGE_MODEL)
        self.fusion_sessions = {d: session(name) for d, name in FUSION_MODELS.items()}
        self.extractor = FeatureExtractor(self.config, cache, image_fn=self._images,
                                          batch_size=batch_size)
        if self.config.text_backbone == "minilm":
            self.text_session = session(TEXT_MODEL)
            self.extractor.text_fn = self._texts

    def _texts(self, texts: Sequence[str]) -> np.ndarray:
        feeds = self.extractor.text_backbone.tokenize(texts)
        return self.text_session.run(["text_features"], feeds)[0]

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
