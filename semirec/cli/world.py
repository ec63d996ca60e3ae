"""``semirec world``: write a data world to a folder (events.jsonl, items.jsonl, truth, world.json)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click

from semirec.worlds.config import PRESETS

OUT = click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                   help="Folder to write (created if needed; existing files are replaced).")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")


def _finish(world: Any, out: Path, started: float, as_json: bool) -> None:
    from semirec.worlds.files import write_world
    from semirec.worlds.stats import probe_aucs, summary

    built = time.perf_counter() - started
    figures = {**summary(world), "probe_auc": probe_aucs(world)}
    files = write_world(world, out, figures)
    report = {**figures, "seconds_to_build": round(built, 3), "files": [str(f) for f in files]}
    if as_json:
        print(json.dumps(_nan_to_none(report)))  # NaN (e.g. no product domain) -> null
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{world.name} -> {out}", title_justify="left", show_header=False)
    for key, value in report.items():
        if key == "files":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key, str(value))
    Console().print(table)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return obj


@click.group()
def world() -> None:
    """Generate or import a data world (see docs/worlds.md)."""


@world.command()
@click.option("--size", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True,
              help="Preset sizes; the options below override single fields.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--users", type=click.IntRange(1), default=None)
@click.option("--videos", type=click.IntRange(10), default=None)
@click.option("--products", type=click.IntRange(10), default=None)
@click.option("--days", type=click.IntRange(1), default=None)
@click.option("--link", type=click.FloatRange(0, 1), default=None,
              help="Cross-domain link of video to product tastes (preset 0.7).")
@click.option("--drift", type=click.FloatRange(0, 1), default=None,
              help="How far interests move by the last day (preset 0 = none).")
@OUT
@AS_JSON
def generate(size: str, seed: int, out: Path, as_json: bool, **overrides: Any) -> None:
    """Generate the two-domain world (deterministic per seed and options)."""
    from semirec.worlds import load_world

    started = time.perf_counter()
    _finish(load_world("world", seed=seed, size=size, **overrides), out, started, as_json)


@world.command()
@OUT
@AS_JSON
def ml100k(out: Path, as_json: bool) -> None:
    """Convert MovieLens-100k from the installed recbole wheel (do not commit the output)."""
    from semirec.worlds import load_world

    started = time.perf_counter()
    _finish(load_world("ml100k"), out, started, as_json)
