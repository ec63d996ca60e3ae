"""Start ``semirec worker`` as a real child process for integration tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from benchmarks.fault_kit import signal_worker
from semirec.core.settings import Settings
from tests.conftest import settings_env


def start_worker(settings: Settings, log: Path, *args: str, **env: str) -> subprocess.Popen:
    full_env = {**settings_env(settings), **env}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "semirec", "worker", *args],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    """Signal the worker's process group (SIGKILL after ``timeout``); its exit code."""
    signal_worker(proc, sig, timeout)
    return proc.returncode


@contextmanager
def running_worker(settings: Settings, log: Path, *args: str, **env: str) -> Iterator[subprocess.Popen]:
    proc = start_worker(settings, log, *args, **env)
    try:
        yield proc
    finally:
        stop(proc)


_LOGGED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (.*?)\s*$", re.M)


def logged_gaps(log: str, first: str, then: str) -> list[float]:
    """Seconds from each line of a worker's log that holds ``first`` to the next that holds
    ``then`` (e.g. mode's "[^Worker]: Gathering all futures" and "[^Worker]: Closing event loop")."""
    gaps, since = [], None
    for stamp, line in _LOGGED.findall(log):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        if first in line:
            since = at
        elif then in line and since is not None:
            gaps.append((at - since).total_seconds())
            since = None
    return gaps
