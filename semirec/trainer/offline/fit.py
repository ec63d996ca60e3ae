"""Training loops (supervised ranker, CCL pre-training) and batched scoring."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from semirec.trainer.nets.ccl import CCL
from semirec.trainer.nets.configs import ModelConfig, TrainConfig
from semirec.trainer.nets.identity import ItemFeatures
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.offline.metrics import auc
from semirec.trainer.offline.samples import SampleSet, length_batches, user_batch

Tick = Callable[[int], None]


def item_scale(table: torch.Tensor) -> torch.Tensor:
    """The factor that gives the catalog's item vectors a per-dimension RMS of 1."""
    rows = table[1:]
    rms = rows.pow(2).mean().sqrt()
    return (1.0 / rms.clamp_min(1e-8)).to(table.dtype)


@torch.inference_mode()
def predict(
    model: Ranker,
    samples: SampleSet,
    candidates: np.ndarray,
    table: torch.Tensor,
    seq_len: int = 50,
    chunk_pairs: int = 16384,
    max_users: int = 1024,
    items: ItemFeatures | None = None,
) -> np.ndarray:
    """Logits [S, C] of ``candidates`` (item rows [S, C]) for each sample's user context
    (``items``: what a model with item identity needs, counts at each sample's time).

    At most ``chunk_pairs`` (user, candidate) pairs and ``max_users`` users per forward pass:
    the user side's self-attention holds [users, heads, L, L] scores (L up to 100 for SEMI's
    inter-domain block), so batching a whole test set at once took 14 GB."""
    model.eval()
    n, c = candidates.shape
    out = np.empty((n, c), np.float32)
    step = max(1, min(max_users, chunk_pairs // max(c, 1)))
    for idx in length_batches(samples, np.arange(n), step, seq_len):
        ctx = model.encode_user(user_batch(samples, idx, table, seq_len))
        rows = np.ascontiguousarray(candidates[idx])
        cands = table[torch.from_numpy(rows).long()]
        ident = _identity(model, items, rows, samples.ts[idx], idx)
        out[idx] = model.logits(ctx, cands, ident).numpy()
    return out


def user_codes(samples: SampleSet) -> np.ndarray:
    """int64 code per sample's user (same user, same code)."""
    return np.unique(samples.user.astype(str), return_inverse=True)[1].astype(np.int64)


def _identity(model: Ranker, items: ItemFeatures | None, rows: np.ndarray, ts: np.ndarray,
              index: np.ndarray):
    if model.identity is None:
        return None
    if items is None:
        raise ValueError("a model with item identity needs ItemFeatures")
    return items.inputs(rows, ts, index)


def param_groups(model: Ranker, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: the wide linear terms at ``lr * wide_lr_scale`` without weight decay (a
    handful of weights that must reach O(1) within a few hundred steps), the rest at ``lr``."""
    wide = model.wide_parameters()
    ids = {id(p) for p in wide}
    groups: list[dict] = [{"params": [p for p in model.parameters() if id(p) not in ids]}]
    if wide:
        groups.append({"params": wide, "lr": cfg.lr * cfg.wide_lr_scale, "weight_decay": 0.0})
    return groups


@dataclass
class FitStats:
    epochs: int
    best_epoch: int
    best_val_auc: float
    seconds: float


def fit(
    model: Ranker,
    train: SampleSet,
    val: SampleSet,
    table: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    tick: Tick | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    items: ItemFeatures | None = None,
) -> FitStats:
    """AdamW on binary cross-entropy (Eq. 10); keeps the epoch with the best validation AUC.

    ``on_epoch(epoch, validation AUC)`` is called after every epoch."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if cfg.max_train_samples and len(train) > cfg.max_train_samples:
        train = train.subset(np.sort(rng.choice(len(train), cfg.max_train_samples, replace=False)))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    labels = torch.from_numpy(train.label)
    best_auc, best_epoch, best_state, stale, epoch = -1.0, 0, None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for idx in length_batches(train, rng.permutation(len(train)), cfg.batch_size, cfg.seq_len,
                                  rng):
            user = user_batch(train, idx, table, cfg.seq_len)
            target = table[torch.from_numpy(train.target[idx]).long()]
            ident = _identity(model, items, train.target[idx, None], train.ts[idx], idx)
            loss = F.binary_cross_entropy_with_logits(model(user, target, ident), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if tick:
                tick(len(idx))
        if not len(val):
            best_epoch, best_state = epoch, None
            continue
        score = auc(val.label, predict(model, val, val.target[:, None], table, cfg.seq_len,
                                       items=items)[:, 0])
        if on_epoch:
            on_epoch(epoch, score)
        if score > best_auc:
            best_auc, best_epoch, best_state, stale = score, epoch, copy.deepcopy(
                model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitStats(epoch, best_epoch, best_auc, time.perf_counter() - started)


def pretrain_ccl(
    cfg: ModelConfig,
    records: SampleSet,
    table: torch.Tensor,
    seed: int,
    seq_len: int = 50,
    tick: Tick | None = None,
) -> tuple[CCL, list[float]]:
    """Algorithm 1 over the pre-training records; returns the model and the mean loss per epoch."""
    if cfg.ccl is None:
        raise ValueError(f"{cfg.name} has no CCL config")
    if not len(records):
        raise ValueError(
            "the CCL pre-training set is empty: no training record has a video sequence longer "
            f"than {cfg.ccl.min_video_len} and at least {cfg.ccl.min_product_len} products"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    settings = cfg.ccl
    model = CCL(cfg)
    model.item_scale.copy_(item_scale(table))
    owners = torch.from_numpy(user_codes(records))
    # Algorithm 1 lines 2-4: fill both dictionaries with K random records' keys
    k = settings.queue_size
    draw = rng.choice(len(records), k, replace=k > len(records))
    for start in range(0, k, 1024):
        idx = draw[start : start + 1024]
        model.enqueue(*model.keys(user_batch(records, idx, table, seq_len)), owners[idx])
    optimizer = torch.optim.Adam(model.query.parameters(), lr=settings.lr)
    batch = min(settings.batch_size, len(records), k)
    losses = []
    for _ in range(settings.epochs):
        model.train()
        order, total, steps = rng.permutation(len(records)), 0.0, 0
        for start in range(0, len(order) - batch + 1, batch):  # whole mini-batches only
            idx = order[start : start + batch]
            loss = model.loss(user_batch(records, idx, table, seq_len), owners[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.momentum_update()
            total, steps = total + loss.item(), steps + 1
            if tick:
                tick(len(idx))
        losses.append(total / max(steps, 1))
    model.eval()
    return model, losses
