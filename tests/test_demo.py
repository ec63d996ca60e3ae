"""The README's main job, `semirec demo`, end to end on its own embedded stack (a short run).

It runs as far as the landed parts allow: a part that is not built yet must be named in
``missing_parts`` (and then the run may not exit 0); everything else is checked as the demo's
own checks do. Whether SEMI beats popularity on this tiny, briefly trained world is reported,
not asserted (the full-size run is the claim: docs/demo.md). The encoder is the untrained
fusion here (``--no-pretrain-encoder``): pre-training one would double the test's time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from semirec.cli import VERBS
from semirec.cli.worker import AGENT_PLUGINS
from tests.process_utils import Job, descendants, wait_gone

POLICIES = {"semirec", "similarity", "popularity", "random", "oracle"}


@pytest.mark.slow
def test_demo_runs_the_closed_loop_and_measures_it(tmp_path) -> None:
    report = tmp_path / "report"
    env = {**os.environ, "SEMIREC_DEMO_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(
        [sys.executable, "-m", "semirec", "demo", "--size", "tiny", "--users", "40", "--minutes", "0.4",
         "--rate", "500", "--sessions-per-s", "2", "--new-videos", "10", "--no-pretrain-encoder", "--json",
         "--report", str(report)],
        capture_output=True, text=True, timeout=400, env=env)
    assert res.stdout.strip(), res.stderr[-3000:]
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode == (0 if s["ok"] else 1), res.stderr[-3000:]
    checks = s["checks"]
    for name in ("every_event_ingested", "every_active_user_recommended", "lag_back_to_zero",
                 "nothing_crashed"):
        assert checks[name], (name, s)
    assert s["error"] is None and s["crashed"] == []
    assert s["events_ingested"] == s["events_published"] > s["history_events"] > 40
    assert s["users_active"] == s["users_recommended"] > 0
    # the missing parts are exactly the ones not built yet
    assert any("trainer" in m for m in s["missing_parts"]) == ("trainer" not in VERBS)
    assert any("Triton" in m for m in s["missing_parts"]) == ("model" not in VERBS)
    assert "recommend" in AGENT_PLUGINS
    # online quality: the five policies on the same candidates; the oracle bounds them all
    for key in ("online_completion", "online_completion_after_shift", "online_completion_live",
                "online_completion_live_before_shift", "online_completion_live_after_shift"):
        q = s[key]
        assert set(q) == POLICIES, key
        assert all(0 < v < 1 for v in q.values())
        assert q["oracle"] >= max(v for p, v in q.items() if p != "oracle")
    live = s["recommendations_scored_live"]
    assert 0 < live["all"] < s["recommendations_scored"]  # the history replay is not live
    assert live["all"] == live["before_shift"] + live["after_shift"] >= live["first_minute_after_shift"] > 0
    assert s["recommendations"] >= s["users_active"]
    assert s["freshness_p99_ms"] is not None and s["freshness_p99_ms"] > 0
    assert s["audience"]["watches"] > 0 and s["audience"]["sessions"] > 0
    assert isinstance(s["promotions"], int) and isinstance(s["fallbacks"], int)
    for name in ("index.html", "summary.json", "throughput.png", "lag.png", "freshness.png",
                 "completion.png", "completion_live.png"):
        assert (report / name).is_file(), name


# the cheapest demo that reaches every agent: a tiny world, no ranker (so no trainer), no encoder
CHEAP = ["demo", "--size", "tiny", "--users", "10", "--rate", "2000", "--sessions-per-s", "1",
         "--new-videos", "0", "--no-train", "--no-pretrain-encoder", "--json"]
AGENT_LINES = {"stopped ingest worker", "stopped catalog worker", "stopped recommend worker"}
STACK_LINES = ["stopped tritonserver", "stopped redis-server", "stopped Tansu broker"]


def _assert_stopped_in_order(job: Job, seconds: float, pgids: set[int], cache: Path) -> None:
    """Within 10 s, one line per part (the agents, then Triton, redis, the broker), no traceback
    (in the output or the agents' logs), nothing left of any part's process group."""
    assert seconds < 10, job.text
    assert "Traceback" not in job.text
    assert "Unclosed" not in job.text  # the loop's Kafka clients closed before the broker stops
    stopped = [ln.split(" (")[0] for ln in job.err if re.match(r"(stopped|killed|exited) ", ln)]
    assert set(stopped[:3]) == AGENT_LINES and stopped[3:] == STACK_LINES, job.text
    for log in cache.glob("runs/*/*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log
    assert not wait_gone(pgids), "processes left behind"


@pytest.mark.slow
def test_ctrl_c_in_the_run_stops_agents_then_the_stack(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    job = Job([*CHEAP, "--minutes", "0.5", "--report", str(tmp_path / "report")],
              {**os.environ, "SEMIREC_DEMO_CACHE": str(cache)})
    job.wait_for(r"^\d\d:\d\d:\d\d [\w ]+: events", job.err, timeout=300)  # 10 s into the loop
    pgids = {job.proc.pid, *descendants(job.proc.pid)}
    seconds = job.ctrl_c(timeout=30)
    assert job.proc.returncode == 130, job.text
    _assert_stopped_in_order(job, seconds, pgids, cache)


@pytest.mark.slow
def test_ctrl_c_with_keep_stops_agents_then_the_stack(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    job = Job([*CHEAP, "--minutes", "0.1", "--keep", "--report", str(tmp_path / "report")],
              {**os.environ, "SEMIREC_DEMO_CACHE": str(cache)})
    job.wait_for(r"^\{", job.out, timeout=300)  # the summary: the run is over
    job.wait_for(r"Ctrl-C stops everything", job.err, timeout=30)
    assert json.loads(job.out[0])["missing_parts"]  # --no-train: no ranker, no trainer
    pgids = {job.proc.pid, *descendants(job.proc.pid)}
    seconds = job.ctrl_c(timeout=30)
    assert job.proc.returncode in (0, 1), job.text  # the summary's verdict, as without Ctrl-C
    _assert_stopped_in_order(job, seconds, pgids, cache)
