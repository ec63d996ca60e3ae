"""The incremental trainer service (``semirec trainer run``) around
:class:`semirec.trainer.online.learner.Learner`.

Reads ``samples`` with its own consumer group (all partitions assigned to this one learner),
fetches item vectors from Redis, runs a round every N samples or T seconds, and on a passed gate
exports the candidate into the model repository, checkpoints, promotes it in Triton and announces
it on ``model-updates``. Order of a promoted round, so that a crash anywhere is recoverable:

1. export version n (files only; Triton does not see it yet);
2. checkpoint (model = candidate, ``serving_version`` = n, offsets) and only then commit offsets;
3. promote n in Triton (a restart finishes an interrupted promotion: step 2 recorded it);
4. announce on ``model-updates``.

A version promoted by hand (``semirec model promote|rollback``) is noticed at the next round:
the learner continues from that version's checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from semirec.core.contracts import ContractError
from semirec.core.samples import decode_sample
from semirec.core.settings import Settings
from semirec.trainer.nets import checkpoint
from semirec.trainer.online.gate import finite
from semirec.trainer.online.learner import (
    ItemTable,
    Learner,
    OnlineConfig,
    RoundResult,
    load_state,
    sample_ids,
    save_state,
)
from semirec.trainer.online.metrics import (
    EVAL,
    FRESHNESS,
    PROMOTION_SECONDS,
    REJECTIONS,
    ROUND_SECONDS,
    ROUNDS,
    SAMPLES,
    SAMPLES_BAD,
    SERVING,
    TRAINED,
)
from semirec.trainer.registry.repository import ModelRepository, ModelRepositoryError

log = logging.getLogger(__name__)

class _Received:
    """An aiokafka record as :func:`semirec.streams.dlq.dead_letter` reads a message (seconds)."""

    def __init__(self, record: Any) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.key, self.value = record.key, record.value
        self.timestamp = (record.timestamp or 0) / 1000


class TrainerError(RuntimeError):
    """The trainer cannot start (no model to start from, no topic)."""


class OnlineTrainer:
    def __init__(self, settings: Settings, online: OnlineConfig | None = None, *,
                 state_dir: Path | None = None, repo: ModelRepository | None = None,
                 init: Path | None = None) -> None:
        self.settings = settings
        self.online = online or OnlineConfig(seq_len=settings.seq_len,
                                             bucket_s=settings.time_bucket_s)
        self.state_dir = Path(state_dir or settings.trainer_state_dir)
        self.repo = repo or ModelRepository.from_settings(settings)
        self.init = init
        self.offsets: dict[int, int] = {}
        self.serving_version: int | None = None
        self.rounds: list[dict[str, Any]] = []  # what each round decided (tests, benchmark)
        self.learner: Learner | None = None
        # (version, serving alias then) of a promotion that failed (Triton down): retried at
        # each round until it succeeds or someone promotes another version by hand
        self.unpromoted: tuple[int, int | None] | None = None

    # -- start ---------------------------------------------------------------------------------
    def _restore(self) -> None:
        resumed = load_state(self.state_dir, self.online)
        if resumed is not None:
            self.learner, self.offsets, body = resumed
            self.serving_version = body.get("serving_version")
            log.info("resumed from %s at offsets %s", self.state_dir, self.offsets)
            return
        source = self.init
        if source is None:
            serving = self.repo.aliases().get("serving")
            if serving is None:
                raise TrainerError("nothing to start from: no trainer checkpoint, no serving "
                                   "ranker version; pass --init CHECKPOINT")
            source, self.serving_version = self.repo.checkpoint_dir(serving), serving
        model, cfg, _ = checkpoint.load(source)
        self.learner = Learner(model, cfg, self.online)

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from semirec.core.item_store import ItemStore
        from semirec.core.kafka import ensure_topics, producer

        self._restore()
        assert self.learner is not None
        self.table = ItemTable(self.learner.cfg.block.dim)
        self.items = ItemStore.from_url(self.settings.redis_url)
        topics = self.settings.topics
        await ensure_topics(self.settings, {topics.samples: self.settings.event_partitions,
                                            topics.events_dlq: self.settings.event_partitions,
                                            topics.model_updates: 1})
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            group_id=s.trainer_group, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20, **s.consumer_kwargs())
        await self.consumer.start()
        await self.consumer.topics()  # fetches the cluster's metadata
        parts = self.consumer.partitions_for_topic(topics.samples)
        tps = [TopicPartition(topics.samples, p) for p in sorted(parts or ())]
        if not tps:
            raise TrainerError(f"topic {topics.samples!r} has no partitions")
        self.consumer.assign(tps)
        for tp in tps:
            if tp.partition in self.offsets:
                self.consumer.seek(tp, self.offsets[tp.partition])
            else:
                committed = await self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                    self.offsets[tp.partition] = committed
                else:
                    await self.consumer.seek_to_beginning(tp)
        self.producer = producer(s)
        await self.producer.start()
        if self.serving_version is not None and \
                self.repo.aliases().get("serving") != self.serving_version:
            await self._finish_promotion()
        await asyncio.to_thread(self.repo.ensure_serving)  # e.g. Triton restarted meanwhile
        if self.serving_version is not None:
            SERVING.set(self.serving_version)

    async def _finish_promotion(self) -> None:
        """A checkpoint names a version the alias does not: a crash stopped step 3."""
        version = self.serving_version
        assert version is not None
        if version not in self.repo.versions():
            return
        log.info("finishing the interrupted promotion of version %s", version)
        await asyncio.to_thread(self.repo.promote, version)

    async def stop(self) -> None:
        for closer in (getattr(self, "consumer", None), getattr(self, "producer", None)):
            if closer is not None:
                await closer.stop()
        if getattr(self, "items", None) is not None:
            await self.items.close()

    # -- loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None, max_rounds: int | None = None) -> None:
        """Consume and train until ``stop`` is set or ``max_rounds`` rounds ran."""
        stop = stop or asyncio.Event()
        assert self.learner is not None
        last_round = time.monotonic()
        done = 0
        while not stop.is_set() and (max_rounds is None or done < max_rounds):
            # at most one round's worth per fetch: a round trains at most round_samples new ones
            room = max(1, self.online.round_samples - len(self.learner.pending))
            batch = await self.consumer.getmany(timeout_ms=200, max_records=room)
            new, bad = [], []
            for messages in batch.values():
                for m in messages:
                    try:
                        new.append(decode_sample(m.value or b"", m.key, check_key=True))
                    except ContractError as exc:
                        bad.append((m, exc))
            if bad:  # dead-lettered (and acknowledged) before their offsets can be committed
                await self._dead_letter(bad)
            for tp, messages in batch.items():
                if messages:
                    self.offsets[tp.partition] = messages[-1].offset + 1
            SAMPLES.inc(self.learner.add(new))
            pending = len(self.learner.pending)
            waited = time.monotonic() - last_round
            if pending >= self.online.round_samples or (
                    waited >= self.online.round_seconds and pending >= self.online.min_round_samples):
                await self.round()
                last_round = time.monotonic()
                done += 1

    async def _dead_letter(self, bad: list[tuple[Any, ContractError]]) -> None:
        """Malformed samples to the dead-letter topic with their reason (stage ``trainer``),
        waiting for the broker's acks."""
        from semirec.streams.dlq import dead_letter, letter_key

        futures = []
        for m, exc in bad:
            SAMPLES_BAD.labels(exc.reason.value).inc()
            log.warning("malformed sample at %s@%s dead-lettered: %s", m.partition, m.offset, exc)
            letter = dead_letter(_Received(m), exc.reason, str(exc), stage="trainer")
            futures.append(await self.producer.send(self.settings.topics.events_dlq, letter,
                                                    key=letter_key(m)))
        await asyncio.gather(*futures)

    async def round(self) -> dict[str, Any]:
        """One candidate: fetch vectors, fine-tune, judge, then promote or reject; checkpoint."""
        learner = self.learner
        assert learner is not None
        await self._retry_promotion()
        await self._follow_manual_promotions()
        await self._fetch_vectors()
        result: RoundResult = await asyncio.to_thread(learner.round, self.table)
        ROUND_SECONDS.observe(result.seconds)
        verdict = result.verdict
        for name, metrics in (("serving", verdict.serving), ("candidate", verdict.candidate)):
            for metric in ("auc", "gauc", "logloss"):
                if metric in metrics and not np.isnan(metrics[metric]):
                    EVAL.labels(name, metric).set(metrics[metric])
        record: dict[str, Any] = {"trained": len(result.trained), "holdout": len(result.holdout),
                                  "skipped_without_vector": result.skipped_without_vector,
                                  "serving": finite(verdict.serving),
                                  "candidate": finite(verdict.candidate),
                                  "reasons": list(verdict.reasons), "seconds": result.seconds}
        version = None
        if verdict.promote:
            version = await asyncio.to_thread(self._export, result)
            learner.accept(result)
            self.serving_version = version
        else:
            learner.reject(result)
            for reason in verdict.reasons:
                REJECTIONS.labels(reason.split()[0]).inc()
            log.info("candidate rejected: %s", "; ".join(verdict.reasons))
        await self._checkpoint()
        if version is not None:
            began = time.time()
            try:
                timings = await asyncio.to_thread(self.repo.promote, version)
            except ModelRepositoryError as exc:
                why = self._why(exc)
                log.error("promotion of version %s failed: %s; retried at the next round",
                          version, why)
                REJECTIONS.labels("promotion_failed").inc()
                record["reasons"].append(f"promotion_failed {why}")
                self.unpromoted = (version, self.repo.aliases().get("serving"))
            else:
                PROMOTION_SECONDS.observe(timings["load_s"] + timings["first_answer_s"])
                record.update(version=version, promote=timings,
                              promote_window=(began, time.time()))
                record["freshness"], record["freshness_ages"] = self._observe_freshness(result)
                TRAINED.inc(len(result.trained))
                SERVING.set(version)
                await self._announce(version, result, record)
        ROUNDS.labels("promoted" if "version" in record else "rejected").inc()
        self.rounds.append(record)
        return record

    # -- steps ---------------------------------------------------------------------------------
    def _why(self, exc: Exception) -> str:
        """One line (semirec.core.faults) for a failed promotion: Triton unreachable, no model..."""
        from semirec.core.faults import classify

        fault = classify(exc, triton=self.repo.triton_grpc or "(none)")
        return fault.message if fault else " ".join(str(exc).split())

    async def _retry_promotion(self) -> None:
        """Promote the version whose promotion failed, unless another was promoted by hand
        since (then that one is followed); the learner keeps the accepted candidate."""
        if self.unpromoted is None:
            return
        version, alias_then = self.unpromoted
        if self.repo.aliases().get("serving") != alias_then:
            self.unpromoted = None
            return
        try:
            await asyncio.to_thread(self.repo.promote, version)
        except ModelRepositoryError as exc:
            log.error("promotion of version %s failed again: %s", version, self._why(exc))
            return
        log.info("version %s promoted (its first promotion had failed)", version)
        self.unpromoted = None
        SERVING.set(version)

    async def _follow_manual_promotions(self) -> None:
        if self.unpromoted is not None:  # our own version is still waiting for Triton
            return
        serving = self.repo.aliases().get("serving")
        if serving is None or serving == self.serving_version or self.learner is None:
            return
        log.info("serving version changed by hand (%s -> %s): continuing from it",
                 self.serving_version, serving)
        model, cfg, _ = checkpoint.load(self.repo.checkpoint_dir(serving))
        fresh = Learner(model, cfg, self.online)
        fresh.pending, fresh.replay, fresh.seen = self.learner.pending, self.learner.replay, \
            self.learner.seen
        fresh.rounds = self.learner.rounds
        self.learner, self.serving_version = fresh, serving

    async def _fetch_vectors(self) -> None:
        assert self.learner is not None
        missing = self.table.missing(sample_ids(self.learner.pending))
        for start in range(0, len(missing), 2000):
            chunk = missing[start:start + 2000]
            got = await self.items.get_many(chunk, self.table.dim, skip_other_dims=True)
            found = np.flatnonzero(got.found)
            self.table.add([chunk[i] for i in found], got.vectors[found])

    def _export(self, result: RoundResult) -> int:
        with tempfile.TemporaryDirectory(prefix="semirec-candidate-") as tmp:
            assert self.learner is not None
            metrics = finite(result.verdict.candidate)
            checkpoint.save(Path(tmp), result.candidate, self.learner.cfg, {"metrics": metrics})
            return self.repo.export(Path(tmp), metrics=metrics)

    async def _checkpoint(self) -> None:
        assert self.learner is not None
        extra = {"serving_version": self.serving_version}
        await asyncio.to_thread(save_state, self.state_dir, self.learner, dict(self.offsets),
                                extra)
        from aiokafka import TopicPartition

        topic = self.settings.topics.samples
        if self.offsets:
            await self.consumer.commit({TopicPartition(topic, p): o
                                        for p, o in self.offsets.items()})

    def _observe_freshness(self, result: RoundResult) -> tuple[dict[str, float], list[float]]:
        """Age of each newly trained sample now that a model trained on it answers."""
        now = time.time()
        ages = [now - s.appended_at for s in result.trained if s.appended_at > 0]
        for age in ages:
            FRESHNESS.observe(age)
        if not ages:
            return {}, []
        return {"p50_s": float(np.percentile(ages, 50)), "p95_s": float(np.percentile(ages, 95)),
                "max_s": float(max(ages))}, ages

    async def _announce(self, version: int, result: RoundResult, record: dict[str, Any]) -> None:
        trained = result.trained
        body = {
            "model": "ranker", "version": version, "model_version": f"ranker/{version}",
            "previous_version": self.repo.aliases().get("previous"),
            "metrics": finite(result.verdict.candidate),
            "serving_metrics": finite(result.verdict.serving),
            "samples_trained": len(trained),
            "data_through": {
                "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
                "event_ts": max((s.ts for s in trained), default=None),
                "appended_at": max((s.appended_at for s in trained), default=None),
            },
            "freshness": record.get("freshness", {}),
            "promoted_at": time.time(),
        }
        await self.producer.send_and_wait(self.settings.topics.model_updates, key=b"ranker",
                                          value=json.dumps(body).encode())
