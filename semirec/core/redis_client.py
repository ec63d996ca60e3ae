"""Every Redis client semirec builds comes from here: the one place where the kind of client is
chosen from the URL (a Redis Cluster client will be chosen here; not supported yet)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from semirec.core.faults import FatalError, Fault
from semirec.core.urls import CLUSTER_UNSUPPORTED, REDIS_CLUSTER_SCHEMES, redact


def _check(url: str) -> None:
    """Refuse what no client here can serve, as a configuration fault (exit 78); anything else
    malformed is left to redis-py's own URL parser (classified by :mod:`semirec.core.faults`)."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        return
    if scheme in REDIS_CLUSTER_SCHEMES:
        raise FatalError(Fault("config", f"{redact(url)}: {CLUSTER_UNSUPPORTED} (SEMIREC_REDIS_URL "
                                         "must be a redis:// or rediss:// URL of one server)"))


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client of the Redis at ``url``; ``options`` are redis-py's (timeouts,
    ``decode_responses``, ``health_check_interval``...)."""
    _check(url)
    return aioredis.Redis.from_url(url, **options)


def sync_redis_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client of the Redis at ``url`` (tools and benchmarks)."""
    _check(url)
    return redis.Redis.from_url(url, **options)
