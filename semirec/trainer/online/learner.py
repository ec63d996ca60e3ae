"""Incremental trainer: ``samples`` topic -> windowed fine-tuning -> eval gate -> Triton.

:class:`Learner` is the training state without I/O: the serving model and its optimizer, the
samples consumed but not trained yet (``pending``) and a bounded FIFO replay buffer. Each
:meth:`Learner.round` holds out the newest ``holdout_fraction`` of the pending samples (by event
time), fine-tunes a copy of the serving model on the rest plus a draw from the replay buffer,
scores both models on the held-out slice and asks :func:`semirec.trainer.online.gate.judge`. A promoted
candidate becomes the serving state; a rejected one is dropped (its samples stay in the replay
buffer). The held-out slice is trained on in the next round.
A model with item identity is fed each sample's item counts as the samples stream gives them
(:mod:`semirec.trainer.online.counts`).

:class:`OnlineTrainer` wraps it for production (``semirec trainer run``): a consumer of
``samples`` in its own group, item vectors from Redis, promotion through the model
repository (:mod:`semirec.trainer.registry.repository`) announced on
``model-updates``, and crash-safe checkpoints: model, optimizer, the samples it holds and
the next offset per partition are written together
(safetensors + JSON) into a new folder, fsynced, made current by an atomic rename of a pointer
file, and only then are the offsets committed to Kafka. On restart it seeks to the checkpoint's
offsets, so no sample is lost and only the samples of an unfinished round are trained again.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from semirec.core import durable
from semirec.core.samples import TrainingSample
from semirec.trainer.nets import checkpoint
from semirec.trainer.nets.configs import ModelConfig
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.offline.fit import predict
from semirec.trainer.offline.samples import (
    WINDOW_HOURS,
    SampleSet,
    blank_outside_window,
    length_batches,
    user_batch,
)
from semirec.trainer.online.counts import CountsState, StampedItems, StreamCounts
from semirec.trainer.online.gate import GateConfig, Verdict, judge, paired_logloss, window_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineConfig:
    round_samples: int = 2000  # train a candidate every N new samples ...
    round_seconds: float = 10.0  # ... or every T seconds (with at least min_round_samples)
    min_round_samples: int = 200
    holdout_fraction: float = 0.2  # the newest slice of a round, for the gate
    replay_size: int = 20_000  # bounded FIFO of trained samples
    replay_ratio: float = 1.0  # replay samples drawn per new training sample
    passes: int = 1  # epochs over a round's training set
    batch_size: int = 128
    lr: float = 1e-3
    seq_len: int = 50
    bucket_s: int = 3600
    dedup_size: int = 50_000  # event ids remembered to drop replayed samples
    gate: GateConfig = field(default_factory=GateConfig)
    seed: int = 0


# -- samples -> tensors -----------------------------------------------------------------------


class ItemTable:
    """item_id -> row of a growing vector table (row 0 = padding)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.rows: dict[str, int] = {}
        self._vectors: list[np.ndarray] = [np.zeros((1, dim), np.float32)]
        self._tensor: torch.Tensor | None = None

    def missing(self, item_ids: Iterable[str]) -> list[str]:
        return sorted({i for i in item_ids if i not in self.rows})

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        new = [(i, v) for i, v in zip(item_ids, vectors, strict=True) if i not in self.rows]
        if not new:
            return
        start = sum(len(v) for v in self._vectors)
        for k, (item_id, _) in enumerate(new):
            self.rows[item_id] = start + k
        self._vectors.append(np.stack([v for _, v in new]).astype(np.float32))
        self._tensor = None

    @property
    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            self._tensor = torch.from_numpy(np.vstack(self._vectors))
            self._vectors = [self._tensor.numpy()]
        return self._tensor


def sample_ids(samples: Iterable[TrainingSample]) -> set[str]:
    """Every item a sample refers to (target and sequences)."""
    out: set[str] = set()
    for s in samples:
        out.add(s.item_id)
        out.update(i for _, i in s.video)
        out.update(i for _, i in s.product)
        out.update(i for _, i in s.skipped)
    return out


def to_sample_set(samples: Sequence[TrainingSample], rows: Mapping[str, int], seq_len: int = 50,
                  bucket_s: int = 3600, window_hours: int | None = WINDOW_HOURS) -> SampleSet:
    """The trainer's arrays (as :func:`semirec.trainer.offline.samples.build_samples` makes
    offline) from logged samples. Sequence entries without a vector are left out, as serving
    leaves them out; the caller drops samples whose target has none. Entries outside the 7-day
    window are blanked
    (``window_hours``; None keeps every age), as the exported graph masks them at serving."""
    n = len(samples)
    arrays = {k: np.zeros((n, seq_len), np.int32)
              for k in ("video", "video_age", "product", "product_age", "skipped", "skipped_age")}
    for i, s in enumerate(samples):
        hour = int(s.ts // bucket_s)
        for domain in ("video", "product", "skipped"):
            entries = [(ts, rows[item]) for ts, item in getattr(s, domain) if item in rows]
            entries = entries[-seq_len:]
            if entries:
                k = len(entries)
                arrays[domain][i, -k:] = [r for _, r in entries]
                arrays[f"{domain}_age"][i, -k:] = [hour - ts // (bucket_s * 1000)
                                                   for ts, _ in entries]
    if window_hours is not None:
        blank_outside_window(arrays, window_hours)
    return SampleSet(
        user=np.asarray([s.user_id for s in samples], dtype=object),
        target=np.asarray([rows[s.item_id] for s in samples], np.int32),
        label=np.asarray([float(s.complete) for s in samples], np.float32),
        ts=np.asarray([s.ts for s in samples], np.float64),
        event=np.asarray([s.event_id for s in samples], dtype=object),
        **arrays,
    )


# -- the learner ------------------------------------------------------------------------------


@dataclass
class RoundResult:
    verdict: Verdict
    candidate: Ranker
    optimizer: torch.optim.Optimizer
    trained: list[TrainingSample]  # the round's new training samples (not the replay draw)
    holdout: list[TrainingSample]
    skipped_without_vector: int
    seconds: float


class Learner:
    """Serving model + optimizer, pending samples, replay buffer, seen event ids."""

    def __init__(self, model: Ranker, cfg: ModelConfig, online: OnlineConfig,
                 optimizer_state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.online = online
        self.model = model.eval()
        self.optimizer = self._optimizer(model, optimizer_state)
        self.pending: list[TrainingSample] = []
        self.replay: deque[TrainingSample] = deque(maxlen=online.replay_size)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.counts = StreamCounts()  # item watch counts from the stream (item identity)
        self.rounds = 0
        self.rng = np.random.default_rng(online.seed)

    def _optimizer(self, model: Ranker, state: dict[str, Any] | None) -> torch.optim.Optimizer:
        opt = torch.optim.Adam(model.parameters(), lr=self.online.lr)
        if state is not None:
            opt.load_state_dict(state)
        return opt

    def add(self, samples: Iterable[TrainingSample]) -> int:
        """Queue new samples; a replayed event id is dropped. Returns how many were new."""
        added = 0
        for s in samples:
            if s.event_id in self.seen:
                continue
            self.seen[s.event_id] = None
            if len(self.seen) > self.online.dedup_size:
                self.seen.popitem(last=False)
            self.pending.append(s)
            self.counts.observe(s)
            added += 1
        return added

    def items(self, samples: Sequence[TrainingSample]) -> StampedItems | None:
        """Item identity inputs of ``samples`` (their stamped counts; None for a model
        without item identity)."""
        if self.model.identity is None:
            return None
        return StampedItems(*self.counts.inputs(samples, self.cfg.id_buckets))

    def fine_tune(self, train: SampleSet, table: torch.Tensor, items: StampedItems | None = None) \
            -> tuple[Ranker, torch.optim.Optimizer]:
        """A copy of the serving model (and optimizer) trained on ``train`` (``items``: its
        item identity inputs, :meth:`items`)."""
        model = copy.deepcopy(self.model)  # item_scale stays the offline model's
        opt = self._optimizer(model, copy.deepcopy(self.optimizer.state_dict()))
        labels = torch.from_numpy(train.label)
        model.train()
        for _ in range(self.online.passes):
            order = self.rng.permutation(len(train))
            for idx in length_batches(train, order, self.online.batch_size, self.online.seq_len,
                                      self.rng):
                user = user_batch(train, idx, table, self.online.seq_len)
                target = table[torch.from_numpy(train.target[idx]).long()]
                ident = None if items is None else items.inputs(train.target[idx, None],
                                                                train.ts[idx], idx)
                loss = F.binary_cross_entropy_with_logits(model(user, target, ident), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        return model, opt

    def probs(self, model: Ranker, samples: SampleSet, table: torch.Tensor,
              items: StampedItems | None = None) -> np.ndarray:
        logits = predict(model, samples, samples.target[:, None], table, self.online.seq_len,
                         items=items)
        return 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))

    def cascade_overlap(self, model: Ranker, samples: Sequence[TrainingSample], table: ItemTable,
                        k: int, users: int = 32, pool: int = 500) -> float | None:
        """Mean top-10 overlap of ``model`` with its cascade of ``k``
        (:func:`semirec.trainer.registry.export.cascade_probs`) on logged requests: the users of
        the newest ``users`` samples, each ranking the newest ``pool`` distinct videos of
        ``samples`` (with their counts then). None with no more than ``k`` such videos (the
        cascade then scores every candidate with the whole model)."""
        from semirec.trainer.registry.export import cascade_overlap

        usable = sorted((s for s in samples if s.item_id in table.rows),
                        key=lambda s: (s.ts, s.event_id))
        newest: dict[str, TrainingSample] = {}
        for s in reversed(usable):
            newest.setdefault(s.item_id, s)
            if len(newest) == pool:
                break
        if len(newest) <= k:
            return None
        picked, held = list(newest.values()), usable[-users:]
        rows, seq_len, bucket = table.rows, self.online.seq_len, self.online.bucket_s
        tensor = table.tensor
        cands = tensor[torch.tensor([rows[s.item_id] for s in picked])]
        held_set = to_sample_set(held, rows, seq_len, bucket)
        n = len(held_set)
        stamped = self.items(picked)
        items = None if stamped is None else tuple(
            torch.from_numpy(a)[None].expand(n, -1)
            for a in (stamped.bucket, stamped.watches, stamped.completes))
        with torch.inference_mode():
            ctx = model.encode_user(user_batch(held_set, np.arange(n), tensor, seq_len))
            overlap = cascade_overlap(model, ctx, cands[None].expand(n, -1, -1), items, k)
        return float(overlap.mean())

    def round(self, table: ItemTable, train_model=None) -> RoundResult:
        """Fine-tune a candidate on the pending samples and judge it on their newest slice.

        ``train_model`` (tests) replaces :meth:`fine_tune`. Call :meth:`accept` or
        :meth:`reject` with the result."""
        started = time.perf_counter()
        window = sorted(self.pending, key=lambda s: (s.ts, s.event_id))
        usable = [s for s in window if s.item_id in table.rows]
        n_hold = int(len(usable) * self.online.holdout_fraction)
        train, holdout = usable[:len(usable) - n_hold], usable[len(usable) - n_hold:]
        draw = min(len(self.replay), int(len(train) * self.online.replay_ratio))
        buffer = list(self.replay) if draw else []
        replayed = [buffer[i] for i in self.rng.choice(len(buffer), draw, replace=False)]
        rows, seq_len, bucket = table.rows, self.online.seq_len, self.online.bucket_s
        fit_samples = train + [s for s in replayed if s.item_id in rows]
        fit_set = to_sample_set(fit_samples, rows, seq_len, bucket)
        tensor = table.tensor
        if not len(fit_set):
            candidate, opt = copy.deepcopy(self.model), self._optimizer(self.model, None)
        elif train_model is not None:
            candidate, opt = train_model(fit_set, tensor)
        else:
            candidate, opt = self.fine_tune(fit_set, tensor, self.items(fit_samples))
        if holdout:
            held, items = to_sample_set(holdout, rows, seq_len, bucket), self.items(holdout)
            p_serving = self.probs(self.model, held, tensor, items)
            p_candidate = self.probs(candidate, held, tensor, items)
            serving = window_metrics(held.label, p_serving, held.user)
            cand = {**window_metrics(held.label, p_candidate, held.user),
                    **paired_logloss(held.label, p_serving, p_candidate)}
        else:
            serving = cand = {"n": 0.0, "positives": 0.0}
        verdict = judge(serving, cand, self.online.gate)
        return RoundResult(verdict, candidate, opt, train, holdout, len(window) - len(usable),
                           time.perf_counter() - started)

    def accept(self, result: RoundResult) -> None:
        self.model, self.optimizer = result.candidate, result.optimizer
        self._settle(result)

    def reject(self, result: RoundResult) -> None:
        self._settle(result)

    def _settle(self, result: RoundResult) -> None:
        self.replay.extend(result.trained)
        self.pending = list(result.holdout)  # trained on in the next round
        self.counts.keep(s.event_id for s in (*self.pending, *self.replay))
        self.rounds += 1


# -- crash-safe checkpoints ------------------------------------------------------------------

CURRENT = "CURRENT"
OPTIMIZER, STATE, BUFFERS = "optimizer.safetensors", "state.json", "buffers.json"
_samples_encoder = msgspec.json.Encoder()


class Buffers(msgspec.Struct):
    """``buffers.json``: the samples a checkpoint holds and the stream's item counts (absent
    from checkpoints written before item identity was trained online: counts start at 0)."""

    pending: list[TrainingSample]
    replay: list[TrainingSample]
    item_counts: CountsState = msgspec.field(default_factory=CountsState)


_buffers_decoder = msgspec.json.Decoder(Buffers)


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"{idx}.{key}": value.detach().contiguous()
               for idx, per in state["state"].items() for key, value in per.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, _, key = name.partition(".")
        state.setdefault(int(idx), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g
              for g in meta["param_groups"]]  # JSON made the tuple a list
    return {"state": state, "param_groups": groups}


def save_state(root: Path, learner: Learner, offsets: Mapping[int, int],
               extra: Mapping[str, Any] | None = None, keep: int = 2,
               epoch: int | None = None) -> Path:
    """Write model + optimizer + held samples + offsets as one new checkpoint folder, fsync it,
    then point ``CURRENT`` at it (:mod:`semirec.core.durable`). Returns the folder,
    ``ckpt-<seq>`` or, with the writer's lease ``epoch``, ``ckpt-<seq>-e<epoch>`` (two trainers
    never write the same name; the service writes under its fence)."""
    root.mkdir(parents=True, exist_ok=True)
    seq = 1 + max([int(p.name[5:13]) for p in root.glob("ckpt-*") if p.name[5:13].isdigit()],
                  default=0)
    name = f"ckpt-{seq:08d}" + (f"-e{epoch}" if epoch is not None else "")
    final = root / name
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.save(tmp, learner.model, learner.cfg)
    tensors, opt_meta = _optimizer_tensors(learner.optimizer.state_dict())
    save_file(tensors, str(tmp / OPTIMIZER))
    (tmp / BUFFERS).write_bytes(_samples_encoder.encode(
        Buffers(learner.pending, list(learner.replay), learner.counts.state())))
    body = {"offsets": {str(p): int(o) for p, o in offsets.items()}, "optimizer": opt_meta,
            "seen": list(learner.seen), "rounds": learner.rounds, "online": asdict(learner.online),
            "saved_at": time.time(), **(extra or {})}
    (tmp / STATE).write_text(json.dumps(body) + "\n")
    durable.replace(tmp, final)  # the whole folder fsynced, renamed, root fsynced
    durable.write_atomic(root / CURRENT, final.name + "\n")
    for old in sorted(root.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(root: Path, online: OnlineConfig) -> tuple[Learner, dict[int, int], dict[str, Any]] | None:
    """(learner, offsets, state.json) of the current checkpoint; None when there is none."""
    if not (root / CURRENT).is_file():
        return None
    folder = root / (root / CURRENT).read_text().strip()
    model, cfg, _ = checkpoint.load(folder)
    body = json.loads((folder / STATE).read_text())
    opt_state = _optimizer_state(load_file(str(folder / OPTIMIZER)), body["optimizer"])
    learner = Learner(model, cfg, online, opt_state)
    buffers = _buffers_decoder.decode((folder / BUFFERS).read_bytes())
    learner.pending = list(buffers.pending)
    learner.replay.extend(buffers.replay)
    learner.counts = StreamCounts(buffers.item_counts)
    learner.seen = OrderedDict((e, None) for e in body["seen"])
    learner.rounds = int(body["rounds"])
    return learner, {int(p): int(o) for p, o in body["offsets"].items()}, body


def samples_from_events(events: Iterable[Any], seq_len: int = 50) -> list[TrainingSample]:
    """The samples ingest would log for ``events`` (in this order, one partition): offline
    replay through the same :func:`semirec.core.sequences.apply` hook (benchmarks, tests)."""
    from semirec.core.samples import sample_of
    from semirec.core.sequences import UserState, apply

    states: dict[str, UserState] = {}
    out: list[TrainingSample] = []

    def log(state: UserState, event: Any, offset: int) -> None:
        out.append(sample_of(state, event, 0, offset, event.ts, event.ts))

    for offset, event in enumerate(events):
        state = states.setdefault(event.user_id, UserState())
        apply(state, [(event, offset)], seq_len=seq_len, before_watch=log)
    return out
