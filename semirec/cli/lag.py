"""``semirec lag``: consumer lag as a table, JSON, a live watch, or a Prometheus exporter."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

import click
import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from semirec.core.faults import classify
from semirec.core.lag import (
    GroupTarget,
    LagError,
    LagExporter,
    PartitionLag,
    measure_targets,
    report,
    resolve_targets,
    total_lag,
)
from semirec.core.settings import Settings

Key = tuple[str, str, int]
Sample = tuple[float, dict[Key, int]]  # (monotonic time, lag per group/topic/partition)


def _trend(now: Sample, before: Sample | None, key: Key | None) -> str:
    """Change of lag since the previous sample, e.g. ``↑ +120 (12.0/s)``."""
    if before is None:
        return ""
    t1, lags1 = now
    t0, lags0 = before
    if key is None:
        delta = sum(lags1.values()) - sum(lags0.values())
    elif key in lags0:
        delta = lags1[key] - lags0[key]
    else:
        return ""
    arrow = "↑" if delta > 0 else "↓" if delta < 0 else "→"
    rate = delta / max(t1 - t0, 1e-9)
    return f"{arrow} {delta:+d} ({rate:+.1f}/s)"


def render(rows: Sequence[PartitionLag], now: Sample | None = None,
           before: Sample | None = None) -> Table:
    """The kafka-consumer-groups columns plus lag seconds (and a trend column when watching)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                 "LAG-SECONDS", "CONSUMER-ID", "HOST", "CLIENT-ID"):
        table.add_column(name, justify="left" if name in ("GROUP", "TOPIC", "CONSUMER-ID",
                                                          "HOST", "CLIENT-ID") else "right")
    if now is not None:
        table.add_column("TREND", justify="right")
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        age = "-" if r.lag_seconds is None else f"{r.lag_seconds:.1f}"
        cells = [r.group, r.topic, str(r.partition), committed, str(r.log_end), str(r.lag), age,
                 r.consumer_id or "-", r.host or "-", r.client_id or "-"]
        if now is not None:
            cells.append(_trend(now, before, (r.group, r.topic, r.partition)))
        table.add_row(*cells)
    ages = [r.lag_seconds for r in rows if r.lag_seconds is not None]
    total = ["TOTAL", "", "", "", "", str(total_lag(rows)), f"{max(ages, default=0.0):.1f}",
             "", "", ""]
    if now is not None:
        total.append(_trend(now, before, None))
    table.add_section()
    table.add_row(*total, style="bold")
    return table


def _console() -> Console:
    """A console that never truncates the table when output goes to a pipe or file."""
    console = Console()
    if not console.is_terminal:
        console.width = 200
    return console


def _sample(rows: Sequence[PartitionLag]) -> Sample:
    return time.monotonic(), {(r.group, r.topic, r.partition): r.lag for r in rows}


async def _measure(settings: Settings, groups: list[str],
                   topics: list[str]) -> tuple[list[GroupTarget], list[PartitionLag]]:
    targets = await resolve_targets(settings, groups, topics)
    return targets, await measure_targets(settings, targets)


def _document(targets: Sequence[GroupTarget], rows: Sequence[PartitionLag]) -> dict[str, object]:
    return {**report(rows), "groups": [{"group": t.group, "topics": t.topics, "exists": t.exists}
                                       for t in targets]}


async def _watch(settings: Settings, groups: list[str], topics: list[str], every: float,
                 as_json: bool) -> None:
    console = _console()
    before: Sample | None = None
    live = None if as_json or not console.is_terminal else Live(console=console, auto_refresh=False)
    try:
        if live:
            live.start()
        while True:
            targets, rows = await _measure(settings, groups, topics)
            now = _sample(rows)
            if as_json:
                doc = {"ts": time.time(), **_document(targets, rows)}
                sys.stdout.write(orjson.dumps(doc).decode() + "\n")
                sys.stdout.flush()
            elif live:
                live.update(render(rows, now, before), refresh=True)
            else:
                console.print(render(rows, now, before))
            before = now
            await asyncio.sleep(every)
    finally:
        if live:
            live.stop()


async def _serve(settings: Settings, groups: list[str], topics: list[str], port: int,
                 every: float) -> None:
    from prometheus_client import CollectorRegistry

    from semirec.core.metrics import Health, start_http

    exporter = LagExporter(settings, groups, topics, interval_s=every)
    registry = CollectorRegistry()
    registry.register(exporter.collector)
    health = Health()
    health.add_check("lag", lambda: exporter.collector.up == 1)
    server = await start_http(port, registry=registry, health=health)
    click.echo(f"lag exporter: {server.url}/metrics (groups {', '.join(groups) or 'ours'}; "
               f"topics {', '.join(topics) or 'those of each group'}; every {every:g}s)",
               err=True)
    try:
        await exporter.run()
    finally:
        await server.close()


@click.command()
@click.option("--group", "-g", "groups", multiple=True, metavar="G",
              help="Consumer group (repeatable). Default: our groups (ingest's: "
                   "SEMIREC_CONSUMER_GROUP or SEMIREC_INGEST_GROUP, and any group named semirec* "
                   "that the broker lists).")
@click.option("--topic", "-t", "topics", multiple=True, metavar="T",
              help="Topic (repeatable). Default: every topic the group has committed offsets for "
                   "(for ingest's group before its first commit: the events topic).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"partitions": [...], "total_lag": N}; one line per sample with --watch.')
@click.option("--watch", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Measure again every SECONDS, with a lag-trend column, until Ctrl-C.")
@click.option("--serve", type=click.IntRange(0, 65535), metavar="PORT",
              help="Run a Prometheus exporter on PORT (/metrics, /healthz, /readyz); "
                   "measures every --watch seconds (default 15).")
def lag(groups: tuple[str, ...], topics: tuple[str, ...], as_json: bool, watch: float | None,
        serve: int | None) -> None:
    """Consumer lag per group/topic/partition: committed offset, log-end offset, lag in
    messages and in seconds (age of the oldest unconsumed message).

    Exact on Apache Kafka and on Tansu: the log end is the high watermark of a fetch, never
    ListOffsets. A partition the group never committed counts everything retained as lag
    (CURRENT-OFFSET shows '-').
    """
    settings = Settings.from_env()
    chosen_groups, chosen_topics = list(groups), list(topics)
    try:
        if serve is not None:
            asyncio.run(_serve(settings, chosen_groups, chosen_topics, serve, watch or 15.0))
        elif watch:
            asyncio.run(_watch(settings, chosen_groups, chosen_topics, watch, as_json))
        else:
            targets, rows = asyncio.run(_measure(settings, chosen_groups, chosen_topics))
            if as_json:
                click.echo(orjson.dumps(_document(targets, rows)).decode())
            elif rows:
                _console().print(render(rows))
            for t in targets:
                if not t.exists and t.topics:
                    click.echo(f"Note: consumer group '{t.group}' has committed nothing yet: its lag "
                               "counts everything retained.", err=True)
            absent = [t.group for t in targets if not t.exists and not t.topics]
            if absent:
                raise click.ClickException("; ".join(f"consumer group '{g}' does not exist"
                                                     for g in absent))
    except (LagError, OSError) as exc:
        if classify(exc) is not None:
            raise  # an outage or bad credentials: one line and its exit code (semirec.cli)
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass
