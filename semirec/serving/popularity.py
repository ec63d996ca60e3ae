"""Popularity over a recent window of event time, maintained from the stream.

The ingest agent counts every complete video watch into a Redis hash per event-time hour
(``semirec:pop:<hour>``, field = video id) before it acks the batch, and records the hour in the
sorted set ``semirec:pop:hours``, and bumps the hour's write number ``semirec:pop:<hour>:n``.
:class:`PopularitySnapshot` sums the newest ``window_hours`` hours (relative to the newest hour
seen, so a replay of history behaves as live traffic) into an in-memory ranking that recall and
the fallback ranker read without touching Redis; each refresh re-reads only the hours whose
write number moved (live traffic: the current hour), not the whole window.

The same pass keeps every video's all-time watch and complete-watch counts (hashes
``semirec:video:watches`` / ``semirec:video:completes``) and a change feed of them: the stream
``semirec:video:counted`` gets one entry per count call, listing the videos it counted (written in
the same script, after the counts; trimmed to about :data:`FEED_MAXLEN` entries). A ranker with
item identity reads the counts from an in-memory copy that follows the feed
(:class:`semirec.serving.identity.IdentityIndex`, :func:`counts_after`); :func:`watch_counts`
reads them by id.

Counting is at-least-once: a batch replayed after a crash between the count and the commit is
counted twice. Popularity is a ranking signal, so this is accepted (exact sequences are not).

On a Redis Cluster every one of these keys is split into :data:`CLUSTER_SHARDS` shards, each
with its own hash tag (``semirec:video:watches{pop7}``, ``semirec:pop:<hour>{pop7}``,
``semirec:pop:hours{pop7}``, ``semirec:video:counted{pop7}``; a video's shard is
``crc32(id) % CLUSTER_SHARDS``), so the counts
spread over the cluster's slots and nodes instead of one hot slot. A batch runs the same script
once per shard, in one cluster pipeline (one round trip per node); readers gather the shards.
On one server the keys keep their plain names (one shard).
"""

from __future__ import annotations

import time
import weakref
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from semirec.core.contracts import Domain, Event
from semirec.core.redis_client import is_cluster, script_calls

HOURS_KEY = "semirec:pop:hours"
WATCHES_KEY = "semirec:video:watches"
COMPLETES_KEY = "semirec:video:completes"
COUNTED_KEY = "semirec:video:counted"  # the counts' change feed (a stream)
FEED_MAXLEN = 10_000  # count-feed entries kept (about: whole stream nodes are trimmed)
PREFIX = "semirec:pop:"
KEEP_S = 14 * 24 * 3600  # wall-clock expiry of an hour's counts
CLUSTER_SHARDS = 32  # hash tags the counts spread over on a Redis Cluster


def shards_of(client: aioredis.Redis) -> int:
    return CLUSTER_SHARDS if is_cluster(client) else 1


def sharded(key: str, shard: int, shards: int) -> str:
    """``key`` of one shard: the plain name with one shard, else with the shard's hash tag."""
    return key if shards == 1 else f"{key}{{pop{shard}}}"


def shard_of(item_id: str, shards: int) -> int:
    return zlib.crc32(item_id.encode()) % shards if shards > 1 else 0


def hour_key(hour: int, shard: int = 0, shards: int = 1) -> str:
    return sharded(f"{PREFIX}{hour}", shard, shards)


def hour_writes_key(hour: int, shard: int = 0, shards: int = 1) -> str:
    """The count of script calls that wrote ``hour``'s counts (expires with them)."""
    return sharded(f"{PREFIX}{hour}:n", shard, shards)


# One call per batch: the counts travel as one msgpack argument and Redis applies them, instead
# of one HINCRBY per item from the client (whose per-command packing cost ~30 us per event).
# Each hour's counts get a write count beside them (``semirec:pop:<hour>:n``, INCR per call), so
# a reader re-reads only the hours written since it last read them.
# Then one entry on the count feed KEYS[3] (a stream, trimmed to about ARGV[3] entries) lists the
# videos counted (ARGV[4], msgpack): one XADD per call, not one write per video.
_COUNT = """
local data = cmsgpack.unpack(ARGV[1])
local keep = ARGV[2]
for _, row in ipairs(data[1]) do
  redis.call('HINCRBY', KEYS[1], row[1], row[2])
  if row[3] > 0 then redis.call('HINCRBY', KEYS[2], row[1], row[3]) end
end
local n = #data[2]
for i, hour in ipairs(data[2]) do
  local key = KEYS[4 + i]
  local counts = hour[2]
  for j = 1, #counts, 2 do
    redis.call('HINCRBY', key, counts[j], counts[j + 1])
  end
  redis.call('EXPIRE', key, keep)
  redis.call('INCR', KEYS[4 + n + i])
  redis.call('EXPIRE', KEYS[4 + n + i], keep)
  redis.call('ZADD', KEYS[4], hour[1], hour[1])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'ids', ARGV[4])
return 0
"""
# (Lua) w, c = the watches and the completes of ``ids``, one HMGET per 1,000 (``unpack``'s limit)
_COUNTS_OF_IDS = """
local w, c = {}, {}
for lo = 1, #ids, 1000 do
  local hi = math.min(lo + 999, #ids)
  w[#w + 1] = redis.call('HMGET', KEYS[1], unpack(ids, lo, hi))
  c[#c + 1] = redis.call('HMGET', KEYS[2], unpack(ids, lo, hi))
end
"""
# Counts by id in one call: the ids travel as one msgpack argument, instead of two HMGETs whose
# hundreds of arguments redis-py packs one by one (500 ids: client + server CPU 1.3-1.8 -> 0.7
# ms, docs/serving.md); HMGET's replies come back as they are (a Lua loop converting them cost
# the server more than it saved the client).
_READ = """
local ids = cmsgpack.unpack(ARGV[1])
""" + _COUNTS_OF_IDS + """
return {w, c}
"""
# The count feed after entry ARGV[1] (at most ARGV[2] entries): {0, ids, watches per 1,000 ids,
# completes per 1,000 ids, the last entry read, entries read}; {1, the newest entry ("0-0":
# none)} when the entries after ARGV[1] cannot all be there (a new reader, ""; the feed trimmed
# past ARGV[1]; a feed behind it: emptied, or a failed-over Redis that lost its newest entries):
# the caller then reads the counts whole.
_CHANGED = """
local function before(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local last = ARGV[1]
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local top = '0-0'
if newest[1] then top = newest[1][1] end
if last == '' then return {1, top} end
if top == last then return {0, {}, {}, {}, last, 0} end
local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if before(top, last) or before(last, oldest[1][1]) then return {1, top} end
local entries = redis.call('XRANGE', KEYS[3], '(' .. last, '+', 'COUNT', tonumber(ARGV[2]))
local ids, seen = {}, {}
for _, entry in ipairs(entries) do
  for _, id in ipairs(cmsgpack.unpack(entry[2][2])) do
    if not seen[id] then
      seen[id] = true
      ids[#ids + 1] = id
    end
  end
end
""" + _COUNTS_OF_IDS + """
return {0, ids, w, c, entries[#entries][1], #entries}
"""
_scripts: weakref.WeakKeyDictionary[aioredis.Redis, dict[str, AsyncScript]] = \
    weakref.WeakKeyDictionary()
_msgpack = msgspec.msgpack.Encoder()


def _script(client: aioredis.Redis, source: str) -> AsyncScript:
    scripts = _scripts.setdefault(client, {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = client.register_script(source)
    return script


async def count_watches(client: aioredis.Redis, events: Iterable[Event], bucket_s: int = 3600) -> int:
    """Add the complete video watches among ``events`` to their hour's counts, and every watch
    to the all-time counts (one script call: one round trip, applied atomically)."""
    per_hour: dict[int, Counter[str]] = {}
    watches: Counter[str] = Counter()
    completes: Counter[str] = Counter()
    video = Domain.VIDEO
    for e in events:
        if e.domain is video:
            item = e.item_id
            watches[item] += 1
            if e.complete:
                completes[item] += 1
                hour = int(e.ts // bucket_s)
                counts = per_hour.get(hour)
                if counts is None:
                    per_hour[hour] = counts = Counter()
                counts[item] += 1
    if not watches:
        return 0
    shards = shards_of(client)
    script = _script(client, _COUNT)
    if shards == 1:
        keys, args = _count_call(watches, completes, per_hour, 0, 1)
        await script(keys=keys, args=args)
        return sum(completes.values())
    shard = {item: shard_of(item, shards) for item in watches}
    parts: dict[int, tuple[dict[str, int], dict[str, int], dict[int, Counter[str]]]] = {}
    for item, n in watches.items():
        part = parts.get(shard[item])
        if part is None:
            parts[shard[item]] = part = ({}, {}, {})
        part[0][item] = n
        if item in completes:
            part[1][item] = completes[item]
    for hour, counts in per_hour.items():
        for item, n in counts.items():
            hours = parts[shard[item]][2]
            if hour not in hours:
                hours[hour] = Counter()
            hours[hour][item] = n
    calls = [_count_call(w, c, h, s, shards) for s, (w, c, h) in parts.items()]
    await script_calls(client, script, calls)  # type: ignore[arg-type]
    return sum(completes.values())


def _count_call(watches: dict[str, int], completes: dict[str, int],
                per_hour: dict[int, Counter[str]], shard: int, shards: int) -> tuple[list[str], list]:
    """The count script's keys and arguments for one shard's items."""
    hours = sorted(per_hour)
    payload = _msgpack.encode((
        [(item, n, completes.get(item, 0)) for item, n in watches.items()],
        [(str(h), [x for pair in per_hour[h].items() for x in pair]) for h in hours]))
    keys = [sharded(WATCHES_KEY, shard, shards), sharded(COMPLETES_KEY, shard, shards),
            sharded(COUNTED_KEY, shard, shards), sharded(HOURS_KEY, shard, shards),
            *(hour_key(h, shard, shards) for h in hours),
            *(hour_writes_key(h, shard, shards) for h in hours)]
    return keys, [payload, KEEP_S, FEED_MAXLEN, _msgpack.encode(list(watches))]


async def watch_counts(client: aioredis.Redis, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(watches, completes) of each video so far, float32 (0 for a video never watched); one
    script call per shard (``_READ``)."""
    watches = np.zeros(len(item_ids), np.float32)
    completes = np.zeros(len(item_ids), np.float32)
    if not item_ids:
        return watches, completes
    shards = shards_of(client)
    script = _script(client, _READ)
    parts: list[slice | list[int]]
    if shards == 1:
        got = [await script(keys=[WATCHES_KEY, COMPLETES_KEY], args=[_msgpack.encode(item_ids)])]
        parts = [slice(None)]
    else:
        by_shard: dict[int, list[int]] = {}
        for row, item in enumerate(item_ids):
            by_shard.setdefault(shard_of(item, shards), []).append(row)
        parts = [*by_shard.values()]
        got = await script_calls(client, script, [  # type: ignore[arg-type]
            ([sharded(WATCHES_KEY, shard, shards), sharded(COMPLETES_KEY, shard, shards)],
             [_msgpack.encode([item_ids[r] for r in rows])])
            for shard, rows in by_shard.items()])
    for rows, (w, c) in zip(parts, got, strict=True):  # per 1,000 ids: a list of counts or None
        watches[rows] = [int(v or 0) for chunk in w for v in chunk]
        completes[rows] = [int(v or 0) for chunk in c for v in chunk]
    return watches, completes


@dataclass(frozen=True, slots=True)
class CountChanges:
    """One shard's news from the count feed: the videos counted after an entry, with their
    counts now; or, with ``whole``, every video's counts (the feed could not say what changed)."""

    ids: list[str]
    watches: list[int]
    completes: list[int]
    position: str  # the feed's entry read last ("0-0": the feed was empty)
    whole: bool
    more: bool = False  # the feed may hold more entries after ``position``


async def counts_after(client: aioredis.Redis, positions: Sequence[str],
                       limit: int = 200) -> list[CountChanges]:
    """Per shard (``positions[s]``: the feed entry of shard ``s`` read last, "" for none; as
    many as :func:`shards_of` gives) the videos counted since, from at most ``limit`` feed
    entries (one script call per shard, on a cluster in one pipeline); a shard whose feed cannot
    tell (a new reader, a feed trimmed past the position or behind it) is read whole, with
    ``HSCAN``, and its position set to the feed's newest entry before that read."""
    shards = shards_of(client)
    if len(positions) != shards:
        raise ValueError(f"{len(positions)} positions for {shards} shard(s)")
    script = _script(client, _CHANGED)
    keys = [(sharded(WATCHES_KEY, s, shards), sharded(COMPLETES_KEY, s, shards),
             sharded(COUNTED_KEY, s, shards)) for s in range(shards)]
    calls = [(k, [p, limit]) for k, p in zip(keys, positions, strict=True)]
    if shards == 1:
        got = [await script(keys=calls[0][0], args=calls[0][1])]
    else:
        got = await script_calls(client, script, calls)  # type: ignore[arg-type]
    out = []
    for (watches_key, completes_key, _), reply in zip(keys, got, strict=True):
        if reply[0]:
            out.append(await _whole(client, watches_key, completes_key, reply[1].decode()))
            continue
        _, ids, w, c, last, entries = reply
        out.append(CountChanges([i.decode() for i in ids],
                                [int(v or 0) for chunk in w for v in chunk],
                                [int(v or 0) for chunk in c for v in chunk],
                                last.decode(), False, entries == limit))
    return out


async def _whole(client: aioredis.Redis, watches_key: str, completes_key: str,
                 position: str) -> CountChanges:
    watches = {k.decode(): int(v) async for k, v in client.hscan_iter(watches_key, count=10_000)}
    completes = {k.decode(): int(v) async for k, v in client.hscan_iter(completes_key, count=10_000)}
    ids = list(watches)
    return CountChanges(ids, [watches[i] for i in ids], [completes.get(i, 0) for i in ids],
                        position, True)


class PopularitySnapshot:
    """The newest window's counts, refreshed from Redis by :meth:`refresh`.

    A refresh reads each window hour's write count (``semirec:pop:<hour>:n``) and re-reads only
    the hours written since it last read them (live traffic: the current hour), keeping the
    window's sum up to date by the hours' differences; an hour without a write count (counted
    by an older ingest) is re-read every time, and every :data:`FULL_READ_S` the whole window
    is, whatever the write counts say. ``version`` changes only when the counts did."""

    FULL_READ_S = 60.0

    def __init__(self, window_hours: int = 24) -> None:
        self.window_hours = window_hours
        self.counts: dict[str, int] = {}
        self.ranked: list[str] = []  # most popular first
        self.newest_hour: int | None = None
        self.version = 0  # bumped by every refresh that changed the counts (callers cache on it)
        self.hours_read = 0  # hour hashes read so far (HGETALL)
        self._hours: dict[tuple[int, int], tuple[bytes | None, dict[str, int]]] = {}
        self._full_at = 0.0  # monotonic time of the last full read

    async def refresh(self, client: aioredis.Redis) -> None:
        shards = shards_of(client)
        hours_keys = [sharded(HOURS_KEY, s, shards) for s in range(shards)]
        async with client.pipeline(transaction=False) as pipe:
            for key in hours_keys:
                pipe.zrevrange(key, 0, 0, withscores=True)
            newest = [row for got in await pipe.execute() for row in got]
        if not newest:
            if self.counts or self.ranked or self.newest_hour is not None:
                self.counts, self.ranked, self.newest_hour = {}, [], None
                self._hours.clear()
                self.version += 1
            return
        top = max(int(score) for _, score in newest)
        async with client.pipeline(transaction=False) as pipe:
            for key in hours_keys:
                pipe.zrangebyscore(key, top - self.window_hours + 1, top)
            window = [(s, int(h)) for s, hours in enumerate(await pipe.execute()) for h in hours]
            for shard, hour in window:  # GETs: a cluster pipeline refuses MGET
                pipe.get(hour_writes_key(hour, shard, shards))
            writes = dict(zip(window, await pipe.execute(), strict=True))
        full = time.monotonic() - self._full_at >= self.FULL_READ_S
        stale = [k for k in window if full or writes[k] is None
                 or self._hours.get(k, (None,))[0] != writes[k]]
        got = []
        if stale:
            async with client.pipeline(transaction=False) as pipe:
                for shard, hour in stale:
                    pipe.hgetall(hour_key(hour, shard, shards))
                got = await pipe.execute()
            self.hours_read += len(stale)
        # every read done: the sum changes only now (a failed refresh leaves it as it was)
        changed = self._drop_hours_outside(set(window))
        for key, raw in zip(stale, got, strict=True):
            counts = {item.decode(): int(n) for item, n in raw.items()}
            old = self._hours.get(key, (None, {}))[1]
            if key not in self._hours or old != counts:
                self._add(old, -1)
                self._add(counts, 1)
                changed = True
            self._hours[key] = (writes[key], counts)
        if full:
            self._full_at = time.monotonic()
        if changed or top != self.newest_hour:
            # most counted first, ties by id (the same order however the sum was reached)
            self.ranked = sorted(sorted(self.counts), key=self.counts.__getitem__, reverse=True)
            self.newest_hour = top
            self.version += 1

    def _drop_hours_outside(self, window: set[tuple[int, int]]) -> bool:
        gone = [k for k in self._hours if k not in window]
        for key in gone:
            self._add(self._hours.pop(key)[1], -1)
        return bool(gone)

    def _add(self, counts: dict[str, int], sign: int) -> None:
        total = self.counts
        for item, n in counts.items():
            left = total.get(item, 0) + sign * n
            if left:
                total[item] = left
            else:
                total.pop(item, None)

    def scores(self, item_ids: Iterable[str]) -> np.ndarray:
        """log(1 + count) per item, scaled to [0, 1] by the most popular item."""
        counts = np.asarray([self.counts.get(i, 0) for i in item_ids], np.float64)
        top = self.counts.get(self.ranked[0], 0) if self.ranked else 0
        return (np.log1p(counts) / np.log1p(top)).astype(np.float32) if top else \
            np.zeros(len(counts), np.float32)
