"""Reduced-precision copies of an exported ranker graph (``SEMIREC_RANKER_PRECISION``).

``fp32`` serves ``model.onnx`` as exported. ``int8`` serves ``model.int8.onnx`` beside it: the
same graph after onnxruntime's dynamic quantization (:func:`quantize_dynamic`: every MatMul or
Gemm with a constant weight gets int8 per-channel weights and uint8 activations quantized per
call, the CPU's VNNI kernels); the item-identity table (Gather), attention's activation x
activation products and everything else stay fp32. ``auto`` (the default) is ``int8`` on a CPU
with int8 dot-product instructions (VNNI, AMX), where it is 1.13-1.22x cheaper, and ``fp32`` on one
without (AVX2 only), where the int8 graph is slower (0.69-0.87x, docs/serving.md); it is
resolved by the process that loads the graph, on its own CPU (:func:`resolve`). The copy is
made once (at export, or by the first server that needs it: atomic rename) and refused unless
its scores on an example batch stay within :data:`INT8_MAX_DIFF` of the fp32 graph's. Parity on
real requests and held-out watches: ``benchmarks/ranker_precision.py`` (docs/serving.md). fp16 / bf16 are not
offered: onnxruntime's CPU provider has no fast x86 kernels for them (measured in
docs/serving.md). Every process loads a ranker graph through
:func:`semirec.core.ranker_sessions.session`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from semirec.core import durable
from semirec.core.settings import RANKER_PRECISIONS

log = logging.getLogger(__name__)

DEFAULT_PRECISION = "auto"  # SEMIREC_RANKER_PRECISION's default (int8 where it pays: resolve)
INT8_ONNX = "model.int8.onnx"
INT8_MAX_DIFF = 0.02  # max |P_int8 - P_fp32| on the example batch a copy must meet


def check_precision(precision: str) -> str:
    if precision not in RANKER_PRECISIONS:
        raise ValueError(f"ranker precision must be one of {RANKER_PRECISIONS}, got {precision!r}")
    return precision


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI, AMX); without them onnxruntime's
    u8 x s8 products can saturate, so 7-bit weights (``reduce_range``) are the right copy."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return True  # not Linux: keep the 8-bit copy and rely on the bound
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def resolve(precision: str) -> str:
    """``fp32`` or ``int8``: ``auto`` becomes ``int8`` where this CPU has VNNI, else ``fp32``."""
    if check_precision(precision) == "auto":
        return "int8" if has_vnni() else "fp32"
    return precision


def quantize_int8(fp32: Path, out: Path, reduce_range: bool = False) -> Path:
    """Write the dynamically quantized (int8 weights, per channel) copy of ``fp32`` to ``out``;
    ``reduce_range``: 7-bit weights, which CPUs without VNNI (AVX2 only) need to avoid the
    saturation of their u8 x s8 products (onnxruntime's quantization docs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # its "consider pre-processing" warning, every call
    try:
        quantize_dynamic(Path(fp32), Path(out), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range,
                         op_types_to_quantize=["MatMul", "Gemm"])  # not the identity table (Gather)
    finally:
        root.setLevel(level)
    return Path(out)


def int8_diff(fp32: Path, int8: Path, batched: bool = True) -> float:
    """Max |score difference| of the two graphs on an example request (batched: 3 users)."""
    from semirec.trainer.registry.export import example_batch, example_request, onnx_session

    scores = []
    for path in (fp32, int8):
        session = onnx_session(path)
        inputs = {i.name: i for i in session.get_inputs()}
        dim = int(inputs["candidates"].shape[-1])
        identity, skipped = "candidate_bucket" in inputs, "skipped" in inputs
        feeds = (example_batch(3, dim, 11, 6, 50, seed=7, identity=identity, skipped=skipped)
                 if batched else example_request(dim, 11, 6, 50, seed=7, identity=identity,
                                                 skipped=skipped))
        if identity:  # any bucket the graph's table holds
            feeds["candidate_bucket"] %= 16
        scores.append(session.run(["score"], {k: v for k, v in feeds.items() if k in inputs})[0])
    return float(np.abs(scores[0] - scores[1]).max())


class Int8ParityError(RuntimeError):
    """The int8 copy's scores are too far from the fp32 graph's to serve."""


def quantize_checked(model_onnx: Path, out: Path, batched: bool = True) -> float:
    """Write the int8 copy of ``model_onnx`` to ``out`` and return its max score difference to
    the fp32 graph: 8-bit weights where the CPU has VNNI, 7-bit ones (``reduce_range``) where it
    has not or the 8-bit copy misses the bound (seen on an AVX2-only EPYC: 0.013-0.037 ->
    0.003-0.004). Raises :class:`Int8ParityError` when neither copy's scores are within
    :data:`INT8_MAX_DIFF` of the fp32 graph's."""
    model_onnx = Path(model_onnx)
    seven_bit = not has_vnni()
    quantize_int8(model_onnx, out, reduce_range=seven_bit)
    diff = int8_diff(model_onnx, out, batched)
    if not diff <= INT8_MAX_DIFF and not seven_bit:
        log.warning("int8 ranker: 8-bit weights differ from fp32 by %.4f > %s; trying 7-bit "
                    "weights (reduce_range)", diff, INT8_MAX_DIFF)
        quantize_int8(model_onnx, out, reduce_range=True)
        diff = int8_diff(model_onnx, out, batched)
    if not diff <= INT8_MAX_DIFF:
        raise Int8ParityError(f"int8 ranker: scores differ from fp32 by {diff:.4f} > {INT8_MAX_DIFF}")
    log.info("int8 ranker %s (max score difference to fp32 %.4f)", model_onnx.with_name(INT8_ONNX), diff)
    return diff


def ensure_int8(model_onnx: Path, batched: bool = True) -> Path:
    """The int8 copy beside ``model_onnx`` (:func:`quantize_checked`; made once, atomic)."""
    model_onnx = Path(model_onnx)
    return durable.build_once(model_onnx.with_name(INT8_ONNX),
                              lambda tmp: quantize_checked(model_onnx, tmp, batched))


def model_for(model_onnx: Path, precision: str, batched: bool = True) -> Path:
    """The graph to load for ``precision`` on this CPU: ``model_onnx`` itself, or its int8 copy."""
    if resolve(precision) == "int8":
        return ensure_int8(model_onnx, batched)
    return Path(model_onnx)
