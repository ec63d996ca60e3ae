"""``semirec worker`` with one injected unexpected error, for tests/test_ingest_failures.py.

Run as ``python -m tests.faulty_worker [worker options]``. When a batch holds the event whose
``event_id`` is ``$FAULT_EVENT_ID`` and the file ``$FAULT_FLAG`` does not exist yet, the ingest
processor writes the state of about half of the batch's users to Redis, creates the flag and
raises: an error in the middle of a batch, after part of it is durable. Later runs (flag
present) behave like the real worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from semirec.cli import cli
from semirec.streams.ingest import IngestProcessor

real_write = IngestProcessor._write


async def faulty_write(self, by_user, out, *rest) -> None:
    flag = Path(os.environ["FAULT_FLAG"])
    marker = os.environ["FAULT_EVENT_ID"]
    hit = any(e.event_id == marker for parts in by_user.values() for pairs in parts.values()
              for e, _ in pairs)
    if not hit or flag.exists():
        return await real_write(self, by_user, out, *rest)
    users = sorted(by_user)
    await real_write(self, {u: by_user[u] for u in users[: len(users) // 2]}, out, *rest)
    flag.write_text("raised")
    raise RuntimeError(f"injected fault in a batch holding {marker}")


IngestProcessor._write = faulty_write  # type: ignore[method-assign]

if __name__ == "__main__":
    cli(["worker", *sys.argv[1:]])
