"""A faust worker whose batch agent (semirec/streams/batch_transport.py) does nothing but ack: the batch
transport's own ceiling, next to faust's (benchmarks/faust_noop.py).

Run by benchmarks/ingest.py with the same SEMIREC_* environment; prints one JSON line with
events/s measured from the first batch to the N-th event.
"""

from __future__ import annotations

import json
import os
import time

from faust.worker import Worker

from semirec.core.settings import Settings
from semirec.streams.app import create_app, raw_topic
from semirec.streams.batch_transport import BatchAgent


def main() -> None:
    settings = Settings.from_env()
    n = int(os.environ["BENCH_EVENTS"])
    app = create_app(settings, app_id=f"{settings.events_group}-batch-noop")
    topic = raw_topic(app, settings.topics.events, settings.event_partitions)
    seen = {"n": 0, "t0": 0.0}

    async def noop(batch) -> None:
        if not seen["n"]:
            seen["t0"] = time.perf_counter()
        seen["n"] += len(batch)
        if seen["n"] >= n:
            rate = n / (time.perf_counter() - seen["t0"])
            print(json.dumps({"batch_noop_events_per_s": rate}), flush=True)
            os._exit(0)

    BatchAgent(app, topic, "batch-noop", noop, batch_max=settings.batch_max,
               within_s=settings.batch_within_s)
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
