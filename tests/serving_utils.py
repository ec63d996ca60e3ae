"""Test helpers for serving: toy catalog in Redis, a reader of the recommendations topic."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from semirec.core.contracts import Domain, Event, encode_event
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.recommendations import Recommendation, parse_recommendation
from semirec.core.settings import Settings
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, EmbeddedStack
from semirec.trainer.offline.toy import ToyWorld

CATS = 4


def category(item_id: str) -> int:
    """toy_world: item ``<d><i>`` has category ``i % categories``."""
    return int(item_id[1:]) % CATS


async def put_catalog(redis_url: str, world: ToyWorld) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await ItemStore(client).put_many(
            (ItemVector(it["item_id"], Domain(it["domain"]), vec, "toy")
             for it, vec in zip(world.items, world.vectors, strict=True)),
            {it["item_id"]: it["title"] for it in world.items})
    finally:
        await client.aclose()


def clicks(user: str, products: list[str], t0: float, tag: str) -> list[tuple[bytes, bytes]]:
    return [(user.encode(), encode_event(Event(f"{tag}-{user}-{i}", user, p, Domain.PRODUCT,
                                              "click", t0 + 60 * i)))
            for i, p in enumerate(products)]


@contextmanager
def private_triton(tmp_path: Path) -> Iterator[tuple[EmbeddedStack, Path]]:
    """A tritonserver of the test's own (the session's keeps serving other tests) over a copy of
    triton_models/ without exported versions; yields (stack, model repository)."""
    repo_dir = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo_dir,
                    ignore=shutil.ignore_patterns("[0-9]*", "aliases.json"))
    with EmbeddedStack(["triton"], model_repository=repo_dir) as stack:
        yield stack, repo_dir


class Recommendations:
    """Everything published on the recommendations topic since the reader started."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = AIOKafkaConsumer(settings.topics.recommendations, **settings.consumer_kwargs(),
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.seen: list[Recommendation] = []

    async def __aenter__(self) -> Recommendations:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def wait(self, done: Callable[[list[Recommendation]], bool], timeout: float = 60) \
            -> list[Recommendation]:
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met after {timeout}s; "
                                     f"{len(self.seen)} recommendations seen")
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                self.seen.extend(parse_recommendation(r.value) for r in records)
            await asyncio.sleep(0)
        return self.seen

    def latest(self, user_id: str) -> Recommendation | None:
        mine = [r for r in self.seen if r.user_id == user_id]
        return mine[-1] if mine else None
