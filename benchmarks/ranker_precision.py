"""Ranker precision parity: int8 (SEMIREC_RANKER_PRECISION=int8) against fp32, on a trained model.

Trains ``--model`` (default ``semi_ccl+sim+id``, the model of docs/serving.md's first parity
figures; the demo serves ``semi_ccl+sim+ses+usr+id``, whose incomplete watches it feeds too;
``--quick`` as the demo; ``--full``: the paper's settings) on a generated world of the demo's
size (the item vectors of ``$SEMIREC_ENCODER_CHECKPOINT``), exports its batched graph, makes the
int8 copy (semirec.trainer.registry.precision) and measures, both graphs under onnxruntime:

  requests                  real requests: the state of the user just before each of the last
                            ``--requests`` video watches of the history, serving's recall
                            candidates at that moment (popularity = complete watches of the last
                            24 h) and the candidates' watch counts before it (item identity)
  top10_overlap_mean/min    |top-10 fp32 & top-10 int8| / 10 over those requests (goal >= 0.95)
  auc_*, gauc_*             the `semirec evaluate` protocol's AUC / GAUC on the held-out
                            (chronologically last) logged watches, fp32 and int8 (goal: |diff|
                            <= 0.002), and the torch figure of the evaluate path beside them
  ms_per_request_*          CPU per request (process time, one thread, one user per call) over
                            the same requests, fp32 and int8
  max_abs_diff              max |P_int8 - P_fp32| over every candidate of every request

Usage: python -m benchmarks.ranker_precision [--requests 1000] [--seed 0] [--full] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import finish, machine, print_describe

# the model of the first parity figures in docs/serving.md (the demo's until issue 21; it now
# serves semirec.sim.orchestrator.TRAIN_MODEL, measured with --model)
MODEL = "semi_ccl+sim+id"
GOAL_OVERLAP, GOAL_AUC = 0.95, 0.002


def real_requests(world: Any, vectors: np.ndarray, n: int, id_buckets: int,
                  skipped: bool = False) -> list[dict[str, np.ndarray]]:
    """Serving's tensors for the last ``n`` video watches of ``world``'s history (module doc);
    ``skipped``: with the user's incomplete watches (a ``+usr`` model)."""
    from semirec.core.contracts import Domain
    from semirec.core.sequences import UserState, apply
    from semirec.serving.catalog import CatalogIndex
    from semirec.serving.features import identity_tensors, rank_request
    from semirec.serving.popularity import PopularitySnapshot
    from semirec.serving.recall import Recall

    catalog = CatalogIndex(vectors.shape[1])
    catalog.upsert([it["item_id"] for it in world.items], vectors,
                   [Domain(it["domain"]) for it in world.items])
    snapshot = PopularitySnapshot()
    recall = Recall(catalog, snapshot)
    events = world.events
    picked = set([i for i, e in enumerate(events) if e.domain == "video"][-n:])
    states: dict[str, UserState] = {}
    watches: Counter[str] = Counter()
    completes: Counter[str] = Counter()
    recent: list[tuple[float, str]] = []
    out = []
    for i, e in enumerate(events):
        if i in picked:
            state = states.get(e.user_id)
            snapshot.counts = dict(Counter(v for t, v in recent if t > e.ts - 24 * 3600))
            snapshot.ranked = sorted(snapshot.counts, key=lambda v: -snapshot.counts[v])
            snapshot.version += 1
            cands = recall.candidates(state)
            ids = [c.item_id for c in cands]
            vecs = catalog.vectors(ids)[0]
            tensors = dict(rank_request(state, vecs, catalog, at=e.ts, skipped=skipped).tensors)
            if id_buckets:
                tensors.update(identity_tensors(
                    ids, np.array([watches[c] for c in ids], np.float32),
                    np.array([completes[c] for c in ids], np.float32), id_buckets))
            out.append(tensors)
        apply(states.setdefault(e.user_id, UserState()), [(e, i)])
        if e.domain == "video":
            watches[e.item_id] += 1
            if e.complete:
                completes[e.item_id] += 1
                recent.append((e.ts, e.item_id))
    return out


def onnx_scorer(session: Any, data: Any, items: Any, seq_len: int):
    """The evaluate protocol's scorer (samples, candidate rows [S, C]) -> [S, C], through the
    batched graph (probabilities: the same order as the logits)."""
    from semirec.trainer.offline.samples import length_batches, user_batch

    names = {i.name for i in session.get_inputs()}

    def score(samples: Any, candidates: np.ndarray) -> np.ndarray:
        n, c = candidates.shape
        out = np.empty((n, c), np.float32)
        step = max(1, min(256, 16384 // max(c, 1)))
        for idx in length_batches(samples, np.arange(n), step, seq_len):
            user = user_batch(samples, idx, data.table, seq_len)
            rows = np.ascontiguousarray(candidates[idx])
            feeds = {"video": user.video, "video_age": user.video_age, "video_mask": user.video_mask,
                     "product": user.product, "product_age": user.product_age,
                     "product_mask": user.product_mask,
                     "candidates": data.table[torch.from_numpy(rows).long()]}
            if user.skipped is not None:  # a +usr model's incomplete watches
                feeds.update(skipped=user.skipped, skipped_age=user.skipped_age,
                             skipped_mask=user.skipped_mask)
            feeds = {k: v.numpy() for k, v in feeds.items()}
            if items is not None:
                bucket, w, done = items.inputs(rows, samples.ts[idx], idx)
                feeds.update(candidate_bucket=bucket.numpy().astype(np.int64),
                             candidate_watches=w.numpy().astype(np.float32),
                             candidate_completes=done.numpy().astype(np.float32))
            out[idx] = session.run(["score"], {k: v for k, v in feeds.items() if k in names})[0]
        return out

    return score


def top_overlap(a: np.ndarray, b: np.ndarray, n: int, k: int = 10) -> float:
    k = min(k, n)
    return len(set(np.argsort(-a[:n])[:k]) & set(np.argsort(-b[:n])[:k])) / k


def cpu_ms(session: Any, requests: list[dict[str, np.ndarray]], repeat: int) -> float:
    names = {i.name for i in session.get_inputs()}
    feeds = [{k: v for k, v in r.items() if k in names} for r in requests]
    for f in feeds[:20]:
        session.run(["score"], f)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for f in feeds:
            session.run(["score"], f)
        best = min(best, (time.process_time() - start) / len(feeds) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--users", type=int, default=300, help="the demo's default")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--repeat", type=int, default=3, help="timing passes over the requests")
    parser.add_argument("--full", action="store_true", help="paper settings, not --quick's")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    at_start = machine()
    print_describe(at_start)

    from semirec.trainer.offline.evaluate import EvalProtocol, measure, model_config, prepare, train_model
    from semirec.trainer.offline.fit import predict
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.trainer.registry.export import export_batched_onnx, onnx_session, uses_skipped
    from semirec.trainer.registry.precision import ensure_int8
    from semirec.worlds import load_world

    started = time.perf_counter()
    world = load_world("world", seed=0, size="demo", users=args.users, new_videos=30)
    vectors = item_vectors(world.items)
    data = prepare("world", world.items, world.events, vectors, protocol=EvalProtocol(max_rank_cases=200))
    cfg = model_config(args.model, data, not args.full)
    model, info = train_model(args.model, data, cfg, args.seed)
    items = data.features(cfg.id_buckets) if model.identity is not None else None
    id_buckets = cfg.id_buckets if model.identity is not None else 0
    out: dict[str, Any] = {"model": args.model, "seed": args.seed, "quick": not args.full,
                           "stats": data.stats(),
                           "best_epoch": info["best_epoch"], "val_auc": info["val_auc"]}

    def torch_scorer(samples: Any, candidates: np.ndarray) -> np.ndarray:
        return predict(model, samples, candidates, data.table, cfg.train.seq_len, items=items)

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_batched_onnx(model.eval(), Path(tmp) / "model.onnx", vectors.shape[1])
        int8_path = ensure_int8(fp32_path)
        sessions = {"fp32": onnx_session(fp32_path), "int8": onnx_session(int8_path)}
        out["size_mb"] = {"fp32": round(fp32_path.stat().st_size / 2**20, 2),
                          "int8": round(int8_path.stat().st_size / 2**20, 2)}
        metrics = {"torch": measure(torch_scorer, data)}
        for name, session in sessions.items():
            metrics[name] = measure(onnx_scorer(session, data, items, cfg.train.seq_len), data)
        for m in ("auc", "gauc", "hr@10", "ndcg@10", "auc_shown"):
            for name in metrics:
                if m in metrics[name]:
                    out[f"{m}_{name}"] = round(float(metrics[name][m]), 5)
        out["auc_diff"] = round(abs(out["auc_int8"] - out["auc_fp32"]), 5)
        out["gauc_diff"] = round(abs(out["gauc_int8"] - out["gauc_fp32"]), 5)

        requests = real_requests(world, vectors, args.requests, id_buckets,
                                 skipped=uses_skipped(model))
        overlaps, diffs, sizes = [], [], []
        for r in requests:
            n = int(r["candidates"].shape[1])
            a, b = (sessions[p].run(["score"], {k: v for k, v in r.items()
                                                if k in {i.name for i in sessions[p].get_inputs()}})[0][0]
                    for p in ("fp32", "int8"))
            overlaps.append(top_overlap(a, b, n))
            diffs.append(float(np.abs(a - b).max()))
            sizes.append(n)
        out["requests"] = len(requests)
        out["candidates_mean"] = round(float(np.mean(sizes)), 1)
        out["top10_overlap_mean"] = round(float(np.mean(overlaps)), 4)
        out["top10_overlap_min"] = round(float(np.min(overlaps)), 2)
        out["top10_overlap_p05"] = round(float(np.percentile(overlaps, 5)), 2)
        out["max_abs_diff"] = round(float(np.max(diffs)), 5)
        for name, session in sessions.items():
            out[f"ms_per_request_{name}"] = round(cpu_ms(session, requests, args.repeat), 3)
    out["cpu_ratio_int8"] = round(out["ms_per_request_fp32"] / out["ms_per_request_int8"], 3)
    out["parity"] = bool(out["top10_overlap_mean"] >= GOAL_OVERLAP and out["auc_diff"] <= GOAL_AUC
                         and out["gauc_diff"] <= GOAL_AUC)
    out["seconds"] = round(time.perf_counter() - started, 1)
    finish(out, at_start)
    if not args.json:
        for key, value in out.items():
            if key not in ("machine", "stats"):
                print(f"{key:<24} {value}")
        print(f"goals: top10_overlap_mean >= {GOAL_OVERLAP}, |auc|,|gauc| diff <= {GOAL_AUC}: "
              f"{'met' if out['parity'] else 'NOT met'}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
