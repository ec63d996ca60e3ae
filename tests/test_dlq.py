"""Dead letters stay within the producer's limit whatever arrived (no services needed)."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from semirec.streams.batches import Record
from semirec.streams.dlq import DEFAULT_LIMIT, KEY_BYTES, PREFIX_BYTES, dead_letter, letter_key, record_size


@pytest.mark.parametrize("size", [0, 10, 700_000, 749_000, 760_000, 800_000, 5_000_000])
@pytest.mark.parametrize("key_size", [0, 40, 3_000])
def test_every_letter_fits_the_limit(size: int, key_size: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    msg = Record(b"k" * key_size if key_size else None, value, "events", 3, 17, 1.5)
    letter = dead_letter(msg, "too_large", "body is big " * 500, stage="ingest")
    assert record_size(letter_key(msg), letter) <= DEFAULT_LIMIT
    rec = orjson.loads(letter)
    original = base64.b64decode(rec["original_b64"])
    assert rec["original_bytes"] == size
    assert rec["original_sha256"] == hashlib.sha256(value).hexdigest()
    assert value.startswith(original)
    assert rec["truncated"] == (original != value)
    if rec["truncated"]:
        assert len(original) == PREFIX_BYTES
    assert rec["source"] == {"topic": "events", "partition": 3, "offset": 17, "timestamp_ms": 1500}
    assert len(rec["message"]) <= 1000
    if key_size:
        assert rec["key_bytes"] == key_size
        assert base64.b64decode(rec["key_b64"]) == msg.key[:KEY_BYTES]
        assert letter_key(msg) == msg.key[:KEY_BYTES]


def test_small_originals_are_kept_whole() -> None:
    msg = Record(b"u1", b'{"broken', "events", 0, 0)
    rec = orjson.loads(dead_letter(msg, "undecodable", "no", stage="ingest"))
    assert base64.b64decode(rec["original_b64"]) == b'{"broken' and rec["truncated"] is False


def test_a_limit_below_a_bounded_letter_is_refused() -> None:
    msg = Record(b"u1", b"x" * 10, "events", 0, 0)
    with pytest.raises(ValueError, match="below a bounded dead letter"):
        dead_letter(msg, "too_large", "no", stage="ingest", limit=100)
