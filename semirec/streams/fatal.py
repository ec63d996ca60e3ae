"""Stop a faust worker on a fatal fault, with the fault's exit code and one clear line.

An agent that meets a fatal fault (refused credentials, a configuration that cannot work)
records it and sends the process SIGTERM: faust then shuts down as for any SIGTERM, committing
only what was acknowledged (agents acknowledge a batch only after writing it), and
``semirec worker`` exits with :attr:`Fault.exit_code` after printing the line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from semirec.core.faults import Fault

log = logging.getLogger(__name__)

_fatal: list[Fault] = []


async def stop_worker(fault: Fault) -> None:
    """Record ``fault``, ask the worker to stop, and wait here until the shutdown cancels us."""
    if not _fatal:
        _fatal.append(fault)
        log.error("fatal: %s (stopping the worker)", fault.message)
        os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.Future()  # never resolves: the shutdown cancels the agent


def fatal_fault() -> Fault | None:
    """The first fatal fault this process met, if any."""
    return _fatal[0] if _fatal else None
