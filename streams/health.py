"""Serve the shared metrics and health endpoints (:mod:`semirec.metrics`) from a faust worker.

Readiness: the worker has joined its consumer group, no rebalance is under way, and Redis
answers PING. Liveness: the worker's event loop answers HTTP.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from semirec.metrics import Health, bind, start_http
from semirec.settings import Settings


def serve_health(app: Any, settings: Settings) -> Health:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``settings.metrics_port`` once the app
    runs; the port is bound now, so a taken port fails before the worker starts."""
    sock = bind(settings.metrics_port)
    health = Health()
    redis_client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=1.0)
    # joined its group (a first rebalance happened) and no rebalance is under way; not the
    # generation id, which starts at 0 on Tansu and at 1 on Kafka
    health.add_check("kafka", lambda: app.rebalancing_count > 0 and not app.rebalancing)
    health.add_check("redis", redis_client.ping)

    @app.task
    async def metrics_http() -> None:
        await start_http(sock=sock, health=health)

    return health
