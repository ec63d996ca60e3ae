"""Ranker benchmark: one request (one user, 500 candidates) against this core's sgemm ceiling.

One run, one core (torch.set_num_threads(1), onnxruntime intra_op_num_threads=1):
  sgemm_gflops_1core        best of 30 1024x1024 float32 matmuls (torch, MKL/oneDNN)
  request_flops_500         FLOPs of one 500-candidate SEMI request (matmuls, counted by
                            torch.utils.flop_counter while it runs; elementwise ops not counted)
  request_ms_500_torch      eager torch, user side once + 500 candidates (best of N)
  request_ms_500_onnx       the exported ONNX graph under onnxruntime (best of N)
  request_ms_500            the exported graph's figure (what is served)
  request_ms_500_onnx_int8  its int8 copy (SEMIREC_RANKER_PRECISION=int8; random weights, so
                            parity is measured by benchmarks/ranker_precision.py), with
                            int8_speedup_500 = fp32 / int8 and onnx_int8_max_abs_diff;
                            default_precision: what SEMIREC_RANKER_PRECISION=auto (the
                            default) serves on this CPU (int8 only with VNNI)
  flop_fraction[_torch|_onnx]  request_flops_500 / request time / sgemm FLOP/s   (target >= 0.4)
  cost_ratio_500_vs_1[...]  time(500 candidates) / time(1 candidate)             (target <= 10)
  request_ms_500_unshared_torch  for reference: a batch forward that re-encodes the user for
                            every candidate (what sharing the user side avoids)
  served_ms_per_user        the graph Triton serves (batched: several users a call, the cascade of
                            SEMIREC_RANKER_DEEP_TOP), onnxruntime fp32, one thread: ms per user
                            at 1, 2, 4, 8 and 16 users a call (``top<K>_users<U>``), and at 4
                            users with the network on the wide part's top 10 and on every
                            candidate (``top0``): what a call costs, and what the user side and
                            wide part cost apart from the deep network

Full-length sequences (50 videos, 50 products, with ``+usr`` 50 incomplete watches) and random
weights (cost does not depend on them). ``--model`` (default ``semi``, the figures in the docs
before 2026-12-06) takes any SEMI name, e.g. the demo's ``semi_ccl+sim+ses+usr+id``; ``--set``
changes its sizes as ``semirec evaluate --set`` does (``mlp_hidden=64,block.ffn=64``).
Usage: python -m benchmarks.ranker [--model NAME] [--served] [--set K=V,...] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import finish, machine, print_describe
from benchmarks.sizes import SERVED_HELP, ranker_config
from semirec.cli.evaluate import parse_settings
from semirec.core.settings import Settings
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.nets.zoo import build
from semirec.trainer.registry.export import (
    IDENTITY_INPUTS,
    RequestGraph,
    example_batch,
    export_batched_onnx,
    export_onnx,
    fit_buckets,
    input_names,
    model_request,
    onnx_session,
    run_onnx,
    torch_scores,
    user_batch,
    uses_skipped,
)
from semirec.trainer.registry.precision import DEFAULT_PRECISION, ensure_int8, resolve


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sgemm_gflops(n: int = 1024, repeat: int = 30) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeat) / 1e9


def request_flops(model: Ranker, request: dict[str, np.ndarray]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        RequestGraph(model)(*(torch.from_numpy(request[k]) for k in input_names(model)))
    return counter.get_total_flops()


def unshared_forward(model: Ranker, request: dict[str, np.ndarray]) -> Callable[[], object]:
    """The naive way: a batch of C copies of the user, each scored against one candidate."""
    c = len(request["candidates"])
    t = {k: torch.from_numpy(v) for k, v in request.items()}
    user = user_batch({k: v[None].expand(c, *v.shape) for k, v in t.items()
                       if k != "candidates" and k not in IDENTITY_INPUTS})
    items = (tuple(t[k][:, None] for k in IDENTITY_INPUTS) if model.identity is not None
             else None)

    def run() -> object:
        with torch.inference_mode():
            return model(user, t["candidates"], items)

    return run


def served_ms_per_user(model: Ranker, candidates: int, repeat: int, tmp: Path) -> dict[str, float]:
    """ms per user of the batched (served) graph, best of ``repeat`` (module doc)."""
    deep = Settings().ranker_deep_top
    sessions = {top: onnx_session(export_batched_onnx(model, tmp / f"served_{top}.onnx", deep_top=top),
                                  threads=1) for top in (deep, 10, 0)}
    out = {}
    for top, users in [(deep, u) for u in (1, 2, 4, 8, 16)] + [(10, 4), (0, 4)]:
        session = sessions[top]
        batch = fit_buckets(model, example_batch(users, candidates=candidates,
                                                 identity=model.identity is not None,
                                                 skipped=uses_skipped(model)))
        names = {i.name for i in session.get_inputs()}
        feeds = {k: v for k, v in batch.items() if k in names}
        seconds = best_seconds(lambda s=session, f=feeds: s.run(["score"], f), repeat)
        out[f"top{top}_users{users}"] = round(seconds * 1e3 / users, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--model", default="semi", help="a SEMI model name (default: %(default)s)")
    parser.add_argument("--set", dest="settings", default="",
                        help="sizes as `semirec evaluate --set` takes them, e.g. mlp_hidden=64")
    parser.add_argument("--served", action="store_true", help=SERVED_HELP)
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    at_start = machine()

    sgemm = sgemm_gflops()
    settings = parse_settings(args.settings)
    model = build(ranker_config(args.model, settings, args.served)).eval()
    big, one = model_request(model, candidates=args.candidates), model_request(model, candidates=1)
    flops = request_flops(model, big)

    out: dict[str, Any] = {"model": args.model, "served_sizes": args.served, "settings": settings,
                           "sgemm_gflops_1core": round(sgemm, 1), "request_flops_500": flops}
    torch_500 = best_seconds(lambda: torch_scores(model, big), args.repeat)
    torch_1 = best_seconds(lambda: torch_scores(model, one), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(export_onnx(model, Path(tmp) / "semi.onnx"), threads=1)
        onnx_500 = best_seconds(lambda: run_onnx(session, big), args.repeat)
        onnx_1 = best_seconds(lambda: run_onnx(session, one), args.repeat)
        parity = float(np.abs(run_onnx(session, big) - torch_scores(model, big)).max())
        int8 = onnx_session(ensure_int8(Path(tmp) / "semi.onnx", batched=False), threads=1)
        int8_500 = best_seconds(lambda: run_onnx(int8, big), args.repeat)
        int8_1 = best_seconds(lambda: run_onnx(int8, one), args.repeat)
        int8_diff = float(np.abs(run_onnx(int8, big) - run_onnx(session, big)).max())
        out["served_ms_per_user"] = served_ms_per_user(model, args.candidates, args.repeat, Path(tmp))
    unshared = best_seconds(unshared_forward(model, big), max(2, args.repeat // 10))

    for name, t500, t1 in (("torch", torch_500, torch_1), ("onnx", onnx_500, onnx_1)):
        out[f"request_ms_500_{name}"] = round(t500 * 1e3, 3)
        out[f"request_ms_1_{name}"] = round(t1 * 1e3, 3)
        out[f"flop_fraction_{name}"] = round(flops / t500 / (sgemm * 1e9), 3)
        out[f"cost_ratio_500_vs_1_{name}"] = round(t500 / t1, 2)
    out["request_ms_500"] = out["request_ms_500_onnx"]
    out["flop_fraction"] = out["flop_fraction_onnx"]
    out["cost_ratio_500_vs_1"] = out["cost_ratio_500_vs_1_onnx"]
    out["request_ms_500_unshared_torch"] = round(unshared * 1e3, 1)
    out["ideal_ms_500"] = round(flops / (sgemm * 1e9) * 1e3, 3)
    out["onnx_max_abs_diff"] = parity
    out["request_ms_500_onnx_int8"] = round(int8_500 * 1e3, 3)
    out["request_ms_1_onnx_int8"] = round(int8_1 * 1e3, 3)
    out["int8_speedup_500"] = round(onnx_500 / int8_500, 3)
    out["onnx_int8_max_abs_diff"] = round(int8_diff, 5)
    out["default_precision"] = resolve(DEFAULT_PRECISION)
    finish(out, at_start)
    print_describe(out["machine"])

    if not args.json:
        width = max(map(len, out))
        for key, value in out.items():
            print(f"{key:<{width}}  {value}")
        print(f"targets: flop_fraction >= 0.4 ({out['flop_fraction']}), "
              f"cost_ratio_500_vs_1 <= 10 ({out['cost_ratio_500_vs_1']}); "
              f"best-of-{args.repeat} timings on one core")
    else:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
