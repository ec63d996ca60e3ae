"""Contract of topic ``model-updates`` (trainer -> everyone, key = the model's name): a model
version was promoted and Triton answers with it. JSON; docs/contracts.md is the
human-readable version.
"""

from __future__ import annotations

import msgspec

from semirec.core.contracts import ContractError, Reason

MODEL_UPDATE_KEY = b"ranker"


class DataThrough(msgspec.Struct, frozen=True):
    """The newest data the version was trained on."""

    offsets: dict[str, int]  # next offset per ``samples`` partition ("0", "1", ...)
    event_ts: float | None  # newest trained sample's event time (unix s); None: none trained
    appended_at: float | None  # its Kafka record timestamp (unix s)


class Freshness(msgspec.Struct, frozen=True, omit_defaults=True):
    """Age of the newly trained samples when the version first answered (seconds); empty when
    no sample carried a Kafka timestamp."""

    p50_s: float | None = None
    p95_s: float | None = None
    max_s: float | None = None


class ModelUpdate(msgspec.Struct, frozen=True):
    """Topic ``model-updates``, key = ``model`` (``ranker``)."""

    model: str
    version: int
    model_version: str  # "ranker/<version>": what recommendations carry
    previous_version: int | None  # the version it replaced (the ``previous`` alias)
    # candidate and replaced model on the same held-out slice: n, positives, auc, gauc, logloss
    # (None where undefined, e.g. GAUC without a user with both labels)
    metrics: dict[str, float | None]
    serving_metrics: dict[str, float | None]
    samples_trained: int  # new samples of the round (not the replay draw)
    data_through: DataThrough
    freshness: Freshness
    promoted_at: float  # unix s


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ModelUpdate)


def encode_model_update(update: ModelUpdate) -> bytes:
    return _encoder.encode(update)


def parse_model_update(raw: bytes) -> ModelUpdate:
    """Bytes from ``model-updates`` -> :class:`ModelUpdate`; unknown fields are ignored (a
    newer writer), a broken body raises :class:`~semirec.core.contracts.ContractError`."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ContractError(Reason.UNDECODABLE, f"model update: {exc}") from None
