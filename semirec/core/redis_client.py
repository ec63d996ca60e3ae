"""Every Redis client semirec builds comes from here: the one place where the kind of client is
chosen from the URL. ``redis://``, ``rediss://``, ``unix://``: one server (the embedded default);
``redis+cluster://`` / ``rediss+cluster://``: a Redis Cluster (redis-py's ``RedisCluster``,
which follows MOVED/ASK redirections and refreshes its slot map after a failover).

Code that must act differently on a cluster (multi-key scripts, MGET across slots) asks
:func:`is_cluster`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as synccluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.retry import Retry

from semirec.core.urls import _split_netloc, cluster_seeds, is_cluster_url

AsyncClient: TypeAlias = aioredis.Redis | aiocluster.RedisCluster
SyncClient: TypeAlias = redis.Redis | synccluster.RedisCluster
# a command redirected or retried after a failover is re-sent up to this many times within one
# call (each with the client's back-off); then the error reaches the caller, whose retry loop
# (semirec.core.faults: transient) takes over
CLUSTER_RETRIES = 5


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (async or blocking)."""
    return isinstance(client, aiocluster.RedisCluster | synccluster.RedisCluster)


def _cluster_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """``RedisCluster`` keyword arguments for a ``redis+cluster://`` URL: its credentials, TLS
    and query options as redis-py parses them for one server, plus every named node."""
    parts = urlsplit(url)
    userinfo, hosts = _split_netloc(parts.netloc)
    first = hosts.split(",")[0]
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    one = urlunsplit((scheme, f"{userinfo}@{first}" if userinfo else first, "", parts.query, ""))
    kw = {**options, **parse_url(one)}
    kw.pop("host", None)
    kw.pop("port", None)
    kw.pop("db", None)
    if kw.pop("connection_class", None) is not None:  # rediss: an SSLConnection
        kw["ssl"] = True
    return kw


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client of the Redis (or Redis Cluster) at ``url``; ``options`` are redis-py's
    (timeouts, ``decode_responses``, ``health_check_interval``...)."""
    if is_cluster_url(url):
        kw = _cluster_options(url, options)
        nodes = [aiocluster.ClusterNode(h, p) for h, p in cluster_seeds(url)]
        kw.setdefault("retry", AsyncRetry(_backoff(), CLUSTER_RETRIES))
        return aiocluster.RedisCluster(startup_nodes=nodes, **kw)  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, **options)


def sync_redis_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client of the Redis (or Redis Cluster) at ``url`` (tools and benchmarks)."""
    if is_cluster_url(url):
        kw = _cluster_options(url, options)
        nodes = [synccluster.ClusterNode(h, p) for h, p in cluster_seeds(url)]
        kw.setdefault("retry", Retry(_backoff(), CLUSTER_RETRIES))
        return synccluster.RedisCluster(startup_nodes=nodes, **kw)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **options)


async def script_calls(client: aiocluster.RedisCluster, script: AsyncScript,
                       calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` (each call's keys in one slot) in one cluster
    pipeline: one round trip per node. A node that lacks the script (a replica promoted since
    it was loaded) gets it, and only the calls it refused are sent again; any other error
    raises (callers retry: semirec.core.faults classifies cluster errors as transient)."""
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(3):
        async with client.pipeline() as pipe:
            for i in todo:
                keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            got = await pipe.execute(raise_on_error=False)
        for i, r in zip(todo, got, strict=True):
            results[i] = r
        todo = [i for i in todo if isinstance(results[i], NoScriptError)]
        if not todo or attempt == 2:
            break
        await client.script_load(script.script)  # on every primary
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results
