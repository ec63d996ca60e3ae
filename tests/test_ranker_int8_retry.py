"""The int8 ranker copy: 7-bit weights (reduce_range) when the 8-bit copy misses the bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from semirec.trainer.registry import precision


def _fake(monkeypatch: pytest.MonkeyPatch, diffs: list[float]) -> list[bool]:
    """quantize_int8 records its reduce_range and writes a file; int8_diff answers ``diffs``."""
    calls: list[bool] = []

    def quantize(fp32: Path, out: Path, reduce_range: bool = False) -> Path:
        calls.append(reduce_range)
        Path(out).write_bytes(b"7-bit" if reduce_range else b"8-bit")
        return Path(out)

    answers = iter(diffs)
    monkeypatch.setattr(precision, "has_vnni", lambda: True)
    monkeypatch.setattr(precision, "quantize_int8", quantize)
    monkeypatch.setattr(precision, "int8_diff", lambda fp32, int8, batched=True: next(answers))
    return calls


def test_an_8_bit_copy_within_the_bound_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake(monkeypatch, [0.01])
    model = tmp_path / "model.onnx"
    model.write_bytes(b"fp32")
    out = precision.ensure_int8(model)
    assert calls == [False] and out.read_bytes() == b"8-bit"


def test_a_copy_off_the_bound_is_remade_with_7_bit_weights(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake(monkeypatch, [0.0366, 0.004])
    model = tmp_path / "model.onnx"
    model.write_bytes(b"fp32")
    out = precision.ensure_int8(model)
    assert calls == [False, True] and out.read_bytes() == b"7-bit"


def test_neither_copy_within_the_bound_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, [0.05, 0.03])
    model = tmp_path / "model.onnx"
    model.write_bytes(b"fp32")
    with pytest.raises(RuntimeError, match=r"0\.0300 > 0\.02"):
        precision.ensure_int8(model)
    assert not (tmp_path / precision.INT8_ONNX).exists()


def test_without_vnni_the_copy_has_7_bit_weights_at_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake(monkeypatch, [0.01])
    monkeypatch.setattr(precision, "has_vnni", lambda: False)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"fp32")
    assert precision.ensure_int8(model).read_bytes() == b"7-bit" and calls == [True]
