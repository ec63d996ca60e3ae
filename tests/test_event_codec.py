"""The fast decoder agrees with the contract's authority, ``parse_event`` (no services)."""

from __future__ import annotations

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semirec.core.contracts import ContractError, parse_event
from semirec.streams.event_codec import decode_event, fast_event
from tests.event_script import MALFORMED, encode, scripted_events

ids = st.one_of(st.sampled_from(["u1", "v9", "p-3", "ü", "a b", ""]), st.text(max_size=80),
                st.text(min_size=60, max_size=300), st.integers(), st.none(), st.booleans())
values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                   st.sampled_from(["video", "product", "watch", "click", "tv"]))
timestamps = st.one_of(st.integers(min_value=-10, max_value=2**70), st.floats(allow_nan=True),
                       st.sampled_from(["2023-11-14T22:13:20Z", "2023-11-14T22:13:20",
                                        "2023-13-45", " 2023-11-14T22:13:20+02:00", "x"]),
                       st.booleans(), st.none())
fields = st.fixed_dictionaries({}, optional={
    "event_id": ids, "user_id": ids, "item_id": ids, "ts": timestamps, "complete": values,
    "domain": st.sampled_from(["video", "product", "tv", 3]),
    "action": st.sampled_from(["watch", "click", "view", None]), "extra": values})


def outcome(fn, raw: bytes, key: bytes | None):
    try:
        return fn(raw, key)
    except ContractError as exc:
        return (exc.reason, str(exc))


@settings(max_examples=1000, deadline=None)  # 3000 took 26 s of the suite on a 2-core EPYC
@given(fields, st.sampled_from(["json", "msgpack"]), st.sampled_from(["user", "other", "none"]))
def test_fast_path_agrees_with_the_contract(body: dict, fmt: str, key_kind: str) -> None:
    if "user_id" in body and isinstance(body["user_id"], str) and key_kind == "user":
        key = body["user_id"].encode("utf-8", "surrogatepass")
    else:
        key = None if key_kind == "none" else b"someone"
    try:
        raw = orjson.dumps(body) if fmt == "json" else msgpack.packb(body)
    except (TypeError, ValueError, OverflowError):  # not representable in this format
        return
    expected = outcome(parse_event, raw, key)
    fast = fast_event(raw, key)
    assert fast is None or fast == expected
    assert outcome(decode_event, raw, key) == expected


def test_valid_events_take_the_fast_path() -> None:
    for key, raw in encode(scripted_events(users=5, per_user=40)):
        assert fast_event(raw, key) is not None
        assert fast_event(raw, key) == parse_event(raw, key)


@pytest.mark.parametrize(("key", "value", "reason"), MALFORMED)
def test_malformed_messages_keep_their_reasons(key, value, reason) -> None:
    with pytest.raises(ContractError) as info:
        decode_event(value, key)
    assert info.value.reason.value == reason
