"""The event contract: what is accepted, and the exact reason for what is not."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from semirec.core.contracts import ContractError, Domain, encode_event, parse_event, parse_ts
from semirec.core.items import validate_item
from tests.event_script import BASE_TS, MALFORMED

WATCH = {"event_id": "e1", "user_id": "u1", "item_id": "v1", "domain": "video",
         "action": "watch", "ts": BASE_TS, "complete": True}


@pytest.mark.parametrize("encode", [orjson.dumps, msgpack.packb])
def test_both_encodings_parse_to_the_same_event(encode) -> None:
    event = parse_event(encode(WATCH), b"u1")
    assert event.domain is Domain.VIDEO and event.complete is True
    assert event.ts == BASE_TS and event.appends


def test_iso_timestamps_are_utc_and_naive_means_utc() -> None:
    assert parse_ts("2023-11-14T22:13:20Z") == BASE_TS
    assert parse_ts("2023-11-14T22:13:20") == BASE_TS
    assert parse_ts("2023-11-15T00:13:20+02:00") == BASE_TS
    assert parse_ts(BASE_TS + 0.5) == BASE_TS + 0.5


def test_click_needs_no_complete_and_incomplete_watch_does_not_append() -> None:
    click = {**WATCH, "domain": "product", "action": "click"}
    del click["complete"]
    assert parse_event(orjson.dumps(click), b"u1").appends
    assert not parse_event(orjson.dumps({**WATCH, "complete": False}), b"u1").appends


@pytest.mark.parametrize(("key", "value", "reason"), MALFORMED)
def test_malformed_messages_have_exact_reasons(key, value, reason) -> None:
    with pytest.raises(ContractError) as info:
        parse_event(value, key)
    assert info.value.reason.value == reason
    assert str(info.value)  # a human message


@pytest.mark.parametrize("ts", [True, -1, float("nan"), 1e20, "2023-13-45", None, [1]])
def test_bad_timestamps(ts) -> None:
    with pytest.raises(ContractError) as info:
        parse_event(orjson.dumps({**WATCH, "ts": ts}) if ts == ts else
                    msgpack.packb({**WATCH, "ts": ts}), b"u1")
    assert info.value.reason.value in ("bad_timestamp", "missing_field")


def test_encode_round_trip() -> None:
    event = parse_event(orjson.dumps(WATCH), b"u1")
    for fmt in ("json", "msgpack"):
        assert parse_event(encode_event(event, fmt), b"u1") == event


@pytest.mark.parametrize("text", ["a\u00a0b", "zero\u200bwidth", "emoji-\U0001f600", "tab-free é"])
def test_ids_allow_every_character_but_control_characters(text) -> None:
    body = {**WATCH, "user_id": text, "item_id": text, "event_id": text}
    assert parse_event(orjson.dumps(body), text.encode()).item_id == text
    assert validate_item({"item_id": text, "domain": "video", "title": "t",
                          "images": []}).item_id == text


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\x7f", "\x85", "\x9f", "\n"])
def test_ids_with_control_characters_are_refused(char) -> None:
    with pytest.raises(ContractError, match="control characters") as info:
        parse_event(orjson.dumps({**WATCH, "item_id": f"v{char}1"}), b"u1")
    assert info.value.reason.value == "bad_value"
    with pytest.raises(ContractError, match="control characters"):
        validate_item({"item_id": f"v{char}1", "domain": "video", "title": "t",
                       "images": []})


def test_recommendation_requests_follow_the_same_id_rule() -> None:
    from semirec.core.recommendations import parse_request

    ok = parse_request(orjson.dumps({"request_id": "r\u00a01", "user_id": "u\u200b"}),
                       "u\u200b".encode())
    assert ok.user_id == "u\u200b"
    with pytest.raises(ContractError, match="control characters") as info:
        parse_request(orjson.dumps({"request_id": "r\x85", "user_id": "u"}), b"u")
    assert info.value.reason.value == "bad_value"


@pytest.mark.parametrize("at", [b"1e400", b"-1", b"2199023255.552"])
def test_a_request_time_outside_the_events_range_is_a_bad_timestamp(at) -> None:
    """``at`` = infinity once reached the ranker and stopped the agent (hour of inf is NaN)."""
    from semirec.core.recommendations import parse_request

    with pytest.raises(ContractError) as info:
        parse_request(b'{"request_id": "r", "user_id": "u", "at": ' + at + b"}", b"u")
    assert info.value.reason.value == "bad_timestamp"
    assert parse_request(b'{"request_id": "r", "user_id": "u", "at": 1.7e9}', b"u").at == 1.7e9
