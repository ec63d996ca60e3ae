"""SequenceStore against a real redis-server: batched reads and per-key compare-and-set."""

from __future__ import annotations

from semirec.core import store as store_module
from semirec.core.contracts import Domain, Event, encode_event
from semirec.core.sequences import UserState, pack, version_token
from semirec.core.store import SequenceStore, user_key
from semirec.streams.ingest import IngestProcessor
from semirec.streams.messages import Record


def click(n: int, user: str = "u1") -> Event:
    return Event(f"e{n}", user, f"p{n}", Domain.PRODUCT, "click", 1_700_000_000 + n)


def message(event: Event, offset: int) -> Record:
    return Record(event.user_id.encode(), encode_event(event), "events", 0, offset)


async def test_compare_and_set_decides_each_key_on_its_own(settings, redis_client) -> None:
    store = SequenceStore.from_url(settings.redis_url)
    try:
        old = pack(UserState(version=1))
        redis_client.set(user_key("taken"), old)
        redis_client.set(user_key("current"), old)
        new = pack(UserState(version=2))
        won = await store.compare_and_set([
            ("fresh", b"", new),  # absent and expected absent: wins
            ("taken", b"", new),  # expected absent but present: loses
            ("current", version_token(old), new),  # token matches: wins
            ("stale", version_token(old), new),  # expected present but absent: loses
        ])
        assert won == [True, False, True, False]
        assert redis_client.get(user_key("fresh")) == new
        assert redis_client.get(user_key("taken")) == old
        assert redis_client.get(user_key("current")) == new
        assert redis_client.get(user_key("stale")) is None
    finally:
        await store.close()


async def test_batches_larger_than_a_chunk(settings, redis_client, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "CHUNK", 7)
    store = SequenceStore.from_url(settings.redis_url)
    try:
        users = [f"u{i}" for i in range(20)]
        blobs = [pack(UserState(version=i + 1)) for i in range(20)]
        assert await store.compare_and_set(zip(users, [b""] * 20, blobs, strict=True)) == [True] * 20
        assert await store.load_blobs([*users, "nobody"]) == [*blobs, None]
    finally:
        await store.close()


async def test_processor_rereads_after_losing_a_race(settings, redis_client) -> None:
    """A cached state overwritten by someone else loses its write; the processor re-reads
    the current state and applies its events on top of it."""
    store = SequenceStore.from_url(settings.redis_url, cache_users=100)

    async def no_dead_letters(bad) -> None:
        raise AssertionError(bad)

    processor = IngestProcessor(settings, store, no_dead_letters)
    try:
        await processor.process([message(click(1), 0)])
        other = UserState(product=[], version=50)  # another writer replaced the state
        redis_client.set(user_key("u1"), pack(other))
        out = await processor.process([message(click(2), 1)])
        assert out.cas_conflicts == 1 and out.users_written == 1
        state = await store.get("u1")
        assert [e.item_id for e in state.product] == ["p2"]
        assert state.version == 51
    finally:
        await store.close()
