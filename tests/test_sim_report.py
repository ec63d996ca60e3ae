"""semirec.sim.report and .live: the summary's checks, the report directory, the live view (no services)."""

from __future__ import annotations

import json
import time
from collections import Counter
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from semirec.sim.live import LiveState, Rate, UserView, render
from semirec.sim.loop import LoopResult, Sample
from semirec.sim.quality import QualityLog, Scored, slate_quality
from semirec.sim.report import summarize, write_report

T0 = 1_900_000_000.0


def _quality(semirec: float, pop_first: bool) -> QualityLog:
    log = QualityLog()
    for i in range(40):
        prob = {"a": semirec, "b": 0.3, "c": 0.5}
        q = slate_quality(["a"], list(prob), prob, {"b": 5} if pop_first else {"c": 5}, k=1)
        # the history replay until T0 + 10, then the audience (live); the shift at T0 + 20
        log.add(Scored(T0 + i, T0 + i, "ranker/1" if i < 20 else "ranker/2", False, i >= 20, q,
                       live=i >= 10))
    return log


def _result(ingest_lag: int | None = 0) -> LoopResult:
    r = LoopResult(offset=0.0, started=T0, live_started=T0 + 10, shift_wall=T0 + 20, shift_world=T0 + 20,
                   new_videos_wall=T0 + 20, ended=T0 + 40, events_published=500, history_events=400,
                   recommendations=300, fallbacks=3, freshness_ms=[10.0, 20.0, 30.0, 200.0],
                   active_users={"u1", "u2"}, users_recommended={"u1", "u2", "u3"},
                   final_ingest_lag=ingest_lag, final_recommend_lag=0,
                   model_versions=Counter({"ranker/1": 150, "ranker/2": 150}),
                   fallback_reasons=Counter({"triton_error": 1, "breaker_open": 2}))
    r.timeline = [Sample(T0 + i, 12 * i, 7 * i, max(0, 20 - i), 0, 15.0, 80.0) for i in range(40)]
    return r


def _state() -> LiveState:
    state = LiveState(started=T0)
    state.see_version("fallback", T0)
    state.see_version("ranker/1", T0 + 1)
    state.see_version("ranker/2", T0 + 25)
    state.see_version("ranker/1", T0 + 26)  # in flight during the swap: not a promotion
    state.see_version("ranker/2", T0 + 27)
    return state


AUDIENCE = SimpleNamespace(stats=lambda: {"sessions": 3})


def test_summary_holds_the_contract_keys_and_checks() -> None:
    s = summarize(_result(), _quality(0.9, True), AUDIENCE, _state(), missing=[], crashed=[],
                  error=None, started=T0)
    assert set(s["online_completion"]) == {"semirec", "similarity", "popularity", "random", "oracle"}
    assert s["online_completion"]["semirec"] == pytest.approx(0.9)
    assert s["online_completion"]["popularity"] == pytest.approx(0.3)
    assert s["online_completion_after_shift"]["random"] == pytest.approx((0.9 + 0.3 + 0.5) / 3, abs=1e-4)
    assert s["promotions"] == 1 and s["fallbacks"] == 3
    assert s["fallbacks_by_reason"] == {"triton_error": 1, "breaker_open": 2}
    assert s["freshness_p99_ms"] == pytest.approx(194.9, abs=0.1)
    assert s["events_ingested"] == 500
    assert s["ok"] and all(s["checks"].values())
    assert s["online_completion_per_model_version"]["ranker/2"]["recommendations"] == 20
    assert s["recommendations_scored"] == 40
    assert s["recommendations_scored_live"] == {"all": 30, "before_shift": 10, "after_shift": 20,
                                                "first_minute_after_shift": 20}
    for key in ("online_completion_live", "online_completion_live_before_shift",
                "online_completion_live_after_shift", "online_completion_first_minute_after_shift"):
        assert s[key]["semirec"] == pytest.approx(0.9) and s[key]["similarity"] == pytest.approx(
            s[key]["random"]), key  # no similarity scores given: every candidate ties

    bad = summarize(_result(ingest_lag=7), _quality(0.2, True), AUDIENCE, _state(),
                    missing=["trainer: not built"], crashed=["ingest"], error=None, started=T0)
    assert bad["events_ingested"] == 493 and not bad["ok"]
    assert {k for k, v in bad["checks"].items() if not v} == {
        "every_event_ingested", "lag_back_to_zero", "nothing_crashed", "beats_popularity",
        "all_parts_present"}


def test_report_directory_has_the_page_plots_and_summary(tmp_path) -> None:
    quality = _quality(0.9, False)
    s = summarize(_result(), quality, AUDIENCE, _state(), missing=["trainer: not built"], crashed=[],
                  error=None, started=T0)
    page = write_report(tmp_path / "r", s, _result(), quality)
    assert page.name == "index.html"
    text = page.read_text()
    for name in ("throughput", "lag", "freshness", "completion", "completion_live"):
        png = tmp_path / "r" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f'src="{name}.png"' in text
    assert "trainer: not built" in text and "some checks failed" in text
    for column in ("whole run", "live before shift", "live after shift", "live 1st min after shift",
                   "<th>similarity</th>"):
        assert column in text, column
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["promotions"] == 1


def test_rate_counts_over_a_window() -> None:
    rate = Rate(window_s=5)
    for i in range(11):
        rate.add(10, T0 + i)
    assert rate.total == 110
    assert rate.per_s(T0 + 10) == pytest.approx(10.0)
    assert rate.per_s(T0 + 100) == 0.0


def test_live_view_renders_the_state() -> None:
    state = _state()
    state.phase, state.ingest_lag, state.recommend_lag = "live", 12, 0
    for i in range(20):
        state.events.add(50, T0 + i)
        state.recs.add(20, T0 + i)
    state.freshness_ms.extend([10.0, 20.0, 90.0])
    state.quality = {"semirec": 0.61, "popularity": 0.52, "random": 0.45, "oracle": 0.8}
    state.quality_live = {"semirec": 0.47, "similarity": 0.49, "popularity": 0.4, "random": 0.41,
                          "oracle": 0.9}
    state.users["u00007"] = UserView("u00007", "watched Try-on: Love this dress ✓ finished", T0 + 18,
                                     ["Haul: soft sweater", "Review: boots"], T0 + 19, "ranker/2")
    state.missing_parts = ["incremental trainer: not built yet"]
    console = Console(file=StringIO(), width=160, record=True)
    console.print(render(state, now=T0 + 19.5))
    text = console.export_text()
    for needle in ("live", "events/s", "(1,000)", "(400)", "12 / 0", "ranker/2", "0.610", "0.520",
                   "similarity", "live audience", "0.470", "0.490",
                   "u00007", "Love this dress", "Haul: soft sweater", "incremental trainer",
                   "17:46:58"):
        assert needle in text, needle


def test_parts_stop_with_their_children_and_fail_clearly(tmp_path) -> None:
    import os
    import sys
    import time

    from semirec.sim.orchestrator import DemoError, Part

    pidfile = tmp_path / "child.pid"
    script = ("import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    part = Part("sleeper", [sys.executable, "-c", script], dict(os.environ), tmp_path / "s.log")
    part.start()
    part.wait_ready(5)  # no readiness port: alive is ready
    deadline = time.time() + 10
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    part.stop()
    assert not part.alive()
    time.sleep(0.3)
    status = Path(f"/proc/{child}/status")  # gone, or a zombie waiting for init to reap it
    assert not status.exists() or "\tZ" in status.read_text().split("State:")[1].splitlines()[0]

    broken = Part("broken", [sys.executable, "-c", "print('boom: no such agent'); raise SystemExit(3)"],
                  dict(os.environ), tmp_path / "b.log", ready_port=1)
    broken.start()
    with pytest.raises(DemoError, match=r"broken exited with code 3(.|\n)*boom: no such agent"):
        broken.wait_ready(10)


def test_a_part_that_does_not_stop_is_killed_with_its_stacks_in_the_log(tmp_path) -> None:
    """A semirec process (its entry point registers the stack dump) that ignores SIGTERM:
    killed after the timeout, and its threads' stacks, written on SIGUSR1, kept for the report."""
    import os
    import sys

    from semirec.sim.orchestrator import Part

    script = ("import signal, sys, time\n"
              "import semirec.cli\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "def stuck_in_shutdown():\n"
              "    time.sleep(60)\n"
              "sys.argv = ['semirec', '--help']\n"
              "try:\n"
              "    semirec.cli.main()\n"
              "except SystemExit:\n"
              "    print('up', flush=True)\n"
              "stuck_in_shutdown()\n")
    part = Part("stuck", [sys.executable, "-c", script], dict(os.environ), tmp_path / "s.log")
    part.start()
    deadline = time.time() + 30
    while "up" not in part.log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert part.stop(timeout=0.5) == "killed" and not part.alive()
    assert part.hung is not None and "stuck_in_shutdown" in part.hung
    assert "most recent call first" in part.hung


def test_prune_runs_keeps_the_newest(tmp_path) -> None:
    from semirec.sim.orchestrator import prune_runs

    for name in ("20260101T000000", "20260102T000000", "20260103T000000"):
        (tmp_path / name / "models").mkdir(parents=True)
    gone = prune_runs(tmp_path, keep=2)
    assert [p.name for p in gone] == ["20260101T000000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260102T000000", "20260103T000000"]


def test_the_demo_retrains_its_ranker_when_a_default_setting_changes(monkeypatch) -> None:
    from semirec.sim.orchestrator import ranker_cache_key
    from semirec.trainer.nets import configs

    key = ranker_cache_key({"seed": 0}, "fusion-x")
    assert key == ranker_cache_key({"seed": 0}, "fusion-x")
    assert key != ranker_cache_key({"seed": 0}, "fusion-x", quick=False)
    monkeypatch.setattr(configs, "WEIGHT_DECAY", configs.WEIGHT_DECAY / 2)
    assert key != ranker_cache_key({"seed": 0}, "fusion-x")
