"""Two served ranker graphs of the same weights, timed in turn in one process (a before/after).

Best-of-N timings move by up to 40% between runs on a shared virtual machine; two graphs run
alternately in one process share that drift, so their ratio is what a change of the graph
(or of the exporter) did. Two steps, the first once per checkout:

  python -m benchmarks.graph_pair export OUT.onnx [--model NAME] [--served] [--set K=V,...] [--seed S]
      the batched graph Triton serves (the cascade of SEMIREC_RANKER_DEEP_TOP), of a model
      with seeded random weights (its wide part made non-zero, so the cascade's order is not
      arbitrary), as this checkout exports it: run it in a worktree of each revision
  python -m benchmarks.graph_pair time BEFORE.onnx AFTER.onnx [--users 1,4,8] [--rounds N] [--json]
      onnxruntime fp32, one thread, 500 candidates, full sequences; per user count the
      best and the 25th percentile of N alternating calls, in ms per user, ``ratio`` =
      after / before (p25), and the largest score difference between the two graphs

Last line with --json: one JSON object (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import finish, machine, print_describe
from benchmarks.sizes import SERVED_HELP


def export(out: Path, model_name: str, settings: str, seed: int, served: bool = False) -> None:
    import torch

    from benchmarks.sizes import ranker_config
    from semirec.cli.evaluate import parse_settings
    from semirec.core.settings import Settings
    from semirec.trainer.nets.zoo import build
    from semirec.trainer.registry.export import export_batched_onnx

    torch.manual_seed(seed)
    model = build(ranker_config(model_name, parse_settings(settings), served)).eval()
    with torch.no_grad():
        if model.has_wide_part:
            model.similarity_weight.weight.normal_()
    export_batched_onnx(model, out, deep_top=Settings().ranker_deep_top)


def feeds_for(session: Any, users: int) -> dict[str, np.ndarray]:
    from semirec.trainer.registry.export import example_batch

    names = {i.name for i in session.get_inputs()}
    batch = example_batch(users, candidates=500, identity="candidate_bucket" in names,
                          skipped="skipped" in names)
    if "candidate_bucket" in batch:  # within any model's bucket count
        batch["candidate_bucket"] %= 1024
    return {k: v for k, v in batch.items() if k in names}


def time_pair(before: Path, after: Path, users: list[int], rounds: int) -> dict[str, Any]:
    from semirec.trainer.registry.export import onnx_session

    sessions = [onnx_session(before, threads=1), onnx_session(after, threads=1)]
    out: dict[str, Any] = {}
    for n in users:
        feeds = feeds_for(sessions[1], n)
        scores = [s.run(["score"], feeds)[0] for s in sessions]
        times: list[list[float]] = [[], []]
        for _ in range(rounds):
            for s, t in zip(sessions, times, strict=True):
                started = time.perf_counter()
                s.run(["score"], feeds)
                t.append((time.perf_counter() - started) * 1e3 / n)
        p25 = [float(np.percentile(t, 25)) for t in times]
        out[f"users{n}"] = {"before_min": round(min(times[0]), 3), "before_p25": round(p25[0], 3),
                            "after_min": round(min(times[1]), 3), "after_p25": round(p25[1], 3),
                            "ratio": round(p25[1] / p25[0], 3),
                            "max_abs_diff": float(np.abs(scores[0] - scores[1]).max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="this checkout's served graph of seeded random weights")
    ex.add_argument("out", type=Path)
    ex.add_argument("--model", default="semi_ccl+sim+ses+usr+id")
    ex.add_argument("--set", dest="settings", default="block.ffn=64,mlp_hidden=64")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--served", action="store_true", help=SERVED_HELP)
    tp = sub.add_parser("time", help="the two graphs in turn")
    tp.add_argument("before", type=Path)
    tp.add_argument("after", type=Path)
    tp.add_argument("--users", default="1,4,8")
    tp.add_argument("--rounds", type=int, default=60)
    tp.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.command == "export":
        export(args.out, args.model, args.settings, args.seed, args.served)
        print(f"wrote {args.out}")
        return
    at_start = machine()
    result = finish({"before": str(args.before), "after": str(args.after),
                     **time_pair(args.before, args.after,
                                 [int(u) for u in args.users.split(",")], args.rounds)}, at_start)
    print_describe(result["machine"])
    if args.json:
        print(json.dumps(result))
    else:
        for key, r in result.items():
            if key.startswith("users"):
                print(f"{key}: before {r['before_p25']:.3f} ms/user (best {r['before_min']:.3f}), "
                      f"after {r['after_p25']:.3f} (best {r['after_min']:.3f}), "
                      f"ratio {r['ratio']:.3f}, max |diff| {r['max_abs_diff']:.2g}")


if __name__ == "__main__":
    main()
