"""The embedded stack: a Kafka-protocol broker (Tansu), redis-server and tritonserver (CPU).

Scale-out options (``semirec stack up --redis-cluster --partitions N --tritons N``): a local
Redis Cluster (3 masters, one replica each: :class:`semirec.core.redis_cluster.LocalRedisCluster`)
instead of one redis-server, every semirec topic created with N partitions (and
``SEMIREC_EVENT_PARTITIONS=N`` exported), and N tritonservers on one model repository
(``SEMIREC_TRITON_GRPC`` lists them all).

Each service runs as a child process on a free loopback port, in a private temporary
directory. :class:`EmbeddedStack` is a context manager used by ``semirec stack up`` and by
the pytest fixtures alike; leaving it stops every child, in reverse start order, and removes
its directory.

Each child runs in its own session (its own process group): a terminal's Ctrl-C reaches only
the parent, which then stops the children in order (the agents of ``semirec demo`` before the
broker they commit to). Children also get ``PR_SET_PDEATHSIG`` so they die with us even on
``SIGKILL``; stopping one kills what is left of its process group (Triton's backend stubs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from semirec.core.processes import (
    StackError,
    _port_free,
    _site_packages,
    die_with_parent,
    free_port,
    free_ports,
    redis_binary,
    stop_process,
    tansu_binary,
    triton_home,
)
from semirec.core.settings import REPO_MODEL_REPOSITORY as DEFAULT_MODEL_REPOSITORY

if TYPE_CHECKING:
    from semirec.core.redis_cluster import LocalRedisCluster

COMPONENTS = ("kafka", "redis", "triton")
LABELS = {"kafka": "Tansu broker", "redis": "redis-server", "triton": "tritonserver"}
CLUSTER_MASTERS, CLUSTER_REPLICAS = 3, 1  # --redis-cluster: 3 masters, one replica each
STOP_TIMEOUT_S = 5.0  # per component: SIGTERM, then SIGKILL to its process group
TRITON_EXIT_TIMEOUT_S = 3  # tritonserver's own wait for in-flight requests on SIGTERM (default 30)

StopReport = Callable[[str, float, str], None]  # (label, seconds, how: "stopped"/"killed"/"exited")


@dataclass(frozen=True, slots=True)
class StackAddresses:
    kafka: str | None = None
    redis: str | None = None
    triton_grpc: str | None = None
    triton_http: str | None = None
    triton_metrics: str | None = None
    event_partitions: int | None = None  # set when the stack created the topics (--partitions)

    def as_dict(self) -> dict[str, str | int | None]:
        return asdict(self)

    def env(self) -> dict[str, str]:
        """The ``SEMIREC_*`` variables that point the other commands at this stack."""
        env = {}
        if self.kafka:
            env["SEMIREC_KAFKA"] = self.kafka
        if self.redis:
            env["SEMIREC_REDIS_URL"] = self.redis
        if self.triton_grpc:
            env["SEMIREC_TRITON_GRPC"] = self.triton_grpc
        if self.triton_http:
            env["SEMIREC_TRITON_HTTP"] = self.triton_http
        if self.event_partitions:
            env["SEMIREC_EVENT_PARTITIONS"] = str(self.event_partitions)
        return env


def triton_name(i: int) -> str:
    """Component name of the ``i``-th tritonserver (0-based): ``triton``, ``triton-2``, ..."""
    return "triton" if i == 0 else f"triton-{i + 1}"


def label(name: str) -> str:
    """``tritonserver 2`` for ``triton-2``; :data:`LABELS` otherwise."""
    base, _, n = name.partition("-")
    return LABELS[base] + (f" {n}" if n else "")


LOCAL_GROUP_TIMINGS = {
    # Tansu holds JoinGroup for ~session_timeout/2: keep local group timings short.
    "SEMIREC_SESSION_TIMEOUT_S": "2.0",
    "SEMIREC_HEARTBEAT_INTERVAL_S": "0.5",
    "SEMIREC_REBALANCE_TIMEOUT_S": "2.0",
    # Tansu answers a fetch only when its wait runs out, even with data waiting
    "SEMIREC_FETCH_MAX_WAIT_MS": "50",
    # the user-updates hop of the recommendation worker: freshness at low rates (docs/serving.md)
    "SEMIREC_REC_FETCH_MAX_WAIT_MS": "25",
    # tritonserver runs on this host: the ranker's inputs through system shared memory
    "SEMIREC_TRITON_SHARED_MEMORY": "1",
}


def _wait(what: str, check, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise StackError(f"{what} was not healthy after {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return resp.status == 200
    except Exception:
        return False


class EmbeddedStack:
    """Start the chosen components; ``with EmbeddedStack() as stack: stack.addresses``."""

    def __init__(
        self,
        components: Iterable[str] = COMPONENTS,
        *,
        directory: Path | None = None,
        model_repository: Path = DEFAULT_MODEL_REPOSITORY,
        startup_timeout: float = 60.0,
        redis_appendonly: bool = True,
        on_stop: StopReport | None = None,
        triton_load: Iterable[str] = (),
        redis_cluster: bool = False,
        partitions: int | None = None,
        tritons: int = 1,
    ) -> None:
        self.components = tuple(components)
        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise StackError(f"unknown stack component(s): {sorted(unknown)}; known: {COMPONENTS}")
        if tritons < 1 or (partitions is not None and partitions < 1):
            raise StackError("tritons and partitions must be >= 1")
        self.redis_cluster = redis_cluster  # a LocalRedisCluster instead of one redis-server
        self.partitions = partitions  # create every semirec topic with this many partitions
        self.tritons = tritons  # tritonservers on the one model repository
        self.cluster: LocalRedisCluster | None = None
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="semirec-stack-"))
        self.model_repository = Path(model_repository)
        self.timeout = startup_timeout
        self.redis_appendonly = redis_appendonly
        self.on_stop = on_stop  # told about each component as it is stopped
        # models tritonserver loads from disk at every start (--load-model; explicit mode loads
        # nothing else): a restart comes back on the version config.pbtxt names
        self.triton_load = tuple(triton_load)
        self.procs: dict[str, subprocess.Popen] = {}
        # how to start each component again: argv, env, readiness check, the ports it binds
        self._argv: dict[str, tuple[list[str], dict[str, str] | None, Callable[[], bool],
                                    list[int]]] = {}
        self.addresses = StackAddresses()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> StackAddresses:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            found: dict[str, str] = {}
            partitions = None
            if "kafka" in self.components:
                found["kafka"] = self._start_kafka()
                if self.partitions is not None:
                    partitions = self._create_topics(found["kafka"], self.partitions)
            if "redis" in self.components:
                found["redis"] = self._start_cluster() if self.redis_cluster else self._start_redis()
            if "triton" in self.components:
                found.update(self._start_tritons())
        except BaseException:
            self.stop()
            raise
        self.addresses = StackAddresses(**found, event_partitions=partitions)
        return self.addresses

    def stop(self) -> None:
        """Stop the components in reverse start order (Triton, redis, the broker), one by one."""
        for name in reversed(list(self.procs)):
            if name == "kafka" and self.cluster is not None:  # redis started after the broker
                self._stop_cluster()
            seconds, how = stop_process(self.procs.pop(name), STOP_TIMEOUT_S)
            if self.on_stop is not None:
                self.on_stop(label(name), seconds, how)
        if self.cluster is not None:
            self._stop_cluster()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self, name: str) -> None:
        """Stop one component (fault tests); :meth:`resume` starts it again on the same port."""
        stop_process(self.procs[name], STOP_TIMEOUT_S)

    def resume(self, name: str) -> None:
        argv, env, ready, ports = self._argv[name]
        deadline = time.monotonic() + self.timeout
        while not all(_port_free(p) for p in ports):  # children (Triton's stubs) may hold them
            if time.monotonic() > deadline:
                raise StackError(f"{name}: ports {ports} still in use after {self.timeout:.0f}s")
            time.sleep(0.1)
        for attempt in range(3):  # a restart right after a stop can abort while ports settle
            log = self._spawn(name, argv, env)
            try:
                _wait(name, ready, self.procs[name], log, self.timeout)
                return
            except StackError:
                if attempt == 2:
                    raise
                time.sleep(1.0)

    def dead(self) -> list[str]:
        """Names of components whose process has exited (a cluster node: ``redis:<port>``)."""
        dead = [name for name, p in self.procs.items() if p.poll() is not None]
        if self.cluster is not None:
            dead += [f"redis:{port}" for port, p in self.cluster.procs.items()
                     if p.poll() is not None]
        return dead

    # -- components -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=env,
                start_new_session=True,  # the terminal's Ctrl-C is for us: we stop it in order
                preexec_fn=die_with_parent(os.getpid()),
            )
        return log

    def _start_kafka(self) -> str:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_ID", "STORAGE_ENGINE")}
        argv = [str(tansu_binary()), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        log = self._spawn("kafka", argv, env)
        self._argv["kafka"] = (argv, env, lambda: _port_open(port), [port])
        _wait("Tansu broker", lambda: _port_open(port), self.procs["kafka"], log, self.timeout)
        return f"127.0.0.1:{port}"

    def _create_topics(self, kafka: str, partitions: int) -> int:
        """Every semirec topic (default names) with ``partitions`` partitions
        (``model-updates``: 1, as the trainer makes it)."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from semirec.core.kafka import ensure_topics, ingest_topics, serving_topics
        from semirec.core.settings import Settings

        s = Settings(kafka=kafka, event_partitions=partitions)
        topics = {**ingest_topics(s), **serving_topics(s), s.topics.items: partitions,
                  s.topics.samples: partitions, s.topics.model_updates: 1}
        with ThreadPoolExecutor(1) as pool:  # a loop of its own: the caller may be in one
            pool.submit(asyncio.run, ensure_topics(s, topics)).result()
        return partitions

    def _start_cluster(self) -> str:
        from semirec.core.redis_cluster import LocalRedisCluster

        self.cluster = LocalRedisCluster(CLUSTER_MASTERS, CLUSTER_REPLICAS,
                                         directory=self.dir / "redis-cluster",
                                         timeout=self.timeout)
        self.cluster.start()
        return self.cluster.url

    def _stop_cluster(self) -> None:
        assert self.cluster is not None
        t0 = time.monotonic()
        self.cluster.stop()
        self.cluster = None
        if self.on_stop is not None:
            self.on_stop(f"Redis Cluster ({CLUSTER_MASTERS * (1 + CLUSTER_REPLICAS)} nodes)",
                         time.monotonic() - t0, "stopped")

    def _start_redis(self) -> str:
        port = free_port()
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        argv = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.redis_appendonly else "no", "--dir", str(data),
                "--daemonize", "no", "--protected-mode", "yes"]
        log = self._spawn("redis", argv)

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        self._argv["redis"] = (argv, None, ping, [port])
        _wait("redis-server", ping, self.procs["redis"], log, self.timeout)
        return f"redis://127.0.0.1:{port}/0"

    def _backend_dir(self, home: Path) -> Path:
        backends = self.dir / "backends" / "python"
        backends.mkdir(parents=True, exist_ok=True)
        pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
        links = {
            "libtriton_python.so": home / "backends" / "python" / "libtriton_python.so",
            "triton_python_backend_utils.py": home / "backends" / "python"
            / "triton_python_backend_utils.py",
            "triton_python_backend_stub": home / "python_backend_stubs" / pyver
            / "triton_python_backend_stub",
        }
        for name, target in links.items():
            if not target.exists():
                raise StackError(f"Triton python backend file missing: {target}")
            link = backends / name
            if not link.exists():
                link.symlink_to(target)
        return backends.parent

    def _start_tritons(self) -> dict[str, str]:
        """``self.tritons`` servers on the one repository: all spawned, then each awaited;
        their addresses comma-separated (the first is ``triton``, then ``triton-2``, ...)."""
        ports = free_ports(3 * self.tritons)  # all chosen before any server binds its own
        waits = [self._start_triton(triton_name(i), ports[3 * i: 3 * i + 3])
                 for i in range(self.tritons)]
        found = [wait() for wait in waits]
        return {key: ",".join(f[key] for f in found) for key in found[0]}

    def _start_triton(self, name: str, ports: list[int]) -> Callable[[], dict[str, str]]:
        """Spawn one tritonserver; returns the function that waits until it is ready."""
        home = triton_home()
        if not self.model_repository.is_dir():
            raise StackError(f"Triton model repository {self.model_repository} does not exist")
        http, grpc, metrics = ports
        venv_bin = str(Path(sys.executable).parent)
        env = dict(os.environ)
        # The python-backend stub takes sys.prefix from the first python3 on PATH and links
        # libpython3.11: put our interpreter first and its LIBDIR on the loader path.
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (sysconfig.get_config_var("LIBDIR"),
                        str(_site_packages() / "nvidia_pytriton.libs"),
                        env.get("LD_LIBRARY_PATH", "")) if p
        )
        argv = [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backend_dir(home)}",
            f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
            "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0", "--model-control-mode=explicit",
            "--metrics-config=summary_latencies=true", "--exit-on-error=false",
            "--log-verbose=0", f"--exit-timeout-secs={TRITON_EXIT_TIMEOUT_S}",
            *(f"--load-model={name}" for name in self.triton_load),
            # ready even while a model to load has no version yet (nothing exported)
            *(["--strict-readiness=false"] if self.triton_load else []),
        ]
        log = self._spawn(name, argv, env)

        def ready() -> bool:
            # Ready means every endpoint we advertise answers, not just /v2/health/ready.
            # tritonserver loads the models, then starts its endpoints one after another on
            # the main thread: gRPC, HTTP, then metrics (the log's "Started GRPCInferenceService",
            # "Started HTTPService", "Started Metrics Service", 40-120 ms apart here). HTTP's
            # threads answer /v2/health/ready 200 as soon as it listens, so a probe of that alone
            # can return while the metrics port still refuses connections (the flaky
            # test_stack_up_serves_all_and_stops_cleanly: URLError Connection refused on
            # /metrics right after ready). Metrics is checked last because it starts last.
            return (_http_ok(f"http://127.0.0.1:{http}/v2/health/ready")
                    and _port_open(grpc)
                    and _http_ok(f"http://127.0.0.1:{metrics}/metrics"))

        self._argv[name] = (argv, env, ready, [http, grpc, metrics])

        def wait() -> dict[str, str]:
            _wait(label(name), ready, self.procs[name], log, self.timeout)
            return {
                "triton_grpc": f"127.0.0.1:{grpc}",
                "triton_http": f"127.0.0.1:{http}",
                "triton_metrics": f"127.0.0.1:{metrics}",
            }

        return wait


@contextmanager
def embedded_stack(components: Iterable[str] = COMPONENTS, **kw) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(components, **kw) as stack:
        yield stack
