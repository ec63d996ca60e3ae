"""Item watch counts rebuilt from the ``samples`` stream, for online fine-tuning of a ranker
with item identity (:mod:`semirec.trainer.nets.identity`).

Every watch (complete or not) is logged once as a training sample, so the samples topic, read
from its beginning (the trainer's consumer starts at ``earliest``), carries every watch count
serving reads from Redis (``semirec:video:watches`` / ``semirec:video:completes``). The trainer
counts the samples it consumes per item and stamps each new sample with its item's counts
*before* it: the counts of the samples consumed earlier. Offline,
:class:`semirec.trainer.nets.identity.ItemCounts` counts the watches strictly before the
sample's time; the two agree when the stream is in time order (one partition, no equal
timestamps of one item; ``tests/test_online_counts.py``). Across partitions a stamp can miss
or include a watch of the last instants, as serving's counts do (they are read whenever the
request comes, and ingest counts a batch beside its state writes).

Why not a count in the sample contract: ingest counts watches in Redis beside its state work
(at-least-once, per batch, concurrent with the sample logging), so a count read there would
not be a deterministic function of the events, and offline samples could not equal online
ones. The samples themselves are exactly the watches, once per event id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import numpy as np

from semirec.core.samples import TrainingSample
from semirec.trainer.nets.identity import item_buckets


class CountsState(msgspec.Struct):
    """What a checkpoint keeps: the running counts and the stamps of held samples."""

    counts: dict[str, tuple[int, int]] = {}  # item_id -> (watches, completes) so far
    stamps: dict[str, tuple[int, int]] = {}  # event_id -> its item's counts before it


class StreamCounts:
    def __init__(self, state: CountsState | None = None) -> None:
        state = state or CountsState()
        self.counts: dict[str, tuple[int, int]] = dict(state.counts)
        self.stamps: dict[str, tuple[int, int]] = dict(state.stamps)

    def observe(self, sample: TrainingSample) -> None:
        """Stamp ``sample`` with its item's counts so far, then count it (call once per
        event id, in consumption order)."""
        watches, completes = self.counts.get(sample.item_id, (0, 0))
        self.stamps[sample.event_id] = (watches, completes)
        self.counts[sample.item_id] = (watches + 1, completes + int(sample.complete))

    def keep(self, event_ids: Iterable[str]) -> None:
        """Forget the stamps of samples no longer held (pending or replay)."""
        keep = set(event_ids)
        self.stamps = {e: s for e, s in self.stamps.items() if e in keep}

    def state(self) -> CountsState:
        return CountsState(dict(self.counts), dict(self.stamps))

    def inputs(self, samples: Sequence[TrainingSample], buckets: int) \
            -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item identity inputs of each sample's watched item, [S] each: bucket (int64),
        watches and completes before the sample (float32; 0 for a sample never stamped)."""
        stamped = np.array([self.stamps.get(s.event_id, (0, 0)) for s in samples],
                           np.float32).reshape(-1, 2)
        return (item_buckets([s.item_id for s in samples], buckets), stamped[:, 0].copy(),
                stamped[:, 1].copy())


class StampedItems:
    """:class:`semirec.trainer.nets.identity.ItemFeatures` for a sample set whose only
    candidate per sample is its target: inputs by sample index."""

    def __init__(self, bucket: np.ndarray, watches: np.ndarray, completes: np.ndarray) -> None:
        self.bucket, self.watches, self.completes = bucket, watches, completes

    def inputs(self, rows: np.ndarray, ts: np.ndarray, index: np.ndarray | None = None):
        import torch

        if index is None or np.asarray(rows).shape[1:] != (1,):
            raise ValueError("stamped item inputs exist for each sample's target only")
        return (torch.from_numpy(self.bucket[index, None]),
                torch.from_numpy(self.watches[index, None]),
                torch.from_numpy(self.completes[index, None]))
