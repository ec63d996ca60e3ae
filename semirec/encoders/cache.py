"""On-disk cache of backbone features, keyed by a hash of the content (SQLite, float32 blobs).

Backbones are frozen, so a title or an image always yields the same features: the cache makes
re-encoding a catalog (a new fusion checkpoint, a restart) cost only the fusion pass.
Each backbone variant writes its own ``space`` (e.g. ``effnet-lite0@64``).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def content_key(data: bytes | str) -> bytes:
    return hashlib.blake2b(data.encode() if isinstance(data, str) else data, digest_size=20).digest()


class FeatureCache:
    """``get_many``/``put_many`` of float32 vectors; shared between processes, used by one thread
    at a time (the agent hands batches to worker threads one after the other)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS features ("
            "space TEXT NOT NULL, key BLOB NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (space, key))"
        )

    def get_many(self, space: str, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, vec FROM features WHERE space = ? AND key IN ({marks})",
                (space, *chunk),
            )
            for key, blob in rows:
                found[bytes(key)] = np.frombuffer(blob, dtype="<f4")
        return [found.get(k) for k in keys]

    def put_many(self, space: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        rows = [(space, k, np.ascontiguousarray(v, dtype="<f4").tobytes())
                for k, v in zip(keys, vectors, strict=True)]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
