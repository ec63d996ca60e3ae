"""Start ``semirec worker`` as a real child process for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from semirec.core.settings import Settings
from tests.conftest import settings_env


def start_worker(settings: Settings, log: Path, *args: str, **env: str) -> subprocess.Popen:
    full_env = {**settings_env(settings), **env}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "semirec", "worker", *args],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextmanager
def running_worker(settings: Settings, log: Path, *args: str, **env: str) -> Iterator[subprocess.Popen]:
    proc = start_worker(settings, log, *args, **env)
    try:
        yield proc
    finally:
        stop(proc)
