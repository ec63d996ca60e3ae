"""Item identity beside content (beyond the paper): a hashed per-item bias and the item's
smoothed completion rate, both added to a ranker's logit.

- Bucket: ``item_bucket(item_id, buckets)`` = the first 8 bytes of BLAKE2b(item_id as UTF-8,
  digest_size=8) read as an unsigned little-endian integer, modulo ``buckets`` (2^18 by
  default). The bias table starts at zero and only rows of items seen in training get
  gradients (AdamW's decay keeps an untouched zero row at zero), so an item never seen in
  training adds nothing: it is ranked by its content (and its rate, once it has watches).
- Smoothed completion rate: ``(completes + k * prior) / (watches + k)`` with ``watches`` /
  ``completes`` = the item's watches / complete watches *before the request* (point in time:
  training samples see only earlier watches, as the server does), ``k`` =
  ``rate_prior_strength`` (10) and ``prior`` = the training set's completion rate (a buffer
  saved with the model). The logit gains ``w * (logit(rate) - logit(prior))`` (``w`` learned).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

ItemInputs = tuple[Tensor, Tensor, Tensor]  # bucket [B, C] int64, watches, completes [B, C] f32


def item_bucket(item_id: str, buckets: int) -> int:
    """The hashed bucket of an item id (see the module docstring)."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def item_buckets(item_ids: Sequence[str], buckets: int) -> np.ndarray:
    """int64 bucket per id; the padding row's id ``""`` gets 0 like any other."""
    return np.array([item_bucket(str(i), buckets) for i in item_ids], np.int64)


class ItemIdentity(nn.Module):
    def __init__(self, buckets: int, prior_strength: float = 10.0) -> None:
        super().__init__()
        self.bias = nn.Embedding(buckets, 1)
        nn.init.zeros_(self.bias.weight)
        self.rate_weight = nn.Parameter(torch.tensor(1.0))
        self.prior_strength = float(prior_strength)
        self.register_buffer("prior_rate", torch.tensor(0.5))

    def rate(self, watches: Tensor, completes: Tensor) -> Tensor:
        k = self.prior_strength
        return (completes + k * self.prior_rate) / (watches + k)

    def forward(self, bucket: Tensor, watches: Tensor, completes: Tensor) -> Tensor:
        def logit(p: Tensor) -> Tensor:
            p = p.clamp(1e-4, 1 - 1e-4)
            return torch.log(p) - torch.log1p(-p)

        rate = self.rate(watches.float(), completes.float())
        return self.bias(bucket).squeeze(-1) + self.rate_weight * (
            logit(rate) - logit(self.prior_rate))


class ItemCounts:
    """Point-in-time watch / complete counts per item row, from every watch of a data set."""

    def __init__(self, rows: np.ndarray, ts: np.ndarray, complete: np.ndarray) -> None:
        rows = np.asarray(rows, np.int64)
        ts = np.asarray(ts, np.float64)
        self.t0 = float(ts.min()) if len(ts) else 0.0
        self.span = float(ts.max() - self.t0 + 2.0) if len(ts) else 2.0
        order = np.lexsort((ts, rows))
        self.keys = rows[order] * self.span + (ts[order] - self.t0)
        self.cum_complete = np.r_[0, np.cumsum(np.asarray(complete, bool)[order])]
        n = int(rows.max()) + 2 if len(rows) else 1
        self.starts = np.searchsorted(rows[order], np.arange(n))

    def before(self, rows: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(watches, completes) of item ``rows`` [S, C] strictly before ``ts`` [S], float32."""
        rows = np.asarray(rows, np.int64)
        clipped = np.minimum(rows, len(self.starts) - 1)
        offset = np.clip(np.asarray(ts, np.float64)[:, None] - self.t0, -1.0, self.span - 1.0)
        at = rows * self.span + offset
        end = np.searchsorted(self.keys, at, side="left")
        start = self.starts[clipped]
        end = np.maximum(end, start)
        known = rows < len(self.starts) - 1
        watches = np.where(known, end - start, 0).astype(np.float32)
        completes = np.where(known, self.cum_complete[end] - self.cum_complete[start], 0)
        return watches, completes.astype(np.float32)


@dataclass(frozen=True)
class ItemFeatures:
    """What item identity needs per item row: its bucket and its point-in-time counts."""

    buckets: np.ndarray  # [rows] int64
    counts: ItemCounts

    def inputs(self, rows: np.ndarray, ts: np.ndarray, index: np.ndarray | None = None) -> ItemInputs:
        """Inputs of item ``rows`` [S, C] at times ``ts`` [S] (``index``: the samples'
        positions, unused here; :class:`semirec.trainer.online.counts.StampedItems` needs them)."""
        watches, completes = self.counts.before(rows, ts)
        return (torch.from_numpy(self.buckets[np.asarray(rows, np.int64)]),
                torch.from_numpy(watches), torch.from_numpy(completes))
