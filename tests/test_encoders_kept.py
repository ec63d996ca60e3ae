"""The fusion's kept part: whitened principal components of the frozen features beside the learned part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semirec.encoders import checkpoint as ckpt_io
from semirec.encoders.config import IMAGE_FEATURES, SPLIT_RULE, EncoderConfig
from semirec.encoders.export import FUSION_MODELS, FusionForExport, _export_one
from semirec.encoders.fusion import ItemFusion
from semirec.encoders.pretrain import (
    Catalog,
    choose_split,
    encode_views,
    fit_kept,
    holdout_mask,
    learned_dims,
)
from semirec.encoders.triton_repo import specs

CFG = EncoderConfig(d_model=32, heads=4, ffn=64, layers=1, keep_image=6, keep_text=5, keep_weight=0.4)


def synthetic_catalog(n: int = 240, seed: int = 0, text_rank: int | None = None,
                      image_rank: int | None = None) -> Catalog:
    """Items of 4 categories whose image features differ by category and within it."""
    g = torch.Generator().manual_seed(seed)
    category = torch.arange(n) % 4 + 1
    frames = 2
    centres = torch.randn(5, IMAGE_FEATURES, generator=g) * 3
    images = centres[category][:, None, :] + torch.randn(n, frames, IMAGE_FEATURES, generator=g)
    if image_rank is not None:  # within a category, images vary in image_rank directions only
        basis = torch.randn(image_rank, IMAGE_FEATURES, generator=g)
        within = torch.randn(n, image_rank, generator=g) @ basis
        images = centres[category][:, None, :] + within[:, None, :]
    mask = torch.ones(n, frames, dtype=torch.bool)
    mask[::2, 1] = False  # products: one image
    text = torch.randn(n, CFG.text_dim, generator=g)
    if text_rank is not None:  # titles that vary in text_rank directions only
        text = torch.randn(n, text_rank, generator=g) @ torch.randn(text_rank, CFG.text_dim, generator=g)
    text = text / text.norm(dim=1, keepdim=True)
    return Catalog(text, images, mask, category, torch.zeros(n, 2, dtype=torch.int64),
                   torch.arange(n) % 2 == 1, [str(int(c)) for c in category])


def test_kept_components_are_whitened_within_category_and_checked_on_held_out_items() -> None:
    cat = synthetic_catalog()
    held_out = holdout_mask([str(i) for i in range(len(cat))], 0.25, 0)
    fusion = ItemFusion(CFG)
    report = fit_kept(fusion, cat, held_out)
    assert report["image_components"] == 6 and report["text_components"] == 5
    for part in ("image_variance_kept", "text_variance_kept"):
        assert 0.0 < report[part]["held_out"] <= report[part]["train"] <= 1.0
    kept = fusion["video"].kept
    train = torch.from_numpy(~held_out)
    with torch.no_grad():
        k = kept(cat.text, cat.images, cat.image_mask.float(), cat.category, torch.ones(len(cat)))
    k = (k / kept.scale)[train]
    img, txt = k[:, :6], k[:, 6:]
    assert torch.allclose(img.std(0), torch.ones(6), atol=0.02)  # whitened
    assert torch.allclose(txt.std(0), torch.ones(5), atol=0.02)
    for c in range(1, 5):  # the category's mean is removed: within-category components
        assert img[cat.category[train] == c].mean(0).abs().max() < 1e-3
    assert torch.equal(fusion["video"].kept.image_proj, fusion["product"].kept.image_proj)


def test_vectors_are_unit_norm_with_the_kept_share_of_the_norm() -> None:
    cat = synthetic_catalog()
    fusion = ItemFusion(CFG)
    fit_kept(fusion, cat, np.zeros(len(cat), bool))
    fusion.eval()
    with torch.no_grad():
        z = encode_views(fusion, cat, torch.arange(len(cat)), view="content")
        text_view = encode_views(fusion, cat, torch.arange(len(cat)), view="text")
    assert z.shape == (len(cat), 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(len(cat)), atol=1e-5)
    learned = 128 - CFG.keep_dims
    assert torch.allclose((z[:, learned:] ** 2).sum(1), torch.full((len(cat),), 0.4), atol=1e-5)
    assert text_view[:, learned:learned + 6].abs().max() == 0  # no image: no image components
    assert text_view[:, learned + 6:].abs().max() > 0


def test_configs_without_a_kept_part_read_and_digest_as_before() -> None:
    plain = EncoderConfig()
    assert not {"keep_image", "keep_text", "keep_weight"} & plain.to_dict().keys()
    assert EncoderConfig.from_dict(plain.to_dict()) == plain
    assert CFG.to_dict()["keep_image"] == 6 and EncoderConfig.from_dict(CFG.to_dict()) == CFG
    assert plain.digest() != EncoderConfig(keep_image=1).digest()
    assert ItemFusion(plain)["video"].kept is None


def test_kept_fusion_saves_loads_and_exports_to_onnx(tmp_path: Path) -> None:
    cat = synthetic_catalog()
    fusion = ItemFusion(CFG)
    fit_kept(fusion, cat, np.zeros(len(cat), bool))
    saved = ckpt_io.save(tmp_path / "ckpt", fusion, CFG, {})
    loaded = ckpt_io.load_fusion(ckpt_io.read(tmp_path / "ckpt"))
    assert torch.equal(loaded["video"].kept.image_offset, fusion["video"].kept.image_offset)
    assert saved.version.startswith("fusion-")
    spec = next(s for s in specs(CFG) if s.name == FUSION_MODELS["video"])
    assert _export_one(FusionForExport(loaded["video"]), spec, CFG, tmp_path / "f.onnx") < 1e-4


def test_a_catalog_smaller_than_the_kept_components_leaves_the_rest_zero() -> None:
    cat = synthetic_catalog(n=12)
    fusion = ItemFusion(EncoderConfig(d_model=32, heads=4, ffn=64, layers=1, keep_image=20, keep_text=4))
    report = fit_kept(fusion, cat, np.zeros(len(cat), bool))
    assert report["image_variance_kept"]["train"] > 0.999  # 12 items span fewer than 20 directions
    proj = fusion["video"].kept.image_proj
    assert proj[:, 12:].abs().max() == 0 and proj[:, :11].abs().min(dim=0).values.max() > 0


def test_the_learned_part_gets_room_for_the_category_simplex() -> None:
    cat = synthetic_catalog()  # 4 categories
    every = np.ones(len(cat), bool)
    assert learned_dims(cat, every) == 8
    many = Catalog(cat.text, cat.images, cat.image_mask, torch.arange(len(cat)) % 30 + 1, cat.tags,
                   cat.is_video, cat.labels)
    assert learned_dims(many, every) == 32  # 29 -> multiple of 8
    assert learned_dims(many, every, out_dim=48) == 24  # at most half the vector


def test_the_split_follows_held_out_reconstruction_of_the_catalog_features() -> None:
    held_out = holdout_mask([str(i) for i in range(240)], 0.25, 0)
    # titles in 3 directions, images spread over many: 3 title components rebuild the titles
    flat_text = choose_split(synthetic_catalog(text_rank=3), held_out)
    assert flat_text["rule"] == SPLIT_RULE and flat_text["learned_dims"] == 8
    assert flat_text["image_components"] + flat_text["text_components"] == 120
    assert 3 <= flat_text["text_components"] <= 10
    assert flat_text["held_out_share_kept"]["text"] > 0.99
    # and the other way round
    flat_image = choose_split(synthetic_catalog(image_rank=5), held_out)
    assert 5 <= flat_image["image_components"] <= 12 and flat_image["text_components"] >= 108
    assert flat_image["held_out_share_kept"]["image"] > 0.99
    assert 0.0 < flat_image["held_out_share_kept"]["text"] < 1.0


def test_an_explicit_split_needs_both_counts() -> None:
    from click.testing import CliRunner

    from semirec.cli import cli

    result = CliRunner().invoke(cli, ["encoders", "pretrain", "--world", "tiny", "--keep-image", "8"])
    assert result.exit_code == 2 and "--keep-text" in result.output


WITHIN = EncoderConfig(d_model=32, heads=4, ffn=64, layers=1, keep_image=6, keep_text=5,
                       title_within=True)


def test_title_components_within_category_remove_the_category_mean_and_export(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    cat = synthetic_catalog()
    shifted = cat.text + torch.randn(5, cat.text.shape[1], generator=g)[cat.category] * 3
    cat = Catalog(shifted, cat.images, cat.image_mask, cat.category, cat.tags, cat.is_video, cat.labels)
    held_out = holdout_mask([str(i) for i in range(len(cat))], 0.25, 0)
    fusion = ItemFusion(WITHIN)
    report = fit_kept(fusion, cat, held_out)
    assert 0.0 < report["text_variance_kept"]["held_out"] <= report["text_variance_kept"]["train"]
    kept = fusion["video"].kept
    train = torch.from_numpy(~held_out)
    with torch.no_grad():
        k = kept(cat.text, cat.images, cat.image_mask.float(), cat.category, torch.ones(len(cat)))
        no_cat = kept(cat.text, cat.images, cat.image_mask.float(), torch.zeros_like(cat.category),
                      torch.ones(len(cat)))
    txt = (k / kept.scale)[train][:, 6:]
    assert torch.allclose(txt.std(0), torch.ones(5), atol=0.05)  # whitened within categories
    for c in range(1, 5):
        assert txt[cat.category[train] == c].mean(0).abs().max() < 1e-3
    # without a category the between-category part stays (as for images)
    assert (no_cat[:, 6:] - k[:, 6:]).abs().max() > 0.1
    # global title components (v1) keep the category's shift: their category means differ
    v1 = ItemFusion(CFG)
    fit_kept(v1, cat, held_out)
    with torch.no_grad():
        g1 = v1["video"].kept(cat.text, cat.images, cat.image_mask.float(), cat.category,
                              torch.ones(len(cat)))[train][:, 6:] / v1["video"].kept.scale
    assert g1[cat.category[train] == 1].mean(0).abs().max() > 0.5
    ckpt_io.save(tmp_path / "ckpt", fusion, WITHIN, {})
    loaded = ckpt_io.load_fusion(ckpt_io.read(tmp_path / "ckpt"))
    assert torch.equal(loaded["product"].kept.text_offset, fusion["product"].kept.text_offset)
    spec = next(s for s in specs(WITHIN) if s.name == FUSION_MODELS["video"])
    assert _export_one(FusionForExport(loaded["video"]), spec, WITHIN, tmp_path / "f.onnx") < 1e-4


def test_configs_without_title_within_digest_as_before_and_have_no_text_offset() -> None:
    assert "title_within" not in CFG.to_dict() and "title_within" in WITHIN.to_dict()
    assert EncoderConfig.from_dict(WITHIN.to_dict()) == WITHIN
    assert CFG.digest() != WITHIN.digest()
    assert "domains.video.kept.text_offset" not in ItemFusion(CFG).state_dict()
    assert "domains.video.kept.text_offset" in ItemFusion(WITHIN).state_dict()


def test_the_rule_says_whether_title_components_are_within_category() -> None:
    held_out = holdout_mask([str(i) for i in range(240)], 0.25, 0)
    cat = synthetic_catalog(text_rank=3)
    v2 = choose_split(cat, held_out, rule="heldout-recon-v2")
    assert v2["rule"] == "heldout-recon-v2" and v2["title_within"] is True
    assert v2["image_components"] + v2["text_components"] == 120
    assert choose_split(cat, held_out, rule="heldout-recon-v1")["title_within"] is False
    assert choose_split(cat, held_out)["rule"] == SPLIT_RULE
    with pytest.raises(ValueError, match="unknown kept rule"):
        choose_split(cat, held_out, rule="heldout-recon-v9")


def test_the_tone_axis_is_the_backbones_phrase_difference_outside_the_title_components() -> None:
    from semirec.encoders.pretrain import TONE_PHRASES, tone_direction

    good, bad = set(TONE_PHRASES[0]), set(TONE_PHRASES[1])
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(10, CFG.text_dim, generator=g).numpy() * 0.1
    axis_true = np.zeros(CFG.text_dim)
    axis_true[7] = 1.0

    def text_fn(texts: list[str]) -> np.ndarray:  # a backbone whose feature 7 is the tone
        assert set(texts) in (good, bad)
        return noise[: len(texts)] + (1.0 if set(texts) == good else -1.0) * axis_true

    axis = tone_direction(text_fn)
    assert np.isclose(np.linalg.norm(axis), 1.0) and axis[7] > 0.99
    cat = synthetic_catalog()
    held_out = holdout_mask([str(i) for i in range(len(cat))], 0.25, 0)
    fusion = ItemFusion(CFG)  # 5 title dimensions: 4 components and the axis
    report = fit_kept(fusion, cat, held_out, tone=axis)
    assert 0.0 < report["tone_axis"]["axis_outside_components"] <= 1.0
    proj = fusion["video"].kept.text_proj.double()
    directions = proj / proj.norm(dim=0)
    assert directions[:, :4].T.matmul(directions[:, 4]).abs().max() < 1e-6  # orthogonal to them
    train = torch.from_numpy(~held_out)
    with torch.no_grad():
        k = fusion["video"].kept(cat.text, cat.images, cat.image_mask.float(), cat.category,
                                 torch.ones(len(cat)))
    tone_dim = (k / fusion["video"].kept.scale)[train][:, -1]
    assert abs(float(tone_dim.std()) - 1.0) < 0.02  # whitened like the components
    moved = cat.text + torch.from_numpy(axis).float()[None, :] * 0.5  # a warmer tone, same rest
    with torch.no_grad():
        k2 = fusion["video"].kept(moved, cat.images, cat.image_mask.float(), cat.category,
                                  torch.ones(len(cat)))
    assert float((k2 - k)[:, -1].min()) > 0  # every item moves up the axis


def test_the_tone_rule_gives_one_title_dimension_to_the_axis() -> None:
    held_out = holdout_mask([str(i) for i in range(240)], 0.25, 0)
    cat = synthetic_catalog(text_rank=3)
    tone = choose_split(cat, held_out, rule="heldout-recon-tone-v1")
    plain = choose_split(cat, held_out, rule="heldout-recon-v1")
    assert tone["tone_axis"] is True and plain["tone_axis"] is False
    assert tone["learned_dims"] == plain["learned_dims"] == 8
    assert tone["image_components"] + tone["text_components"] == 120
