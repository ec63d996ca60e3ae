"""The offline evaluation protocol (§4.1-4.2, adapted) and one run of every model over seeds.

- Samples: one per video watch, with the user's sequences before it (:mod:`semirec.trainer.offline.samples`),
  cut to the last 7 days (``window_hours``) and filtered as in §4.1 (at least one video or five
  products in the window).
- Split: chronological; the last 20% of watches by time are the test set, the last 10% of the
  rest the validation set (early stopping), the remainder the training set.
- AUC of P(complete) over all test watches; GAUC (per-user AUC weighted by the user's test
  watches); both per segment: users with <= 2 videos in the window ("short") vs more.
- Ranking, for each positive test watch (or a fixed random subset), against videos the user had
  not watched *before that watch* (later watches may be negatives; the log's future is not
  used): the paper's HR@3 against 300 uniform negatives (``hr@3``, "paper protocol"), HR@10 /
  NDCG@10 against 100 uniform ones, and HR@10 / NDCG@10 against 100 *popularity-matched*
  negatives (drawn in proportion to training exposures, i.e. watches), which popularity cannot
  win by construction the way it does against never-shown videos.
- Within shown (``auc_shown``): each positive test watch against the same user's incomplete
  watches of the same hour (what was shown together and not finished; at most 50, and at most
  ``max_rank_cases`` cases), scored in the positive's context: P(the finished one ranks above).
- On the generated world: the oracle (true P(complete)) and the observable oracle (the truth
  without the per-user bias and item quality noise,
  :func:`semirec.trainer.offline.ceiling.observable_item_probs`).

Negatives depend only on the protocol seed, so every model and training seed sees the same ones.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from semirec.core.contracts import Event
from semirec.trainer.nets.ccl import init_from_ccl, pairing_accuracy, time_only_accuracy
from semirec.trainer.nets.configs import MODEL_NAMES, ModelConfig, paper, quick, scaled, split_name
from semirec.trainer.nets.identity import ItemCounts, ItemFeatures, item_buckets
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.nets.semi import SEMI
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.fit import Tick, fit, item_scale, predict, pretrain_ccl, user_codes
from semirec.trainer.offline.metrics import auc, gauc, hit_rate, ndcg, pairwise_auc
from semirec.trainer.offline.samples import (
    WINDOW_HOURS,
    SampleSet,
    build_samples,
    ccl_records,
    chronological_split,
    record_filter,
    user_batch,
)


@dataclass(frozen=True)
class EvalProtocol:
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    hr3_negatives: int = 300
    hr10_negatives: int = 100
    max_rank_cases: int = 0  # 0 = every positive test watch
    seed: int = 0
    window_hours: int | None = WINDOW_HOURS  # None = sequences of any age (the old protocol)
    min_videos: int = 1  # §4.1 record filter: at least this many videos in the window ...
    min_products: int = 5  # ... or at least this many products
    short_video_max: int = 2  # segment "short": at most this many videos in the window
    max_shown_negatives: int = 50  # within-shown: at most this many unfinished per case


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
    negatives_300: np.ndarray  # [R, hr3_negatives] item rows, uniform
    negatives_100: np.ndarray  # [R, hr10_negatives] item rows, uniform
    negatives_pop: np.ndarray  # [R, hr10_negatives] item rows, popularity-matched
    shown_cases: np.ndarray  # indices into ``test`` of positives with shown-unfinished videos
    shown_negatives: np.ndarray  # [R', M] item rows (0 = none)
    protocol: EvalProtocol
    item_ids: np.ndarray  # [1 + items] object, row -> item_id ("" for row 0)
    counts: ItemCounts  # point-in-time watch counts of every item (all watches)
    oracle: dict[str, Any] | None = None  # every metric of the true probability, if known
    observable_oracle: dict[str, Any] | None = None

    def features(self, buckets: int) -> ItemFeatures:
        return ItemFeatures(item_buckets(self.item_ids, buckets), self.counts)

    def stats(self) -> dict[str, Any]:
        return {
            "items": int(self.table.shape[0] - 1),
            "train": len(self.train), "val": len(self.val), "test": len(self.test),
            "test_positive_rate": float(self.test.label.mean()),
            "rank_cases": len(self.cases), "shown_cases": len(self.shown_cases),
            "test_short_video_share": float(np.mean(
                self.test.lengths("video") <= self.protocol.short_video_max)),
            "mean_video_len": float(self.train.lengths("video").mean()),
            "mean_product_len": float(self.train.lengths("product").mean()),
        }


def _sample_unwatched(
    case_users: np.ndarray, case_ts: np.ndarray, case_targets: np.ndarray,
    history: Mapping[str, tuple[np.ndarray, np.ndarray]], videos: np.ndarray, n: int,
    rng: np.random.Generator, weights: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` distinct videos per case that the user had not watched before the case's time
    (nor the case's own video); uniform, or in proportion to ``weights`` (per video)."""
    out = np.empty((len(case_users), n), np.int32)
    for i, (u, t, target) in enumerate(zip(case_users.tolist(), case_ts.tolist(),
                                           case_targets.tolist(), strict=True)):
        rows, ts = history.get(u, (np.zeros(0, np.int64), np.zeros(0)))
        seen = np.append(rows[ts < t], target)
        keep = ~np.isin(videos, seen)
        pool = videos[keep]
        if not len(pool):
            raise ValueError(f"user {u!r} has watched every video: no negatives to sample")
        p = None
        if weights is not None:
            p = weights[keep] / weights[keep].sum()
        out[i] = rng.choice(pool, n, replace=len(pool) < n, p=p)
    return out


def _shown_together(test: SampleSet, max_negatives: int = 0,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positive test watches that share (user, hour) with incomplete ones: their indices and
    the incomplete watches' item rows [R, M] (0 = padding); with ``max_negatives`` a random
    subset of at most that many per case (MovieLens users rate up to ~180 films an hour)."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (u, t) in enumerate(zip(test.user.tolist(), test.ts.tolist(), strict=True)):
        groups.setdefault((str(u), int(t // 3600)), []).append(i)
    cases, negs = [], []
    for members in groups.values():
        unfinished = [int(test.target[i]) for i in members if test.label[i] == 0]
        if max_negatives and len(unfinished) > max_negatives:
            rng = rng or np.random.default_rng(0)
            unfinished = rng.choice(unfinished, max_negatives, replace=False).tolist()
        if unfinished:
            for i in members:
                if test.label[i] > 0:
                    cases.append(i)
                    negs.append(unfinished)
    width = max((len(n) for n in negs), default=1)
    rows = np.zeros((len(negs), width), np.int32)
    for k, n in enumerate(negs):
        rows[k, : len(n)] = n
    order = np.argsort(cases, kind="stable")
    return np.asarray(cases, np.int64)[order], rows[order]


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
    observable_probs: Callable[[str, Sequence[str], float], np.ndarray] | None = None,
) -> Prepared:
    """Samples, split, oracle AUC and fixed ranking negatives for one data set.

    With ``item_probs`` (the generated world's true P(complete) of any video for a user at a
    time) the oracle's ranking metrics are measured too (``Prepared.oracle``), and with
    ``observable_probs`` the observable oracle's."""
    protocol = protocol or EvalProtocol()
    if len(vectors) != len(items):
        raise ValueError(f"{len(vectors)} vectors for {len(items)} items")
    rows = {str(it["item_id"]): i + 1 for i, it in enumerate(items)}
    table = torch.from_numpy(
        np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors.astype(np.float32)])
    )
    events = list(events)
    everything = build_samples(events, rows, seq_len=seq_len, bucket_s=bucket_s,
                               window_hours=protocol.window_hours)
    counts = ItemCounts(everything.target, everything.ts, everything.label > 0)
    samples = everything.subset(record_filter(everything, protocol.min_videos,
                                              protocol.min_products))
    train, val, test = chronological_split(samples, protocol.test_fraction, protocol.val_fraction)
    oracle = None
    if true_prob:
        oracle = auc(test.label, np.array([true_prob[e] for e in test.event]))
    rng = np.random.default_rng(protocol.seed)
    cases = np.flatnonzero(test.label > 0)
    if protocol.max_rank_cases and len(cases) > protocol.max_rank_cases:
        cases = np.sort(rng.choice(cases, protocol.max_rank_cases, replace=False))
    # "not watched by the user": no watch of it before the test watch, complete or not
    history: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    users = everything.user.astype(str)
    for u in np.unique(users):
        sel = users == u
        history[str(u)] = (everything.target[sel].astype(np.int64), everything.ts[sel])
    videos = np.array(sorted(r for it, r in zip(items, rows.values(), strict=True)
                             if it["domain"] == "video"), np.int64)
    exposures = np.bincount(train.target, minlength=len(rows) + 1)[videos].astype(np.float64)
    c = test.subset(cases)
    args = (c.user, c.ts, c.target, history, videos)
    shown_cases, shown_negatives = _shown_together(test, protocol.max_shown_negatives, rng)
    if protocol.max_rank_cases and len(shown_cases) > protocol.max_rank_cases:
        keep = np.sort(rng.choice(len(shown_cases), protocol.max_rank_cases, replace=False))
        shown_cases, shown_negatives = shown_cases[keep], shown_negatives[keep]
    data = Prepared(
        name, table, train, val, test, oracle, cases,
        _sample_unwatched(*args, protocol.hr3_negatives, rng),
        _sample_unwatched(*args, protocol.hr10_negatives, rng),
        _sample_unwatched(*args, protocol.hr10_negatives, rng, weights=exposures + 1.0),
        shown_cases, shown_negatives, protocol,
        np.array(["", *rows], dtype=object), counts,
    )
    for probs, attr in ((item_probs, "oracle"), (observable_probs, "observable_oracle")):
        if probs is not None:
            setattr(data, attr, measure(_truth_scorer(probs, data.item_ids, videos[0]), data))
    return data


def _truth_scorer(probs: Callable[[str, Sequence[str], float], np.ndarray], ids: np.ndarray,
                  filler: int) -> Scorer:
    def truth(samples: SampleSet, candidates: np.ndarray) -> np.ndarray:
        candidates = np.where(candidates > 0, candidates, filler)  # padding: masked later
        return np.stack([
            probs(str(u), list(ids[c]), float(t))
            for u, c, t in zip(samples.user, candidates, samples.ts, strict=True)
        ])

    return truth


Scorer = Callable[[SampleSet, np.ndarray], np.ndarray]  # (samples, item rows [S, C]) -> [S, C]


class Popularity:
    """Score = log(1 + completed watches of the item in the training set)."""

    def __init__(self, train: SampleSet, n_rows: int) -> None:
        counts = np.bincount(train.target[train.label > 0], minlength=n_rows)
        self.score = np.log1p(counts).astype(np.float32)

    def __call__(self, samples: SampleSet, candidates: np.ndarray) -> np.ndarray:
        return self.score[candidates]


# the numeric fields of ModelConfig itself that ``--set`` takes
MODEL_SETTINGS = ("mlp_hidden", "rate_prior_strength", "item_dim")


def override(cfg: ModelConfig, settings: Mapping[str, float]) -> ModelConfig:
    """``{"train.weight_decay": 0.1, "ccl.tau": 0.2, "mlp_hidden": 64}`` -> cfg with those fields
    replaced (for choosing settings on validation; a ``ccl.*`` setting is ignored by a model
    without CCL; a name without a dot is one of :data:`MODEL_SETTINGS`)."""
    for key, value in settings.items():
        if key in MODEL_SETTINGS:
            cfg = replace(cfg, **{key: type(getattr(cfg, key))(value)})
            continue
        part, _, field = key.partition(".")
        if part not in ("train", "ccl", "block") or not field:
            raise ValueError(f"unknown setting {key!r} (train.*, ccl.*, block.*, "
                             f"{', '.join(MODEL_SETTINGS)})")
        sub = getattr(cfg, part)
        if sub is None:
            continue
        if field not in type(sub).__dataclass_fields__:
            raise ValueError(f"unknown setting {key!r}")
        kind = type(getattr(sub, field))
        cfg = replace(cfg, **{part: replace(sub, **{field: kind(value)})})
    return cfg


def model_config(
    name: str, data: Prepared, quick_mode: bool, train_fraction: float = 1.0,
    settings: Mapping[str, float] | None = None,
) -> ModelConfig:
    """Paper settings, scaled to the data (:func:`scaled`), optionally quick; the model width
    is the item vectors' width (SEMI adds time embeddings to the item vectors).
    ``train_fraction`` < 1 trains on a random share of the training samples (learning curves).
    A name ending in ``+id`` adds item identity."""
    cfg = paper(name)
    cfg = replace(cfg, block=replace(cfg.block, dim=int(data.table.shape[1])))
    n_ccl = 0
    if cfg.ccl is not None:
        probe = scaled(cfg, len(data.train), len(data.train))
        n_ccl = len(ccl_records(data.train, probe.ccl.min_video_len, probe.ccl.min_product_len,
                                probe.ccl.records_per_user))
    cfg = scaled(cfg, len(data.train), n_ccl)
    cfg = quick(cfg) if quick_mode else cfg
    if train_fraction < 1.0:
        limit = int(train_fraction * len(data.train))
        if cfg.train.max_train_samples:
            limit = min(limit, cfg.train.max_train_samples)
        cfg = replace(cfg, train=replace(cfg.train, max_train_samples=max(1, limit)))
    return override(cfg, settings or {})


def _ccl_records(data: Prepared, cfg: ModelConfig) -> SampleSet:
    assert cfg.ccl is not None
    return ccl_records(data.train, cfg.ccl.min_video_len, cfg.ccl.min_product_len,
                       cfg.ccl.records_per_user)


def train_model(
    name: str, data: Prepared, cfg: ModelConfig, seed: int, tick: Tick | None = None
) -> tuple[Ranker, dict[str, Any]]:
    """Build, (CCL pre-train,) and train one neural model; returns it with training facts."""
    info: dict[str, Any] = {}
    torch.manual_seed(seed)  # initial weights follow the seed, not the models run before
    model = build(cfg)
    model.item_scale.copy_(item_scale(data.table))
    items = None
    if model.identity is not None:
        model.identity.prior_rate.fill_(float(data.train.label.mean()))
        items = data.features(cfg.id_buckets)
    if isinstance(model, SEMI) and model.user_rate is not None:
        model.user_rate.prior_rate.fill_(float(data.train.label.mean()))
    if cfg.ccl is not None:
        records = _ccl_records(data, cfg)
        if len(records) and isinstance(model, SEMI):
            ccl, losses = pretrain_ccl(cfg, records, data.table, seed, cfg.train.seq_len, tick)
            init_from_ccl(model, ccl)
            probe = np.random.default_rng(seed).permutation(len(records))[:512]
            user = user_batch(records, probe, data.table, cfg.train.seq_len)
            owners = torch.from_numpy(user_codes(records)[probe])
            info.update(ccl_records=len(records), ccl_loss_first=round(losses[0], 4),
                        ccl_loss_last=round(losses[-1], 4),
                        ccl_pairing_acc=round(pairing_accuracy(ccl, user, owners), 4),
                        ccl_time_only_acc=round(time_only_accuracy(ccl, user, owners), 4),
                        ccl_chance=round(1.0 / len(probe), 4))
        else:
            info["note"] = "no CCL pre-training records (no product domain): trained from scratch"
    stats = fit(model, data.train, data.val, data.table, cfg.train, seed, tick, items=items)
    info.update(epochs=stats.epochs, best_epoch=stats.best_epoch,
                val_auc=round(stats.best_val_auc, 4))
    return model, info


def _segments(test: SampleSet, scores: np.ndarray, short_max: int) -> dict[str, float]:
    short = test.lengths("video") <= short_max
    out: dict[str, float] = {}
    for label, sel in (("short_video", short), ("long_video", ~short)):
        y = test.label[sel]
        if y.min(initial=1) < y.max(initial=0):
            out[f"auc_{label}"] = auc(y, scores[sel])
            out[f"gauc_{label}"] = gauc(test.user[sel], y, scores[sel])
    return out


def measure(scorer: Scorer, data: Prepared) -> dict[str, Any]:
    """Every metric of the protocol (module docstring) for one scorer."""
    test = data.test
    target = scorer(test, test.target[:, None])[:, 0]
    cases = test.subset(data.cases)
    ranked3 = scorer(cases, np.hstack([cases.target[:, None], data.negatives_300]))
    ranked10 = scorer(cases, np.hstack([cases.target[:, None], data.negatives_100]))
    popneg = scorer(cases, np.hstack([cases.target[:, None], data.negatives_pop]))
    out = {
        "auc": auc(test.label, target),
        "gauc": gauc(test.user, test.label, target),
        "hr@3": hit_rate(ranked3[:, 0], ranked3[:, 1:], 3),
        "hr@10": hit_rate(ranked10[:, 0], ranked10[:, 1:], 10),
        "ndcg@10": ndcg(ranked10[:, 0], ranked10[:, 1:], 10),
        "hr@10_popneg": hit_rate(popneg[:, 0], popneg[:, 1:], 10),
        "ndcg@10_popneg": ndcg(popneg[:, 0], popneg[:, 1:], 10),
        **_segments(test, target, data.protocol.short_video_max),
        "auc_by_video_len": auc_by_group(test, target),
    }
    if len(data.shown_cases):
        shown = test.subset(data.shown_cases)
        scored = scorer(shown, np.hstack([shown.target[:, None], data.shown_negatives]))
        out["auc_shown"] = pairwise_auc(scored[:, 0], scored[:, 1:], data.shown_negatives > 0)
    return out


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
    items = data.features(cfg.id_buckets) if model.identity is not None else None

    def scorer(samples: SampleSet, candidates: np.ndarray) -> np.ndarray:
        return predict(model, samples, candidates, data.table, cfg.train.seq_len, items=items)

    return model, {**measure(scorer, data), "seconds": time.perf_counter() - started, **info}


def run_model(
    name: str, data: Prepared, cfg: ModelConfig, seed: int, tick: Tick | None = None
) -> dict[str, Any]:
    return run_model_trained(name, data, cfg, seed, tick)[1]


METRICS = ("auc", "gauc", "hr@3", "hr@10", "ndcg@10", "hr@10_popneg", "ndcg@10_popneg",
           "auc_shown", "auc_short_video", "gauc_short_video", "auc_long_video",
           "gauc_long_video")
TABLE_METRICS = ("auc", "gauc", "hr@10_popneg", "auc_shown", "auc_short_video", "hr@3")


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (population) std over seeds, plus the mean seconds per run."""
    row: dict[str, Any] = {"model": name}
    for m in METRICS:
        if all(m in r for r in runs):
            values = np.array([r[m] for r in runs])
            row[m] = round(float(values.mean()), 4)
            row[f"{m}_std"] = round(float(values.std()), 4)
    row["seconds"] = round(float(np.mean([r["seconds"] for r in runs])), 1)
    for key in ("best_epoch", "epochs", "val_auc", "ccl_records", "ccl_loss_first",
                "ccl_loss_last", "ccl_pairing_acc", "ccl_time_only_acc", "ccl_chance"):
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
        records = len(_ccl_records(data, cfg))
        batch = min(cfg.ccl.batch_size, max(records, 1), cfg.ccl.queue_size)
        total += cfg.ccl.epochs * (records // batch) * batch
    return total


_SHARED: dict[str, Any] = {}  # the prepared data, inherited by forked workers


def _run_job(job: str) -> str:
    """Worker: one (model, seed) run; JSON in and out (nothing pickled but strings)."""
    spec = json.loads(job)
    torch.set_num_threads(1)
    data: Prepared = _SHARED["data"]
    cfg = ModelConfig.from_dict(spec["cfg"])
    return json.dumps(run_model(spec["name"], data, cfg, spec["seed"]))


def evaluate(
    data: Prepared,
    models: Sequence[str] = MODEL_NAMES,
    seeds: int = 3,
    quick_mode: bool = False,
    hooks: Hooks | None = None,
    train_fraction: float = 1.0,
    jobs: int = 1,
    settings: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Every model x seed on one prepared data set; the result ``--json`` prints.

    ``jobs`` > 1 runs (model, seed) pairs in that many forked processes (one torch thread
    each); a run's numbers do not depend on where it ran (each run seeds everything itself).
    A ``*_ccl`` model whose pre-training set is empty (a data set without products) would
    train exactly like its base model with the same seeds: the base model's runs are reused."""
    configs = {name: model_config(name, data, quick_mode, train_fraction, settings)
               for name in models}
    reuse: dict[str, str] = {}
    for name, cfg in configs.items():
        network, suffix = split_name(name)
        base = network.removesuffix("_ccl") + suffix
        if cfg.ccl is not None and base in configs and not len(_ccl_records(data, cfg)):
            reuse[name] = base
    todo = [(name, seed) for name in models if name not in reuse for seed in range(seeds)]
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    if jobs > 1 and len(todo) > 1:
        _SHARED["data"] = data
        specs = [json.dumps({"name": n, "seed": s, "cfg": configs[n].to_dict()})
                 for n, s in todo]
        pool = multiprocessing.get_context("fork").Pool(min(jobs, len(todo)))
        try:
            for (name, seed), out in zip(todo, pool.imap(_run_job, specs), strict=True):
                runs[name, seed] = json.loads(out)
                if hooks:
                    hooks.run_finished(name, seed, runs[name, seed])
        finally:
            pool.close()
            pool.join()
            _SHARED.clear()
    else:
        for name, seed in todo:
            cfg = configs[name]
            tick = hooks.run_started(name, seed, work_units(name, cfg, data)) if hooks else None
            runs[name, seed] = run_model(name, data, cfg, seed, tick)
            if hooks:
                hooks.run_finished(name, seed, runs[name, seed])
    results = []
    for name in models:
        if name in reuse:
            base = reuse[name]
            note = f"no CCL pre-training records (no product domain): identical to {base}"
            rows = [runs[base, s] for s in range(seeds)]
            results.append({**summarize(base, rows), "model": name, "note": note})
        else:
            results.append(summarize(name, [runs[name, s] for s in range(seeds)]))
    observable = data.observable_oracle
    return {
        "data": data.name,
        "oracle_auc": None if data.oracle_auc is None else round(data.oracle_auc, 4),
        "oracle": None if data.oracle is None else _rounded(data.oracle),
        "observable_oracle_auc": None if observable is None else round(observable["auc"], 4),
        "observable_oracle": None if observable is None else _rounded(observable),
        "quick": quick_mode,
        "train_fraction": train_fraction,
        "seeds": seeds,
        "jobs": jobs,
        "settings": dict(settings or {}),
        "protocol": asdict(data.protocol),
        "stats": data.stats(),
        "results": results,
    }
