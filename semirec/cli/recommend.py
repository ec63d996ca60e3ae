"""``semirec recommend`` (ask for one user's recommendations) and ``semirec recommendations``
(watch the topic). Both talk only to Kafka (and Redis for titles); the agent does the work."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import click

from semirec.core.recommendations import (
    Recommendation,
    RecommendationRequest,
    encode,
    parse_recommendation,
    to_builtins,
)
from semirec.core.settings import Settings


async def _titles(settings: Settings, item_ids: list[str]) -> dict[str, str]:
    from semirec.core.item_store import ItemStore

    store = ItemStore.from_url(settings.redis_url)
    try:
        return await store.titles(item_ids)
    except Exception:  # titles are a nicety for people; never fail the answer on them
        return {}
    finally:
        await store.close()


async def ask(settings: Settings, request: RecommendationRequest, timeout_s: float) -> Recommendation:
    """Publish ``request`` and wait for its answer on the recommendations topic."""
    from aiokafka import AIOKafkaConsumer

    from semirec.core.kafka import ensure_topics, producer, serving_topics

    await ensure_topics(settings, serving_topics(settings))
    consumer = AIOKafkaConsumer(settings.topics.recommendations, **settings.consumer_kwargs(),
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    prod = producer(settings)
    await prod.start()
    try:
        # make sure the consumer has its positions before the request can be answered
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)
        await prod.send_and_wait(settings.topics.recommendation_requests, encode(request),
                                 key=request.user_id.encode())
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            batches = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for records in batches.values():
                for record in records:
                    rec = parse_recommendation(record.value)
                    if rec.request_id == request.request_id and rec.user_id == request.user_id:
                        return rec
        raise click.ClickException(
            f"no answer within {timeout_s:g}s on topic {settings.topics.recommendations!r}: is a "
            "recommendation agent running (`semirec worker --agent recommend`)?")
    finally:
        await prod.stop()
        await consumer.stop()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print(rec: Recommendation, titles: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    how = (f"fallback (similarity + popularity; {rec.fallback_reason or 'no reason given'})"
           if rec.fallback else rec.model_version)
    t = rec.timings
    table = Table(title=f"{rec.user_id}: {len(rec.items)} videos, ranked by {how}, "
                        f"{_when(rec.generated_at)}", title_justify="left",
                  caption=f"recall {t.recall_ms:.1f} ms, rank {t.rank_ms:.1f} ms, "
                          f"total {t.total_ms:.1f} ms", caption_justify="left")
    for name, justify in (("#", "right"), ("item_id", "left"), ("title", "left"),
                          ("score", "right"), ("source", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i, item in enumerate(rec.items, 1):
        table.add_row(str(i), item.item_id, titles.get(item.item_id, ""), f"{item.score:.4f}",
                      item.source)
    Console().print(table)


@click.command()
@click.argument("user_id")
@click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--candidate", "candidates", multiple=True, help="Rank these videos instead of "
              "recalling (repeatable).")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the recommendation as one JSON object.")
def recommend(user_id: str, k: int, candidates: tuple[str, ...], timeout_s: float,
              as_json: bool) -> None:
    """Ask the recommendation agent for USER_ID's top K videos and print the answer."""
    settings = Settings.from_env()
    request = RecommendationRequest(request_id=f"cli-{uuid.uuid4().hex[:12]}", user_id=user_id,
                                    k=k, candidates=list(candidates) or None)
    rec = asyncio.run(ask(settings, request, timeout_s))
    if as_json:
        print(json.dumps(to_builtins(rec)))
        return
    _print(rec, asyncio.run(_titles(settings, [i.item_id for i in rec.items])))


async def watch(settings: Settings, *, follow: bool, from_beginning: bool) \
        -> AsyncIterator[Recommendation]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topics.recommendations, **settings.consumer_kwargs(),
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        idle_since = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            got = False
            for records in batches.values():
                for record in records:
                    got = True
                    yield parse_recommendation(record.value)
            if got:
                idle_since = time.monotonic()
            elif not follow and time.monotonic() - idle_since > 2.0:
                return
    finally:
        await consumer.stop()


@click.command()
@click.option("--user", "user_id", default=None, help="Only this user's recommendations.")
@click.option("--follow", "-f", is_flag=True, help="Keep watching for new ones (Ctrl-C stops).")
@click.option("--from-beginning", is_flag=True, help="Start at the topic's oldest message "
              "(default: only new ones with --follow, everything without).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def recommendations(user_id: str | None, follow: bool, from_beginning: bool, as_json: bool) -> None:
    """Print recommendations from the topic (what subscribed clients receive)."""
    settings = Settings.from_env()

    async def run() -> None:
        async for rec in watch(settings, follow=follow, from_beginning=from_beginning or not follow):
            if user_id is not None and rec.user_id != user_id:
                continue
            if as_json:
                print(json.dumps(to_builtins(rec)), flush=True)
            else:
                _print(rec, await _titles(settings, [i.item_id for i in rec.items]))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
