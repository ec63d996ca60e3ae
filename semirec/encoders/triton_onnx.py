"""Triton python-backend model that runs its version directory's ``model.onnx`` with onnxruntime.

Inputs and outputs are taken from the model's config; requests whose tensors have the same
non-batch shapes are concatenated into one onnxruntime call (so Triton's dynamic batcher
pays off) and the results split back per request. A ``precision`` parameter of ``int8`` (the
ranker's, ``SEMIREC_RANKER_PRECISION``) runs the version's ``model.int8.onnx`` instead, made from
``model.onnx`` if absent (semirec.trainer.registry.precision).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        if params.get("precision", "fp32") != "fp32":
            from semirec.trainer.registry.precision import model_for

            path = model_for(path, params["precision"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads") or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        feeds = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
                 for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, feed in enumerate(feeds):
            groups.setdefault(tuple(feed[n].shape[1:] for n in self.inputs), []).append(i)
        results: list[list[np.ndarray] | None] = [None] * len(requests)
        for members in groups.values():
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
            outs = self.session.run(self.outputs, batch)
            sizes = np.cumsum([len(feeds[i][self.inputs[0]]) for i in members])[:-1]
            for out in outs:
                for i, part in zip(members, np.split(out, sizes), strict=True):
                    results[i] = [*(results[i] or []), part]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(o))
                                        for n, o in zip(self.outputs, res or [], strict=True)])
            for res in results
        ]
