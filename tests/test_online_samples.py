"""Point-in-time samples: what ingest logs online equals what semirec/trainer/offline/samples.py builds
offline from the event list, whatever the batching, partitioning and replays."""

from __future__ import annotations

import json
import zlib

import msgspec
import numpy as np
import pytest

from semirec.core.contracts import ContractError, Reason, encode_event
from semirec.core.samples import TrainingSample, decode_sample, encode_sample
from semirec.core.store import SequenceStore
from semirec.streams.ingest import IngestProcessor
from semirec.streams.messages import Record
from semirec.trainer.nets.configs import paper
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.samples import build_samples
from semirec.trainer.offline.toy import toy_world
from semirec.trainer.online.learner import Learner, OnlineConfig, to_sample_set


async def no_dead_letters(bad) -> None:
    raise AssertionError(f"unexpected dead letters: {bad}")


async def log_online(settings, events, batch: int, replay_every: int = 0) -> list[TrainingSample]:
    """Run ``events`` through the ingest processor (4 partitions by user, batches of ``batch``,
    every ``replay_every``-th batch delivered twice) and collect the logged samples."""
    logged: list[TrainingSample] = []

    async def before_save(samples: list[TrainingSample]) -> None:
        logged.extend(decode_sample(encode_sample(s)) for s in samples)  # through the contract

    store = SequenceStore.from_url(settings.redis_url)
    processor = IngestProcessor(settings, store, no_dead_letters, before_save=before_save)
    offsets = [0, 0, 0, 0]
    records = []
    for e in events:
        p = zlib.crc32(e.user_id.encode()) % 4
        records.append(Record(e.user_id.encode(), encode_event(e), "events", p, offsets[p],
                              timestamp=e.ts + 0.5))
        offsets[p] += 1
    try:
        for n, start in enumerate(range(0, len(records), batch)):
            await processor.process(records[start:start + batch])
            if replay_every and n % replay_every == 0:  # a crash before the commit
                await processor.process(records[start:start + batch])
    finally:
        await store.close()
    return logged


@pytest.mark.parametrize("batch,replay_every", [(1, 0), (97, 3)])
async def test_online_samples_equal_the_offline_ones(settings, redis_client, batch: int,
                                                     replay_every: int) -> None:
    world = toy_world(users=25, events_per_user=30, dim=8, seed=4)
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    logged = await log_online(settings, world.events, batch, replay_every)
    learner = Learner(build(paper("semi_video")), paper("semi_video"), OnlineConfig())
    assert learner.add(logged) == len(learner.pending)  # one sample per event id
    online = learner.pending
    watches = [e for e in world.events if e.domain.value == "video"]
    assert sorted(s.event_id for s in online) == sorted(e.event_id for e in watches)
    if replay_every:  # a replayed batch is skipped by its offsets (incomplete watches too)
        assert len(logged) == len(online)
    by_event = {s.event_id: s for s in online}
    assert all(by_event[e.event_id].appended_at == e.ts + 0.5 for e in watches)
    for window in (None, 4):  # a user spans ~15 hours of the toy world: 4 hours cut entries
        offline = build_samples(world.events, rows, seq_len=settings.seq_len, window_hours=window)
        mine = to_sample_set([by_event[e] for e in offline.event], rows, settings.seq_len,
                             window_hours=window)
        for name in ("target", "label", "ts", "video", "video_age", "product", "product_age",
                     "skipped", "skipped_age"):
            np.testing.assert_array_equal(getattr(mine, name), getattr(offline, name),
                                          err_msg=f"{name}, window {window}")
        assert list(mine.user) == list(offline.user)
        assert offline.lengths("product").max() > 0 and offline.lengths("video").max() > 0
        assert offline.lengths("skipped").max() > 0
    unwindowed = build_samples(world.events, rows, seq_len=settings.seq_len)
    assert (offline.lengths("product") < unwindowed.lengths("product")).any()


def test_sample_contract_rejects_bad_bodies() -> None:
    with pytest.raises(ContractError):
        decode_sample(b"not json")
    with pytest.raises(ContractError):
        decode_sample(b'{"event_id": "e1"}')
    with pytest.raises(ContractError) as bad:
        decode_sample(msgspec.msgpack.encode({"event_id": "e1"}))
    assert bad.value.reason is Reason.MISSING_FIELD
    with pytest.raises(ContractError) as cut:
        decode_sample(encode_sample(SAMPLE)[:-3])
    assert cut.value.reason is Reason.UNDECODABLE


SAMPLE = TrainingSample("e-1042", "u17", "v88", True, 1700000123.5,
                        [(1699990000000, "v12"), (1699995000000, "v40")], [(1699993000000, "p7")],
                        2, 1042, 1700000123.51, 1700000123.53)


def test_samples_travel_as_messagepack_and_json_ones_still_read() -> None:
    raw = encode_sample(SAMPLE)
    assert msgspec.msgpack.decode(raw)["video"] == [[1699990000000, "v12"], [1699995000000, "v40"]]
    assert decode_sample(raw) == SAMPLE
    # what ingest wrote before samples were MessagePack (docs/contracts.md)
    legacy = msgspec.json.encode(SAMPLE)
    assert legacy.startswith(b"{") and decode_sample(legacy) == SAMPLE
    assert len(raw) < 0.8 * len(legacy)


async def test_samples_go_out_in_chunks_and_are_acknowledged_before_their_state(
        settings, redis_client) -> None:
    """A batch with more watches than SAMPLES_CHUNK hands its samples over in several chunks
    while it is applied; each chunk is still unacknowledged (here: slow) while no state that
    includes its watches is in Redis."""
    import asyncio

    from semirec.streams.ingest import SAMPLES_CHUNK

    world = toy_world(users=40, events_per_user=30, dim=8, seed=6)
    store = SequenceStore.from_url(settings.redis_url)
    chunks: list[int] = []
    early: list[str] = []

    async def slow_broker(samples: list[TrainingSample]) -> None:
        chunks.append(len(samples))
        await asyncio.sleep(0.05)  # the acknowledgement takes a while
        for s in samples:  # acknowledged now: nothing of it may be written yet
            state = await store.get(s.user_id)
            if state is not None and state.applied.get(s.partition, -1) >= s.offset:
                early.append(s.event_id)

    processor = IngestProcessor(settings, store, no_dead_letters, before_save=slow_broker)
    records = [Record(e.user_id.encode(), encode_event(e), "events", 0, i, timestamp=e.ts)
               for i, e in enumerate(world.events)]
    try:
        out = await processor.process(records)
    finally:
        await store.close()
    watches = sum(e.domain.value == "video" for e in world.events)
    assert sum(chunks) == watches > 2 * SAMPLES_CHUNK and len(chunks) >= 3
    assert max(chunks) <= SAMPLES_CHUNK + 30  # a user's watches are never split
    assert not early and out.users_written == 40


def test_sample_contract_names_the_reason() -> None:
    good = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "complete": True,
            "ts": 1.7e9, "video": [[1_699_999_000_000, "v2"]], "product": [], "partition": 0,
            "offset": 3, "appended_at": 1.7e9, "logged_at": 1.7e9}

    def reason(raw: bytes, key: bytes | None = b"u1") -> str:
        with pytest.raises(ContractError) as info:
            decode_sample(raw, key, check_key=True)
        return info.value.reason.value

    assert decode_sample(json.dumps(good).encode(), b"u1", check_key=True).offset == 3
    cases = [
        ("undecodable", b"\x8b\xa8event_id"),  # a MessagePack map cut short
        ("not_an_object", b"[1, 2]"),
        ("not_an_object", b"\x92\x01\x02"),  # a MessagePack array
        ("missing_field", json.dumps({k: v for k, v in good.items() if k != "ts"}).encode()),
        ("bad_type", json.dumps({**good, "complete": "yes"}).encode()),
        ("bad_timestamp", json.dumps({**good, "ts": -1}).encode()),
        ("too_large", json.dumps({**good, "pad": "x" * 600_000}).encode()),
    ]
    for want, raw in cases:
        assert reason(raw) == want, want
    # the same rules for MessagePack bodies (what ingest writes)
    assert decode_sample(msgspec.msgpack.encode(good), b"u1", check_key=True).offset == 3
    assert reason(msgspec.msgpack.encode({**good, "ts": -1})) == "bad_timestamp"
    assert reason(msgspec.msgpack.encode({**good, "complete": "yes"})) == "bad_type"
    assert reason(json.dumps({**good, "appended_at": 1e400}).encode().replace(
        b"Infinity", b"1e400")) == "bad_timestamp"
    assert reason(json.dumps({**good, "video": [[1, "a\u0000"]]}).encode()) == "bad_value"
    assert reason(json.dumps({**good, "offset": -1}).encode()) == "bad_value"
    assert reason(json.dumps(good).encode(), b"u2") == "key_mismatch"
    assert reason(json.dumps(good).encode(), None) == "key_mismatch"
