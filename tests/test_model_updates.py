"""The model-updates contract (semirec.core.model_updates): the documented example parses,
encoding keeps the wire fields, broken bodies are refused with a reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from semirec.core.contracts import ContractError, Reason
from semirec.core.model_updates import (
    DataThrough,
    Freshness,
    ModelUpdate,
    encode_model_update,
    parse_model_update,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"


def _documented() -> bytes:
    section = DOCS.read_text().split("## Model update", 1)[1]
    return re.search(r"```json\n(.*?)```", section, re.S).group(1).encode()


def test_the_documented_example_round_trips() -> None:
    raw = _documented()
    update = parse_model_update(raw)
    assert update.version == 12 and update.model_version == "ranker/12"
    assert update.data_through.offsets == {"0": 5120, "1": 4980}
    assert update.freshness.p95_s == 17.3
    assert json.loads(encode_model_update(update)) == json.loads(raw)


def test_encoding_keeps_the_wire_fields() -> None:
    update = ModelUpdate(model="ranker", version=3, model_version="ranker/3", previous_version=None,
                         metrics={"n": 10.0, "auc": None}, serving_metrics={"n": 10.0},
                         samples_trained=8,
                         data_through=DataThrough(offsets={"0": 4}, event_ts=None, appended_at=None),
                         freshness=Freshness(), promoted_at=1.5)
    body = json.loads(encode_model_update(update))
    assert list(body) == ["model", "version", "model_version", "previous_version", "metrics",
                          "serving_metrics", "samples_trained", "data_through", "freshness",
                          "promoted_at"]
    assert body["freshness"] == {} and body["metrics"]["auc"] is None
    assert parse_model_update(encode_model_update(update)) == update


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"model": "ranker"}',
                                 _documented().replace(b'"version": 12', b'"version": "12"')])
def test_broken_bodies_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(ContractError) as info:
        parse_model_update(raw)
    assert info.value.reason == Reason.UNDECODABLE


def test_gate_metrics_encode() -> None:
    """The gate's metrics are numpy floats (and nan): finite() makes them encodable."""
    import numpy as np

    from semirec.trainer.online.gate import finite

    metrics = finite({"n": 80.0, "auc": np.float64(0.61), "gauc": float("nan")})
    assert metrics == {"n": 80.0, "auc": 0.61, "gauc": None}
    assert all(type(v) is float for v in metrics.values() if v is not None)
    update = parse_model_update(_documented())
    body = json.loads(encode_model_update(msgspec.structs.replace(update, metrics=metrics)))
    assert body["metrics"] == {"n": 80.0, "auc": 0.61, "gauc": None}
