"""The generated world's ground truth: interests over time and watch-completion probabilities.

    logit P(complete | user u, video v, time t) = b
        + 0.8 * log(C * video_interest_u(t)[cat_v] + 0.1)     category taste (both domains)
        + 0.8 * <video_style_u, style_v> / sqrt(S)             image style taste
        + 0.5 * log(F * format_taste_u[format_v])              video-only taste
        + 1.0 * [cat_v == intent of u's session at t]          short-term intent (shows in clicks)
        + quality_v + bias_u

with ``product_interest_u(t) = (1 - r) * early + r * late``, ``r = drift * t / horizon`` (after a
scheduled interest shift at ``shift_ts``: ``r + shift * (1 - r)``, see :meth:`Truth.schedule_shift`) and
``video_interest_u(t) = link * product_interest_u(t) + (1 - link) * video_own_u``. The
intercept ``b`` is calibrated so the mean probability over the generated watches equals
``complete_rate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from semirec.worlds.catalog import Side
from semirec.worlds.categories import CATEGORIES, VIDEO_FORMATS
from semirec.worlds.config import WorldConfig
from semirec.worlds.population import Population

A_CATEGORY, A_STYLE, A_FORMAT, A_INTENT = 0.8, 0.8, 0.5, 1.0
NO_INTENT = -1


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibrate_intercept(raw: np.ndarray, target: float) -> float:
    """The ``b`` with ``mean(sigmoid(raw + b)) == target`` (bisection; monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if sigmoid(raw + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(slots=True)
class Truth:
    cfg: WorldConfig
    users: Population
    videos: Side
    intents: dict[tuple[int, int], int]  # (user index, hour slot) -> the session's intent category
    intercept: float = 0.0
    products: Side | None = None  # the product side, for live clicks (semirec.worlds.live)
    shift: float = 0.0  # share of the way to the late interests added at shift_ts (live runs)
    shift_ts: float = math.inf
    _user_index: dict[str, int] = field(init=False, repr=False)
    _video_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._user_index = {uid: i for i, uid in enumerate(self.users.ids)}
        self._video_index = {vid: i for i, vid in enumerate(self.videos.ids)}

    def product_interest(self, u: np.ndarray, ts: np.ndarray) -> np.ndarray:
        horizon = self.cfg.days * 86400
        r = self.cfg.drift * np.clip((ts - self.cfg.start_ts) / horizon, 0.0, 1.0)[:, None]
        r = np.where(ts[:, None] >= self.shift_ts, r + self.shift * (1 - r), r)
        return (1 - r) * self.users.product_interest[u] + r * self.users.product_interest_late[u]

    def schedule_shift(self, ts: float, strength: float = 1.0) -> None:
        """From ``ts`` on, interests move a further ``strength`` share of the way to the late draw.

        For live runs past the history (the generator never calls it); history-time truths are
        unchanged as long as ``ts`` is after the last event.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"shift strength must be in [0, 1], got {strength}")
        self.shift, self.shift_ts = strength, float(ts)

    def video_interest(self, u: np.ndarray, ts: np.ndarray) -> np.ndarray:
        link = self.cfg.link
        return link * self.product_interest(u, ts) + (1 - link) * self.users.video_own_interest[u]

    def raw_logit(self, u: np.ndarray, v: np.ndarray, ts: np.ndarray, intent: np.ndarray) -> np.ndarray:
        """The logit without the intercept, for aligned arrays of user/video indices."""
        return sum(self.logit_terms(u, v, ts, intent).values()) + self.users.bias[u]

    def logit_terms(self, u: np.ndarray, v: np.ndarray, ts: np.ndarray,
                    intent: np.ndarray) -> dict[str, np.ndarray]:
        """The logit's terms that differ between videos: category, style, format, intent, quality
        (their sum plus the user's bias is :meth:`raw_logit`)."""
        cat = self.videos.category[v]
        interest = self.video_interest(u, ts)[np.arange(len(u)), cat]
        style = (self.users.video_style[u] * self.videos.style[v]).sum(1) / np.sqrt(self.cfg.style_dims)
        fmt = self.users.format_taste[u, self.videos.fmt[v]]
        return {"category": A_CATEGORY * np.log(len(CATEGORIES) * interest + 0.1),
                "style": A_STYLE * style,
                "format": A_FORMAT * np.log(len(VIDEO_FORMATS) * fmt),
                "intent": A_INTENT * (intent == cat),
                "quality": self.videos.quality[v].astype(np.float64)}

    def intent_at(self, u: int, ts: float) -> int:
        """The intent of ``u``'s session in the hour of ``ts`` (NO_INTENT outside sessions)."""
        return self.intents.get((u, int((ts - self.cfg.start_ts) // 3600)), NO_INTENT)

    def user_index(self, user_id: str) -> int:
        if user_id not in self._user_index:
            raise KeyError(f"unknown user {user_id!r}")
        return self._user_index[user_id]

    def set_intent(self, u: int, ts: float, category: int) -> int:
        """Give ``u`` a session intent in the hour of ``ts`` (an existing one is kept); returns it."""
        return self.intents.setdefault((u, int((ts - self.cfg.start_ts) // 3600)), category)

    def _aligned(self, user_id: str, video_ids: Sequence[str], ts: float) -> tuple[np.ndarray, ...]:
        """(users, videos, times, intents) aligned per video, for :meth:`logit_terms`."""
        if user_id not in self._user_index:
            raise KeyError(f"unknown user {user_id!r}")
        unknown = [i for i in video_ids if i not in self._video_index]
        if unknown:
            raise KeyError(f"unknown video(s) {unknown[:5]!r}")
        u = self._user_index[user_id]
        v = np.array([self._video_index[i] for i in video_ids], dtype=np.int64)
        n = len(v)
        return np.full(n, u), v, np.full(n, float(ts)), np.full(n, self.intent_at(u, ts))

    def item_terms(self, user_id: str, video_ids: Sequence[str], ts: float) -> dict[str, np.ndarray]:
        """:meth:`logit_terms` of ``video_ids`` for ``user_id`` at ``ts``."""
        return self.logit_terms(*self._aligned(user_id, video_ids, ts))

    def item_probs(self, user_id: str, video_ids: Sequence[str], ts: float) -> np.ndarray:
        """True completion probabilities of ``video_ids`` for ``user_id`` at ``ts`` (float64)."""
        return sigmoid(self.raw_logit(*self._aligned(user_id, video_ids, ts)) + self.intercept)

