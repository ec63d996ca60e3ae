"""The live terminal view: a plain :class:`LiveState` the loop updates, rendered with Rich.

:func:`render` turns a state into a Rich renderable, so the view is tested by rendering into a
recording console, without a terminal.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from semirec.sim.quality import POLICIES

RATE_WINDOW_S = 5.0
USERS_SHOWN = 4


class Rate:
    """Events per second over the last few seconds (a deque of (t, count) marks)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.total = 0
        self.marks: deque[tuple[float, int]] = deque()

    def add(self, n: int, now: float) -> None:
        self.total += n
        self.marks.append((now, self.total))
        while self.marks and now - self.marks[0][0] > self.window_s:
            self.marks.popleft()

    def per_s(self, now: float) -> float:
        while self.marks and now - self.marks[0][0] > self.window_s:
            self.marks.popleft()
        if len(self.marks) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.marks[0], self.marks[-1]
        return (c1 - c0) / max(now - t0, t1 - t0, 1e-3)


@dataclass(slots=True)
class UserView:
    user_id: str
    action: str = ""  # "watched <title> ✓" ...
    action_at: float = 0.0
    recommended: list[str] = field(default_factory=list)  # titles, best first
    recommended_at: float = 0.0
    model_version: str = ""


@dataclass(slots=True)
class LiveState:
    """Everything the live view shows; the loop writes it, :func:`render` reads it."""

    phase: str = "starting"
    started: float = field(default_factory=time.time)
    events: Rate = field(default_factory=Rate)
    recs: Rate = field(default_factory=Rate)
    ingest_lag: int | None = None
    recommend_lag: int | None = None
    freshness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    fallbacks: int = 0
    model_version: str = "-"
    promotions: list[tuple[float, str]] = field(default_factory=list)
    quality: dict[str, float] | None = None  # recent online completion per policy
    quality_all: dict[str, float] | None = None
    quality_live: dict[str, float] | None = None  # the audience's traffic only
    shift_at: float | None = None  # wall time of the interest shift
    new_videos_at: float | None = None
    users: dict[str, UserView] = field(default_factory=dict)
    missing_parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    history_total: int = 0
    history_sent: int = 0
    live_ends: float | None = None
    versions_seen: set[str] = field(default_factory=set)  # model versions that answered

    def freshness(self, q: float) -> float | None:
        return float(np.percentile(list(self.freshness_ms), q)) if self.freshness_ms else None

    def see_version(self, version: str, now: float) -> None:
        """Track the serving version; the first answer of each model version after the first
        model version is a promotion (answers of the old version still in flight during a swap
        do not count twice)."""
        if version != "fallback" and version not in self.versions_seen:
            if self.versions_seen:
                self.promotions.append((now, version))
            self.versions_seen.add(version)
        self.model_version = version


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _fmt(x: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def render(state: LiveState, now: float | None = None) -> Group:
    now = time.time() if now is None else now
    head = Table.grid(padding=(0, 2))
    for _ in range(4):
        head.add_column()
    phase = state.phase
    if state.phase == "history" and state.history_total:
        phase += f" {state.history_sent:,}/{state.history_total:,}"
    if state.phase == "live" and state.live_ends:
        phase += f" ({max(0.0, state.live_ends - now):.0f}s left)"
    head.add_row("phase", f"[bold]{phase}[/]", "elapsed", f"{now - state.started:.0f}s")
    head.add_row("events/s", f"{state.events.per_s(now):.0f} ({state.events.total:,})",
                 "recommendations/s", f"{state.recs.per_s(now):.0f} ({state.recs.total:,})")
    lags = f"{_fmt(state.ingest_lag, 'd')} / {_fmt(state.recommend_lag, 'd')}"
    head.add_row("lag ingest / recommend", lags,
                 "freshness p50 / p99", f"{_fmt(state.freshness(50))} / {_fmt(state.freshness(99))} ms")
    promos = ", ".join(f"{v} at {clock(t)}" for t, v in state.promotions[-3:]) or "none yet"
    head.add_row("serving model", state.model_version, "promotions", promos)
    head.add_row("fallbacks", f"{state.fallbacks:,}", "shift / new videos",
                 f"{clock(state.shift_at) if state.shift_at else '-'} / "
                 f"{clock(state.new_videos_at) if state.new_videos_at else '-'}")
    quality = Table(title="online completion (mean true P(complete) of the top-k)", title_justify="left")
    quality.add_column("")
    for policy in POLICIES:
        quality.add_column(policy, justify="right")
    for label, q in (("recent", state.quality), ("live audience", state.quality_live),
                     ("whole run", state.quality_all)):
        quality.add_row(label, *[_fmt((q or {}).get(p), ".3f") for p in POLICIES])
    users = Table(title="a few users", title_justify="left")
    users.add_column("user")
    users.add_column("latest action")
    users.add_column("latest recommendations (best first)")
    shown = sorted(state.users.values(), key=lambda u: -max(u.action_at, u.recommended_at))
    for u in shown[:USERS_SHOWN]:
        users.add_row(u.user_id, f"{clock(u.action_at)} {u.action}" if u.action else "-",
                      (f"{clock(u.recommended_at)} [{u.model_version}] " + " | ".join(u.recommended[:3]))
                      if u.recommended else "-")
    parts: list[Any] = [Panel(head, title="semirec demo")]
    if state.missing_parts:
        parts.append(f"[yellow]missing parts:[/] {'; '.join(state.missing_parts)}")
    parts += [quality, users]
    parts += [f"[dim]{n}[/]" for n in state.notes[-3:]]
    return Group(*parts)
