"""The README's main job, `semirec demo`, end to end on its own embedded stack."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_reaches_lag_zero_with_every_user_and_dead_letter(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "semirec", "demo", "--users", "40", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["malformed_published"] == 3
    assert summary["dead_letters"] == 3
    assert summary["users_with_state"] == 40
    assert summary["events_published"] > 40
    sample = summary["sample"]
    assert sample["video"] or sample["product"]
    hours = [e["hour"] for e in sample["video"]]
    assert hours == sorted(hours)
