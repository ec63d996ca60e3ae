"""``semirec demo``: the whole system live in one command, measured by a simulated audience."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from semirec.sim.orchestrator import DemoOptions


def interrupt_on(*signals: signal.Signals) -> None:
    """These signals stop the demo as Ctrl-C does (KeyboardInterrupt): the parts run in their own
    sessions, so the terminal's signals reach only us and we stop them in order. A signal this
    process was started ignoring stays ignored (``nohup semirec demo --keep &``: closing the
    terminal leaves the stack running)."""
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler)


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    from rich.table import Table

    from semirec.sim.quality import POLICIES
    from semirec.sim.report import COMPLETION_COLUMNS

    table = Table(title="online completion: mean true P(complete) of the top-k (same candidates, "
                        "same moment; whole run = history replay + live audience)", title_justify="left")
    table.add_column("policy")
    for _, col in COMPLETION_COLUMNS:
        table.add_column(col, justify="right")
    for policy in POLICIES:
        row = [((s.get(key) or {}).get(policy)) for key, _ in COMPLETION_COLUMNS]
        table.add_row(policy, *["-" if v is None else f"{v:.3f}" for v in row])
    console.print(table)
    console.print(f"recommendations scored: {s.get('recommendations_scored')}, live "
                  f"{s.get('recommendations_scored_live')}")
    console.print(f"events published {s['events_published']:,}, ingested {s['events_ingested']}; "
                  f"recommendations {s['recommendations']:,} ({s['fallbacks']:,} fallbacks); "
                  f"freshness p50 {s['freshness_p50_ms']} ms, p99 {s['freshness_p99_ms']} ms; "
                  f"promotions {s['promotions']}")
    for name, ok in s["checks"].items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'} {name}")
    for line in s["missing_parts"]:
        console.print(f"  [yellow]missing[/] {line}")
    if s.get("error"):
        console.print(f"[red]error:[/] {s['error']}")
    console.print(f"report: {s['report']}")


@click.command()
@click.option("--users", default=300, show_default=True, type=click.IntRange(10, 100_000),
              help="Users in the generated world.")
@click.option("--minutes", default=3.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Length of the live phase (closed loop) after the history is streamed.")
@click.option("--shift-at", default=1 / 3, show_default="1/3", type=click.FloatRange(0, 1),
              help="When the world's interests shift and the new videos appear, as a fraction of the "
                   "live phase.")
@click.option("--rate", default=200.0, show_default=True, type=click.FloatRange(1, 100_000),
              help="History events published per second.")
@click.option("--sessions-per-s", default=3.0, show_default=True, type=click.FloatRange(0.1, 1000),
              help="Live sessions the audience opens per second.")
@click.option("--new-videos", default=30, show_default=True, type=click.IntRange(0, 1000),
              help="Videos held out of the history and published mid-run.")
@click.option("--size", default="demo", show_default=True, type=click.Choice(["tiny", "demo"]),
              help="World preset for the catalog and history length (tiny: tests).")
@click.option("--seed", default=0, show_default=True)
@click.option("--encoder", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Item-encoder checkpoint (semirec encoders pretrain) for the catalog, the ranker "
                   "and the catalog agent; default: one pre-trained on the catalog (cached).")
@click.option("--no-pretrain-encoder", is_flag=True,
              help="Without --encoder: use the seeded untrained fusion instead of pre-training one.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (default: under the demo cache, printed at the end).")
@click.option("--train-budget", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="The ranker's training budget (cached either way; full takes several minutes).")
@click.option("--no-train", is_flag=True, help="Skip the ranker (recommendations use the fallback).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object last on stdout.")
@click.option("--keep", is_flag=True, help="Leave the stack and agents running until Ctrl-C.")
def demo(users: int, minutes: float, shift_at: float, rate: float, sessions_per_s: float, new_videos: int,
         size: str, seed: int, encoder: Path | None, no_pretrain_encoder: bool,
         report_dir: Path | None, train_budget: str, no_train: bool, as_json: bool, keep: bool) -> None:
    """The whole system live: stack, world, encoders, SEMI on Triton, agents, trainer, and a
    simulated audience whose online completion is measured exactly against the world's truth.

    Exits 0 only if every event was ingested, every active user got recommendations, lag came
    back to 0, nothing crashed, SEMI beat the popularity policy and no part was missing.
    """
    from rich.console import Console

    from semirec.core.stack import StackError
    from semirec.sim.orchestrator import Demo, DemoError

    console = Console(stderr=True)
    opts = DemoOptions(users=users, minutes=minutes, shift_at=shift_at, seed=seed, rate=rate,
                       sessions_per_s=sessions_per_s, new_videos=new_videos, size=size, train=not no_train,
                       report_dir=report_dir, keep=keep, quick=train_budget == "quick",
                       encoder=encoder, pretrain_encoder=not no_pretrain_encoder)
    interrupt_on(signal.SIGTERM, signal.SIGHUP)
    run = Demo(opts, console)
    summary: dict[str, Any] | None = None
    try:
        summary = run.run(live_view=not as_json and console.is_terminal)
        if as_json:
            print(json.dumps(summary, default=str))
        else:
            _print_summary(Console(), summary)
        if keep:
            run.keep_running()
    except (DemoError, StackError) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        console.print("interrupted: stopping the agents and the stack")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C waits too
            signal.signal(sig, signal.SIG_IGN)
        with console.status("stopping agents and the stack"):
            run.stop()
    if summary is None:
        sys.exit(130)
    sys.exit(0 if summary["ok"] else 1)
