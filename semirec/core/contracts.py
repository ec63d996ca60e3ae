"""Topic contracts, enforced: parse event bytes into :class:`Event` or a :class:`Rejection`.

See docs/contracts.md for the human-readable version. Both JSON (UTF-8) and msgpack bodies
are accepted; the first byte tells them apart (a JSON object starts with ``{``, a msgpack
map with 0x80-0x8f, 0xde or 0xdf).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgpack
import orjson

MAX_ID_BYTES = 255
# The events' timestamp range: 0 <= ts < MAX_TS unix seconds (2**41 ms, September 2039); also
# the bound of every other timestamp in the contracts (samples, requests)
MAX_TS_MS = 2**41
MAX_TS = MAX_TS_MS / 1000
MAX_EVENT_BYTES = 64 * 1024
# The id rule (event_id, user_id, item_id): 1..MAX_ID_BYTES UTF-8 bytes and no control character,
# i.e. nothing of Unicode category Cc (U+0000-U+001F, U+007F-U+009F). Every other character is
# allowed, invisible ones included (U+00A0 no-break space, U+200B zero-width space). The same
# rule as a regular expression for schema-driven decoders: ``ID_PATTERN``.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
ID_PATTERN = "^[^\x00-\x1f\x7f-\x9f]+$"


class Domain(StrEnum):
    VIDEO = "video"
    PRODUCT = "product"


ACTION_FOR_DOMAIN = {Domain.VIDEO: "watch", Domain.PRODUCT: "click"}


class Reason(StrEnum):
    """Machine-readable dead-letter reason codes."""

    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"  # neither JSON nor msgpack, or broken encoding
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_VALUE = "bad_value"
    BAD_TIMESTAMP = "bad_timestamp"
    KEY_MISMATCH = "key_mismatch"
    BAD_IMAGE = "bad_image"  # items: an image file that is missing, unreadable or not an image


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    domain: Domain
    action: str
    ts: float  # unix seconds (UTC)
    complete: bool | None = None  # required for watches

    @property
    def ts_ms(self) -> int:
        """⌊ts·1000⌋ of the exact value of ``ts`` (not of a rounded product), so that
        ``ts_ms // (bucket_s * 1000) == ⌊ts / bucket_s⌋`` holds exactly for every bucket."""
        num, den = self.ts.as_integer_ratio()
        return num * 1000 // den

    @property
    def appends(self) -> bool:
        """Whether this event joins a sequence: complete watches and product clicks do."""
        return self.domain is Domain.PRODUCT or bool(self.complete)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id, "user_id": self.user_id, "item_id": self.item_id,
            "domain": self.domain.value, "action": self.action, "ts": self.ts,
        }
        if self.complete is not None:
            out["complete"] = self.complete
        return out


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    message: str


class ContractError(ValueError):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def rejection(self) -> Rejection:
        return Rejection(self.reason, str(self))


def decode_body(raw: bytes, *, limit: int = MAX_EVENT_BYTES) -> Any:
    """Decode a JSON or msgpack body of at most ``limit`` bytes; raises :class:`ContractError`."""
    if len(raw) > limit:
        raise ContractError(Reason.TOO_LARGE, f"body is {len(raw)} bytes, limit {limit}")
    if not raw:
        raise ContractError(Reason.UNDECODABLE, "empty body")
    first = raw.lstrip()[:1]
    try:
        if first in (b"{", b"[", b'"') or first.isdigit() or first in (b"t", b"f", b"n", b"-"):
            return orjson.loads(raw)
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (orjson.JSONDecodeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            ValueError, TypeError) as exc:
        raise ContractError(Reason.UNDECODABLE, f"body is neither JSON nor msgpack: {exc}") from exc


def parse_ts(value: Any) -> float:
    """Unix seconds (int/float) or an ISO-8601 string; naive ISO times are read as UTC."""
    if isinstance(value, bool):
        raise ContractError(Reason.BAD_TIMESTAMP, "ts must be a number or ISO-8601 string, got bool")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ContractError(Reason.BAD_TIMESTAMP, f"ts {value!r} is not ISO-8601") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        raise ContractError(
            Reason.BAD_TIMESTAMP, f"ts must be a number or ISO-8601 string, got {type(value).__name__}"
        )
    if not math.isfinite(ts) or ts < 0 or ts >= MAX_TS:
        raise ContractError(Reason.BAD_TIMESTAMP, f"ts {value!r} is out of range")
    return ts


def _identifier(obj: dict[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise ContractError(Reason.MISSING_FIELD, f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, str):
        raise ContractError(Reason.BAD_TYPE, f"{name} must be a string, got {type(value).__name__}")
    if problem := id_problem(name, value):
        raise ContractError(Reason.BAD_VALUE, problem)
    return value


def id_problem(name: str, value: str) -> str | None:
    """Why ``value`` breaks the id rule (see ``CONTROL_CHARACTER``), or ``None``."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: not representable in UTF-8
        return f"{name} must be valid UTF-8"
    if not 1 <= size <= MAX_ID_BYTES:
        return f"{name} must be 1..{MAX_ID_BYTES} UTF-8 bytes"
    if found := CONTROL_CHARACTER.search(value):
        return f"{name} must not contain control characters (U+{ord(found.group()):04X})"
    return None


def validate_event(obj: Any) -> Event:
    """Validate a decoded body against the event contract."""
    if not isinstance(obj, dict):
        raise ContractError(Reason.NOT_AN_OBJECT, f"event must be an object, got {type(obj).__name__}")
    event_id = _identifier(obj, "event_id")
    user_id = _identifier(obj, "user_id")
    item_id = _identifier(obj, "item_id")
    for name in ("domain", "action", "ts"):
        if obj.get(name) is None:
            raise ContractError(Reason.MISSING_FIELD, f"missing field {name!r}")
    try:
        domain = Domain(obj["domain"])
    except (ValueError, TypeError):
        raise ContractError(
            Reason.BAD_VALUE, f"domain must be 'video' or 'product', got {obj['domain']!r}"
        ) from None
    action = obj["action"]
    if action != ACTION_FOR_DOMAIN[domain]:
        raise ContractError(
            Reason.BAD_VALUE,
            f"action for domain {domain.value!r} must be {ACTION_FOR_DOMAIN[domain]!r}, got {action!r}",
        )
    ts = parse_ts(obj["ts"])
    complete = obj.get("complete")
    if domain is Domain.VIDEO and complete is None:
        raise ContractError(Reason.MISSING_FIELD, "missing field 'complete' (required for watches)")
    if complete is not None and not isinstance(complete, bool):
        raise ContractError(Reason.BAD_TYPE, f"complete must be a bool, got {type(complete).__name__}")
    return Event(event_id, user_id, item_id, domain, action, ts, complete)


def parse_event(raw: bytes, key: bytes | None = None) -> Event:
    """Bytes from the events topic -> :class:`Event`; the key must equal the user_id."""
    event = validate_event(decode_body(raw))
    if key is None:
        raise ContractError(Reason.KEY_MISMATCH, "message has no key; the key must be the user_id")
    if key != event.user_id.encode():
        raise ContractError(
            Reason.KEY_MISMATCH,
            f"message key {key[:64]!r} differs from user_id {event.user_id!r}",
        )
    return event


def encode_event(event: Event | dict[str, Any], fmt: str = "json") -> bytes:
    body = event.to_dict() if isinstance(event, Event) else event
    if fmt == "json":
        return orjson.dumps(body)
    if fmt == "msgpack":
        return msgpack.packb(body, use_bin_type=True)
    raise ValueError(f"unknown format {fmt!r}")
