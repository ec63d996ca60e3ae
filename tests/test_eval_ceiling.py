"""The generated world's diagnostics: latent-attribute vectors and the feature ceiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semirec.trainer.offline.ceiling import attribute_probe, feature_ceiling, latent_catalog, truth_vectors
from semirec.trainer.offline.samples import build_samples, chronological_split
from semirec.worlds import load_world


def test_truth_vectors_and_feature_ceiling() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = load_world("world", size="tiny", seed=3)
        catalog = latent_catalog(world)
        vectors = truth_vectors(world)
        assert vectors.shape == (len(world.items), 128) and vectors.dtype == np.float32
        # same category -> closer than different category (one-hot part survives the rotation)
        cat = np.concatenate([catalog.products.category, catalog.videos.category])
        gram = vectors @ vectors.T
        same = cat[:, None] == cat[None]
        assert gram[same].mean() > gram[~same].mean() + 0.5
        rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
        train, _, test = chronological_split(build_samples(world.events, rows))
        ceiling = feature_ceiling(world, train, test)
        assert set(ceiling) == {"target_only", "video", "product", "video+product"}
        assert ceiling["video+product"] > ceiling["target_only"]
    finally:
        torch.set_num_threads(threads)


def test_attribute_probe_and_hidden_attributes() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = load_world("world", size="tiny", seed=3)
        exact = attribute_probe(world, truth_vectors(world))
        assert min(exact.values()) > 0.99, exact  # a rotation hides nothing from a linear map
        noise = attribute_probe(world, np.random.default_rng(0).normal(
            size=(len(world.items), 128)).astype(np.float32))
        assert noise["style_r2"] < 0.2 and noise["video_quality_r2"] < 0.2, noise
        assert noise["category_accuracy"] < 0.6, noise
        rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
        train, _, test = chronological_split(build_samples(world.events, rows))
        full = feature_ceiling(world, train, test)
        blind = feature_ceiling(world, train, test, hide=("style", "quality"))
        assert blind["target_only"] < full["target_only"], (blind, full)
        with pytest.raises(ValueError, match="only style and quality"):
            feature_ceiling(world, train, test, hide=("category",))
    finally:
        torch.set_num_threads(threads)
