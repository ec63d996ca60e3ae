"""Serving contracts: recommendation requests, user-update notices, recommendations.

Decoded and validated in one pass by msgspec (JSON or msgpack, told apart by the first byte, as
for events); a body that breaks the contract raises :class:`~semirec.core.contracts.ContractError`
with the same reason codes as events, so it can be dead-lettered. docs/contracts.md is the
human-readable version.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from semirec.core.contracts import MAX_TS, ContractError, Reason, id_problem

MAX_REQUEST_BYTES = 64 * 1024
MAX_K = 100
MAX_REQUEST_CANDIDATES = 2000

Identifier = Annotated[str, msgspec.Meta(min_length=1)]


class RecommendationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Topic ``recommendation-requests``, key = ``user_id``."""

    request_id: Identifier
    user_id: Identifier
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 10
    # rank exactly these videos instead of recalling (unknown ones are skipped and counted)
    candidates: Annotated[list[Identifier], msgspec.Meta(max_length=MAX_REQUEST_CANDIDATES)] | None = None
    # the moment to recommend for (unix seconds, the events' range: finite, 0 <= at < MAX_TS);
    # default: when the agent handles the request
    at: Annotated[float, msgspec.Meta(ge=0, lt=MAX_TS)] | None = None


class UserUpdate(msgspec.Struct, frozen=True):
    """Topic ``user-updates`` (ingest -> recommendation agent), key = ``user_id``: this user's
    sequences changed and are durably written in Redis."""

    user_id: str
    event_id: str  # the newest event of the user in the written batch
    ts: float  # that event's own time (unix s): the moment to recommend for
    appended_at: float  # its Kafka record timestamp (unix s): where freshness is measured from
    written_at: float  # when ingest's Redis write was acknowledged (unix s)


class RecommendedItem(msgspec.Struct, frozen=True):
    item_id: str
    score: float
    source: str  # which recall source brought it in (content_video, content_product, popular, fresh, request)


class Timings(msgspec.Struct, frozen=True, omit_defaults=True):
    recall_ms: float  # the user's state read from Redis + candidate recall
    rank_ms: float
    total_ms: float
    event_to_publish_ms: float | None = None  # triggered recommendations only
    # where a triggered recommendation's freshness went, stage by stage (the sum plus the
    # publish is event_to_publish_ms): the event's Kafka timestamp -> ingest's Redis write
    # acknowledged; -> the agent fetched its user-updates notice; -> a ranking slot was free
    ingest_ms: float | None = None
    notice_ms: float | None = None
    queue_ms: float | None = None


class Recommendation(msgspec.Struct, frozen=True, omit_defaults=True):
    """Topic ``recommendations``, key = ``user_id``."""

    user_id: str
    request_id: str | None
    event_id: str | None
    items: list[RecommendedItem]
    model_version: str  # "ranker/<version>" (Triton) or "fallback"
    generated_at: float
    fallback: bool
    timings: Timings
    skipped_without_vector: int = 0
    # why, when ``fallback``: "no_model" (no ranker configured), "breaker_open" (the circuit
    # breaker is not letting calls through), "triton_error" (the call failed or missed its budget)
    fallback_reason: str | None = None
    candidates: list[str] | None = None  # only with SEMIREC_PUBLISH_CANDIDATES=1 (diagnostics)


_request_decoders = (msgspec.json.Decoder(RecommendationRequest),
                     msgspec.msgpack.Decoder(RecommendationRequest))
_update_decoder = msgspec.json.Decoder(UserUpdate)
_rec_decoder = msgspec.json.Decoder(Recommendation)
_encoder = msgspec.json.Encoder()
_MISSING = re.compile(r"missing required field")
_TYPE = re.compile(r"^Expected `(str|int|float|array|object|null)[^`]*`, got")


def _reason(exc: msgspec.ValidationError) -> Reason:
    text = str(exc)
    if _MISSING.search(text):
        return Reason.MISSING_FIELD
    if _TYPE.search(text):
        return Reason.BAD_TYPE
    if text.endswith("at `$.at`"):
        return Reason.BAD_TIMESTAMP
    return Reason.BAD_VALUE


def _check_id(name: str, value: str) -> None:
    """The events' id rule (semirec.core.contracts): only control characters are refused."""
    if problem := id_problem(name, value):
        raise ContractError(Reason.BAD_VALUE, problem)


def parse_request(raw: bytes, key: bytes | None) -> RecommendationRequest:
    """Bytes from ``recommendation-requests`` -> :class:`RecommendationRequest`."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ContractError(Reason.TOO_LARGE, f"body is {len(raw)} bytes, limit {MAX_REQUEST_BYTES}")
    if not raw:
        raise ContractError(Reason.UNDECODABLE, "empty body")
    first = raw.lstrip()[:1]
    decoder = _request_decoders[0 if first in (b"{", b"[", b'"') or first.isdigit() else 1]
    try:
        req = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `object`"):
            raise ContractError(Reason.NOT_AN_OBJECT, f"request must be an object: {exc}") from None
        raise ContractError(_reason(exc), f"request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.UNDECODABLE, f"body is neither JSON nor msgpack: {exc}") from None
    _check_id("request_id", req.request_id)
    _check_id("user_id", req.user_id)
    for item_id in req.candidates or ():
        _check_id("candidates[]", item_id)
    if key is None:
        raise ContractError(Reason.KEY_MISMATCH, "message has no key; the key must be the user_id")
    if key != req.user_id.encode():
        raise ContractError(Reason.KEY_MISMATCH,
                            f"message key {key[:64]!r} differs from user_id {req.user_id!r}")
    return req


def parse_update(raw: bytes) -> UserUpdate:
    try:
        return _update_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ContractError(Reason.UNDECODABLE, f"user update: {exc}") from None


def parse_recommendation(raw: bytes) -> Recommendation:
    return _rec_decoder.decode(raw)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def to_builtins(message: msgspec.Struct) -> dict:
    return msgspec.to_builtins(message)
