"""Dead-letter contract: topic ``events-dlq``, key = the original key (its first 1 KiB).

A refused message's bytes (or a bounded prefix of them), where it came from and why it was
refused; docs/contracts.md is the human-readable version. :mod:`semirec.streams.dlq` builds the
letters within the producer's request limit.
"""

from __future__ import annotations

import base64
from typing import Annotated

import msgspec

from semirec.core.contracts import Reason

Count = Annotated[int, msgspec.Meta(ge=0)]


class LetterSource(msgspec.Struct, frozen=True):
    """Where the refused message was."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # its Kafka record timestamp


class DeadLetter(msgspec.Struct, frozen=True):
    original_b64: str  # the original value, base64; only its first 64 KiB when ``truncated``
    original_bytes: Count  # size of the original value
    original_sha256: str  # hex
    truncated: bool  # the whole original would not fit the producer's request limit
    key_b64: str | None  # the original key's first 1 KiB, base64
    key_bytes: Count | None  # size of the original key
    source: LetterSource
    reason: Reason
    message: str  # a human explanation (at most 1,000 characters)
    stage: str  # which consumer refused it: ingest, catalog, recommend, trainer
    rejected_at_ms: int

    def original(self) -> bytes:
        """The original value (its prefix when ``truncated``)."""
        return base64.b64decode(self.original_b64)

    def key(self) -> bytes | None:
        """The original key (its first 1 KiB)."""
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """A JSON object of the fields, in declaration order."""
    return _encoder.encode(letter)


def parse_dead_letter(raw: bytes) -> DeadLetter:
    """Bytes from ``events-dlq`` -> :class:`DeadLetter` (raises ``msgspec.DecodeError``)."""
    return _decoder.decode(raw)
