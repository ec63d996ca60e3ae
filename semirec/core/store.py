"""Redis store of per-user sequence state, written with per-key compare-and-set.

One user = one Redis string ``semirec:user:{<user_id>}`` holding :func:`semirec.core.sequences.pack`
output. The braces make the user id the Redis Cluster hash tag, so every operation touches
one slot. Writes go through a small Lua compare-and-set on the blob's header (format and
write version), one script call per chunk of users, each key decided on its own: a lost race
(e.g. a zombie worker after a rebalance) is detected and the caller re-reads and re-applies;
the applied offsets inside the state make that idempotent.

On a Redis Cluster (:func:`semirec.core.redis_client.is_cluster`) a chunk's keys live in many
slots, so the same script runs once per user, all of a chunk's calls in one cluster pipeline
(one round trip per node), and reads are MGETs split by slot (again one round trip per node).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from semirec.core.redis_client import is_cluster, redis_client, script_calls
from semirec.core.sequences import UserState, pack, unpack, version_token

USER_PREFIX = "semirec:user:"
CHUNK = 500  # users per MGET / compare-and-set call: one round trip, bounded script time

_CAS = """
local won = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local expected = ARGV[2 * i - 1]
  local ok
  if expected == '' then
    ok = not cur
  else
    ok = cur and string.sub(cur, 1, #expected) == expected
  end
  if ok then
    redis.call('SET', key, ARGV[2 * i])
    won[i] = 1
  else
    won[i] = 0
  end
end
return won
"""


def user_key(user_id: str) -> str:
    return f"{USER_PREFIX}{{{user_id}}}"


class SequenceStore:
    """Async access to user states; batch methods use one pipeline round trip each.

    With ``cache_users > 0`` the store keeps the decoded states it last read or wrote (LRU),
    with their compare-and-set token. A cached state that someone else has overwritten in the
    meantime simply loses its compare-and-set and is dropped, so the cache is never trusted
    for correctness, only for speed.
    """

    def __init__(self, client: aioredis.Redis, *, cache_users: int = 0) -> None:
        self.client = client
        self._cas = client.register_script(_CAS)
        self.cluster = is_cluster(client)
        self.cache_users = cache_users
        self._cache: OrderedDict[str, tuple[bytes, UserState]] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, cache_users: int = 0) -> SequenceStore:
        return cls(redis_client(url, decode_responses=False), cache_users=cache_users)

    async def load(self, user_ids: Sequence[str]) -> list[tuple[bytes, UserState]]:
        """``(token, state)`` per user (token ``b""`` for a new user). Cached states are returned
        as they are: a caller that changes one must :meth:`save` it (or :meth:`forget` it)."""
        found: dict[str, tuple[bytes, UserState]] = {}
        missing = []
        for uid in user_ids:
            if (hit := self._cache.get(uid)) is not None:
                self._cache.move_to_end(uid)
                found[uid] = hit
            else:
                missing.append(uid)
        if missing:
            for uid, blob in zip(missing, await self.load_blobs(missing), strict=True):
                found[uid] = (version_token(blob), UserState() if blob is None else unpack(blob))
        return [found[uid] for uid in user_ids]

    async def save(self, writes: Sequence[tuple[str, bytes, UserState]],
                   blobs: Sequence[bytes] | None = None) -> list[bool]:
        """Compare-and-set ``(user_id, token_read, new_state)``; returns who won their race.
        ``blobs``: the states already packed (:func:`semirec.core.sequences.pack`), in order."""
        if blobs is None:
            blobs = [pack(state) for _, _, state in writes]
        try:
            won = await self.compare_and_set(
                (uid, token, blob) for (uid, token, _), blob in zip(writes, blobs, strict=True))
        except BaseException:
            self.forget(uid for uid, _, _ in writes)
            raise
        for (uid, _, state), blob, ok in zip(writes, blobs, won, strict=True):
            if ok and self.cache_users:
                self._cache[uid] = (version_token(blob), state)
                self._cache.move_to_end(uid)
            else:
                self._cache.pop(uid, None)
        while len(self._cache) > self.cache_users:
            self._cache.popitem(last=False)
        return won

    def forget(self, user_ids: Iterable[str]) -> None:
        for uid in user_ids:
            self._cache.pop(uid, None)

    async def close(self) -> None:
        await self.client.aclose()

    async def load_blobs(self, user_ids: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        read = self.client.mget_nonatomic if self.cluster else self.client.mget
        for lo in range(0, len(user_ids), CHUNK):
            out += await read([user_key(u) for u in user_ids[lo : lo + CHUNK]])
        return out

    async def compare_and_set(self, writes: Iterable[tuple[str, bytes, bytes]]) -> list[bool]:
        """``(user_id, token_read, new_blob)`` -> whether each write won its race.

        One script call per chunk of users: each key is checked and set on its own (a lost
        race fails only that user), and the call costs one round trip."""
        writes = list(writes)
        won: list[bool] = []
        for lo in range(0, len(writes), CHUNK):
            chunk = writes[lo : lo + CHUNK]
            if self.cluster:
                won += await self._cas_per_key(chunk)
                continue
            args = [part for _, token, new in chunk for part in (token, new)]
            got = await self._cas(keys=[user_key(uid) for uid, _, _ in chunk], args=args)
            won += [bool(r) for r in got]
        return won

    async def _cas_per_key(self, chunk: Sequence[tuple[str, bytes, bytes]]) -> list[bool]:
        """The compare-and-set of each user on its own, all in one cluster pipeline. An error
        raises: the caller retries the batch, and the writes that did land then lose their
        compare-and-set and are re-read and re-applied (a no-op: the applied offsets)."""
        got = await script_calls(self.client, self._cas,  # type: ignore[arg-type]
                                 [([user_key(uid)], [token, new]) for uid, token, new in chunk])
        return [bool(r[0]) for r in got]

    async def get(self, user_id: str) -> UserState | None:
        blob = await self.client.get(user_key(user_id))
        return None if blob is None else unpack(blob)

    async def user_ids(self, count: int = 1000) -> list[str]:
        """All user ids with state (SCAN; for tools and tests, not hot paths)."""
        out = []
        async for key in self.client.scan_iter(match=f"{USER_PREFIX}*", count=count):
            out.append(key.decode()[len(USER_PREFIX) + 1 : -1])
        return out
