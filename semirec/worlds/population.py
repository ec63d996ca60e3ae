"""Users of the generated world: latent tastes in both domains and how active they are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semirec.worlds.categories import CATEGORIES, VIDEO_FORMATS
from semirec.worlds.config import WorldConfig

INTEREST_CONCENTRATION = 0.4  # Dirichlet alpha per category: small = a few favourite categories


@dataclass(frozen=True, slots=True)
class Population:
    ids: list[str]
    activity: np.ndarray  # [U] mean 1; scales the number of sessions
    product_interest: np.ndarray  # [U, C] category interests at the start
    product_interest_late: np.ndarray  # [U, C] where --drift moves them to by the last day
    video_own_interest: np.ndarray  # [U, C] the video-specific component
    product_style: np.ndarray  # [U, S] style taste for products
    video_style: np.ndarray  # [U, S] style taste for videos (linked to product_style)
    format_taste: np.ndarray  # [U, F] video-only: which formats a user finishes
    bias: np.ndarray  # [U] how readily the user finishes videos at all


def build_population(cfg: WorldConfig, rng: np.random.Generator) -> Population:
    n, c, s = cfg.users, len(CATEGORIES), cfg.style_dims
    alpha = np.full(c, INTEREST_CONCENTRATION)
    activity = rng.lognormal(0.0, 0.5, n)
    product_style = rng.normal(size=(n, s))
    own_style = rng.normal(size=(n, s))
    return Population(
        ids=[f"u{i:05d}" for i in range(n)],
        activity=activity / activity.mean(),
        product_interest=rng.dirichlet(alpha, n),
        product_interest_late=rng.dirichlet(alpha, n),
        video_own_interest=rng.dirichlet(alpha, n),
        product_style=product_style,
        video_style=cfg.link * product_style + np.sqrt(1 - cfg.link**2) * own_style,
        format_taste=rng.dirichlet(np.ones(len(VIDEO_FORMATS)), n),
        bias=rng.normal(0.0, 0.4, n),
    )
