"""CLI verbs: help everywhere, produce validation and counts, user output shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from semirec.cli import VERBS, cli
from tests.conftest import settings_env
from tests.event_script import BASE_TS
from tests.kafka_utils import wait_committed
from tests.workers import running_worker


def verbs_and_subcommands() -> list[list[str]]:
    out = []
    for name in VERBS:
        cmd = cli.get_command(None, name)  # type: ignore[arg-type]
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


@pytest.mark.parametrize("argv", verbs_and_subcommands(), ids=" ".join)
def test_every_verb_has_help(argv: list[str]) -> None:
    res = CliRunner().invoke(cli, [*argv, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def run(settings, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semirec", *argv], input=stdin, text=True,
                          capture_output=True, env=settings_env(settings), timeout=120)


async def test_produce_then_user(settings, redis_client, tmp_path) -> None:
    lines = []
    for i in range(60):
        lines.append(json.dumps({"event_id": f"e{i}", "user_id": "alice", "item_id": f"v{i}",
                                 "domain": "video", "action": "watch", "ts": BASE_TS + 600 * i,
                                 "complete": True}))
    lines.append(json.dumps({"event_id": "p", "user_id": "alice", "item_id": "p1",
                             "domain": "product", "action": "click",
                             "ts": "2023-11-14T22:13:20Z"}))
    lines += ["{broken", json.dumps({"event_id": "x", "user_id": "alice"}), ""]
    res = run(settings, "produce", "--json", "-", stdin="\n".join(lines))
    assert res.returncode == 1, res.stderr  # some lines were rejected
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 61 and summary["rejected"] == 2
    assert summary["rejected_by_reason"] == {"undecodable": 1, "missing_field": 1}
    assert [r["line"] for r in summary["rejects"]] == [62, 63]

    with running_worker(settings, tmp_path / "worker.log") as proc:
        await wait_committed(settings, 61, proc=proc)

    res = run(settings, "user", "alice", "--json")
    assert res.returncode == 0, res.stderr
    view = json.loads(res.stdout)
    assert view["user_id"] == "alice"
    assert [e["item_id"] for e in view["video"]] == [f"v{i}" for i in range(10, 60)]
    assert view["video"][0]["hour"] == (BASE_TS + 6000) // 3600
    assert view["product"] == [{"item_id": "p1", "hour": BASE_TS // 3600}]

    human = run(settings, "user", "alice")
    assert "alice: video (50)" in human.stdout
    assert json.loads(res.stdout)["found"] is True
    nobody = run(settings, "user", "nobody", "--json")
    assert nobody.returncode == 67  # EX_NOUSER: distinguishable from a user with state
    assert json.loads(nobody.stdout) == {"user_id": "nobody", "found": False, "video": [],
                                         "product": []}
    human = run(settings, "user", "nobody")
    assert human.returncode == 67 and "no state for user 'nobody'" in human.stderr


def test_the_demo_stops_on_sigterm_and_sighup_but_leaves_an_ignored_one_ignored() -> None:
    """`nohup semirec demo --keep &`: closing the terminal (SIGHUP, ignored by nohup) must not
    stop the stack; SIGTERM still stops it as Ctrl-C does."""
    import signal

    from semirec.cli.demo import interrupt_on

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        interrupt_on(signal.SIGTERM, signal.SIGHUP)
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        interrupt_on(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.default_int_handler
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
