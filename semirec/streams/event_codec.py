"""The ingest agent's fast event decoder: msgspec decodes and type-checks a JSON or msgpack body
in one pass into a typed struct, and a few checks finish the contract.

:func:`semirec.core.contracts.parse_event` stays the one authority: the fast path accepts only
bodies that are plainly valid (a subset of what the contract accepts, giving the identical
:class:`Event`); anything else, valid or not, is handed to ``parse_event``, so rejections carry
exactly its reason codes and messages. ``tests/test_event_codec.py`` checks the equivalence on
generated bodies (hypothesis), so a change of the contract that the fast path would contradict
fails there.
"""

from __future__ import annotations

import math

import msgspec

from semirec.core.contracts import (
    ACTION_FOR_DOMAIN,
    MAX_EVENT_BYTES,
    MAX_ID_BYTES,
    MAX_TS,
    ContractError,
    Domain,
    Event,
    parse_event,
    parse_ts,
)


class EventBody(msgspec.Struct, gc=False):
    """The event contract's field types; unknown fields are ignored, as the contract says."""

    event_id: str
    user_id: str
    item_id: str
    domain: str
    action: str
    ts: int | float | str
    complete: bool | None = None


_JSON = msgspec.json.Decoder(EventBody)
_MSGPACK = msgspec.msgpack.Decoder(EventBody)
_DOMAINS = {d.value: (d, ACTION_FOR_DOMAIN[d]) for d in Domain}
_MSGPACK_MAP = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_ASCII_SAFE = MAX_ID_BYTES // 4  # this many characters fit the byte limit in any encoding


def _plain_id(value: str) -> bool:
    """Within the id rule for sure (printable implies no control character); else ``False``
    and the authority decides."""
    n = len(value)
    return n > 0 and (n <= _ASCII_SAFE or len(value.encode()) <= MAX_ID_BYTES) \
        and value.isprintable()


def fast_event(raw: bytes, key: bytes | None) -> Event | None:
    """The event of a plainly valid body, or ``None`` (then ask :func:`parse_event`)."""
    if key is None or not raw or len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        if raw[0] == 0x7B:  # "{"
            body = _JSON.decode(raw)
        elif raw[0] in _MSGPACK_MAP:
            body = _MSGPACK.decode(raw)
        else:
            return None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    domain = _DOMAINS.get(body.domain)
    if domain is None or body.action != domain[1]:
        return None
    if domain[0] is Domain.VIDEO and body.complete is None:
        return None
    if not (_plain_id(body.event_id) and _plain_id(body.user_id) and _plain_id(body.item_id)):
        return None
    if key != body.user_id.encode():
        return None
    ts = body.ts
    if type(ts) is str:
        try:
            ts = parse_ts(ts)
        except ContractError:
            return None
    elif type(ts) is int:
        if not 0 <= ts < MAX_TS:
            return None
        ts = float(ts)
    elif not (math.isfinite(ts) and 0 <= ts < MAX_TS):
        return None
    return Event(body.event_id, body.user_id, body.item_id, domain[0], body.action, ts,
                 body.complete)


def decode_event(raw: bytes, key: bytes | None) -> Event:
    """Bytes from the events topic -> :class:`Event`, with exactly the contract's rules and
    reasons (raises :class:`ContractError`)."""
    event = fast_event(raw, key)
    return event if event is not None else parse_event(raw, key)
