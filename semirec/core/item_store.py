"""Redis store of item vectors (written by the catalog agent / bulk encode; read by ranking, recall).

One item = one Redis string ``semirec:item:{<item_id>}`` (the braces make the id the Redis
Cluster hash tag) holding a small packed record::

    <B format=1> <B domain: 0 video, 1 product> <H dim> <q updated_ms> <B len> <version utf-8>
    <dim x float32 little-endian>

``updated_ms`` is the item's version (its ``updated_at``, else the catalog message's timestamp,
else the writer's clock): a write goes through a compare-and-set script on that key alone, so an
older version never overwrites a newer one (a late upsert of a worker that lost its partition
in a rebalance, a replay); an equal version is written again (a replay, a re-encode).

Per domain, a set ``semirec:items:<domain>`` lists the item ids (candidate enumeration); the
hash ``semirec:items:titles`` holds titles for people (CLI, demo). The sorted set
``semirec:items:changes`` is the change feed: every applied write appends its item id there,
**after** the vector is stored, with a position assigned by Redis itself (a script on that one
key: ``max(last position + 1, the server's clock in µs)``), so positions only grow and an entry
is visible only once its vector is. A reader that keeps the catalog in memory (serving's index)
reads the entries after the last position it saw and fetches those vectors: it cannot miss one,
whatever the writers' clocks or the order in which a cluster's nodes applied the writes
(:meth:`ItemStore.feed_position`, :meth:`ItemStore.changes_after`).
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
from semirec.core.redis_client import is_cluster, redis_client, script_calls

ITEM_PREFIX = "semirec:item:"
DOMAIN_SET_PREFIX = "semirec:items:"
CHANGES_KEY = "semirec:items:changes"
TITLES_KEY = "semirec:items:titles"
FORMAT = 1
_HEAD = struct.Struct("<BBHqB")  # format, domain, dim, updated_ms, version length
_DOMAIN_CODE = {Domain.VIDEO: 0, Domain.PRODUCT: 1}
_CODE_DOMAIN = {v: k for k, v in _DOMAIN_CODE.items()}
CHUNK = 500  # items per compare-and-set script call on one server (bounded script time)

# per key: write ARGV[i] unless the stored record (format 1) holds a newer updated_ms
_WRITE_IF_NEWER = """
local won = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local cur = redis.call('GET', key)
  local ok = true
  if cur and #cur >= 13 and string.byte(cur, 1) == 1 then
    ok = struct.unpack('<i8', new, 5) >= struct.unpack('<i8', cur, 5)
  end
  if ok then
    redis.call('SET', key, new)
    won[i] = 1
  else
    won[i] = 0
  end
end
return won
"""
# append ARGV (item ids) to the change feed KEYS[1] at positions Redis assigns: strictly above
# every position handed out before, and at least the server's clock in microseconds (so that
# a replica promoted after losing the feed's last entries still hands out higher positions)
_APPEND_CHANGES = """
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local pos = 0
if top[2] then pos = tonumber(top[2]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now - 1 > pos then pos = now - 1 end
for _, id in ipairs(ARGV) do
  pos = pos + 1
  redis.call('ZADD', KEYS[1], string.format('%.0f', pos), id)
end
return string.format('%.0f', pos)
"""


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
        self.cluster = is_cluster(client)
        self._write_if_newer = client.register_script(_WRITE_IF_NEWER)
        self._append_changes = client.register_script(_APPEND_CHANGES)

    @classmethod
    def from_url(cls, url: str) -> ItemStore:
        return cls(redis_client(url, decode_responses=False))

    async def close(self) -> None:
        await self.client.aclose()

    async def put_many(self, records: Iterable[ItemVector], titles: dict[str, str] | None = None) -> int:
        """Upsert vectors ordered by their ``updated_ms`` (0: the writer's clock now) and,
        optionally, titles; returns how many were written (an item whose stored version is
        newer is left as it is, with its title and domain set).

        Three round trips: the compare-and-set of each vector; then the domain sets (an item
        that changed domain leaves its old domain's set) and titles of the written items; then
        their change-feed entries, so a reader that sees an entry finds the vector."""
        now = int(time.time() * 1000)
        latest: dict[str, ItemVector] = {}
        for rec in records:  # one write per item: the newest version (the last one of equals)
            prev = latest.pop(rec.item_id, None)
            if prev is not None and (prev.updated_ms or now) > (rec.updated_ms or now):
                rec = prev
            latest[rec.item_id] = rec
        recs = list(latest.values())
        blobs = [pack(r.domain, r.vector, r.version, r.updated_ms or now) for r in recs]
        won = await self._write_vectors([item_key(r.item_id) for r in recs], blobs) if recs else []
        written = [r for r, ok in zip(recs, won, strict=True) if ok]
        ids = {r.item_id for r in written}
        titles = {i: t for i, t in (titles or {}).items() if i in ids or i not in latest}
        if written or titles:
            async with self.client.pipeline(transaction=False) as pipe:
                for rec in written:
                    pipe.sadd(domain_set(rec.domain), rec.item_id)
                    for other in Domain:
                        if other is not rec.domain:
                            pipe.srem(domain_set(other), rec.item_id)
                if titles:
                    pipe.hset(TITLES_KEY, mapping=titles)
                await pipe.execute()
        if written:
            await self._append_changes(keys=[CHANGES_KEY], args=[r.item_id for r in written])
        return len(written)

    async def _write_vectors(self, keys: Sequence[str], blobs: Sequence[bytes]) -> list[bool]:
        """The compare-and-set of every key: one script call per :data:`CHUNK` keys on one
        server; on a cluster one call per key (one slot each), all in one cluster pipeline."""
        if self.cluster:
            got = await script_calls(self.client, self._write_if_newer,  # type: ignore[arg-type]
                                     [([k], [b]) for k, b in zip(keys, blobs, strict=True)])
            return [bool(r[0]) for r in got]
        won: list[bool] = []
        for lo in range(0, len(keys), CHUNK):
            got = await self._write_if_newer(keys=list(keys[lo:lo + CHUNK]),
                                             args=list(blobs[lo:lo + CHUNK]))
            won += [bool(r) for r in got]
        return won

    async def feed_position(self) -> int:
        """The change feed's last position (0 when empty): one cheap round trip that tells a
        reader whether :meth:`changes_after` has news."""
        top = await self.client.zrevrange(CHANGES_KEY, 0, 0, withscores=True)
        return int(top[0][1]) if top else 0

    async def changes_after(self, position: int) -> list[tuple[str, int]]:
        """``(item_id, position)`` of the items written after feed ``position`` (0: every item
        ever written), oldest first; an item written several times appears once, at its last
        write."""
        rows = await self.client.zrangebyscore(CHANGES_KEY, f"({position}", "+inf", withscores=True)
        return [(m.decode(), int(score)) for m, score in rows]

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
