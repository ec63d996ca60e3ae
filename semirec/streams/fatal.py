"""Stop a faust worker on a fatal fault, with the fault's exit code and one clear line.

An agent that meets a fatal fault (refused credentials, a configuration that cannot work)
records it in the app's runtime (:class:`semirec.streams.runtime.WorkerRuntime`) and sends the
process SIGTERM: faust then shuts down as for any SIGTERM, committing only what was acknowledged
(agents acknowledge a batch only after writing it), and ``semirec worker`` exits with
:attr:`Fault.exit_code` after printing the line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from semirec.core.faults import Fault

if TYPE_CHECKING:
    from semirec.streams.runtime import WorkerRuntime

log = logging.getLogger(__name__)


async def stop_on_fatal_fault(runtime: WorkerRuntime, fault: Fault) -> None:
    """Record ``fault`` as ``runtime.fatal_fault`` (the first one only), ask the worker to stop,
    and wait here until the shutdown cancels us."""
    if runtime.fatal_fault is None:
        runtime.fatal_fault = fault
        log.error("fatal: %s (stopping the worker)", fault.message)
        os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.Future()  # never resolves: the shutdown cancels the agent
