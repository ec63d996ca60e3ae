"""The offline evaluation protocol (§4.1-4.2, adapted) and one run of every model over seeds.

- Samples: one per video watch, with the user's sequences before it (:mod:`trainer.samples`).
- Split: chronological; the last 20% of watches by time are the test set, the last 10% of the
  rest the validation set (early stopping), the remainder the training set.
- AUC of P(complete) over all test watches (and the oracle AUC of the true probability where the
  world knows it).
- HR@3 against 300 random videos the user never watched (the paper's protocol) and HR@10 /
  NDCG@10 against 100, for each positive test watch (or a fixed random subset of them). The
  negatives depend only on the protocol seed, so every model and training seed sees the same ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from semirec.contracts import Domain, Event
from trainer.ccl import init_from_ccl
from trainer.configs import MODEL_NAMES, ModelConfig, paper, quick, scaled
from trainer.fit import Tick, fit, item_scale, predict, pretrain_ccl
from trainer.metrics import auc, hit_rate, ndcg
from trainer.ranker import Ranker
from trainer.registry import build
from trainer.samples import SampleSet, build_samples, ccl_records, chronological_split
from trainer.semi import SEMI


@dataclass(frozen=True)
class EvalProtocol:
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    hr3_negatives: int = 300
    hr10_negatives: int = 100
    max_rank_cases: int = 0  # 0 = every positive test watch
    seed: int = 0


@dataclass
class Prepared:
    """A data set made ready for the protocol."""

    name: str
    table: torch.Tensor  # [1 + items, d]; row 0 is padding
    train: SampleSet
    val: SampleSet
    test: SampleSet
    oracle_auc: float | None
    cases: np.ndarray  # indices into ``test`` of the ranking cases (positive watches)
    negatives_300: np.ndarray  # [R, hr3_negatives] item rows
    negatives_100: np.ndarray  # [R, hr10_negatives] item rows
    protocol: EvalProtocol
    oracle: dict[str, Any] | None = None  # every metric of the true probability, if known

    def stats(self) -> dict[str, Any]:
        return {
            "items": int(self.table.shape[0] - 1),
            "train": len(self.train), "val": len(self.val), "test": len(self.test),
            "test_positive_rate": float(self.test.label.mean()),
            "rank_cases": len(self.cases),
            "mean_video_len": float(self.train.lengths("video").mean()),
            "mean_product_len": float(self.train.lengths("product").mean()),
        }


def _sample_unwatched(
    cases_user: np.ndarray, watched: Mapping[str, set[int]], videos: np.ndarray, n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    out = np.empty((len(cases_user), n), np.int32)
    pools: dict[str, np.ndarray] = {}
    for i, u in enumerate(cases_user.tolist()):
        if u not in pools:
            pools[u] = np.setdiff1d(videos, np.fromiter(watched[u], np.int64), assume_unique=True)
        pool = pools[u]
        if not len(pool):
            raise ValueError(f"user {u!r} has watched every video: no negatives to sample")
        out[i] = rng.choice(pool, n, replace=len(pool) < n)
    return out


def prepare(
    name: str,
    items: Sequence[Mapping[str, Any]],
    events: Iterable[Event],
    vectors: np.ndarray,
    true_prob: Mapping[str, float] | None = None,
    protocol: EvalProtocol | None = None,
    seq_len: int = 50,
    bucket_s: int = 3600,
    item_probs: Callable[[str, Sequence[str], float], np.ndarray] | None = None,
) -> Prepared:
    """Samples, split, oracle AUC and fixed ranking negatives for one data set.

    With ``item_probs`` (the generated world's true P(complete) of any video for a user at a
    time) the oracle's ranking metrics are measured too (``Prepared.oracle``)."""
    protocol = protocol or EvalProtocol()
    if len(vectors) != len(items):
        raise ValueError(f"{len(vectors)} vectors for {len(items)} items")
    rows = {str(it["item_id"]): i + 1 for i, it in enumerate(items)}
    table = torch.from_numpy(
        np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors.astype(np.float32)])
    )
    events = list(events)
    samples = build_samples(events, rows, seq_len=seq_len, bucket_s=bucket_s)
    train, val, test = chronological_split(samples, protocol.test_fraction, protocol.val_fraction)
    oracle = None
    if true_prob:
        oracle = auc(test.label, np.array([true_prob[e] for e in test.event]))
    rng = np.random.default_rng(protocol.seed)
    cases = np.flatnonzero(test.label > 0)
    if protocol.max_rank_cases and len(cases) > protocol.max_rank_cases:
        cases = np.sort(rng.choice(cases, protocol.max_rank_cases, replace=False))
    # "not watched by the user": no watch of it anywhere in the log, complete or not
    watched: dict[str, set[int]] = {}
    for e in events:
        if e.domain is Domain.VIDEO:
            watched.setdefault(e.user_id, set()).add(rows[e.item_id])
    videos = np.array(sorted(r for it, r in zip(items, rows.values(), strict=True)
                             if it["domain"] == "video"), np.int64)
    case_users = test.user[cases]
    data = Prepared(
        name, table, train, val, test, oracle, cases,
        _sample_unwatched(case_users, watched, videos, protocol.hr3_negatives, rng),
        _sample_unwatched(case_users, watched, videos, protocol.hr10_negatives, rng),
        protocol,
    )
    if item_probs is not None:
        ids = np.array(["", *rows], dtype=object)  # row -> item_id

        def truth(samples: SampleSet, candidates: np.ndarray) -> np.ndarray:
            return np.stack([
                item_probs(str(u), list(ids[c]), float(t))
                for u, c, t in zip(samples.user, candidates, samples.ts, strict=True)
            ])

        data.oracle = measure(truth, data)
    return data


Scorer = Callable[[SampleSet, np.ndarray], np.ndarray]  # (samples, item rows [S, C]) -> [S, C]


class Popularity:
    """Score = log(1 + completed watches of the item in the training set)."""

    def __init__(self, train: SampleSet, n_rows: int) -> None:
        counts = np.bincount(train.target[train.label > 0], minlength=n_rows)
        self.score = np.log1p(counts).astype(np.float32)

    def __call__(self, samples: SampleSet, candidates: np.ndarray) -> np.ndarray:
        return self.score[candidates]


def model_config(
    name: str, data: Prepared, quick_mode: bool, train_fraction: float = 1.0
) -> ModelConfig:
    """Paper settings, scaled to the data (:func:`scaled`), optionally quick; the model width
    is the item vectors' width (SEMI adds time embeddings to the item vectors).
    ``train_fraction`` < 1 trains on a random share of the training samples (learning curves)."""
    cfg = paper(name)
    cfg = replace(cfg, block=replace(cfg.block, dim=int(data.table.shape[1])))
    n_ccl = 0
    if cfg.ccl is not None:
        probe = scaled(cfg, len(data.train), len(data.train))
        n_ccl = len(ccl_records(data.train, probe.ccl.min_video_len, probe.ccl.min_product_len))
    cfg = scaled(cfg, len(data.train), n_ccl)
    cfg = quick(cfg) if quick_mode else cfg
    if train_fraction < 1.0:
        limit = int(train_fraction * len(data.train))
        if cfg.train.max_train_samples:
            limit = min(limit, cfg.train.max_train_samples)
        cfg = replace(cfg, train=replace(cfg.train, max_train_samples=max(1, limit)))
    return cfg


def train_model(
    name: str, data: Prepared, cfg: ModelConfig, seed: int, tick: Tick | None = None
) -> tuple[Ranker, dict[str, Any]]:
    """Build, (CCL pre-train,) and train one neural model; returns it with training facts."""
    info: dict[str, Any] = {}
    torch.manual_seed(seed)  # initial weights follow the seed, not the models run before
    model = build(cfg)
    model.item_scale.copy_(item_scale(data.table))
    if cfg.ccl is not None:
        records = ccl_records(data.train, cfg.ccl.min_video_len, cfg.ccl.min_product_len)
        if len(records) and isinstance(model, SEMI):
            ccl, losses = pretrain_ccl(cfg, records, data.table, seed, cfg.train.seq_len, tick)
            init_from_ccl(model, ccl)
            info.update(ccl_records=len(records), ccl_loss_first=round(losses[0], 4),
                        ccl_loss_last=round(losses[-1], 4))
        else:
            info["note"] = "no CCL pre-training records (no product domain): trained from scratch"
    stats = fit(model, data.train, data.val, data.table, cfg.train, seed, tick)
    info.update(epochs=stats.epochs, best_epoch=stats.best_epoch,
                val_auc=round(stats.best_val_auc, 4))
    return model, info


def measure(scorer: Scorer, data: Prepared) -> dict[str, Any]:
    """AUC on every test watch; HR@3 / HR@10 / NDCG@10 on the ranking cases."""
    test = data.test
    target = scorer(test, test.target[:, None])[:, 0]
    cases = test.subset(data.cases)
    ranked3 = scorer(cases, np.hstack([cases.target[:, None], data.negatives_300]))
    ranked10 = scorer(cases, np.hstack([cases.target[:, None], data.negatives_100]))
    return {
        "auc": auc(test.label, target),
        "hr@3": hit_rate(ranked3[:, 0], ranked3[:, 1:], 3),
        "hr@10": hit_rate(ranked10[:, 0], ranked10[:, 1:], 10),
        "ndcg@10": ndcg(ranked10[:, 0], ranked10[:, 1:], 10),
        "auc_by_video_len": auc_by_group(test, target),
    }


VIDEO_LEN_GROUPS = ((0, 1), (2, 4), (5, 9), (10, 50))


def auc_by_group(test: SampleSet, scores: np.ndarray) -> dict[str, float]:
    """AUC per group of users' video-sequence length at the watch (the paper's Fig. 5)."""
    lengths = test.lengths("video")
    out = {}
    for lo, hi in VIDEO_LEN_GROUPS:
        sel = (lengths >= lo) & (lengths <= hi)
        labels = test.label[sel]
        if labels.min(initial=1) < labels.max(initial=0):  # both classes present
            out[f"{lo}-{hi}"] = auc(labels, scores[sel])
    return out


def run_model_trained(
    name: str, data: Prepared, cfg: ModelConfig, seed: int, tick: Tick | None = None
) -> tuple[Ranker | None, dict[str, Any]]:
    """Train (and pre-train) one model with one seed and measure it on the test set."""
    started = time.perf_counter()
    if name == "pop":
        return None, {**measure(Popularity(data.train, data.table.shape[0]), data),
                      "seconds": time.perf_counter() - started}
    model, info = train_model(name, data, cfg, seed, tick)

    def scorer(samples: SampleSet, candidates: np.ndarray) -> np.ndarray:
        return predict(model, samples, candidates, data.table, cfg.train.seq_len)

    return model, {**measure(scorer, data), "seconds": time.perf_counter() - started, **info}


def run_model(
    name: str, data: Prepared, cfg: ModelConfig, seed: int, tick: Tick | None = None
) -> dict[str, Any]:
    return run_model_trained(name, data, cfg, seed, tick)[1]


METRICS = ("auc", "hr@3", "hr@10", "ndcg@10")


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) std over seeds, plus the mean seconds per run."""
    row: dict[str, Any] = {"model": name}
    for m in METRICS:
        values = np.array([r[m] for r in runs])
        row[m] = round(float(values.mean()), 4)
        row[f"{m}_std"] = round(float(values.std()), 4)
    row["seconds"] = round(float(np.mean([r["seconds"] for r in runs])), 1)
    for key in ("best_epoch", "epochs", "val_auc", "ccl_records", "ccl_loss_first",
                "ccl_loss_last"):
        if key in runs[0]:
            row[key] = round(float(np.mean([r[key] for r in runs])), 4)
    groups = runs[0]["auc_by_video_len"]
    row["auc_by_video_len"] = {
        g: round(float(np.mean([r["auc_by_video_len"][g] for r in runs])), 4) for g in groups}
    notes = {r["note"] for r in runs if "note" in r}
    if notes:
        row["note"] = "; ".join(sorted(notes))
    return row


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


class Hooks(Protocol):
    """Progress reporting: a tick per sample processed, and each finished run."""

    def run_started(self, name: str, seed: int, total: int) -> Tick | None: ...

    def run_finished(self, name: str, seed: int, metrics: dict[str, Any]) -> None: ...


def work_units(name: str, cfg: ModelConfig, data: Prepared) -> int:
    """Samples a run processes at most (training epochs, plus CCL epochs), for progress bars."""
    if name == "pop":
        return 1
    n = len(data.train)
    if cfg.train.max_train_samples:
        n = min(n, cfg.train.max_train_samples)
    total = cfg.train.epochs * n
    if cfg.ccl is not None:
        records = len(ccl_records(data.train, cfg.ccl.min_video_len, cfg.ccl.min_product_len))
        batch = min(cfg.ccl.batch_size, max(records, 1), cfg.ccl.queue_size)
        total += cfg.ccl.epochs * (records // batch) * batch
    return total


def evaluate(
    data: Prepared,
    models: Sequence[str] = MODEL_NAMES,
    seeds: int = 3,
    quick_mode: bool = False,
    hooks: Hooks | None = None,
    train_fraction: float = 1.0,
) -> dict[str, Any]:
    """Every model x seed on one prepared data set; the result ``--json`` prints.

    A ``*_ccl`` model whose pre-training set is empty (a data set without products) would
    train exactly like its base model with the same seeds: the base model's runs are reused."""
    results = []
    done: dict[str, list[dict[str, Any]]] = {}
    for name in models:
        cfg = model_config(name, data, quick_mode, train_fraction)
        base = name.removesuffix("_ccl")
        if cfg.ccl is not None and base in done and not len(
                ccl_records(data.train, cfg.ccl.min_video_len, cfg.ccl.min_product_len)):
            note = f"no CCL pre-training records (no product domain): identical to {base}"
            results.append({**summarize(base, done[base]), "model": name, "note": note})
            continue
        runs = []
        for seed in range(seeds):
            tick = hooks.run_started(name, seed, work_units(name, cfg, data)) if hooks else None
            runs.append(run_model(name, data, cfg, seed, tick))
            if hooks:
                hooks.run_finished(name, seed, runs[-1])
        done[name] = runs
        results.append(summarize(name, runs))
    return {
        "data": data.name,
        "oracle_auc": None if data.oracle_auc is None else round(data.oracle_auc, 4),
        "oracle": None if data.oracle is None else _rounded(data.oracle),
        "quick": quick_mode,
        "train_fraction": train_fraction,
        "seeds": seeds,
        "protocol": asdict(data.protocol),
        "stats": data.stats(),
        "results": results,
    }
