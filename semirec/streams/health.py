"""Serve the shared metrics and health endpoints (:mod:`semirec.core.metrics`) from a faust worker.

Readiness: the worker has joined its consumer group, no rebalance is under way, Redis answers
PING, and every agent is running (not crashed or being restarted by faust, not stopped by an
unexpected error, no batch in flight longer than ``SEMIREC_BATCH_STUCK_S``). Liveness: the
worker's event loop answers HTTP and no agent has been stopped by an unexpected error.
"""

from __future__ import annotations

from typing import Any

from semirec.core.metrics import Health, bind, start_http
from semirec.core.redis_client import redis_client
from semirec.core.settings import Settings
from semirec.streams.runtime import runtime_of


def agents_running(app: Any, stuck_after_s: float) -> bool:
    """Every faust agent has live actors (none crashed, i.e. none waiting for faust's restart),
    every batch agent runs, none was stopped by an unexpected error, and none has had a batch
    in flight too long."""
    for agent in app.agents.values():
        # the supervisor's current actors (a crashed one is replaced there when restarted)
        actors = list(getattr(agent.supervisor, "_services", None) or ())
        if not actors or any(a.crashed or not a.started for a in actors):
            return False
    runtime = runtime_of(app)
    if not all(a.running for a in runtime.batch_agents):
        return False
    return all(w.failed is None and w.stuck_for() < stuck_after_s for w in runtime.watches.values())


def serve_health(app: Any, settings: Settings) -> Health:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``settings.metrics_port`` once the app
    runs; the port is bound now, so a taken port fails before the worker starts."""
    sock = bind(settings.metrics_port)
    health = Health()
    redis = redis_client(settings.redis_url, socket_timeout=1.0)
    # joined its group (a first rebalance happened) and no rebalance is under way; not the
    # generation id, which starts at 0 on Tansu and at 1 on Kafka
    health.add_check("kafka", lambda: app.rebalancing_count > 0 and not app.rebalancing)
    health.add_check("redis", redis.ping)
    health.add_check("agents", lambda: agents_running(app, settings.batch_stuck_s))
    runtime_of(app).crash_hooks.append(health.fail)  # an agent stopped by an unexpected error: /healthz fails

    @app.task
    async def metrics_http() -> None:
        await start_http(sock=sock, health=health)

    return health
