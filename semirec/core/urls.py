"""Service addresses: how a URL is shown (without its password) and which Redis URLs work.

Shared by :mod:`semirec.core.settings` (which checks ``SEMIREC_REDIS_URL``),
:mod:`semirec.core.faults` (which names the address in its messages) and
:mod:`semirec.core.redis_client` (which builds the clients).

A Redis Cluster is addressed as ``redis+cluster://[user:password@]host:port[,host:port...]``
(``rediss+cluster://`` with TLS): any reachable node(s) of the cluster; the client discovers
the others. A cluster has one database, so the path must be empty or ``/0``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")  # one server: plain, TLS, a Unix socket
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def _split_netloc(netloc: str) -> tuple[str, str]:
    """``(userinfo, hosts)`` of a netloc (userinfo ``""`` when there is none)."""
    userinfo, at, hosts = netloc.rpartition("@")
    return (userinfo, hosts) if at else ("", netloc)


def redact(url: str) -> str:
    """``url`` without its password (``redis://:***@host:port/0``)."""
    try:
        parts = urlsplit(url)
        userinfo, hosts = _split_netloc(parts.netloc)
        user, colon, _password = userinfo.partition(":")
        if not colon:
            return url
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
    except ValueError:
        return "<unparsable URL>"


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """``(host, port)`` of every node named by a ``redis+cluster://`` URL (port 6379 if none)."""
    _, hosts = _split_netloc(urlsplit(url).netloc)
    seeds = []
    for part in hosts.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = port, "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part.strip()!r} is not host:port")
        seeds.append((host, int(port)))
    return seeds


def is_cluster_url(url: str) -> bool:
    try:
        return urlsplit(url).scheme in REDIS_CLUSTER_SCHEMES
    except ValueError:
        return False


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` cannot address the Redis server (or cluster) semirec uses, or ``None``."""
    try:
        parts = urlsplit(url)
        if parts.scheme in REDIS_CLUSTER_SCHEMES:
            cluster_seeds(url)
            if parts.path not in ("", "/", "/0"):
                return "a Redis Cluster has only database 0: drop the /<db> path"
            return None
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in REDIS_SCHEMES:
        return ("the scheme must be redis://, rediss:// (TLS), unix:// or, for a Redis Cluster, "
                "redis+cluster:// (rediss+cluster://)")
    if parts.scheme != "unix" and not parts.hostname:
        return "no host"
    return None
