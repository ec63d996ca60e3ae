"""Hypothesis strategies for fuzzed event and item messages (valid and malformed mixed).

``event_message()`` draws a ``(key, value)`` Kafka message: mostly well-formed events (JSON or
msgpack, numeric or ISO timestamps, unicode ids), the rest broken in every way the contract
names (missing or mistyped fields, control characters, bad timestamps, a key that is not the
user, undecodable or oversized bodies). Which is which is decided by the contract code itself
(:func:`semirec.core.contracts.parse_event`), the oracle the pipeline is compared with.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from semirec.core.contracts import MAX_TS, MAX_TS_MS

USERS = [f"u{i}" for i in range(40)] + ["user\u00a0nbsp", "zero\u200bwidth", "émile", "用户"]
ITEMS = [f"i{i}" for i in range(150)] + ["item\u00a0x", "vidéo"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=5)
odd_ids = st.text(min_size=0, max_size=12) | st.just("x" * 300) | st.just("a\x00b") \
    | st.just("tab\there") | st.just("c1\x85")
timestamps = st.one_of(
    st.floats(0, MAX_TS, exclude_max=True, allow_nan=False).map(lambda t: 1.7e9 + t % 1e7),
    st.integers(1_600_000_000, 1_800_000_000),
    st.integers(1_600_000_000, 1_800_000_000).map(
        lambda t: datetime.fromtimestamp(t, UTC).isoformat()),
    st.sampled_from([-1, 1e20, float("inf"), "yesterday", "2023-13-45", True, None, [1]]),
)


@st.composite
def event_message(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    video = draw(st.booleans())
    body: dict[str, Any] = {
        "event_id": draw(st.uuids().map(str) | odd_ids) if draw(st.integers(0, 9)) == 0
        else f"e-{draw(st.uuids())}",
        "user_id": draw(st.sampled_from(USERS) | odd_ids) if draw(st.integers(0, 9)) == 0
        else draw(st.sampled_from(USERS)),
        "item_id": draw(st.sampled_from(ITEMS) | odd_ids) if draw(st.integers(0, 9)) == 0
        else draw(st.sampled_from(ITEMS)),
        "domain": "video" if video else "product",
        "action": "watch" if video else "click",
        "ts": draw(timestamps),
    }
    if video:
        body["complete"] = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        name = draw(st.sampled_from([*body, "domain", "action", "complete", "extra"]))
        if draw(st.booleans()):
            body.pop(name, None)
        else:
            body[name] = draw(json_values)
    key = str(body.get("user_id", "")).encode(errors="surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        key = draw(st.none() | st.binary(max_size=8))
    shape = draw(st.integers(0, 39))
    if shape == 0:
        return key, draw(st.binary(max_size=64))  # anything at all
    if shape == 1:
        return key, orjson.dumps(body)[: draw(st.integers(0, 20))]  # truncated
    if shape == 2:
        return key, orjson.dumps({**body, "pad": "x" * 70_000})  # oversized
    if shape == 3:
        return key, orjson.dumps(draw(json_values))  # not an event at all
    try:
        if draw(st.booleans()):
            return key, orjson.dumps(body)
        return key, msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # unencodable draw: send raw bytes
        return key, repr(body).encode(errors="surrogatepass")


@st.composite
def item_body(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {
        "item_id": draw(st.sampled_from(ITEMS) | odd_ids),
        "domain": draw(st.sampled_from(["video", "product"]) | json_values),
        "title": draw(st.text(max_size=30) | json_values),
        "images": draw(st.lists(st.text(max_size=30) | st.just("data:image/png;base64,AAAA")
                                | json_values, max_size=3) | json_values),
        "category": draw(st.text(max_size=10) | json_values),
        "tags": draw(st.lists(st.text(max_size=8), max_size=4) | json_values),
    }
    for name in draw(st.lists(st.sampled_from(list(body)), max_size=2)):
        body.pop(name, None)
    return body if draw(st.integers(0, 9)) else draw(json_values)


def collect(strategy: st.SearchStrategy, n: int) -> list:
    """``n`` (or a few fewer, if hypothesis runs out of distinct ones) deterministic draws."""
    out: list = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(value: Any) -> None:
        out.append(value)

    draw()
    return out


def fuzzed_messages(n: int) -> list[tuple[bytes | None, bytes]]:
    return collect(event_message(), n)


# -- recommendation requests and training samples ---------------------------------------------

_serial = itertools.count()  # unique ids for valid draws (hypothesis repeats uuids a lot)
TOY_VIDEOS = [f"v{i}" for i in range(60)] + ["vidéo\u00a0x", "no-such-video"]
TOY_PRODUCTS = [f"p{i}" for i in range(40)] + ["产品"]


def _mutate(draw: st.DrawFn, body: dict[str, Any], names: list[str]) -> None:
    """A quarter of the bodies lose or get an arbitrary JSON value in one or two fields."""
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        name = draw(st.sampled_from([*names, "extra"]))
        if draw(st.booleans()):
            body.pop(name, None)
        else:
            body[name] = draw(json_values)


def _shape(draw: st.DrawFn, key: bytes | None, body: Any, *, msgpack_ok: bool) \
        -> tuple[bytes | None, bytes]:
    shape = draw(st.integers(0, 39))
    if shape == 0:
        return key, draw(st.binary(max_size=64))
    if shape == 3:
        return key, orjson.dumps(draw(json_values))
    try:
        if shape == 1:
            return key, orjson.dumps(body)[: draw(st.integers(0, 20))]
        if shape == 2:
            return key, orjson.dumps({**body, "pad": "x" * 600_000})
        if msgpack_ok and draw(st.booleans()):
            return key, msgpack.packb(body, use_bin_type=True)
        return key, orjson.dumps(body)
    except (TypeError, ValueError, OverflowError):
        return key, repr(body).encode(errors="surrogatepass")


def _key(draw: st.DrawFn, body: dict[str, Any]) -> bytes | None:
    key = str(body.get("user_id", "")).encode(errors="surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        key = draw(st.none() | st.binary(max_size=8))
    return key


def _sometimes(draw: st.DrawFn, good: Any, bad: st.SearchStrategy) -> Any:
    return draw(bad) if draw(st.integers(0, 9)) == 0 else good


@st.composite
def request_message(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """A ``recommendation-requests`` message (semirec.core.recommendations.parse_request decides)."""
    body: dict[str, Any] = {
        "request_id": _sometimes(draw, f"r-{next(_serial)}", odd_ids),
        "user_id": _sometimes(draw, draw(st.sampled_from(USERS)), odd_ids),
    }
    if draw(st.booleans()):
        body["k"] = _sometimes(draw, draw(st.integers(1, 100)),
                               st.sampled_from([0, -1, 101, 10**20, 2.5, "10", True, None]))
    if draw(st.integers(0, 2)) == 0:
        body["candidates"] = _sometimes(
            draw, draw(st.lists(st.sampled_from(TOY_VIDEOS + TOY_PRODUCTS), max_size=30)),
            st.lists(odd_ids, max_size=3) | st.just(["v1"] * 2001) | json_values)
    if draw(st.integers(0, 2)) == 0:
        body["at"] = _sometimes(draw, draw(st.floats(1.6e9, 1.8e9)) if draw(st.booleans())
                                else draw(st.floats(0, 1e300)),
                                st.sampled_from([-1, float("inf"), "now", None, [1]]))
    _mutate(draw, body, ["request_id", "user_id", "k", "candidates", "at"])
    return _shape(draw, _key(draw, body), body, msgpack_ok=True)


def _entries(draw: st.DrawFn, ids: list[str]) -> Any:
    good = [[int(1.69e12) + i * 60_000, draw(st.sampled_from(ids))]
            for i in range(draw(st.integers(0, 12)))]
    return _sometimes(draw, good, st.lists(st.lists(json_values, max_size=3), max_size=3)
                      | st.just([[-1, "v1"]]) | st.just([[1, "v1"]] * 256)
                      | st.just([[MAX_TS_MS, "v1"]]) | st.lists(st.tuples(st.just(1), odd_ids),
                                                              min_size=1, max_size=2))


@st.composite
def sample_message(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """A ``samples`` message (semirec.core.samples.decode_sample with the key checked decides)."""
    ts = 1.7e9 + draw(st.floats(0, 1e6))
    body: dict[str, Any] = {
        "event_id": _sometimes(draw, f"s-{next(_serial)}", odd_ids),
        "user_id": _sometimes(draw, draw(st.sampled_from(USERS)), odd_ids),
        "item_id": _sometimes(draw, draw(st.sampled_from(TOY_VIDEOS)), odd_ids),
        "complete": _sometimes(draw, draw(st.booleans()), json_values),
        "ts": _sometimes(draw, ts, timestamps),
        "video": _entries(draw, TOY_VIDEOS),
        "product": _entries(draw, TOY_PRODUCTS),
        "partition": _sometimes(draw, draw(st.integers(0, 3)), st.sampled_from([-1, 1.5, "0"])),
        "offset": _sometimes(draw, draw(st.integers(0, 10**6)), st.sampled_from([-5, None])),
        "appended_at": _sometimes(draw, ts + 0.01, st.sampled_from([-1, 1e300, "x", 0])),
        "logged_at": ts + 0.02,
    }
    _mutate(draw, body, list(body))
    return _shape(draw, _key(draw, body), body, msgpack_ok=False)
