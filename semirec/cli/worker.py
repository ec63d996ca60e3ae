"""``semirec worker``: run stream agents in one faust worker process."""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from collections.abc import Sequence
from dataclasses import replace

import click

from semirec.core.settings import Settings

# agent name -> "module:register function" (register(app, settings) attaches the agent and
# returns nothing); topics(settings) -> {topic: partitions} the agent needs.
AGENT_PLUGINS: dict[str, tuple[str, str]] = {
    "ingest": ("semirec.streams.ingest:register_ingest", "semirec.core.kafka:ingest_topics"),
    "catalog": ("semirec.streams.catalog:register_catalog", "semirec.streams.catalog:catalog_topics"),
    "recommend": ("semirec.streams.recommend:register_recommend", "semirec.core.kafka:serving_topics"),
}


# The ingest agent allocates a few container objects per event (decoded events, sequence lists,
# samples) and keeps many long-lived ones (the decoded-state cache): with CPython's default
# thresholds (700, 10, 10) the cyclic GC ran often and re-scanned that cache, ~25% of the
# worker's CPU (docs/ingest.md). Reference counting frees everything these agents make; the
# cyclic collector is only a safety net for cycles, so it can run far less often.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cycles less often, and never re-scan what exists before the worker starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# mode's Worker (under faust's) closes its event loop only after a "sentinel" task that sleeps a
# fixed 1 s, once every task has finished or been cancelled: a second added to every stop
# (rolling restarts, failovers, the demo's parts, every test that stops a worker). A few loop
# turns are what cancelled tasks need to run their cleanup; this is the time they get instead.
SHUTDOWN_GRACE_S = 0.1


def worker_class() -> type:
    """faust's ``Worker`` with :data:`SHUTDOWN_GRACE_S` as its last wait before the loop closes."""
    import faust.worker

    class Worker(faust.worker.Worker):  # the same name in the logs ("[^Worker]: Ready")
        async def _sentinel_task(self) -> None:  # mode.Worker's hook, pinned with faust
            await asyncio.sleep(SHUTDOWN_GRACE_S)

    return Worker


def settings_for(settings: Settings, agents: Sequence[str]) -> Settings:
    """The settings of a worker running ``agents``: inline hand-over only with both ingest and
    recommend in it; one consumer for all its agents, so one fetch wait: the user-updates hop's
    (``rec_fetch_max_wait_ms``) with the recommendation agent, unless ingest hands changes over
    inline (no such hop: the events' wait, fewer empty fetches; docs/serving.md)."""
    if settings.recommend_inline and not {"ingest", "recommend"} <= set(agents):
        settings = replace(settings, recommend_inline=0)  # nobody to hand changed users to
    if "recommend" in agents and settings.rec_fetch_max_wait_ms and not settings.recommend_inline:
        settings = replace(settings, fetch_max_wait_ms=settings.rec_fetch_max_wait_ms)
    return settings


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@click.command()
@click.option("--agent", "agents", multiple=True, type=click.Choice(sorted(AGENT_PLUGINS)),
              help="Agents to run (repeatable). Default: all.")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics, /healthz, /readyz on PORT. Default: SEMIREC_METRICS_PORT "
                   "(0: off).")
def worker(agents: tuple[str, ...], loglevel: str, metrics_port: int | None) -> None:
    """Run stream agents (default: all) until SIGINT/SIGTERM.

    Reads addresses from SEMIREC_* variables. A worker running one agent joins that agent's
    consumer group (SEMIREC_INGEST_GROUP, SEMIREC_CATALOG_GROUP, SEMIREC_RECOMMEND_GROUP;
    SEMIREC_CONSUMER_GROUP overrides): start more such workers to share the partitions. Topics
    are created if missing; existing ones must have SEMIREC_EVENT_PARTITIONS partitions (else
    exit 78). SEMIREC_INSTANCE_ID (unique per worker) turns on static group membership.
    With SEMIREC_RECOMMEND_INLINE=1 a worker running ingest and recommend ranks the users ingest
    changed in the same process (no user-updates hop).
    """
    from semirec.core.kafka import ensure_topics
    from semirec.streams.app import create_app
    from semirec.streams.runtime import runtime_of

    settings = Settings.from_env()
    if metrics_port is not None:
        settings = replace(settings, metrics_port=metrics_port)
    chosen = agents or tuple(AGENT_PLUGINS)
    settings = settings_for(settings, chosen)
    topics: dict[str, int] = {}
    for name in chosen:
        topics.update(_load(AGENT_PLUGINS[name][1])(settings))
    asyncio.run(ensure_topics(settings, topics, check=True))
    app = create_app(settings, app_id=settings.group_for(chosen))
    if settings.metrics_port:
        from semirec.streams.health import serve_health

        try:
            serve_health(app, settings)
        except OSError as exc:
            raise click.ClickException(str(exc)) from exc
    for name in chosen:
        _load(AGENT_PLUGINS[name][0])(app, settings)
    tune_gc()
    try:
        worker_class()(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        # an agent stopped the worker on a fatal fault (semirec.streams.fatal)
        if (fault := runtime_of(app).fatal_fault) is not None:
            click.echo(f"Error: {fault.message}", err=True)
            sys.exit(fault.exit_code)
