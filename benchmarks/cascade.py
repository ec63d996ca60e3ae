"""Where the served ranker's top 10 lies in the order of its own cheap (wide) terms.

Issue 24 asks for fewer per-candidate FLOPs with the same ranking. The served SEMI model's logit
is ``deep(user, candidate) + wide(features) + identity(item)``: the deep part (target attention
per domain, the head) costs ~7x the wide part (linear term over the similarity / session / user
rate features, plus item identity) per candidate. If the model's top 10 always lies within the
first K candidates by the wide part alone, a cascade (all candidates by the wide part, the
deep part on its top K) ranks the top 10 exactly, at a fraction of the FLOPs. The cascade
measured is the served one (``SEMIREC_RANKER_DEEP_TOP``,
:func:`semirec.trainer.registry.export.cascade_probs`); the wide part's order is that of a
cascade of 1 (its rest keep the wide part's order).

Trains the served model as ``semirec.sim.ranker_check`` does (the demo's world, ``--quick``, the
item vectors of ``$SEMIREC_ENCODER_CHECKPOINT``), builds real requests as serving builds them
(the state before each of the last ``--cases`` picked video watches, serving's recall candidates
then, incomplete watches, the candidates' counts) and reports per seed:

  deepest_wide_rank        percentiles (50, 90, 99, 100) over the requests of the deepest
                           0-based position, in the wide part's order, of the model's top 10
  top10_overlap[K]         mean |top-10 full & top-10 cascade K| / 10 (and its minimum)
  flops_full / flops_cascade[K]  matmul FLOPs of one 500-candidate request, full and cascade
                           (torch.utils.flop_counter; the user side included in both)
  ms_full / ms_cascade[K]  CPU ms of that request in eager torch, one thread (best of 20)

``--onnx-timing`` times instead the exported request graph under onnxruntime (one thread), full
and cascaded (K of :data:`KS`, the graph ``semirec model export`` writes with
``SEMIREC_RANKER_DEEP_TOP=K``; 500 candidates, random weights, as ``benchmarks/ranker.py``):
three interleaved rounds, best of 30 each, in ms.

``--checkpoint DIR`` (repeatable) measures saved rankers instead, e.g. the versions the online
trainer promoted in a demo run (``RUN/models/ranker/<n>/checkpoint``), on the same requests.
No truth is read: only logged events and the model's own scores.
Usage: python -m benchmarks.cascade [--seeds 3] [--cases 300] [--checkpoint DIR ...] [--onnx-timing] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import finish, machine, print_describe

MODEL = "semi_ccl+sim+ses+usr+id"  # the demo's (semirec.sim.orchestrator.TRAIN_MODEL)
KS = (50, 100, 150, 200)


def requests(world: Any, vectors: np.ndarray, cases: int) -> list[tuple[Any, ...]]:
    """(user id, state, candidate ids, candidate vectors, ts): the TRUTH DIAGNOSTIC's cases
    (:func:`semirec.sim.truth_diagnostic.serving_cases`, which read no truth)."""
    from semirec.sim.truth_diagnostic import serving_cases

    rows = {it["item_id"]: i for i, it in enumerate(world.items)}
    return [(e.user_id, state, ids, vectors[[rows[v] for v in ids]], e.ts)
            for e, state, ids, _ in serving_cases(world, vectors, cases)]


def measure(model: Any, world: Any, vectors: np.ndarray, cases: list[tuple[Any, ...]]) -> dict[str, Any]:
    from semirec.sim.truth_diagnostic import request_scorer
    from semirec.trainer.registry.export import torch_scores

    seen: list[dict[str, np.ndarray]] = []

    def run(tensors: dict[str, np.ndarray]) -> np.ndarray:
        seen.append({k: v[0] for k, v in tensors.items()})
        return np.zeros(tensors["candidates"].shape[1])

    score = request_scorer(world, vectors, run, seq_len=50, skipped=True,
                           id_buckets=model.identity.bias.num_embeddings)
    for case in cases:
        score(*case)
    deepest: list[int] = []
    overlap: dict[int, list[float]] = {k: [] for k in KS}
    for t in seen:
        full = torch_scores(model, t)
        # the wide part's order: a cascade of 1 keeps the rest in that order, below the first
        position = np.empty(len(full), int)
        position[np.argsort(-torch_scores(model, t, deep_top=1), kind="stable")] = np.arange(len(full))
        top = np.argsort(-full, kind="stable")[:10]
        deepest.append(int(position[top].max()))
        for k in KS:
            got = np.argsort(-torch_scores(model, t, deep_top=k), kind="stable")[:10]
            overlap[k].append(len(set(top) & set(got)) / 10)
    flops, ms = {}, {}
    big = max(seen, key=lambda t: t["candidates"].shape[0])
    for k in (0, *KS):
        with FlopCounterMode(display=False) as counter:
            torch_scores(model, big, deep_top=k)
        flops[k] = counter.get_total_flops()
        best = float("inf")
        for _ in range(20):
            start = time.process_time()
            torch_scores(model, big, deep_top=k)
            best = min(best, time.process_time() - start)
        ms[k] = round(best * 1e3, 2)
    return {"requests": len(seen), "candidates": int(big["candidates"].shape[0]),
            "deepest_wide_rank": np.percentile(deepest, [50, 90, 99, 100]).round(1).tolist(),
            "top10_overlap": {str(k): round(float(np.mean(v)), 4) for k, v in overlap.items()},
            "top10_overlap_min": {str(k): float(np.min(v)) for k, v in overlap.items()},
            "flops_full": flops[0], "flops_cascade": {str(k): flops[k] for k in KS},
            "ms_full": ms[0], "ms_cascade": {str(k): ms[k] for k in KS}}


def onnx_timing(rounds: int = 3, repeat: int = 30) -> dict[str, Any]:
    """ms per 500-candidate request under onnxruntime, full (``"0"``) and cascaded per K."""
    import tempfile
    import warnings

    from benchmarks.ranker import best_seconds
    from semirec.cli.evaluate import parse_settings
    from semirec.trainer.nets.configs import paper
    from semirec.trainer.nets.zoo import build
    from semirec.trainer.offline.evaluate import override
    from semirec.trainer.registry.export import export_onnx, model_request, onnx_session, run_onnx

    torch.manual_seed(0)
    model = build(override(paper(MODEL), parse_settings("block.ffn=64,mlp_hidden=64"))).eval()
    with torch.no_grad():  # zero at the start of training: an order for the TopK to follow
        model.similarity_weight.weight.normal_()
    request = model_request(model, candidates=500)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (0, *KS):
            path = export_onnx(model, Path(tmp) / f"cascade-{k}.onnx", deep_top=k)
            sessions[k] = onnx_session(path, threads=1)
        ms: dict[str, list[float]] = {str(k): [] for k in sessions}
        for _ in range(rounds):
            for k, session in sessions.items():
                ms[str(k)].append(round(best_seconds(lambda s=session: run_onnx(s, request),
                                                     repeat) * 1e3, 3))
    return {"ms_onnx": ms, "candidates": 500}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--checkpoint", action="append", default=[], type=Path,
                        help="a ranker checkpoint to measure instead of training (repeatable)")
    parser.add_argument("--onnx-timing", action="store_true",
                        help="time the exported graph, full and cascaded, instead")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = parser.parse_args()
    at_start = machine()
    print_describe(at_start)
    torch.set_num_threads(1)
    if args.onnx_timing:
        out = finish({"model": MODEL, **onnx_timing()}, at_start)
        print(json.dumps(out))
        return

    from semirec.trainer.nets import checkpoint
    from semirec.trainer.offline.evaluate import model_config, prepare, train_model
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.worlds import load_world

    world = load_world("world", seed=0, size="demo", users=300, new_videos=30)
    vectors = item_vectors(world.items)
    data = prepare("world", world.items, world.events, vectors)
    cases = requests(world, vectors, args.cases)
    runs = []
    for path in args.checkpoint:
        model, _, meta = checkpoint.load(path)
        row = {"checkpoint": str(path), "promotion_metrics": meta.get("metrics", {}),
               **measure(model, world, vectors, cases)}
        runs.append(row)
        if not args.json:
            print(json.dumps(row))
    cfg = model_config(MODEL, data, True)
    for seed in range(0 if args.checkpoint else args.seeds):
        model, info = train_model(MODEL, data, cfg, seed)
        model.eval()
        row = {"seed": seed, "best_epoch": info["best_epoch"], **measure(model, world, vectors, cases)}
        runs.append(row)
        if not args.json:
            print(json.dumps(row))
    out = finish({"model": MODEL, "runs": runs}, at_start)
    print(json.dumps(out) if args.json else f"done: {len(runs)} seeds")


if __name__ == "__main__":
    main()
