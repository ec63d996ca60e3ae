"""What the fault-suite modules share (``benchmarks.faults`` runs the scenarios of itself and of
``benchmarks.faults_serving``; both import this, neither the other's internals): the result
row, a worker child's environment, stopping a worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field, fields

from semirec.core.settings import Settings, Topics
from semirec.core.stack import LOCAL_GROUP_TIMINGS


@dataclass
class Row:
    fault: str
    load: str
    lost: int = 0  # sequence entries the event log implies that Redis lacks
    extra: int = 0  # entries in Redis the log does not imply (applied twice)
    users_wrong: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # named timings
    notes: list[str] = field(default_factory=list)
    ok: bool = True  # the scenario's own checks (exit codes, nothing committed, ...)

    @property
    def exact(self) -> bool:
        return self.ok and self.lost == 0 and self.extra == 0 and self.users_wrong == 0


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a ``semirec worker`` child needs to see ``settings``."""
    env = dict(os.environ)
    env.update(LOCAL_GROUP_TIMINGS)
    env.update({"SEMIREC_KAFKA": settings.kafka, "SEMIREC_REDIS_URL": settings.redis_url,
                "SEMIREC_CONSUMER_GROUP": settings.events_group,
                "SEMIREC_EVENT_PARTITIONS": str(settings.event_partitions)})
    for f in fields(Topics):
        env[f"SEMIREC_TOPIC_{f.name.upper()}"] = getattr(settings.topics, f.name)
    env.update(extra)
    return env


def signal_worker(proc: subprocess.Popen, sig: int, timeout: float = 30) -> float:
    """Send ``sig`` to the worker's process group; seconds until it exited."""
    started = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - started
