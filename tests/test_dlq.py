"""Dead letters stay within the producer's limit whatever arrived (no services needed)."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from semirec.core.contracts import Reason
from semirec.core.dead_letters import DeadLetter, LetterSource, encode_dead_letter, parse_dead_letter
from semirec.streams.dlq import DEFAULT_LIMIT, KEY_BYTES, PREFIX_BYTES, dead_letter, letter_key, record_size
from semirec.streams.messages import Record


@pytest.mark.parametrize("size", [0, 10, 700_000, 749_000, 760_000, 800_000, 5_000_000])
@pytest.mark.parametrize("key_size", [0, 40, 3_000])
def test_every_letter_fits_the_limit(size: int, key_size: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    msg = Record(b"k" * key_size if key_size else None, value, "events", 3, 17, 1.5)
    letter = dead_letter(msg, "too_large", "body is big " * 500, stage="ingest")
    assert record_size(letter_key(msg), letter) <= DEFAULT_LIMIT
    rec = parse_dead_letter(letter)
    original = rec.original()
    assert rec.original_bytes == size
    assert rec.original_sha256 == hashlib.sha256(value).hexdigest()
    assert value.startswith(original)
    assert rec.truncated == (original != value)
    if rec.truncated:
        assert len(original) == PREFIX_BYTES
    assert rec.source == LetterSource("events", 3, 17, 1500)
    assert len(rec.message) <= 1000 and rec.reason is Reason.TOO_LARGE and rec.stage == "ingest"
    if key_size:
        assert rec.key_bytes == key_size
        assert rec.key() == msg.key[:KEY_BYTES]
        assert letter_key(msg) == msg.key[:KEY_BYTES]
    else:
        assert rec.key_b64 is None and rec.key_bytes is None and rec.key() is None


def test_small_originals_are_kept_whole() -> None:
    msg = Record(b"u1", b'{"broken', "events", 0, 0)
    rec = parse_dead_letter(dead_letter(msg, "undecodable", "no", stage="ingest"))
    assert rec.original() == b'{"broken' and rec.truncated is False


def test_the_wire_fields_are_the_documented_ones() -> None:
    """docs/contracts.md's table: a JSON object with exactly these fields, nulls included."""
    raw = dead_letter(Record(None, b"x", "events", 0, 5, 2.0), Reason.BAD_VALUE, "why", stage="trainer")
    assert orjson.loads(raw) | {"rejected_at_ms": 0} == {
        "original_b64": "eA==", "original_bytes": 1, "original_sha256": hashlib.sha256(b"x").hexdigest(),
        "truncated": False, "key_b64": None, "key_bytes": None,
        "source": {"topic": "events", "partition": 0, "offset": 5, "timestamp_ms": 2000},
        "reason": "bad_value", "message": "why", "stage": "trainer", "rejected_at_ms": 0}
    letter = parse_dead_letter(raw)
    assert isinstance(letter, DeadLetter) and parse_dead_letter(encode_dead_letter(letter)) == letter


def test_a_limit_below_a_bounded_letter_is_refused() -> None:
    msg = Record(b"u1", b"x" * 10, "events", 0, 0)
    with pytest.raises(ValueError, match="below a bounded dead letter"):
        dead_letter(msg, "too_large", "no", stage="ingest", limit=100)
