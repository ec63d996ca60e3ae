"""Redis store of per-user sequence state, written with per-key compare-and-set.

One user = one Redis string ``semirec:user:{<user_id>}`` holding :func:`semirec.sequences.pack`
output. The braces make the user id the Redis Cluster hash tag, so every operation touches
one slot. Writes go through a small Lua compare-and-set on the blob's header (format and
write version): a lost race (e.g. a zombie worker after a rebalance) is detected and the
caller re-reads and re-applies; the applied offsets inside the state make that idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from semirec.sequences import UserState, unpack, version_token

USER_PREFIX = "semirec:user:"

_CAS = """
local cur = redis.call('GET', KEYS[1])
local expected = ARGV[1]
if expected == '' then
  if cur then return 0 end
elseif not cur or string.sub(cur, 1, #expected) ~= expected then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


def user_key(user_id: str) -> str:
    return f"{USER_PREFIX}{{{user_id}}}"


class SequenceStore:
    """Async access to user states; batch methods use one pipeline round trip each."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._cas = client.register_script(_CAS)

    @classmethod
    def from_url(cls, url: str) -> SequenceStore:
        return cls(aioredis.Redis.from_url(url, decode_responses=False))

    async def close(self) -> None:
        await self.client.aclose()

    async def load_blobs(self, user_ids: Sequence[str]) -> list[bytes | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.get(user_key(uid))
            return await pipe.execute()

    async def compare_and_set(self, writes: Iterable[tuple[str, bytes | None, bytes]]) -> list[bool]:
        """``(user_id, blob_read_before, new_blob)`` -> whether each write won its race."""
        writes = list(writes)
        if not writes:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for uid, old, new in writes:
                await self._cas(keys=[user_key(uid)], args=[version_token(old), new], client=pipe)
            return [bool(r) for r in await pipe.execute()]

    async def get(self, user_id: str) -> UserState | None:
        blob = await self.client.get(user_key(user_id))
        return None if blob is None else unpack(blob)

    async def user_ids(self, count: int = 1000) -> list[str]:
        """All user ids with state (SCAN; for tools and tests, not hot paths)."""
        out = []
        async for key in self.client.scan_iter(match=f"{USER_PREFIX}*", count=count):
            out.append(key.decode()[len(USER_PREFIX) + 1 : -1])
        return out
