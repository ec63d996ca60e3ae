"""Simulated users: they open sessions, receive recommendations, pick one and finish it or not.

The audience is I/O-free (the loop in ``semirec/sim/loop.py`` carries its messages) and deterministic
under its seed. Everything it decides comes from the world's behaviour model and truth
(:class:`semirec.worlds.live.LiveWorld`), so it reads the truth by design: simulation only.

A **session** of a user at world time ``t`` (wall clock = world clock + ``offset``):

1. the session's intent is drawn from the user's interests at ``t`` (registered in the truth);
2. ``1 + Poisson(clicks - 1)`` product clicks are published (1 ms apart), following the intent;
3. the user waits for the recommendation triggered by their last event (matched by
   ``event_id``); an incomplete watch changes no sequence and triggers nothing, so after one
   (and after ``wait_s`` without an answer) the user sends a request and waits for its
   ``request_id``; a request unanswered within ``wait_s`` ends the session (counted);
4. from a recommendation the user **picks** one of the first ``slate_size`` videos with the
   position-weighted choice model (P(position i) proportional to 1 / log2(i + 2), i from 0, the
   DCG examination weights), among the ids the world knows; **finishes** it with the world's true
   probability at that moment; the watch is published, and steps 3-4 repeat until the
   session's ``1 + Poisson(watches - 1)`` watches are done.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semirec.core.contracts import Domain, Event
from semirec.worlds.live import LiveWorld


@dataclass(frozen=True, slots=True)
class PositionChoice:
    """P(pick position i) proportional to 1 / log2(i + 2) over the first ``slate_size`` items."""

    slate_size: int = 10

    def weights(self, n: int) -> np.ndarray:
        n = min(n, self.slate_size)
        w = 1.0 / np.log2(np.arange(n) + 2.0)
        return w / w.sum()

    def pick(self, n: int, rng: np.random.Generator) -> int:
        return int(rng.choice(min(n, self.slate_size), p=self.weights(n)))

    def expected(self, probs: Sequence[float]) -> float:
        """Expected completion of the pick from a slate with these true probabilities, best first."""
        w = self.weights(len(probs))
        return float(w @ np.asarray(probs[: len(w)], dtype=np.float64))


@dataclass(slots=True)
class Outbox:
    """What the audience wants sent: events (topic ``events``) and recommendation requests."""

    events: list[Event] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Outbox) -> None:
        self.events += other.events
        self.requests += other.requests


@dataclass(slots=True)
class Session:
    user_id: str
    intent: str
    watches_left: int
    awaiting: str  # the event_id or request_id whose recommendation the user waits for
    by_request: bool
    deadline: float


@dataclass(slots=True)
class Action:
    """A user's latest action, for the live view."""

    wall_ts: float
    kind: str  # "click" | "watch"
    item_id: str
    complete: bool | None = None
    position: int | None = None


class Audience:
    """Simulated users of one world, reacting to recommendations."""

    def __init__(self, live: LiveWorld, *, offset: float, seed: int = 0, k: int = 10,
                 choice: PositionChoice | None = None, wait_s: float = 5.0,
                 clicks_per_session: float = 2.0, watches_per_session: float = 3.0,
                 id_prefix: str = "sim") -> None:
        self.live = live
        self.offset = offset
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
        self.k = k
        self.choice = choice or PositionChoice()
        self.wait_s = wait_s
        self.clicks_per_session = clicks_per_session
        self.watches_per_session = watches_per_session
        self.id_prefix = id_prefix
        self._ids = itertools.count()
        self.sessions: dict[str, Session] = {}
        self.last_action: dict[str, Action] = {}
        self.counts: Counter[str] = Counter()
        self.pick_p: list[float] = []  # true probability of each picked video
        self.expected_pick_p: list[float] = []  # the choice model's expectation per slate

    def world_ts(self, wall_ts: float) -> float:
        return wall_ts - self.offset

    def _next_id(self, kind: str) -> str:
        return f"{self.id_prefix}-{kind}{next(self._ids):08d}"

    # -- sessions ------------------------------------------------------------------------------
    def start_sessions(self, n: int, now: float) -> Outbox:
        """Open up to ``n`` sessions for users drawn by activity (not already in a session)."""
        out = Outbox()
        for user in self.live.pick_users(n):
            if user not in self.sessions:
                out.extend(self.start_session(user, now))
        return out

    def start_session(self, user_id: str, now: float) -> Outbox:
        t = self.world_ts(now)
        intent = self.live.session_intent(user_id, t)
        clicks = self.live.product_clicks(user_id, t, 1 + int(self.rng.poisson(self.clicks_per_session - 1)))
        events = [Event(self._next_id("e"), user_id, pid, Domain.PRODUCT, "click", now + i / 1000)
                  for i, pid in enumerate(clicks)]
        watches = 1 + int(self.rng.poisson(max(self.watches_per_session - 1, 0.0)))
        self.sessions[user_id] = Session(user_id, intent, watches, events[-1].event_id, False,
                                         now + self.wait_s)
        self.last_action[user_id] = Action(now, "click", clicks[-1])
        self.counts["sessions"] += 1
        self.counts["clicks"] += len(events)
        return Outbox(events=events)

    def _request(self, session: Session, now: float) -> Outbox:
        rid = self._next_id("r")
        session.awaiting, session.by_request, session.deadline = rid, True, now + self.wait_s
        self.counts["requests"] += 1
        return Outbox(requests=[{"request_id": rid, "user_id": session.user_id, "k": self.k}])

    def tick(self, now: float) -> Outbox:
        """Sessions whose answer is late: send a request, or give up after an unanswered one."""
        out = Outbox()
        for user, s in list(self.sessions.items()):
            if now < s.deadline:
                continue
            if s.by_request:
                del self.sessions[user]
                self.counts["sessions_unanswered"] += 1
            else:
                self.counts["triggered_late"] += 1
                out.extend(self._request(s, now))
        return out

    # -- recommendations -----------------------------------------------------------------------
    def on_recommendation(self, rec: dict[str, Any], now: float) -> Outbox:
        """React to one message of the ``recommendations`` topic (others' are ignored)."""
        s = self.sessions.get(str(rec.get("user_id")))
        if s is None or s.awaiting not in (rec.get("event_id"), rec.get("request_id")):
            return Outbox()
        ids = [it["item_id"] for it in rec.get("items") or [] if it.get("item_id") in self.live.video_ids]
        if not ids:
            self.counts["unusable_slates"] += 1
            del self.sessions[s.user_id]
            return Outbox()
        shown = ids[: self.choice.slate_size]
        t = self.world_ts(now)
        probs = self.live.item_probs(s.user_id, shown, t)
        pos = self.choice.pick(len(shown), self.rng)
        complete = bool(self.rng.random() < probs[pos])
        self.pick_p.append(float(probs[pos]))
        self.expected_pick_p.append(self.choice.expected(probs))
        event = Event(self._next_id("e"), s.user_id, shown[pos], Domain.VIDEO, "watch", now, complete)
        self.last_action[s.user_id] = Action(now, "watch", shown[pos], complete, pos)
        self.counts["watches"] += 1
        self.counts["completes"] += complete
        s.watches_left -= 1
        out = Outbox(events=[event])
        if s.watches_left <= 0:
            del self.sessions[s.user_id]
            self.counts["sessions_done"] += 1
        elif complete:  # a complete watch changes the sequence: its recommendation is triggered
            s.awaiting, s.by_request, s.deadline = event.event_id, False, now + self.wait_s
        else:
            out.extend(self._request(s, now))
        return out

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "active_sessions": len(self.sessions),
                "completion_rate": (round(self.counts["completes"] / self.counts["watches"], 4)
                                    if self.counts["watches"] else None),
                "mean_pick_p": round(float(np.mean(self.pick_p)), 4) if self.pick_p else None,
                "expected_pick_p": (round(float(np.mean(self.expected_pick_p)), 4)
                                    if self.expected_pick_p else None)}
