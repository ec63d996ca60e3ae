"""Train/serve sequence-length skew of the demo's quick-trained ranker (validation metrics only).

The demo trains its ranker (``semirec.sim.orchestrator.TRAIN_MODEL``) with ``--quick``
settings, whose sequences hold the newest 20 entries per list, and serves it with
``SEMIREC_SEQ_LEN`` (50). Per seed this trains the model on the generated world at each
``--train-lens`` length and scores the validation and test watches at each ``--score-lens``
length (the `semirec evaluate` protocol, item vectors of ``--encoder``):

  runs[]                    seed, train_len, best_epoch, seconds, and per scored length L:
                            val_auc_at_L, val_gauc_at_L, test_auc_at_L, test_gauc_at_L
  mean_val_auc_at_serving   per train length: mean validation AUC at ``--serving-len`` (what
                            to choose on)

Usage: python -m benchmarks.seq_len_skew [--encoder DIR] [--seeds 3] [--train-lens 20,50]
                                         [--score-lens 20,50] [--serving-len 50] [--jobs 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.machine import finish, machine, print_describe

_DATA: dict[str, Any] = {}  # the prepared world, shared with forked workers


def run(spec: tuple[int, int, tuple[int, ...]]) -> dict[str, Any]:
    """Train one (seed, train length) and score it at every length."""
    import torch

    from semirec.sim.orchestrator import TRAIN_MODEL
    from semirec.trainer.offline.evaluate import model_config, train_model
    from semirec.trainer.offline.fit import predict
    from semirec.trainer.offline.metrics import auc, gauc

    seed, train_len, score_lens = spec
    torch.set_num_threads(1)
    data = _DATA["data"]
    cfg = model_config(TRAIN_MODEL, data, True)
    cfg = replace(cfg, train=replace(cfg.train, seq_len=train_len))
    started = time.perf_counter()
    model, info = train_model(TRAIN_MODEL, data, cfg, seed)
    model.eval()
    items = data.features(cfg.id_buckets) if model.identity is not None else None
    out: dict[str, Any] = {"seed": seed, "train_len": train_len, "best_epoch": info["best_epoch"],
                           "seconds": round(time.perf_counter() - started, 1)}
    with torch.no_grad():
        for length in score_lens:
            for split, samples in (("val", data.val), ("test", data.test)):
                logits = predict(model, samples, samples.target[:, None], data.table, length,
                                 items=items)[:, 0]
                out[f"{split}_auc_at_{length}"] = round(auc(samples.label, logits), 4)
                out[f"{split}_gauc_at_{length}"] = round(
                    gauc(samples.user, samples.label, logits), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, default=None,
                        help="item encoder checkpoint (default: $SEMIREC_ENCODER_CHECKPOINT or built-in)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-lens", default="20,50")
    parser.add_argument("--score-lens", default="20,50")
    parser.add_argument("--serving-len", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (forked, 1 thread each)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    train_lens = [int(x) for x in args.train_lens.split(",")]
    score_lens = tuple(sorted({*(int(x) for x in args.score_lens.split(",")), args.serving_len}))

    import torch

    from semirec.trainer.offline.evaluate import EvalProtocol, prepare
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.worlds import load_world

    at_start = machine()
    torch.set_num_threads(1)
    world = load_world("world", seed=0, size="demo")
    vectors = item_vectors(world.items, checkpoint=args.encoder)
    _DATA["data"] = prepare("world", world.items, world.events, vectors, world.true_prob or None,
                            EvalProtocol(max_rank_cases=1000))
    specs = [(s, n, score_lens) for s in range(args.seeds) for n in train_lens]
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        runs = pool.map(run, specs)
    key = f"val_auc_at_{args.serving_len}"
    result: dict[str, Any] = {
        "encoder": None if args.encoder is None else str(args.encoder),
        "serving_len": args.serving_len, "runs": runs,
        "mean_val_auc_at_serving": {
            str(n): round(statistics.mean(r[key] for r in runs if r["train_len"] == n), 4)
            for n in train_lens},
    }
    finish(result, at_start)
    print_describe(result["machine"])
    if not args.json:
        for r in runs:
            print(r)
        print("mean validation AUC at the serving length:", result["mean_val_auc_at_serving"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
