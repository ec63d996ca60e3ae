"""A local Redis Cluster on free ports: ``masters`` redis-server processes in cluster mode (and
``replicas`` per master), joined with ``redis-cli --cluster create``.

For tests and local scale-out runs (not production: no persistence tuning, loopback only).
``LocalRedisCluster(...).url`` is the ``redis+cluster://`` URL of its nodes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from semirec.core.processes import StackError, _port_free, die_with_parent, redis_binary


def node_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise StackError("no free port pair (port, port + 10000) for a Redis Cluster node")


def _cli_binary() -> str:
    found = shutil.which("redis-cli") or (str(Path(redis_binary()).with_name("redis-cli")))
    if not Path(found).exists():
        raise StackError("redis-cli is not on PATH (Debian: apt-get install -y redis-tools)")
    return found


def _ask(port: int, *command: str, timeout: float = 1.0) -> str:
    """One command over RESP on a raw socket (no client library: works before the cluster is);
    the reply's text (a simple string or error line, or a bulk string's body)."""
    wire = f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(wire.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError(f"port {port} closed the connection")
            data += chunk
        head, _, body = data.partition(b"\r\n")
        if not head.startswith(b"$") or head == b"$-1":
            return head.decode(errors="replace")
        size = int(head[1:])
        while len(body) < size:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError(f"port {port} closed the connection")
            body += chunk
        return body[:size].decode(errors="replace")


class LocalRedisCluster:
    """Start with ``with LocalRedisCluster() as c:``; stops (and deletes its files) on exit."""

    def __init__(self, masters: int = 3, replicas: int = 0, *, directory: Path | None = None,
                 timeout: float = 30.0) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.masters, self.replicas, self.timeout = masters, replicas, timeout
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="semirec-rcluster-")) if directory is None else directory
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[: self.masters])

    def __enter__(self) -> LocalRedisCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        for _ in range(self.masters * (1 + self.replicas)):
            self.start_node(node_port())
        argv = [_cli_binary(), "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr}")
        self.wait_ok()

    def start_node(self, port: int) -> None:
        """Start (or restart, keeping its nodes.conf) the node on ``port``."""
        node_dir = self.dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                "--dir", str(node_dir), "--daemonize", "no"]
        with open(node_dir / "redis.log", "ab") as log:
            # like the embedded stack's children: out of the terminal's process group (Ctrl-C
            # is for the parent, which stops us), and dead with the parent even on SIGKILL
            # (PR_SET_PDEATHSIG follows the forking thread: only from the main thread)
            main = threading.current_thread() is threading.main_thread()
            self.procs[port] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent(os.getpid()) if main else None)
        if port not in self.ports:
            self.ports.append(port)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if _ask(port, "PING").startswith("+PONG"):
                    return
            except OSError:
                pass
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise StackError(f"redis-server on port {port} did not start "
                                 f"(see {node_dir / 'redis.log'})")
            time.sleep(0.05)

    def info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node."""
        text = _ask(port, "CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node says ``cluster_state:ok`` and knows all the others."""
        deadline = time.monotonic() + (timeout or self.timeout)
        running = [p for p in self.ports if self.procs[p].poll() is None]
        while True:
            try:
                infos = [self.info(p) for p in running]
                if all(i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0))
                       >= len(self.ports) for i in infos):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StackError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def master_ports(self) -> list[int]:
        """Ports of the nodes that are masters now."""
        return [p for p in self.ports if self.procs[p].poll() is None
                and "role:master" in _ask(p, "INFO", "replication")]

    def replica_of(self, master_port: int) -> int:
        """The port of one replica of the master on ``master_port``."""
        text = _ask(master_port, "INFO", "replication")
        for line in text.splitlines():
            if line.startswith("slave0:"):
                fields = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].split(","))
                return int(fields["port"])
        raise StackError(f"the master on port {master_port} has no replica")

    def failover(self, replica_port: int, timeout: float | None = None) -> None:
        """``CLUSTER FAILOVER`` on a replica: it becomes the master of its slots."""
        reply = _ask(replica_port, "CLUSTER", "FAILOVER")
        if not reply.startswith("+OK"):
            raise StackError(f"CLUSTER FAILOVER on {replica_port}: {reply.strip()}")
        self.wait_master(replica_port, timeout)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash: its replica takes over after the node timeout)."""
        self.procs[port].kill()
        self.procs[port].wait()

    def wait_master(self, port: int, timeout: float | None = None) -> None:
        """Until the node on ``port`` is a master and the cluster is ok again."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                if "role:master" in _ask(port, "INFO", "replication"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"the node on {port} did not become a master")
            time.sleep(0.05)
        self.wait_ok(timeout)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
