"""The truth-diagnostic probe: ridge maps from item vectors to a generated world's latent attributes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from semirec.cli import cli
from semirec.encoders.config import SPLIT_RULE
from semirec.encoders.probe import probe_vectors, world_attributes
from semirec.worlds import load_world
from tests.conftest import private_encoder_cache


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from private_encoder_cache(tmp_path_factory)


def test_ridge_probe_recovers_exposed_attributes_and_not_noise() -> None:
    world = load_world("world", seed=3, size="tiny")
    attrs = world_attributes(world)
    assert len(attrs["stars"]) == len(world.items)
    assert set(np.unique(attrs["stars"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    n_cat, n_fmt = attrs["category"].max() + 1, attrs["format"].max() + 1
    exposed = np.hstack([np.eye(n_cat)[attrs["category"]], np.eye(n_fmt)[attrs["format"]],
                         attrs["style"], attrs["stars"][:, None]])
    rng = np.random.default_rng(0)
    mixed = exposed @ rng.normal(size=(exposed.shape[1], 64))  # a linear map hides nothing
    good = probe_vectors(mixed + 0.01 * rng.normal(size=mixed.shape), attrs)
    assert good["category_acc"] == 1.0 and good["format_acc"] == 1.0
    assert good["style_r2"] > 0.95 and good["stars_r2"] > 0.95
    noise = probe_vectors(rng.normal(size=mixed.shape), attrs)
    assert noise["style_r2"] < 0.1 and noise["stars_r2"] < 0.1 and noise["category_acc"] < 0.5


def test_probe_cli_says_it_reads_the_truth(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "TRUTH DIAGNOSTIC" in runner.invoke(cli, ["encoders", "probe", "--help"]).output
    out = tmp_path / "ckpt"
    trained = runner.invoke(cli, ["encoders", "pretrain", "--world", "tiny", "--out", str(out),
                                  "--epochs", "1", "--kept", "auto", "--json"])
    assert trained.exit_code == 0, trained.output
    split = json.loads(trained.stdout.strip().splitlines()[-1])["kept_split"]
    config = json.loads((out / "encoder.json").read_text())["config"]  # the rule's split is saved
    assert split["rule"] == SPLIT_RULE and split["learned_dims"] == 16  # 10 categories
    assert (config["keep_image"], config["keep_text"]) == (split["image_components"],
                                                           split["text_components"])
    assert config["keep_image"] + config["keep_text"] == 112
    result = runner.invoke(cli, ["encoders", "probe", "--checkpoint", str(out), "--world", "tiny",
                                 "--new-videos", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert "TRUTH DIAGNOSTIC" in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["truth_diagnostic"] is True
    version = json.loads(trained.stdout.strip().splitlines()[-1])["encoder_version"]
    assert summary["encoder_version"] == version
    for probe in (summary, summary["backbones"]["image"], summary["backbones"]["text"]):
        assert {"style_r2", "stars_r2", "category_acc", "format_acc"} <= probe.keys()
        assert 0.0 <= probe["category_acc"] <= 1.0 and probe["style_r2"] <= 1.0
    # on any world the image features know more of the style than of the stars, the text the reverse
    image, text = summary["backbones"]["image"], summary["backbones"]["text"]
    assert image["style_r2"] > text["style_r2"] and text["stars_r2"] > image["stars_r2"]
