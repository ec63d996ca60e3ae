"""Sizes and knobs of the generated world, with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

START_TS = 1_704_067_200  # 2024-01-01T00:00:00Z, an hour boundary


@dataclass(frozen=True, slots=True)
class WorldConfig:
    users: int = 200
    videos: int = 120
    products: int = 240
    days: int = 10
    sessions_per_day: float = 0.4  # mean sessions per user-day (scaled by user activity)
    clicks_per_session: float = 4.0  # product clicks: dense histories
    watches_per_session: float = 2.0  # video watches: sparse histories
    link: float = 0.7  # cross-domain link: 1 = video tastes follow product tastes, 0 = unrelated
    drift: float = 0.0  # 0 = fixed interests, 1 = interests fully replaced by the last day
    frames: int = 3  # images per video
    style_dims: int = 8  # within-category image style dimensions that users care about
    complete_rate: float = 0.5  # calibrated mean completion probability of a watch
    start_ts: int = START_TS
    new_videos: int = 0  # videos held out of the history and the initial catalog (World.new_items)

    def __post_init__(self) -> None:
        for name in ("users", "videos", "products", "days", "frames", "style_dims"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.products < 10 or self.videos < 10:
            raise ValueError("products and videos must be >= 10 (one per category at least)")
        for name in ("link", "drift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.complete_rate < 1.0:
            raise ValueError(f"complete_rate must be in (0, 1), got {self.complete_rate}")
        if min(self.sessions_per_day, self.clicks_per_session, self.watches_per_session) < 0:
            raise ValueError("session rates must be >= 0")
        if not 0 <= self.new_videos <= self.videos - 10:
            raise ValueError(f"new_videos must be in 0..videos - 10, got {self.new_videos}")
        if self.start_ts % 3600:
            raise ValueError("start_ts must be on an hour boundary")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(),  # ~4-5k events: tests
    "demo": WorldConfig(users=2500, videos=1500, products=2000, days=30),  # ~180k events
}


def make_config(size: str = "tiny", **overrides: Any) -> WorldConfig:
    """A preset with some fields overridden (None values are ignored)."""
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown world option(s) {unknown}; known: {sorted(known)}")
    return replace(PRESETS[size], **{k: v for k, v in overrides.items() if v is not None})
