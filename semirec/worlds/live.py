"""The generated world past its history: sessions, intents and product clicks for simulated users.

A live run (``sim/``) continues the world after its last event. This module applies the same
behaviour model as :mod:`semirec.worlds.generate` at any later time ``ts``:

- a session's **intent** is a category drawn from the user's product interests at ``ts``; it is
  registered in the truth for that hour, so :meth:`Truth.item_probs` includes it (a second
  session in the same hour keeps the first one's intent);
- its **product clicks** follow the intent with probability 0.6, otherwise the current
  interests, then style taste and popularity within the category (Gumbel-max);
- users are drawn for sessions in proportion to their activity.

Video watches are not drawn here: a simulated user picks them from recommendations
(``semirec/sim/audience.py``). What it reads is the world's truth: for simulated users and evaluation only.
"""

from __future__ import annotations

import numpy as np

from semirec.worlds.categories import CATEGORIES
from semirec.worlds.generate import CLICK_FOLLOWS_INTENT, _by_style, _categorical
from semirec.worlds.world import World


class LiveWorld:
    """One world's behaviour model after its history, deterministic under ``seed``."""

    def __init__(self, world: World, seed: int = 0) -> None:
        if world.truth is None or world.truth.products is None:
            raise ValueError(f"world {world.name!r} has no behaviour model (generated worlds only)")
        self.world = world
        self.truth = world.truth
        self.rng = np.random.default_rng(np.random.SeedSequence([world.params.get("seed", 0), 7, seed]))
        self.video_ids = set(self.truth.videos.ids)

    def item_probs(self, user_id: str, video_ids: list[str], ts: float) -> np.ndarray:
        return self.truth.item_probs(user_id, video_ids, ts)

    def schedule_shift(self, ts: float, strength: float = 1.0) -> None:
        self.truth.schedule_shift(ts, strength)

    def pick_users(self, n: int) -> list[str]:
        """``n`` user ids drawn with replacement in proportion to activity."""
        users = self.truth.users
        p = users.activity / users.activity.sum()
        return [users.ids[i] for i in self.rng.choice(len(users.ids), size=n, p=p)]

    def session_intent(self, user_id: str, ts: float) -> str:
        """Draw (or keep) the intent of ``user_id``'s session in the hour of ``ts``: a category slug."""
        u = self.truth.user_index(user_id)
        drawn = int(_categorical(self.truth.product_interest(np.array([u]), np.array([float(ts)])),
                                 self.rng)[0])
        return CATEGORIES[self.truth.set_intent(u, ts, drawn)].slug

    def product_clicks(self, user_id: str, ts: float, n: int) -> list[str]:
        """``n`` product ids the user clicks at ``ts`` (the generator's click model)."""
        if n <= 0:
            return []
        truth, products = self.truth, self.truth.products
        u = truth.user_index(user_id)
        intent = truth.intent_at(u, ts)
        interest = truth.product_interest(np.full(n, u), np.full(n, float(ts)))
        cat = _categorical(interest, self.rng)
        if intent >= 0:
            cat = np.where(self.rng.random(n) < CLICK_FOLLOWS_INTENT, intent, cat)
        picked = _by_style(products, cat, np.repeat(truth.users.product_style[[u]], n, 0), self.rng)
        return [products.ids[i] for i in picked]

    def category_of(self, video_id: str) -> str:
        return CATEGORIES[int(self.truth.videos.category[self.truth._video_index[video_id]])].slug
