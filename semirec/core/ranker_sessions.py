"""How every process loads a ranker graph (fp32 or int8) into onnxruntime: Triton's python
backend (semirec.encoders.triton_onnx), serving's in-process ``OnnxRanker``, export's parity
checks, the int8 copy's bound, the benchmarks. onnxruntime only: the Triton stub imports it
without torch."""

from __future__ import annotations

from pathlib import Path

# onnxruntime's fusion of Add + LayerNormalization into SkipLayerNormalization: on the int8 graph
# its CPU kernel ran the candidates' layer norms ~4x slower than the pair it replaces (Xeon with
# AMX: a 500-candidate request 4.16 -> 3.28 ms without it); the fp32 graph is not fused anyway
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session(path: Path, threads: int = 1, optimized_to: Path | None = None):  # -> InferenceSession
    """An onnxruntime CPU session for a ranker graph of either precision: ``threads`` intra-op
    threads, all graph optimizations but :data:`DISABLED_OPTIMIZERS` (``optimized_to``: where
    to write the optimized graph, for inspection)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_to is not None:
        opts.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
