"""What every batch agent shares: the message shape, Redis retries, the loop that acks a batch
only after it has been processed (state written, dead letters acknowledged), and the rule for
errors nobody foresaw: stop the worker, never skip the batch (docs/ingest.md, "Unexpected
errors").

Why not go on: faust restarts a crashed agent and it reads on after the batch that raised,
which is then never redelivered in that process (faust-streaming/faust#315, robinhood/faust#604);
later batches of the same users would move their stored applied offsets past the lost events,
and the replay after a restart would skip them. A fresh process instead replays from the
committed offsets, and the per-user applied offsets make that replay exact.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from semirec.core.contracts import ContractError
from semirec.core.faults import FatalError, retry_transient
from semirec.core.metrics import AgentMetrics
from semirec.streams.fatal import stop_on_fatal_fault
from semirec.streams.messages import Message

if TYPE_CHECKING:
    from semirec.streams.runtime import WorkerRuntime

log = logging.getLogger(__name__)

EXIT_UNEXPECTED = 70  # EX_SOFTWARE: the worker stopped on an error it does not know how to handle


DeadLetterSink = Callable[[list[tuple[Message, ContractError]]], Awaitable[None]]











async def retry_while_redis_down(fn: Callable[..., Awaitable[Any]], *args: Any,
                                 max_delay_s: float = 5.0) -> Any:
    """Call ``fn`` until Redis answers, with exponential back-off; never gives up on an outage,
    so an agent never acks what it has not written. Refused credentials or a broken
    configuration raise :class:`semirec.core.faults.FatalError` (see :func:`run_batches`)."""
    return await retry_transient(fn, *args, dependency="redis", max_delay_s=max_delay_s)


async def run_batches(stream: Any, process: Callable[[Sequence[Message]], Awaitable[Any]], *,
                      runtime: WorkerRuntime, batch_max: int, within_s: float,
                      agent: str | None = None, exit_delay_s: float | None = None) -> None:
    """Feed ``noack_take`` batches to ``process``; ack each batch only once it returned.
    ``agent`` defaults to the faust agent's name; ``runtime`` is the app's
    (:func:`semirec.streams.runtime.runtime_of`).

    Errors stop the worker while still inside the loop (leaving ``noack_take`` would re-enable
    faust's automatic acks), so the batch is never acked and nothing after it is processed: a
    fatal fault (e.g. Redis refusing the password) with its exit code
    (:func:`semirec.streams.fatal.stop_on_fatal_fault`), any other error with exit 70
    (:func:`stop_on_unexpected_error`)."""
    name = agent or getattr(stream, "prefix", "") or "agent"
    progress = runtime.watch(name)
    async for batch in stream.noack_take(batch_max, within=within_s):
        messages = [e.message for e in batch]
        progress.start(messages)
        try:
            await process(messages)
        except FatalError as exc:
            await stop_on_fatal_fault(runtime, exc.fault)
        except Exception as exc:
            await stop_on_unexpected_error(runtime, name, exc, exit_delay_s=exit_delay_s)
        for event in batch:
            await stream.ack(event)
        progress.done()


async def guarded(agent: str, body: Awaitable[None], *, runtime: WorkerRuntime,
                  exit_delay_s: float | None = None) -> None:
    """Run an agent's body; an error it did not handle stops the worker
    (:func:`stop_on_unexpected_error`) instead of letting faust restart the agent past the
    unacknowledged batch."""
    try:
        await body
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await stop_on_unexpected_error(runtime, agent, exc, exit_delay_s=exit_delay_s)


async def stop_on_unexpected_error(runtime: WorkerRuntime, agent: str, exc: BaseException, *,
                                   exit_delay_s: float | None = None) -> NoReturn:
    """Count the crash, fail health (``runtime``'s watch of ``agent`` and its fatal hooks), log
    one clear line, keep ``/metrics`` up for ``exit_delay_s`` (one scrape sees the crash), then
    exit with :data:`EXIT_UNEXPECTED`.

    Nothing after the failed batch is acknowledged or processed by this agent meanwhile (its
    coroutine never returns to the stream); the exit is immediate (``os._exit``): faust's
    graceful stop would run other shutdown work we do not need, and a kill -9 at this point is
    the path the replay tests prove safe.
    """
    if exit_delay_s is None:
        from semirec.core.settings import Settings

        exit_delay_s = Settings.from_env().crash_exit_delay_s
    progress = runtime.watch(agent)
    progress.failed = f"{type(exc).__name__}: {exc}"[:500]
    AgentMetrics(agent).crashed()
    for hook in runtime.crash_hooks:
        hook(f"agent {agent}: {progress.failed}")
    log.critical("agent %s stopped by an unexpected error in the batch %s: %r; the batch is not "
                 "acknowledged; exiting with status %d in %.1fs so that a restarted worker "
                 "replays it from the committed offsets", agent, progress.span or "(none)", exc,
                 EXIT_UNEXPECTED, exit_delay_s, exc_info=exc)
    try:
        await asyncio.sleep(exit_delay_s)
    finally:  # also when the worker is being stopped meanwhile: exit now, still non-zero
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_UNEXPECTED)
