"""What a data world is: items (item contract), events (event contract) and, when known, the truth."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semirec.core.contracts import Event

ItemProbs = Callable[[str, Sequence[str], float], np.ndarray]


@dataclass(slots=True)
class World:
    name: str
    items: list[dict[str, Any]]  # item contract: item_id, domain, title, tags, category, images
    events: list[Event]  # sorted by ts; unique event_ids
    true_prob: dict[str, float] = field(default_factory=dict)  # watch event_id -> P(complete)
    # item_probs(user_id, video_ids, ts) -> true P(complete) per candidate video; generated only
    item_probs: ItemProbs | None = None
    params: dict[str, Any] = field(default_factory=dict)  # how it was made (seed, sizes, source)
    # videos with no history that a live run publishes later (WorldConfig.new_videos); generated only
    new_items: list[dict[str, Any]] = field(default_factory=list)
    # the generator's latent state (semirec.worlds.truth.Truth), for simulated users and evaluation only
    truth: Any = None

    def item_ids(self, domain: str) -> list[str]:
        return [item["item_id"] for item in self.items if item["domain"] == domain]

    def user_ids(self) -> list[str]:
        return sorted({e.user_id for e in self.events})
