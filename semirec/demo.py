"""``semirec demo``: the main job on the embedded stack, end to end.

Starts the embedded stack, a real ``semirec worker``, publishes the generated world's event
stream (plus a few malformed messages, to show the dead-letter path), waits until the
worker's consumer lag is exactly zero, and prints what landed in Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

import click
import orjson

from semirec.contracts import encode_event
from semirec.settings import Settings
from semirec.stack import LOCAL_GROUP_TIMINGS, EmbeddedStack

MALFORMED = [
    (b"demo-user", b"this is not an event"),
    (b"demo-user", orjson.dumps({"event_id": "bad-1", "user_id": "demo-user", "item_id": "v1",
                                 "domain": "video", "action": "watch", "ts": 1})),
    (b"someone", orjson.dumps({"event_id": "bad-2", "user_id": "demo-user", "item_id": "p1",
                               "domain": "product", "action": "click", "ts": 1})),
]


async def publish(settings: Settings, messages: list[tuple[bytes, bytes]], progress) -> None:
    from semirec.kafka import ensure_topics, ingest_topics, producer

    await ensure_topics(settings, ingest_topics(settings))
    prod = producer(settings)
    await prod.start()
    try:
        for i in range(0, len(messages), 5000):
            chunk = messages[i : i + 5000]
            await asyncio.gather(*[await prod.send(settings.topics.events, v, key=k)
                                   for k, v in chunk])
            progress(len(chunk))
    finally:
        await prod.stop()


async def wait_caught_up(settings: Settings, worker: subprocess.Popen, timeout: float) -> float:
    from semirec.lag import measure_lag, total_lag

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if worker.poll() is not None:
            raise click.ClickException(f"the worker exited with code {worker.returncode}")
        rows = await measure_lag(settings, [settings.consumer_group], [settings.topics.events])
        if rows and all(r.committed is not None for r in rows) and total_lag(rows) == 0:
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    raise click.ClickException(f"the worker did not catch up within {timeout:.0f}s")


async def summarize(settings: Settings, sample_user: str) -> dict:
    from semirec.lag import measure_lag
    from semirec.store import SequenceStore

    store = SequenceStore.from_url(settings.redis_url)
    try:
        users = await store.user_ids()
        state = await store.get(sample_user)
    finally:
        await store.close()
    dlq = await measure_lag(settings, ["semirec-demo-dlq-reader"], [settings.topics.events_dlq])
    return {"users_with_state": len(users), "dead_letters": sum(r.log_end for r in dlq),
            "sample_user": sample_user,
            "sample": state.view(settings.time_bucket_s) if state else None}


@click.command()
@click.option("--users", default=300, show_default=True, help="Users in the generated world.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object last.")
@click.option("--keep", is_flag=True, help="Keep the stack and worker running until Ctrl-C.")
def demo(users: int, seed: int, as_json: bool, keep: bool) -> None:
    """Run the stack, the ingest worker and a generated event stream, end to end."""
    from rich.console import Console
    from rich.progress import Progress

    from worlds import load_world

    console = Console(stderr=True, quiet=as_json)
    with console.status("generating the world"):
        world = load_world("world", seed=seed, size="tiny", users=users)
    messages = [(e.user_id.encode(), encode_event(e, "json" if i % 2 else "msgpack"))
                for i, e in enumerate(world.events)]
    messages[len(messages) // 2 : len(messages) // 2] = MALFORMED

    with console.status("starting the embedded stack (Tansu, redis-server, tritonserver)"):
        stack = EmbeddedStack()
        stack.start()
    try:
        env = {**os.environ, **stack.addresses.env(), **LOCAL_GROUP_TIMINGS}
        settings = replace(Settings.from_env(env), consumer_group="semirec-ingest")
        console.print(f"stack: {json.dumps({k: v for k, v in stack.addresses.as_dict().items() if v})}")
        log = stack.dir / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "semirec", "worker", "--agent", "ingest"],
                                      env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("publishing events", total=len(messages))
                asyncio.run(publish(settings, messages, lambda n: bar.advance(task, n)))
            with console.status("waiting for the worker to reach lag 0"):
                waited = asyncio.run(wait_caught_up(settings, worker, timeout=300))
            sample = Counter(e.user_id for e in world.events).most_common(1)[0][0]
            summary = {"events_published": len(world.events), "malformed_published": len(MALFORMED),
                       "seconds_to_lag_zero": round(waited, 2),
                       **asyncio.run(summarize(settings, sample))}
            if as_json:
                print(json.dumps(summary))
            else:
                _print(Console(), summary)
            if keep:
                console.print("\n[bold]running[/]; in another shell: export "
                              + " ".join(f"{k}={v}" for k, v in stack.addresses.env().items())
                              + "\nCtrl-C stops everything.")
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
    finally:
        stack.stop()


def _print(console, summary: dict) -> None:
    from rich.table import Table

    console.print(f"published {summary['events_published']} events and "
                  f"{summary['malformed_published']} malformed messages; lag 0 after "
                  f"{summary['seconds_to_lag_zero']}s")
    console.print(f"{summary['users_with_state']} users have sequences in Redis; "
                  f"{summary['dead_letters']} messages went to the dead-letter topic")
    for domain in ("video", "product"):
        seq = (summary["sample"] or {}).get(domain, [])
        table = Table(title=f"{summary['sample_user']} {domain}: last {min(10, len(seq))} of {len(seq)}",
                      title_justify="left")
        table.add_column("item_id")
        table.add_column("hour", justify="right")
        for entry in seq[-10:]:
            table.add_row(entry["item_id"], str(entry["hour"]))
        console.print(table)

