"""What went wrong, in one line: classify failures of Kafka, Redis, Triton and the configuration.

One place decides whether an exception is fatal (wrong credentials, a malformed address or
setting: retrying cannot help) or transient (a service that does not answer: retry with
back-off), and how to say it: what failed, at which address, which variable to fix. The CLI
(:mod:`semirec.cli`) prints it as one line with a distinct exit code; stream agents retry the
transient ones and stop on the fatal ones.

Exit codes (sysexits.h, so scripts and supervisors can tell them apart):

==== =====================================================================
 0   success
 1   the verb's own failure (e.g. rejected input lines, lag not measurable)
 2   usage error (click)
 67  the user asked for does not exist (``semirec user``)
 69  a service is unreachable (transient: Kafka, Redis or Triton down, refused, timed out;
     Triton up without the ranker loaded)
 70  a worker agent stopped by an error nobody foresaw (semirec.streams.batches, issue 9)
 77  authentication refused (Redis password, Kafka SASL)
 78  configuration error (a SEMIREC_* value that cannot work, e.g. an ``http://`` Redis URL)
==== =====================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from semirec.core.settings import Settings, SettingsError
from semirec.core.urls import is_cluster_url, redact

log = logging.getLogger(__name__)

EXIT_NOT_FOUND = 67
EXIT_UNAVAILABLE = 69
EXIT_AUTH = 77
EXIT_CONFIG = 78


@dataclass(frozen=True, slots=True)
class Fault:
    """A classified failure: ``fatal`` ones are never retried."""

    kind: str  # "unavailable" | "auth" | "config"
    message: str  # one line: what, where, which variable

    @property
    def fatal(self) -> bool:
        return self.kind != "unavailable"

    @property
    def exit_code(self) -> int:
        return {"unavailable": EXIT_UNAVAILABLE, "auth": EXIT_AUTH}.get(self.kind, EXIT_CONFIG)


class FatalError(RuntimeError):
    """Raised where a fault must stop the process (the CLI prints it as one line)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.message)
        self.fault = fault


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes/contexts and the members of exception groups, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        if isinstance(cur, BaseExceptionGroup):
            todo += list(cur.exceptions)
        todo += [e for e in (cur.__cause__, cur.__context__) if e is not None]


@functools.cache
def _cluster_transient() -> tuple[type[BaseException], ...]:
    import redis.exceptions as rex

    return (rex.MovedError, rex.AskError, rex.TryAgainError, rex.ClusterDownError,
            rex.MasterDownError, rex.SlotNotCoveredError, rex.RedisClusterUnreachableError,
            rex.ReadOnlyError)

# replies of a node in the middle of a failover, whatever class redis-py gave them
_TRANSIENT_REPLIES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN",
                      "LOADING")


def _redis_fault(exc: BaseException, redis_url: str) -> Fault | None:
    import redis.exceptions as rex

    where = f"Redis at {redact(redis_url)}"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, rex.AuthenticationError | rex.AuthenticationWrongNumberOfArgsError) or (
        isinstance(exc, rex.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return Fault("auth", f"{where} refused the credentials ({text}): fix the password "
                             "(and user) in SEMIREC_REDIS_URL")
    if isinstance(exc, rex.MovedError | rex.AskError) and not is_cluster_url(redis_url):
        return Fault("config", f"{where} is a Redis Cluster node ({text}): address the cluster "
                               "with SEMIREC_REDIS_URL=redis+cluster://host:port[,host:port...]")
    if isinstance(exc, _cluster_transient()) or (
            isinstance(exc, rex.ResponseError) and text.startswith(_TRANSIENT_REPLIES)):
        # a failover or a resharding in progress (the cluster client already followed the
        # redirections it could): the cluster settles within seconds, so retry
        return Fault("unavailable", f"{where} is failing over or resharding: {text}")
    if isinstance(exc, rex.RedisClusterException):
        if "not enabled" in text:
            return Fault("config", f"{where} is not a Redis Cluster ({text}): address one server "
                                   "with SEMIREC_REDIS_URL=redis://host:port/0")
        if "cannot be connected" in text or "reachable" in text:
            return Fault("unavailable", f"cannot reach {where}: {text}")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | rex.BusyLoadingError):
        if "SSL" in text or "certificate" in text:
            return Fault("config", f"TLS with {where} failed ({text}): check the rediss:// URL "
                                   "and its ssl_* parameters in SEMIREC_REDIS_URL")
        return Fault("unavailable", f"cannot reach {where}: {text}")
    return None


def _kafka_fault(exc: BaseException, kafka: str) -> Fault | None:
    import aiokafka.errors as kex

    where = f"Kafka at {kafka}"
    text = str(exc).strip() or type(exc).__name__
    auth = tuple(getattr(kex, name) for name in (
        # aiokafka 0.14's names (SaslAuthenticationFailed is the broker's error code 58)
        "SaslAuthenticationFailed", "AuthenticationFailedError", "AuthenticationMethodNotSupported",
        "IllegalSaslStateError", "UnsupportedSaslMechanismError",
        "TopicAuthorizationFailedError", "GroupAuthorizationFailedError",
        "ClusterAuthorizationFailedError") if hasattr(kex, name))
    if isinstance(exc, auth):
        return Fault("auth", f"{where} refused the credentials ({text}): check "
                             "SEMIREC_KAFKA_SASL_USERNAME/PASSWORD/MECHANISM")
    if isinstance(exc, kex.KafkaConnectionError | kex.NodeNotReadyError | kex.RequestTimedOutError
                  | kex.KafkaTimeoutError | kex.NoBrokersAvailable):
        if problem := _kafka_tls_problem(kafka):
            return Fault("config", f"TLS with {where} failed ({problem}): check "
                                   "SEMIREC_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE")
        return Fault("unavailable", f"cannot reach {where} (SEMIREC_KAFKA): {text}")
    return None


def _kafka_tls_problem(kafka: str, timeout_s: float = 3.0) -> str | None:
    """With SSL configured, why a TLS session with the first broker fails, or None.

    aiokafka logs a failed handshake and raises only "Unable to bootstrap", so an untrusted
    certificate would read as an outage: one handshake here tells them apart (a rejected
    client certificate shows as the server's alert on the first read)."""
    import socket

    try:
        env = Settings.from_env()
    except SettingsError:
        return None
    if env.security.protocol not in ("SSL", "SASL_SSL"):
        return None
    host, _, port = kafka.split(",")[0].strip().rpartition(":")
    try:
        context = env.security.client_kwargs()["ssl_context"]
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                # a broker sends nothing unasked: only an alert (or a close) arrives here
                if tls.recv(1) == b"":
                    return ("the broker closed the session right after the handshake: does it "
                            "require a client certificate it was not given")
    except ssl.SSLError as exc:
        return str(exc)
    except (OSError, ValueError):  # not reachable at all: an outage after all
        return None
    return None


def _triton_fault(exc: BaseException, triton: str) -> Fault | None:
    """tritonclient's InferenceServerException (its gRPC status) and the model repository's
    errors (semirec.trainer.registry.repository, told apart by name: semirec imports no trainer code)."""
    if type(exc).__name__ == "ModelRepositoryError" and "no Triton address" in str(exc):
        return Fault("config", f"{exc}: set SEMIREC_TRITON_GRPC")
    if type(exc).__name__ != "InferenceServerException" or not hasattr(exc, "status"):
        return None
    where = f"Triton at {triton} (SEMIREC_TRITON_GRPC)"
    status = str(exc.status() or "")
    text = str(exc.message() if hasattr(exc, "message") else exc).strip()
    if status.endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
        return Fault("unavailable", f"cannot reach {where}: {text}")
    if status.endswith("NOT_FOUND") or "unknown model" in text:
        return Fault("unavailable", f"{where} has no ranker loaded ({text}): `semirec model "
                                    "load` loads the serving version (explicit model control)")
    if any(t in text for t in ("failed to poll from model repository", "failed to load",
                               "version must be available")):
        return Fault("config", f"{where} could not load the model from its repository ({text}): "
                               "SEMIREC_MODEL_REPOSITORY must be the folder tritonserver serves "
                               "(--model-repository)")
    return None


def classify(exc: BaseException, *, kafka: str | None = None, redis_url: str | None = None,
             triton: str | None = None) -> Fault | None:
    """The :class:`Fault` behind ``exc`` (looking through causes), or ``None`` if it is none
    of ours to explain (a bug: let its traceback show). Addresses default to the environment's."""
    if kafka is None or redis_url is None or triton is None:
        try:
            env = Settings.from_env()
        except SettingsError:
            env = Settings()
        kafka = env.kafka if kafka is None else kafka
        redis_url = env.redis_url if redis_url is None else redis_url
        triton = env.triton_grpc if triton is None else triton
    fault = _classify(exc, kafka, redis_url, triton)
    return None if fault is None else Fault(fault.kind, " ".join(fault.message.split()))


def _classify(exc: BaseException, kafka: str, redis_url: str, triton: str) -> Fault | None:
    for cur in _chain(exc):
        if isinstance(cur, FatalError):
            return cur.fault
        if isinstance(cur, SettingsError):
            return Fault("config", f"configuration: {cur}")
        if isinstance(cur, ValueError) and ("Redis URL" in str(cur) or "connection URL" in str(cur)):
            return Fault("config", f"SEMIREC_REDIS_URL={redact(redis_url)!r} is not usable: {cur}")
        fault = _redis_fault(cur, redis_url) or _kafka_fault(cur, kafka) \
            or _triton_fault(cur, triton)
        if fault:
            return fault
    for cur in _chain(exc):
        if isinstance(cur, ssl.SSLError):
            return Fault("config", f"TLS handshake failed ({cur}): check the certificate settings")
        if isinstance(cur, ConnectionError | TimeoutError):
            # the outermost message usually names the service (e.g. "cannot reach Kafka at ...")
            return Fault("unavailable", str(exc) or f"a service did not answer: {cur!r}")
    return None


async def retry_transient(fn: Callable[..., Awaitable[Any]], *args: Any, dependency: str,
                          kafka: str | None = None, redis_url: str | None = None,
                          max_delay_s: float = 5.0) -> Any:
    """Call ``fn`` until it succeeds, retrying transient faults with exponential back-off
    (shown in ``/readyz`` and ``semirec_dependency_up``/``semirec_dependency_retries``); a fatal
    fault (credentials, configuration) raises :class:`FatalError` at once. Cancellation (a
    shutdown) interrupts the wait. Anything else is not ours to judge and propagates."""
    from semirec.core.metrics import outage_ended, outage_started

    delay = 0.05
    while True:
        try:
            result = await fn(*args)
        except Exception as exc:
            fault = classify(exc, kafka=kafka, redis_url=redis_url)
            if fault is None:
                raise
            if fault.fatal:
                raise FatalError(fault) from exc
            outage_started(dependency, fault.message)
            log.warning("%s; retrying in %.2fs", fault.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        outage_ended(dependency)
        return result
