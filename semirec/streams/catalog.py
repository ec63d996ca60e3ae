"""Catalog agent: items topic -> item vectors in Redis (see semirec.core.item_store).

Per batch (``noack_take``, at most :data:`BATCH_MAX` items): parse every message against the
item contract (key = item_id); keep the newest upsert of each item (its ``updated_at``, else
the message's timestamp; the later message among equals); encode the items in a
worker thread (the event loop keeps heart-beating); dead-letter the malformed ones (contract
reasons, or ``bad_image`` when an image cannot be read) and wait for the broker's ack; write
the vectors with the encoder version and that item version (retried while Redis is down): the
store writes each only if it holds no newer version of the item, then appends the change feed;
only then ack, so an offset is committed only once its item is stored, found stale or
dead-lettered. Upserts are idempotent, so a replay after a crash rewrites the same vectors, and
an older upsert processed late (a worker that lost the partition in a rebalance, still
finishing its batch) is counted as stale and changes nothing.

The encoder (``$SEMIREC_ENCODER_CHECKPOINT`` or the seeded untrained fusion; onnxruntime with
the int8 text model unless ``SEMIREC_ENCODER_RUNTIME`` says ``onnx`` or ``torch``) is loaded
on the first batch, so a worker that sees no items never loads it. Dead letters go to the
project's DLQ topic (``SEMIREC_TOPIC_EVENTS_DLQ``) with ``stage: "catalog"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from semirec.core.contracts import ContractError
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.items import Item, parse_item
from semirec.core.metrics import AgentMetrics
from semirec.core.settings import Settings
from semirec.streams.batches import (
    DeadLetterSink,
    guarded,
    retry_while_redis_down,
    run_batches,
)
from semirec.streams.messages import Message

log = logging.getLogger(__name__)
BATCH_MAX = 64  # items per batch: bounds the time one encode call holds the partition
ENCODER_THREADS = 1


@dataclass(slots=True)
class CatalogOutcome:
    messages: int = 0
    stored: int = 0
    stale: int = 0  # valid upserts not written: the store held a newer version of the item
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    version: str = ""


def default_encoder() -> Any:
    """The encoder for ``$SEMIREC_ENCODER_CHECKPOINT`` (or untrained) in
    ``$SEMIREC_ENCODER_RUNTIME`` (default: the exported models, int8 text model, under
    onnxruntime, 1 thread)."""
    import torch

    from semirec.encoders.pipeline import get_encoder

    torch.set_num_threads(ENCODER_THREADS)
    return get_encoder()


class CatalogProcessor:
    """The agent's logic, independent of faust (used by the agent and tests)."""

    def __init__(self, store: ItemStore, dead_letters: DeadLetterSink, *,
                 encoder_factory: Callable[[], Any] = default_encoder, retry_max_s: float = 5.0,
                 metrics: AgentMetrics | None = None) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.encoder_factory = encoder_factory
        self._encoder: Any = None
        self.retry_max_s = retry_max_s
        self.metrics = metrics or AgentMetrics("catalog")

    async def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = await asyncio.to_thread(self.encoder_factory)
        return self._encoder

    async def process(self, batch: Sequence[Message]) -> CatalogOutcome:
        started = time.perf_counter()
        out = CatalogOutcome(messages=len(batch))
        bad: list[tuple[Message, ContractError]] = []
        latest: dict[str, tuple[Message, Item]] = {}
        for msg in batch:
            try:
                item = parse_item(msg.value or b"", msg.key)
            except ContractError as exc:
                bad.append((msg, exc))
                continue
            prev = latest.pop(item.item_id, None)  # the newest upsert wins (the later of equals)
            if prev is not None and item_version(*prev) > item_version(msg, item):
                msg, item = prev
            latest[item.item_id] = (msg, item)
        records: list[ItemVector] = []
        if latest:
            encoder = await self.encoder()
            pairs = list(latest.values())
            with self.metrics.timed("encode"):
                result = await asyncio.to_thread(encoder.encode_lenient, [it for _, it in pairs])
            bad.extend((pairs[i][0], exc) for i, exc in result.errors.items())
            out.version = encoder.version
            records = [ItemVector(pairs[i][1].item_id, pairs[i][1].domain, vec, encoder.version,
                                  item_version(*pairs[i]))
                       for i, vec in zip(result.ok, result.vectors, strict=True)]
        if bad:
            with self.metrics.timed("dlq"):
                await self.dead_letters(bad)
            for _, exc in bad:
                out.rejected[str(exc.reason)] += 1
        if records:
            out.stored = await self._write(
                records, {pairs[i][1].item_id: pairs[i][1].title for i in result.ok})
            out.stale = len(records) - out.stored
        self._observe(out, [msg.timestamp for msg, _ in latest.values() if msg.timestamp > 0],
                      time.perf_counter() - started)
        return out

    async def _write(self, records: list[ItemVector], titles: dict[str, str]) -> int:
        async def put() -> int:
            with self.metrics.redis("put"):
                return await self.store.put_many(records, titles)

        return await retry_while_redis_down(put, max_delay_s=self.retry_max_s)

    def _observe(self, out: CatalogOutcome, append_ts: list[float], seconds: float) -> None:
        m = self.metrics
        m.observe("batch", seconds)
        m.batch(out.messages)
        m.processed(out.stored + out.stale)
        if out.stale:
            m.catalog_stale(out.stale)
        for reason, n in out.rejected.items():
            m.rejected(reason, n)
        if out.stored:
            m.state_written([], append_ts)


def item_version(msg: Message, item: Item) -> int:
    """The version (ms) that orders an item's upserts: its ``updated_at``, else the message's
    timestamp (0 when it has none: the store then stamps the write with its clock)."""
    ts = item.updated_at if item.updated_at is not None else msg.timestamp
    return max(0, round(ts * 1000))


def catalog_topics(settings: Settings) -> dict[str, int]:
    """Topics the catalog agent needs, with their partition counts."""
    return {settings.topics.items: settings.event_partitions,
            settings.topics.events_dlq: settings.event_partitions}


def register_catalog(app: Any, settings: Settings) -> None:
    """Attach the catalog agent to a faust app built by :func:`semirec.streams.app.create_app`."""
    from semirec.streams.app import raw_topic
    from semirec.streams.dlq import dead_letter_sink
    from semirec.streams.runtime import runtime_of

    items = raw_topic(app, settings.topics.items, settings.event_partitions)
    runtime = runtime_of(app)
    to_dlq = dead_letter_sink(app, settings, stage="catalog")

    async def body(stream: Any) -> None:
        store = ItemStore.from_url(settings.redis_url)
        processor = CatalogProcessor(store, to_dlq)
        try:
            await run_batches(stream, processor.process, runtime=runtime,
                              batch_max=min(settings.batch_max, BATCH_MAX),
                              within_s=settings.batch_within_s, agent="catalog",
                              exit_delay_s=settings.crash_exit_delay_s)
        finally:
            await store.close()

    @app.agent(items, name="catalog")
    async def catalog(stream: Any) -> None:
        await guarded("catalog", body(stream), runtime=runtime,
                      exit_delay_s=settings.crash_exit_delay_s)
