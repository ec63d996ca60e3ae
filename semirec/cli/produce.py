"""``semirec produce``: validate JSON-lines events and publish them to the events topic."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import IO

import click
import orjson

from semirec.core.contracts import ContractError, Reason, encode_event, validate_event
from semirec.core.settings import Settings


async def publish(settings: Settings, lines: IO[bytes], *, fmt: str, progress) -> dict:
    """Send every valid line keyed by user_id; returns counts and the first rejects."""
    from semirec.core.kafka import ensure_topics, ingest_topics, producer

    await ensure_topics(settings, ingest_topics(settings))
    prod = producer(settings)
    await prod.start()
    sent, rejected, examples = 0, Counter[str](), []
    pending = []
    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ContractError(Reason.UNDECODABLE, f"not JSON: {exc}") from exc
                event = validate_event(obj)
            except ContractError as exc:
                rejected[exc.reason.value] += 1
                if len(examples) < 20:
                    examples.append({"line": lineno, "reason": exc.reason.value, "message": str(exc)})
                continue
            pending.append(await prod.send(settings.topics.events, encode_event(event, fmt),
                                           key=event.user_id.encode()))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                sent += len(pending)
                progress(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        sent += len(pending)
        progress(len(pending))
    finally:
        await prod.stop()
    return {"topic": settings.topics.events, "sent": sent, "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(rejected), "rejects": examples}


@click.command()
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--format", "fmt", type=click.Choice(["json", "msgpack"]), default="json",
              show_default=True, help="Encoding of the published message bodies.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")
def produce(file: IO[bytes], fmt: str, as_json: bool) -> None:
    """Publish events from FILE (JSON lines; '-' = stdin) to the events topic.

    Each line is validated against the event contract (docs/contracts.md); invalid lines
    are counted and reported, never sent. Exit status 1 if any line was rejected.
    """
    settings = Settings.from_env()
    show = not as_json and sys.stderr.isatty()
    if show:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.completed} events sent"),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("produce", total=None)
            summary = asyncio.run(publish(settings, file, fmt=fmt,
                                          progress=lambda n: bar.advance(task, n)))
    else:
        summary = asyncio.run(publish(settings, file, fmt=fmt, progress=lambda n: None))
    if as_json:
        print(json.dumps(summary))
    else:
        click.echo(f"sent {summary['sent']} events to {summary['topic']}; "
                   f"rejected {summary['rejected']}")
        for reason, n in sorted(summary["rejected_by_reason"].items()):
            click.echo(f"  {reason}: {n}")
        for r in summary["rejects"]:
            click.echo(f"  line {r['line']}: {r['reason']}: {r['message']}", err=True)
    if summary["rejected"]:
        sys.exit(1)
