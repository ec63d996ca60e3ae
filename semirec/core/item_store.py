"""Redis store of item vectors (written by the catalog agent / bulk encode; read by ranking, recall).

One item = one Redis string ``semirec:item:{<item_id>}`` (the braces make the id the Redis
Cluster hash tag) holding a small packed record::

    <B format=1> <B domain: 0 video, 1 product> <H dim> <q updated_ms> <B len> <version utf-8>
    <dim x float32 little-endian>

Per domain, a set ``semirec:items:<domain>`` lists the item ids (candidate enumeration); the
sorted set ``semirec:items:changes`` scores every item id by its last write (ms), so readers that
keep the catalog in memory (serving's index) follow upserts by asking only for what changed; the
hash ``semirec:items:titles`` holds titles for people (CLI, demo).
:meth:`ItemStore.get_many` fetches any batch of ids in one pipelined round trip and returns a
``[N, dim]`` float32 matrix plus a found-mask; :func:`decode_many` does the same for callers
that run their own (sync) pipeline.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis

from semirec.core.contracts import Domain
from semirec.core.redis_client import redis_client

ITEM_PREFIX = "semirec:item:"
DOMAIN_SET_PREFIX = "semirec:items:"
CHANGES_KEY = "semirec:items:changes"
TITLES_KEY = "semirec:items:titles"
FORMAT = 1
_HEAD = struct.Struct("<BBHqB")  # format, domain, dim, updated_ms, version length
_DOMAIN_CODE = {Domain.VIDEO: 0, Domain.PRODUCT: 1}
_CODE_DOMAIN = {v: k for k, v in _DOMAIN_CODE.items()}


def item_key(item_id: str) -> str:
    return f"{ITEM_PREFIX}{{{item_id}}}"


def domain_set(domain: Domain) -> str:
    return f"{DOMAIN_SET_PREFIX}{domain.value}"


@dataclass(frozen=True, slots=True)
class ItemVector:
    item_id: str
    domain: Domain
    vector: np.ndarray  # [dim] float32
    version: str  # encoder version that produced the vector
    updated_ms: int = 0


def pack(domain: Domain, vector: np.ndarray, version: str, updated_ms: int) -> bytes:
    vec = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    ver = version.encode()
    if len(ver) > 255:
        raise ValueError("encoder version must be at most 255 bytes")
    return _HEAD.pack(FORMAT, _DOMAIN_CODE[domain], len(vec), updated_ms, len(ver)) + ver + vec.tobytes()


def unpack(item_id: str, blob: bytes) -> ItemVector:
    fmt, code, dim, updated_ms, ver_len = _HEAD.unpack_from(blob)
    if fmt != FORMAT:
        raise ValueError(f"item {item_id!r}: unknown record format {fmt}")
    start = _HEAD.size + ver_len
    version = blob[_HEAD.size:start].decode()
    vector = np.frombuffer(blob, dtype="<f4", count=dim, offset=start)
    return ItemVector(item_id, _CODE_DOMAIN[code], vector, version, updated_ms)


@dataclass(slots=True)
class ItemVectors:
    """A batch read: rows follow the requested ids; missing items are zero rows."""

    item_ids: list[str]
    vectors: np.ndarray  # [N, dim] float32
    found: np.ndarray  # [N] bool
    versions: list[str | None]
    domains: list[Domain | None]
    other_dims: list[str] = field(default_factory=list)  # skipped: a vector of another size


def decode_many(item_ids: Sequence[str], blobs: Sequence[bytes | None], dim: int = 128, *,
                skip_other_dims: bool = False) -> ItemVectors:
    """Rows for ``item_ids``; an item whose vector is not ``dim``-d raises ``ValueError``, or
    with ``skip_other_dims`` is left out (not found) and named in ``other_dims`` (a reader
    that serves must not stop on one stale or foreign vector)."""
    other: list[str] = []
    vectors = np.zeros((len(item_ids), dim), np.float32)
    found = np.zeros(len(item_ids), bool)
    versions: list[str | None] = [None] * len(item_ids)
    domains: list[Domain | None] = [None] * len(item_ids)
    for row, (item_id, blob) in enumerate(zip(item_ids, blobs, strict=True)):
        if blob is None:
            continue
        rec = unpack(item_id, blob)
        if len(rec.vector) != dim:
            if skip_other_dims:
                other.append(item_id)
                continue
            raise ValueError(f"item {item_id!r} has a {len(rec.vector)}-d vector, expected {dim}")
        vectors[row], found[row] = rec.vector, True
        versions[row], domains[row] = rec.version, rec.domain
    return ItemVectors(list(item_ids), vectors, found, versions, domains, other)


class ItemStore:
    """Async access to item vectors; each batch method is one pipelined round trip."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> ItemStore:
        return cls(redis_client(url, decode_responses=False))

    async def close(self) -> None:
        await self.client.aclose()

    async def put_many(self, records: Iterable[ItemVector], titles: dict[str, str] | None = None) -> int:
        """Upsert vectors (an item that changed domain leaves its old domain's set) and,
        optionally, titles."""
        now = int(time.time() * 1000)
        count = 0
        async with self.client.pipeline(transaction=False) as pipe:
            for rec in records:
                pipe.set(item_key(rec.item_id), pack(rec.domain, rec.vector, rec.version,
                                                     rec.updated_ms or now))
                pipe.zadd(CHANGES_KEY, {rec.item_id: now})
                pipe.sadd(domain_set(rec.domain), rec.item_id)
                for other in Domain:
                    if other is not rec.domain:
                        pipe.srem(domain_set(other), rec.item_id)
                count += 1
            if titles:
                pipe.hset(TITLES_KEY, mapping=titles)
            if count or titles:
                await pipe.execute()
        return count

    async def changed_since(self, since_ms: int) -> list[tuple[str, int]]:
        """``(item_id, written_ms)`` of items written at or after ``since_ms``, oldest first."""
        rows = await self.client.zrangebyscore(CHANGES_KEY, since_ms, "+inf", withscores=True)
        return [(m.decode(), int(score)) for m, score in rows]

    async def change_mark(self, since_ms: int) -> tuple[int, float | None]:
        """How many items were written at or after ``since_ms`` and the newest write's ms: one
        cheap round trip that tells a reader whether :meth:`changed_since` has news."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcount(CHANGES_KEY, since_ms, "+inf")
            pipe.zrevrange(CHANGES_KEY, 0, 0, withscores=True)
            count, newest = await pipe.execute()
        return int(count), (float(newest[0][1]) if newest else None)

    async def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        if not item_ids:
            return {}
        got = await self.client.hmget(TITLES_KEY, list(item_ids))
        return {i: t.decode() for i, t in zip(item_ids, got, strict=True) if t is not None}

    async def get_many(self, item_ids: Sequence[str], dim: int = 128, *,
                       skip_other_dims: bool = False) -> ItemVectors:
        if not item_ids:
            return decode_many([], [], dim)
        async with self.client.pipeline(transaction=False) as pipe:
            for item_id in item_ids:
                pipe.get(item_key(item_id))
            blobs = await pipe.execute()
        return decode_many(item_ids, blobs, dim, skip_other_dims=skip_other_dims)

    async def get(self, item_id: str) -> ItemVector | None:
        blob = await self.client.get(item_key(item_id))
        return None if blob is None else unpack(item_id, blob)

    async def ids(self, domain: Domain) -> list[str]:
        """All item ids of a domain, sorted."""
        return sorted(m.decode() for m in await self.client.smembers(domain_set(domain)))

    async def count(self, domain: Domain) -> int:
        return int(await self.client.scard(domain_set(domain)))
