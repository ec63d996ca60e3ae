"""Hypothesis strategies for fuzzed event and item messages (valid and malformed mixed).

``event_message()`` draws a ``(key, value)`` Kafka message: mostly well-formed events (JSON or
msgpack, numeric or ISO timestamps, unicode ids), the rest broken in every way the contract
names (missing or mistyped fields, control characters, bad timestamps, a key that is not the
user, undecodable or oversized bodies). Which is which is decided by the contract code itself
(:func:`semirec.contracts.parse_event`), the oracle the pipeline is compared with.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

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
    st.floats(0, 2**41 / 1000, exclude_max=True, allow_nan=False).map(lambda t: 1.7e9 + t % 1e7),
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
