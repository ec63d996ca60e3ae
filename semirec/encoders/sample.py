"""Small catalogs (item contract dicts) from the generated world, for tests and benchmarks."""

from __future__ import annotations

from typing import Any


def sample_items(n: int = 24, seed: int = 0) -> list[dict[str, Any]]:
    """About ``n`` items (at least 20: ten categories per domain), products first, then videos."""
    from semirec.worlds.config import make_config
    from semirec.worlds.generate import generate_world

    videos = max(10, n // 3)
    products = max(10, n - videos)
    cfg = make_config("tiny", users=20, products=products, videos=videos, days=1)
    return generate_world(cfg, seed=seed).items[: max(n, 20)]
