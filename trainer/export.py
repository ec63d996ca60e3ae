"""ONNX export of a ranker as one request graph with a candidate axis.

Inputs (one user, C candidates): ``video`` [Lv, d] float32, ``video_age`` [Lv] int64 (hours
before the request), ``video_mask`` [Lv] bool (True = real entry), the same three for
``product``, and ``candidates`` [C, d] float32. Output: ``score`` [C] = P(watched completely).
Lv, Lp and C are dynamic. The user side runs once per call, whatever C is.
A sequence with no entries is passed as one padded slot with mask False. Inputs a model does
not read (the product sequence of a video-only model) are absent from its graph; :func:`run_onnx`
feeds only the inputs a session declares.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from trainer.ranker import Ranker, UserBatch

INPUTS = ("video", "video_age", "video_mask", "product", "product_age", "product_mask",
          "candidates")
OUTPUT = "score"
OPSET = 17


class RequestGraph(nn.Module):
    """A ranker wrapped for one request: sequences + candidates -> probabilities."""

    def __init__(self, model: Ranker) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor, video_age: Tensor, video_mask: Tensor, product: Tensor,
                product_age: Tensor, product_mask: Tensor, candidates: Tensor) -> Tensor:
        user = UserBatch(video[None], video_age[None], video_mask[None],
                         product[None], product_age[None], product_mask[None])
        return torch.sigmoid(self.model.score(self.model.encode_user(user), candidates[None])[0])


def example_request(
    dim: int = 128, video: int = 50, product: int = 50, candidates: int = 500, seed: int = 0,
    video_real: int | None = None, product_real: int | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs in the graph's format (``*_real`` = how many entries are real, newest last)."""
    rng = np.random.default_rng(seed)

    def seq(n: int, real: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        real = n if real is None else real
        mask = np.arange(n) >= n - real
        age = np.sort(rng.integers(0, 400, n))[::-1].astype(np.int64)
        vec = rng.normal(scale=0.09, size=(n, dim)).astype(np.float32) * mask[:, None]
        return vec, age, mask

    v, p = seq(video, video_real), seq(product, product_real)
    cands = rng.normal(scale=0.09, size=(candidates, dim)).astype(np.float32)
    return dict(zip(INPUTS, (*v, *p, cands), strict=True))


def export_onnx(model: Ranker, path: Path, dim: int = 128) -> Path:
    """Write the request graph of ``model`` (eval mode) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = RequestGraph(model).eval()
    example = tuple(torch.from_numpy(a) for a in example_request(dim, 7, 9, 5).values())
    axes = {"video": {0: "video_len"}, "video_age": {0: "video_len"},
            "video_mask": {0: "video_len"}, "product": {0: "product_len"},
            "product_age": {0: "product_len"}, "product_mask": {0: "product_len"},
            "candidates": {0: "candidates"}, OUTPUT: {0: "candidates"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        torch.onnx.export(graph, example, str(path), input_names=list(INPUTS),
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    return path


def onnx_session(path: Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, request: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run([OUTPUT], {k: v for k, v in request.items() if k in names})[0]


def torch_scores(model: Ranker, request: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return RequestGraph(model).eval()(*(torch.from_numpy(request[k]) for k in INPUTS)).numpy()
