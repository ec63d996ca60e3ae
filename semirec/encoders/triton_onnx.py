"""Triton python-backend model that runs its version directory's ``model.onnx`` with onnxruntime.

Inputs and outputs are taken from the model's config; requests whose tensors have the same
non-batch shapes are concatenated into one onnxruntime call (so Triton's dynamic batcher
pays off) and the results split back per request. A ``precision`` parameter of ``int8`` (the
ranker's, ``SEMIREC_RANKER_PRECISION``; ``auto`` on a CPU with VNNI) runs the version's
``model.int8.onnx`` instead, made from ``model.onnx`` if absent; a ranker graph of either
precision is loaded by semirec.core.ranker_sessions.session.
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
        threads = int(params.get("intra_op_threads") or 1)
        if "precision" in params:  # the ranker: its graph, loaded as every ranker process does
            from semirec.core.ranker_sessions import session
            from semirec.trainer.registry.precision import model_for

            self.session = session(model_for(path, params["precision"]), threads)
        else:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        get = pb_utils.get_input_tensor_by_name
        feeds = [[get(r, name).as_numpy() for name in self.inputs] for r in requests]
        if len(feeds) == 1:  # the usual call (one request, its own batch): no copies
            results: list[list[np.ndarray] | None] = [self._run(feeds[0])]
        else:
            groups: dict[tuple, list[int]] = {}
            for i, feed in enumerate(feeds):
                groups.setdefault(tuple(t.shape[1:] for t in feed), []).append(i)
            results = [None] * len(requests)
            for members in groups.values():
                if len(members) == 1:
                    results[members[0]] = self._run(feeds[members[0]])
                    continue
                outs = self._run([np.concatenate([feeds[i][k] for i in members])
                                  for k in range(len(self.inputs))])
                lo = 0
                for i in members:
                    hi = lo + len(feeds[i][0])
                    results[i] = [out[lo:hi] for out in outs]
                    lo = hi
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(o))
                                        for n, o in zip(self.outputs, res or [], strict=True)])
            for res in results
        ]

    def _run(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """One onnxruntime run over ``tensors`` (in the config's input order)."""
        return self.session.run(self.outputs, dict(zip(self.inputs, tensors, strict=True)))
