"""A scripted event stream for ingest tests: deterministic, with every awkward case."""

from __future__ import annotations

import random

import msgpack
import orjson

from semirec.core.contracts import Event, validate_event

BASE_TS = 1_700_000_000


def scripted_events(users: int = 30, per_user: int = 140, seed: int = 7) -> list[Event]:
    """Events with >50 per domain for some users, out-of-order timestamps, duplicate event_ids
    (re-sent later), incomplete watches, ISO and numeric timestamps."""
    rng = random.Random(seed)
    events: list[Event] = []
    for u in range(users):
        uid = f"user-{u}"
        n = per_user if u % 3 else 12  # some short histories
        for i in range(n):
            video = rng.random() < 0.5
            ts = BASE_TS + i * 600 + rng.randint(-7200, 7200)  # out of order by up to 2h
            body = {
                "event_id": f"{uid}-e{i}", "user_id": uid,
                "item_id": f"{'v' if video else 'p'}{rng.randint(0, 400)}",
                "domain": "video" if video else "product",
                "action": "watch" if video else "click",
                "ts": ts if rng.random() < 0.7 else _iso(ts),
            }
            if video:
                body["complete"] = rng.random() < 0.6
            events.append(validate_event(body))
    rng.shuffle(events)  # interleave users; per-user order is then arbitrary
    dups = rng.sample(events, len(events) // 20)
    for d in dups:  # duplicates re-sent later in the stream
        events.insert(rng.randint(events.index(d) + 1, len(events)), d)
    return events


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def encode(events: list[Event], seed: int = 3) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs, alternating JSON and msgpack bodies at random."""
    rng = random.Random(seed)
    out = []
    for e in events:
        body = e.to_dict()
        raw = orjson.dumps(body) if rng.random() < 0.5 else msgpack.packb(body)
        out.append((e.user_id.encode(), raw))
    return out


# (key, value, expected reason) for malformed messages
MALFORMED: list[tuple[bytes | None, bytes, str]] = [
    (b"user-1", b"\xff\xfe not anything", "undecodable"),
    (b"user-1", b'{"event_id": "x1", "user_id": "user-1"', "undecodable"),
    (b"user-1", b"[1, 2, 3]", "not_an_object"),
    (b"user-1", orjson.dumps({"user_id": "user-1", "item_id": "v1", "domain": "video",
                              "action": "watch", "ts": BASE_TS, "complete": True}),
     "missing_field"),
    (b"user-2", orjson.dumps({"event_id": "x2", "user_id": "user-2", "item_id": "v1",
                              "domain": "video", "action": "watch", "ts": BASE_TS}),
     "missing_field"),
    (b"user-2", orjson.dumps({"event_id": "x3", "user_id": "user-2", "item_id": "v1",
                              "domain": "tv", "action": "watch", "ts": BASE_TS,
                              "complete": True}), "bad_value"),
    (b"user-2", orjson.dumps({"event_id": "x4", "user_id": "user-2", "item_id": "p1",
                              "domain": "product", "action": "watch", "ts": BASE_TS}),
     "bad_value"),
    (b"user-2", msgpack.packb({"event_id": "x5", "user_id": "user-2", "item_id": "v1",
                               "domain": "video", "action": "watch", "ts": "yesterday",
                               "complete": True}), "bad_timestamp"),
    (b"user-4", orjson.dumps({"event_id": "x6", "user_id": "user-4", "item_id": "v1",
                              "domain": "video", "action": "watch", "ts": BASE_TS,
                              "complete": "yes"}), "bad_type"),
    (b"user-4", orjson.dumps({"event_id": 7, "user_id": "user-4", "item_id": "v1",
                              "domain": "video", "action": "watch", "ts": BASE_TS,
                              "complete": True}), "bad_type"),
    (b"someone-else", orjson.dumps({"event_id": "x8", "user_id": "user-5", "item_id": "v1",
                                    "domain": "video", "action": "watch", "ts": BASE_TS,
                                    "complete": True}), "key_mismatch"),
    (None, orjson.dumps({"event_id": "x9", "user_id": "user-5", "item_id": "v1",
                         "domain": "video", "action": "watch", "ts": BASE_TS,
                         "complete": True}), "key_mismatch"),
    (b"user-5", b"", "undecodable"),
    (b"user-5", b"{" + b" " * 70_000 + b"}", "too_large"),
]
