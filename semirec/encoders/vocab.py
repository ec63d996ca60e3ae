"""Category and tag ids by the hashing trick: open vocabularies, no vocabulary file to ship.

Labels are case- and space-normalised, then hashed into ``1..buckets-1``; 0 means "none"
(no category, or tag padding). Collisions are rare at catalog sizes (tens of categories,
hundreds of tags) and only merge two labels' embeddings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def normalise(label: str) -> str:
    return " ".join(label.lower().split())


def bucket(label: str, buckets: int) -> int:
    digest = hashlib.blake2b(normalise(label).encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def category_ids(categories: Sequence[str | None], buckets: int) -> np.ndarray:
    return np.array([0 if c is None else bucket(c, buckets) for c in categories], dtype=np.int64)


def tag_ids(tags: Sequence[Sequence[str]], buckets: int) -> np.ndarray:
    """``[N, T]`` int64, padded with 0 to the longest tag list (at least one column)."""
    width = max([len(t) for t in tags] + [1])
    out = np.zeros((len(tags), width), dtype=np.int64)
    for row, labels in enumerate(tags):
        ids = list(dict.fromkeys(bucket(t, buckets) for t in labels))
        out[row, : len(ids)] = ids
    return out
