"""Training-sample contract: topic ``samples`` (ingest -> trainer), key = ``user_id``.

One sample per video watch (complete or not), logged by the ingest agent at the moment it
applies the watch: the user's sequences exactly as they were just before that event (feature
logging), so the online trainer learns from what the ranker would have seen. docs/contracts.md
is the human-readable version. Replays can log a watch twice; consumers keep one per
``event_id``.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from semirec.core.contracts import MAX_TS, MAX_TS_MS, ContractError, Event, Reason, id_problem
from semirec.core.sequences import UserState

MAX_SAMPLE_BYTES = 512 * 1024  # three sequences of at most 255 entries with 255-byte ids fit
MAX_ENTRIES = 255  # SEMIREC_SEQ_LEN's upper bound

Seconds = Annotated[float, msgspec.Meta(ge=0, lt=MAX_TS)]
Entries = Annotated[list[tuple[Annotated[int, msgspec.Meta(ge=0, lt=MAX_TS_MS)], str]],
                    msgspec.Meta(max_length=MAX_ENTRIES)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class TrainingSample(msgspec.Struct, frozen=True):
    event_id: str
    user_id: str
    item_id: str  # the watched video
    complete: bool  # the label: watched completely
    ts: Seconds  # the watch's own time (unix s)
    video: Entries  # (ts_ms, item_id) of complete watches before it, oldest first
    product: Entries  # (ts_ms, item_id) of product clicks before it
    partition: Count  # where the watch is in the events topic
    offset: Count
    appended_at: Seconds  # the watch's Kafka record timestamp (unix s): model freshness starts here
    logged_at: Seconds  # when ingest built the sample (unix s)
    # (ts_ms, item_id) of incomplete watches before it, oldest first (absent in samples logged
    # before the user state kept them: read as none)
    skipped: Entries = []


def sample_of(state: UserState, event: Event, partition: int, offset: int, appended_at: float,
              logged_at: float) -> TrainingSample:
    """The sample of ``event`` from ``state`` as it is before the event is applied."""
    return TrainingSample(
        event.event_id, event.user_id, event.item_id, bool(event.complete), event.ts,
        list(state.video), list(state.product), partition, offset,  # Entry is a (ts_ms, id) tuple
        appended_at, logged_at, list(state.skipped))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TrainingSample)
_json_decoder = msgspec.json.Decoder(TrainingSample)


def encode_sample(sample: TrainingSample) -> bytes:
    """MessagePack, a map of the fields (30% smaller than JSON and cheaper for the broker: a
    sample carries two full sequences)."""
    return _encoder.encode(sample)


_MISSING = re.compile(r"missing required field")
_TYPE = re.compile(r"^Expected `(str|int|float|bool|array|object|null)[^`]*`, got")
_TIME = re.compile(r"at `\$\.(ts|appended_at|logged_at|(video|product|skipped)\[\d+\]\[0\])`$")


def _reason(exc: msgspec.ValidationError) -> Reason:
    text = str(exc)
    if text.startswith("Expected `object`") and " - at " not in text:  # the body itself
        return Reason.NOT_AN_OBJECT
    if _MISSING.search(text):
        return Reason.MISSING_FIELD
    if _TYPE.search(text):
        return Reason.BAD_TYPE
    if _TIME.search(text):
        return Reason.BAD_TIMESTAMP
    return Reason.BAD_VALUE


def decode_sample(raw: bytes, key: bytes | None = None, *, check_key: bool = False) \
        -> TrainingSample:
    """Bytes from ``samples`` -> :class:`TrainingSample`, or :class:`ContractError` with the
    events' reason codes: ``too_large``, ``undecodable``, ``not_an_object``, ``missing_field``,
    ``bad_type``, ``bad_timestamp`` (times outside the events' range), ``bad_value`` (ids that
    break the id rule, negative offsets, sequences over 255 entries) and, with ``check_key``,
    ``key_mismatch`` (the key must be the user_id).

    Samples are MessagePack; a body whose first byte is below 0x80 cannot be a MessagePack map
    (that byte would be a small integer) and is read as JSON, the format ingest wrote before
    (and what a hand-written or foreign sample most likely is)."""
    if len(raw) > MAX_SAMPLE_BYTES:
        raise ContractError(Reason.TOO_LARGE, f"body is {len(raw)} bytes, limit {MAX_SAMPLE_BYTES}")
    try:
        sample = (_json_decoder if raw[:1] < b"\x80" else _decoder).decode(raw)
    except msgspec.ValidationError as exc:
        raise ContractError(_reason(exc), f"training sample: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.UNDECODABLE, f"training sample: {exc}") from None
    for name, value in (("event_id", sample.event_id), ("user_id", sample.user_id),
                        ("item_id", sample.item_id),
                        *((f"{seq}[]", e[1]) for seq in ("video", "product", "skipped")
                          for e in getattr(sample, seq))):
        if problem := id_problem(name, value):
            raise ContractError(Reason.BAD_VALUE, f"training sample: {problem}")
    if check_key:
        if key is None:
            raise ContractError(Reason.KEY_MISMATCH, "message has no key; the key must be the user_id")
        if key != sample.user_id.encode():
            raise ContractError(Reason.KEY_MISMATCH, f"message key {key[:64]!r} differs from "
                                                     f"user_id {sample.user_id!r}")
    return sample
