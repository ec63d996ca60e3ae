"""semirec.sim.audience: simulated users on a real generated world, without services."""

from __future__ import annotations

import numpy as np
import pytest

from semirec.core.contracts import validate_event
from semirec.sim.audience import Audience, PositionChoice
from semirec.worlds import load_world
from semirec.worlds.live import LiveWorld

NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def world():
    return load_world("world", seed=4, users=60)


def _audience(world, seed: int = 0, **kw) -> Audience:
    end = world.events[-1].ts
    return Audience(LiveWorld(world, seed=seed), offset=NOW - end - 60, seed=seed, **kw)


def _rec(user: str, items: list[str], *, event_id=None, request_id=None) -> dict:
    return {"user_id": user, "event_id": event_id, "request_id": request_id,
            "items": [{"item_id": i, "score": 1.0, "source": "content"} for i in items]}


def test_position_choice_weights_and_expectation() -> None:
    choice = PositionChoice(slate_size=4)
    w = choice.weights(10)
    assert len(w) == 4 and w.sum() == pytest.approx(1) and np.all(np.diff(w) < 0)
    rng = np.random.default_rng(0)
    picks = np.bincount([choice.pick(10, rng) for _ in range(20_000)], minlength=4) / 20_000
    np.testing.assert_allclose(picks, w, atol=0.015)
    assert choice.expected([1.0, 0.0, 0.0, 0.0, 1.0]) == pytest.approx(w[0])


def test_a_session_clicks_then_watches_from_its_recommendations(world) -> None:
    aud = _audience(world, wait_s=5.0)
    user = world.user_ids()[3]
    out = aud.start_session(user, NOW)
    assert out.events and not out.requests
    for e in out.events:
        assert validate_event(e.to_dict()) == e and e.user_id == user and e.domain == "product"
    last = out.events[-1].event_id
    videos = world.item_ids("video")[:12]
    assert aud.on_recommendation(_rec(user, videos, event_id="someone-else"), NOW + 1).events == []
    assert aud.on_recommendation(_rec("u99999", videos, event_id=last), NOW + 1).events == []
    reaction = aud.on_recommendation(_rec(user, ["p00001", *videos], event_id=last), NOW + 1)
    (watch,) = reaction.events
    assert watch.domain == "video" and watch.item_id in videos[:10] and watch.ts == NOW + 1
    validate_event(watch.to_dict())
    session = aud.sessions.get(user)
    if session is not None:  # more watches to go
        if watch.complete:
            assert session.awaiting == watch.event_id and not reaction.requests
        else:
            (req,) = reaction.requests
            assert req["user_id"] == user and session.awaiting == req["request_id"]
    assert aud.last_action[user].kind == "watch"


def test_late_answers_turn_into_a_request_then_end_the_session(world) -> None:
    aud = _audience(world, wait_s=2.0)
    user = world.user_ids()[5]
    aud.start_session(user, NOW)
    assert aud.tick(NOW + 1).requests == []
    (req,) = aud.tick(NOW + 2.5).requests
    assert req == {"request_id": req["request_id"], "user_id": user, "k": 10}
    assert aud.sessions[user].by_request
    assert aud.tick(NOW + 5).requests == [] and user not in aud.sessions
    assert aud.counts["sessions_unanswered"] == 1


def test_deterministic_under_a_seed(world) -> None:
    def run(seed: int) -> list[dict]:
        aud = _audience(world, seed=seed)
        events = aud.start_sessions(10, NOW).events
        for user, s in list(aud.sessions.items()):
            events += aud.on_recommendation(_rec(user, world.item_ids("video")[:10],
                                                 event_id=s.awaiting), NOW + 1).events
        return [e.to_dict() for e in events]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_completion_follows_the_truth_of_what_was_recommended(world) -> None:
    """Users shown the truly best videos finish more than users shown the worst, as the truth says."""
    videos = world.item_ids("video")

    def completion(best: bool) -> tuple[float, float]:
        aud = _audience(world, seed=3, watches_per_session=1.0)
        for i in range(200):
            now = NOW + i
            for user in world.user_ids()[:20]:
                if user not in aud.sessions:
                    aud.start_session(user, now)
                s = aud.sessions[user]
                p = world.item_probs(user, videos, aud.world_ts(now))
                order = np.argsort(-p if best else p)[:10]
                aud.on_recommendation(_rec(user, [videos[j] for j in order], event_id=s.awaiting), now)
        st = aud.stats()
        return st["completion_rate"], st["mean_pick_p"]

    good, good_p = completion(True)
    bad, bad_p = completion(False)
    assert good > bad + 0.3
    # 4,000 Bernoulli draws: the rate is within 4 standard errors of the true mean
    assert abs(good - good_p) < 4 * np.sqrt(0.25 / 4000)
    assert abs(bad - bad_p) < 4 * np.sqrt(0.25 / 4000)


def test_the_demo_offset_keeps_serving_hour_blocks_on_the_world_session_hours(world) -> None:
    """World and wall time share hour boundaries: a watch and a request in the same world hour
    (the session's intent) are in serving's age-0 block, whatever minute the demo starts at."""
    from semirec.core.sequences import Entry
    from semirec.sim.loop import hour_aligned_offset

    end = world.events[-1].ts
    for now in (NOW, NOW + 59.5, NOW + 1799.0, NOW + 3599.0, NOW + 3600.0):
        offset = hour_aligned_offset(now, end)
        assert offset % 3600 == 0
        assert now - 1.0 - 3600 < end + offset <= now - 1.0  # the history ends before the stream starts
        audience = Audience(LiveWorld(world), offset=offset)
        truth = audience.live.truth
        for e in world.events[-200::20]:
            wall = e.ts + offset
            hour_start = truth.cfg.start_ts + (e.ts - truth.cfg.start_ts) // 3600 * 3600
            for request_world in (hour_start, hour_start + 3599.9):
                assert Entry(int(wall * 1000), e.item_id).hour() == int((request_world + offset) // 3600)
                assert audience.world_ts(request_world + offset) == pytest.approx(request_world)
            assert Entry(int(wall * 1000), e.item_id).hour() != int((hour_start + 3600 + offset) // 3600)
