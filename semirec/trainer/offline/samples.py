"""Training/evaluation samples: one per video watch, with the user's sequences *before* it.

Events are replayed in time order through :func:`semirec.core.sequences.apply` (the code the ingest
agent runs), and each watch is snapshotted before it is applied, so a sample sees exactly what
the online ranker would have seen in Redis at that moment. Sequences are stored right-aligned
(newest last) as rows of an item table (row 0 = padding) plus hours-before-the-request.

The ranker sees only the last 7 days (§4.1): :func:`in_window` is the rule, a pure function of
an entry's age in hours, applied here to every snapshot and inside the exported request graph,
so serving applies the same rule to the stored sequence (which keeps its newest 50 of any age).
:func:`record_filter` is §4.1's record filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch

from semirec.core.contracts import Domain, Event
from semirec.core.sequences import Entry, UserState, apply
from semirec.trainer.nets.ranker import UserBatch


@dataclass(frozen=True)
class SampleSet:
    user: np.ndarray  # [S] object, user_id
    target: np.ndarray  # [S] int32 item row of the watched video
    label: np.ndarray  # [S] float32, 1 = watched completely
    ts: np.ndarray  # [S] float64 unix seconds
    event: np.ndarray  # [S] object, event_id
    video: np.ndarray  # [S, L] int32 item rows, right-aligned, 0 = padding
    video_age: np.ndarray  # [S, L] int32 hours before the request
    product: np.ndarray  # [S, L] int32
    product_age: np.ndarray  # [S, L] int32
    # incomplete watches before the sample, as ``video`` ([S, 0] when not built)
    skipped: np.ndarray | None = None
    skipped_age: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("skipped", "skipped_age"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros((len(self.target), 0), np.int32))

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, index: np.ndarray) -> SampleSet:
        return SampleSet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def lengths(self, domain: str) -> np.ndarray:
        return (getattr(self, domain) > 0).sum(axis=1)


WINDOW_HOURS = 168  # 7 days


def in_window(age_hours: np.ndarray | torch.Tensor, window_hours: int = WINDOW_HOURS):
    """True for entries the ranker sees: ``0 <= age <= window_hours``, with ``age = hour(request)
    - hour(entry)`` and ``hour(ts) = ts // 3600`` (the buckets of ``semirec.core.sequences.Entry``).
    An entry up to 168 hour buckets old is in; one of 169 is out. Works on numpy and torch."""
    return (age_hours >= 0) & (age_hours <= window_hours)


def blank_outside_window(arrays: Mapping[str, np.ndarray], window_hours: int) -> None:
    """In place: entries of ``arrays["video"|"product"]`` (right-aligned rows, 0 = padding)
    outside :func:`in_window` become padding (row 0, age 0); they are the oldest, so the rest
    stays right-aligned (also ``skipped`` when present)."""
    for domain in ("video", "product", "skipped"):
        if domain not in arrays:
            continue
        out = (arrays[domain] > 0) & ~in_window(arrays[f"{domain}_age"], window_hours)
        arrays[domain][out] = 0
        arrays[f"{domain}_age"][out] = 0


def _snapshot(seq: list[Entry], rows: Mapping[str, int], hour: int, bucket_s: int,
              out_rows: np.ndarray, out_age: np.ndarray) -> None:
    n = len(seq)
    if not n:
        return
    missing = [e.item_id for e in seq if e.item_id not in rows]
    if missing:
        raise KeyError(f"items missing from the catalog: {missing[:5]}")
    out_rows[-n:] = [rows[e.item_id] for e in seq]
    out_age[-n:] = [hour - e.hour(bucket_s) for e in seq]


def build_samples(
    events: Iterable[Event],
    rows: Mapping[str, int],
    *,
    seq_len: int = 50,
    bucket_s: int = 3600,
    window_hours: int | None = None,
) -> SampleSet:
    """Replay ``events`` (sorted by ts) and snapshot the user's state before every watch.

    ``rows`` maps item_id -> row in the item table (rows start at 1; 0 is padding). With
    ``window_hours``, entries outside :func:`in_window` are blanked (row 0, age 0): they are
    the oldest, so the rest stays right-aligned.
    """
    states: dict[str, UserState] = {}
    cols: dict[str, list] = {k: [] for k in ("user", "target", "label", "ts", "event")}
    seqs: list[tuple[list[Entry], list[Entry], list[Entry], int]] = []
    last_ts = -np.inf
    for offset, event in enumerate(events):
        if event.ts < last_ts:
            raise ValueError("events must be sorted by ts")
        last_ts = event.ts
        state = states.setdefault(event.user_id, UserState())
        if event.domain is Domain.VIDEO:
            if event.item_id not in rows:
                raise KeyError(f"watched video {event.item_id!r} is not in the catalog")
            cols["user"].append(event.user_id)
            cols["target"].append(rows[event.item_id])
            cols["label"].append(float(bool(event.complete)))
            cols["ts"].append(event.ts)
            cols["event"].append(event.event_id)
            seqs.append((list(state.video), list(state.product), list(state.skipped),
                         int(event.ts // bucket_s)))
        apply(state, [(event, offset)], seq_len=seq_len)
    n = len(seqs)
    arrays = {k: np.zeros((n, seq_len), np.int32) for k in ("video", "video_age", "product",
                                                            "product_age", "skipped",
                                                            "skipped_age")}
    for i, (video, product, skipped, hour) in enumerate(seqs):
        _snapshot(video, rows, hour, bucket_s, arrays["video"][i], arrays["video_age"][i])
        _snapshot(product, rows, hour, bucket_s, arrays["product"][i], arrays["product_age"][i])
        _snapshot(skipped, rows, hour, bucket_s, arrays["skipped"][i], arrays["skipped_age"][i])
    if window_hours is not None:
        blank_outside_window(arrays, window_hours)
    return SampleSet(
        user=np.asarray(cols["user"], dtype=object),
        target=np.asarray(cols["target"], np.int32),
        label=np.asarray(cols["label"], np.float32),
        ts=np.asarray(cols["ts"], np.float64),
        event=np.asarray(cols["event"], dtype=object),
        **arrays,
    )


def record_filter(samples: SampleSet, min_videos: int = 1, min_products: int = 5) -> np.ndarray:
    """§4.1: indices of the records with at least ``min_videos`` watched videos or
    ``min_products`` clicked products in their (windowed) sequences."""
    keep = (samples.lengths("video") >= min_videos) | (samples.lengths("product") >= min_products)
    return np.flatnonzero(keep)


def chronological_split(
    samples: SampleSet, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> tuple[SampleSet, SampleSet, SampleSet]:
    """(train, validation, test): test = the last ``test_fraction`` of watches by time,
    validation = the last ``val_fraction`` of the rest. Ties at a cut go to the later part."""
    if not len(samples):
        raise ValueError("no samples")
    order = np.argsort(samples.ts, kind="stable")
    ts = samples.ts[order]
    test_cut = ts[int(len(ts) * (1 - test_fraction))]
    early = order[ts < test_cut]
    val_cut = samples.ts[early][int(len(early) * (1 - val_fraction))] if len(early) else test_cut
    train = early[samples.ts[early] < val_cut]
    val = early[samples.ts[early] >= val_cut]
    return samples.subset(train), samples.subset(val), samples.subset(order[ts >= test_cut])


def user_batch(samples: SampleSet, index: np.ndarray, table: torch.Tensor, seq_len: int = 50) \
        -> UserBatch:
    """Gather a :class:`UserBatch` for ``samples[index]``: the newest ``seq_len`` entries per
    domain, trimmed to the longest sequence in the batch (at least one padded slot); the
    incomplete watches too when the samples have them."""
    parts = []
    domains = ("video", "product") + (("skipped",) if samples.skipped.shape[1] else ())
    for domain in domains:
        rows = getattr(samples, domain)[index, -seq_len:]
        width = max(1, int((rows > 0).sum(axis=1).max(initial=0)))
        rows = torch.from_numpy(np.ascontiguousarray(rows[:, -width:])).long()
        age = torch.from_numpy(
            np.ascontiguousarray(getattr(samples, f"{domain}_age")[index, -width:])
        ).long()
        parts += [table[rows], age, rows > 0]
    return UserBatch(*parts)


def length_batches(
    samples: SampleSet,
    order: np.ndarray,
    batch_size: int,
    seq_len: int = 50,
    rng: np.random.Generator | None = None,
    group: int = 32,
) -> list[np.ndarray]:
    """Split ``order`` into batches of similar sequence lengths (less padding to compute).

    Each run of ``group`` batches is sorted by (video length // 8, product length) and cut into
    batches; with ``rng`` the batch order is shuffled.
    """
    lv = np.minimum(samples.lengths("video"), seq_len)
    lp = np.minimum(samples.lengths("product"), seq_len)
    out = []
    for start in range(0, len(order), batch_size * group):
        chunk = order[start : start + batch_size * group]
        chunk = chunk[np.lexsort((lp[chunk], lv[chunk] // 8))]
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def ccl_records(train: SampleSet, min_video_len: int, min_product_len: int,
                per_user: int = 1) -> SampleSet:
    """§4.1: training records whose video sequence is longer than ``min_video_len`` (and product
    sequence at least ``min_product_len``); per user the ``per_user`` records with the longest
    average length of the two sequences (the latest first on ties). The paper keeps one."""
    lv, lp = train.lengths("video"), train.lengths("product")
    keep = np.flatnonzero((lv > min_video_len) & (lp >= min_product_len))
    best: dict[str, list[tuple[float, float, int]]] = {}
    for i in keep:
        best.setdefault(str(train.user[i]), []).append(((lv[i] + lp[i]) / 2, train.ts[i], int(i)))
    chosen = [k[2] for keys in best.values() for k in sorted(keys, reverse=True)[:per_user]]
    return train.subset(np.array(sorted(chosen), dtype=np.int64))
