"""A user's state + candidates -> the ranker's request tensors (batch of one).

The tensors are those of the Triton ``ranker`` model (semirec/trainer/registry/repository.py): per domain the
newest ``seq_len`` entries' item vectors, right-aligned (newest last), left-padded with zeros and
mask False; ages in hour blocks before the request, exactly as the trainer's samples compute
them (semirec/trainer/offline/samples.py); candidates padded with zero rows to a fixed count so that every
request has the same shapes and Triton's dynamic batcher can join them. Entries whose item has
no vector yet are left out (the count is returned). With ``skipped`` (a ``+usr`` model) the
incomplete watches (``UserState.skipped``) become ``skipped`` / ``skipped_age`` /
``skipped_mask`` the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex


@dataclass(frozen=True, slots=True)
class RankRequest:
    tensors: dict[str, np.ndarray]
    n_candidates: int  # real candidates (rows after them are padding)
    missing_sequence_vectors: int


def _domain(entries: Sequence[Entry], catalog: CatalogIndex, seq_len: int, hour: int,
            bucket_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    vec = np.zeros((seq_len, catalog.dim), np.float32)
    age = np.zeros(seq_len, np.int64)
    mask = np.zeros(seq_len, bool)
    return vec, age, mask, _fill_domain(entries, catalog, hour, bucket_s, vec, age, mask)


def _fill_domain(entries: Sequence[Entry], catalog: CatalogIndex, hour: int, bucket_s: int,
                 vec: np.ndarray, age: np.ndarray, mask: np.ndarray) -> int:
    """One domain's newest ``len(mask)`` entries into zeroed ``vec`` / ``age`` / ``mask``
    (right-aligned); returns the entries left out for want of a vector."""
    seq_len = len(mask)
    newest = entries[-seq_len:]
    if not newest:
        return 0
    ts_ms, ids = zip(*newest, strict=True)
    rows = catalog.rows(ids)
    keep = np.flatnonzero(rows >= 0)
    n = len(keep)
    if n:
        catalog.gather(rows[keep], vec[seq_len - n:])
        hours = np.asarray(ts_ms, np.int64)[keep] // (bucket_s * 1000)  # Entry.hour, per entry
        age[seq_len - n:] = np.maximum(0, hour - hours)
        mask[seq_len - n:] = True
    return len(newest) - n


def rank_request(state: UserState | None, candidates: np.ndarray, catalog: CatalogIndex, *,
                 at: float, seq_len: int = 50, bucket_s: int = 3600,
                 pad_to: int = 0, skipped: bool = False) -> RankRequest:
    """Tensors for one user at time ``at`` (unix s) and ``candidates`` [C, dim]."""
    state = state or UserState()
    hour = int(at // bucket_s)
    v, va, vm, miss_v = _domain(state.video, catalog, seq_len, hour, bucket_s)
    p, pa, pm, miss_p = _domain(state.product, catalog, seq_len, hour, bucket_s)
    n = len(candidates)
    padded = np.zeros((max(n, pad_to), catalog.dim), np.float32)
    padded[:n] = candidates
    tensors = {"video": v, "video_age": va, "video_mask": vm, "product": p, "product_age": pa,
               "product_mask": pm, "candidates": padded}
    if skipped:
        s, sa, sm, miss_s = _domain(state.skipped, catalog, seq_len, hour, bucket_s)
        tensors.update(skipped=s, skipped_age=sa, skipped_mask=sm)
        miss_p += miss_s
    return RankRequest({k: t[None] for k, t in tensors.items()}, n, miss_v + miss_p)


def rank_batch(users: Sequence[tuple[UserState | None, np.ndarray, float]], catalog: CatalogIndex,
               *, seq_len: int = 50, bucket_s: int = 3600,
               pad_to: int = 0, skipped: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """The tensors of several users at once ``[B, ...]`` (each row equal to
    :func:`rank_request`'s), written in place: ``users`` are ``(state, candidate catalog rows,
    at)``; returns the tensors and the sequence entries without a vector (``skipped``: also the
    incomplete watches' tensors)."""
    b, dim = len(users), catalog.dim
    n = max([pad_to, *(len(rows) for _, rows, _ in users)])
    t = {"video": np.zeros((b, seq_len, dim), np.float32), "video_age": np.zeros((b, seq_len), np.int64),
         "video_mask": np.zeros((b, seq_len), bool),
         "product": np.zeros((b, seq_len, dim), np.float32),
         "product_age": np.zeros((b, seq_len), np.int64), "product_mask": np.zeros((b, seq_len), bool),
         "candidates": np.zeros((b, n, dim), np.float32)}
    lists = ("video", "product") + (("skipped",) if skipped else ())
    if skipped:
        t.update(skipped=np.zeros((b, seq_len, dim), np.float32),
                 skipped_age=np.zeros((b, seq_len), np.int64),
                 skipped_mask=np.zeros((b, seq_len), bool))
    missing = 0
    for j, (state, rows, at) in enumerate(users):
        hour = int(at // bucket_s)
        if state is not None:
            for name in lists:
                missing += _fill_domain(getattr(state, name), catalog, hour, bucket_s, t[name][j],
                                        t[f"{name}_age"][j], t[f"{name}_mask"][j])
        catalog.gather(rows, t["candidates"][j, : len(rows)])
    return t, missing


def item_bucket(item_id: str, buckets: int) -> int:
    """The hashed id bucket of a ranker with item identity: the first 8 bytes of BLAKE2b(id)
    as an unsigned little-endian integer, modulo ``buckets`` (semirec.trainer.nets.identity.item_bucket;
    repeated here so the agent does not import torch, and tested to agree)."""
    return _id_hash(item_id) % buckets


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little")


def item_buckets(item_ids: Sequence[str], buckets: int) -> np.ndarray:
    """int64 :func:`item_bucket` of each id."""
    return (np.fromiter(map(_id_hash, item_ids), np.uint64, len(item_ids))
            % np.uint64(buckets)).astype(np.int64)


def identity_tensors(item_ids: Sequence[str], watches: np.ndarray, completes: np.ndarray,
                     buckets: int, pad_to: int = 0) -> dict[str, np.ndarray]:
    """``candidate_bucket`` / ``candidate_watches`` / ``candidate_completes`` [1, C] of the
    candidates ``item_ids``, padded like the candidates (padding: bucket 0, no watches)."""
    return padded_identity(item_buckets(item_ids, buckets), watches, completes, pad_to)


def padded_identity(bucket: np.ndarray, watches: np.ndarray, completes: np.ndarray,
                    pad_to: int = 0) -> dict[str, np.ndarray]:
    """:func:`identity_tensors` from the candidates' buckets."""
    n = max(len(bucket), pad_to)
    out = {"candidate_bucket": np.zeros((1, n), np.int64),
           "candidate_watches": np.zeros((1, n), np.float32),
           "candidate_completes": np.zeros((1, n), np.float32)}
    out["candidate_bucket"][0, : len(bucket)] = bucket
    out["candidate_watches"][0, : len(bucket)] = watches
    out["candidate_completes"][0, : len(bucket)] = completes
    return out
