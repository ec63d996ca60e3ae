"""Service addresses: how a URL is shown (without its password) and which Redis URLs work.

Shared by :mod:`semirec.core.settings` (which checks ``SEMIREC_REDIS_URL``),
:mod:`semirec.core.faults` (which names the address in its messages) and
:mod:`semirec.core.redis_client` (which builds the clients).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")  # one server: plain, TLS, a Unix socket
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_UNSUPPORTED = "Redis Cluster is not supported yet"


def redact(url: str) -> str:
    """``url`` without its password (``redis://:***@host:port/0``)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparsable URL>"


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` cannot address the Redis server semirec uses, or ``None``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError as exc:
        return str(exc)
    if parts.scheme in REDIS_CLUSTER_SCHEMES:
        return f"{CLUSTER_UNSUPPORTED}: use a redis:// or rediss:// URL of one server"
    if parts.scheme not in REDIS_SCHEMES:
        return "the scheme must be redis://, rediss:// (TLS) or unix://"
    if parts.scheme != "unix" and not parts.hostname:
        return "no host"
    return None
