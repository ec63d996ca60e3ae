"""A faust worker whose agent only acks (same app settings as ours): faust's own ceiling.

Run by benchmarks/ingest.py with the same SEMIREC_* environment; prints one JSON line with
events/s measured from the first to the N-th event.
"""

from __future__ import annotations

import json
import os
import time

from faust.worker import Worker

from semirec.core.settings import Settings
from semirec.streams.app import create_app, raw_topic


def main() -> None:
    settings = Settings.from_env()
    n = int(os.environ["BENCH_EVENTS"])
    app = create_app(settings, app_id=f"{settings.events_group}-noop")
    topic = raw_topic(app, settings.topics.events, settings.event_partitions)
    seen = {"n": 0, "t0": 0.0}

    @app.agent(topic)
    async def noop(stream) -> None:
        async for batch in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
            if not seen["n"]:
                seen["t0"] = time.perf_counter()
            for event in batch:
                await stream.ack(event)
            seen["n"] += len(batch)
            if seen["n"] >= n:
                rate = n / (time.perf_counter() - seen["t0"])
                print(json.dumps({"faust_noop_events_per_s": rate}), flush=True)
                os._exit(0)

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
