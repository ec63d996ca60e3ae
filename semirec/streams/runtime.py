"""What one worker app's agents share at run time, owned by one object per faust app.

:func:`semirec.streams.app.create_app` attaches a :class:`WorkerRuntime` to the app it builds;
everything else reaches it with :func:`runtime_of` (the one way in: no module of
``semirec.streams`` keeps mutable state of its own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from semirec.streams.messages import BatchWatch
from semirec.streams.publish import Partitioner

if TYPE_CHECKING:
    from semirec.core.faults import Fault
    from semirec.core.recommendations import UserUpdate
    from semirec.core.sequences import UserState

# the recommendation agent's entry for changed users and the states ingest just wrote for them,
# handed to ingest in the same worker
RecommendUpdates = Callable[[Sequence["UserUpdate"], Sequence["UserState"]], Awaitable[int]]

class RunningAgent(Protocol):
    """What the health checks read of a batch agent (:class:`semirec.streams.batch_transport.BatchAgent`)."""

    @property
    def running(self) -> bool: ...


RUNTIME_ATTR = "semirec_runtime"  # the app attribute that holds its WorkerRuntime


@dataclass(slots=True, eq=False)
class WorkerRuntime:
    """One worker app's shared state: its agents' batch watches, whom to tell when an agent stops
    the worker on an unexpected error, its batch agents and the topics they claim, its fetch
    long-poll, its first fatal fault, its key partitioner and, when ingest and recommendation
    run in it inline (``SEMIREC_RECOMMEND_INLINE``), the recommender's entry for changed users."""

    fetch_max_wait_ms: int | None = None  # None: faust's own (1.5 s)
    watches: dict[str, BatchWatch] = field(default_factory=dict)  # agent name -> its watch
    # told why when an agent stops the worker on an unexpected error (not a fatal fault)
    crash_hooks: list[Callable[[str], None]] = field(default_factory=list)
    batch_agents: list[RunningAgent] = field(default_factory=list)  # for the health checks
    batch_claims: dict[str, Any] = field(default_factory=dict)  # topic -> its batch agent's queue
    fatal_fault: Fault | None = None  # the first fatal fault an agent met (semirec.streams.fatal)
    partitioner: Partitioner = field(default_factory=Partitioner)
    # set by the recommendation agent when ingest hands it changed users in-process
    recommend_updates: RecommendUpdates | None = None

    def watch(self, agent: str) -> BatchWatch:
        """``agent``'s watch, made on first use."""
        found = self.watches.get(agent)
        if found is None:
            found = self.watches[agent] = BatchWatch(agent)
        return found


def runtime_of(app: Any) -> WorkerRuntime:
    """``app``'s runtime; an app not built by ``create_app`` gets a default one on first use."""
    found = getattr(app, RUNTIME_ATTR, None)
    if found is None:
        found = WorkerRuntime()
        setattr(app, RUNTIME_ATTR, found)
    return found
