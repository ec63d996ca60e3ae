"""Data worlds: events in the event contract and items in the item contract.

``load_world("world", seed=0, size="tiny", **overrides)`` generates the two-domain world
(see docs/worlds.md and :class:`semirec.worlds.config.WorldConfig` for the knobs);
``load_world("ml100k")`` reads MovieLens-100k from the installed recbole wheel.
"""

from __future__ import annotations

from typing import Any

from semirec.worlds.config import PRESETS, WorldConfig, make_config
from semirec.worlds.world import ItemProbs, World

NAMES = ("world", "ml100k")

__all__ = ["NAMES", "PRESETS", "ItemProbs", "World", "WorldConfig", "load_world", "make_config"]


def load_world(name: str, *, seed: int = 0, **size_flags: Any) -> World:
    """Build a world: ``"world"`` (generated: ``size`` preset + WorldConfig fields) or ``"ml100k"``."""
    if name == "world":
        from semirec.worlds.generate import generate_world

        return generate_world(make_config(**size_flags), seed)
    if name == "ml100k":
        if size_flags:
            raise ValueError(f"ml100k has a fixed size; unexpected options {sorted(size_flags)}")
        from semirec.worlds.movielens import load_ml100k

        return load_ml100k()
    raise ValueError(f"unknown world {name!r}; choose one of {list(NAMES)}")
