"""The incremental trainer service (``semirec trainer run``) around
:class:`semirec.trainer.online.learner.Learner`.

Reads ``samples`` with its own consumer group (all partitions assigned to this one learner),
fetches item vectors from Redis, runs a round every N samples or T seconds, and on a passed gate
exports the candidate into the model repository, checkpoints, promotes it in Triton and announces
it on ``model-updates``. A round is three steps:

- :meth:`OnlineTrainer.decide`: fine-tune a candidate and judge it (reads only);
- :meth:`OnlineTrainer.persist`: export version n (files only; Triton does not see it yet), then
  checkpoint (model = candidate, ``serving_version`` = n, offsets) and only then commit offsets;
- :meth:`OnlineTrainer.publish`: promote n in Triton (a restart finishes an interrupted
  promotion: the checkpoint recorded it), announce it on ``model-updates``
  (:class:`semirec.core.model_updates.ModelUpdate`), metrics.

so that a crash anywhere is recoverable. Each round leaves a :class:`RoundRecord` in
:attr:`OnlineTrainer.rounds` (the newest :data:`ROUND_HISTORY`).

A version promoted by hand (``semirec model promote|rollback``) is noticed at the next round:
the learner continues from that version's checkpoint.

One trainer is active at a time: :meth:`OnlineTrainer.start` first takes the trainer lease of
the model repository (:meth:`ModelRepository.acquire_lease`), waiting while another trainer
holds it (``semirec_trainer_active`` 0), and renews it in the background. The lease's epoch is
the fencing token of every export, promotion and checkpoint: a trainer that lost its lease
(paused past its expiry) gets :class:`FencedError` and stops. Instances share the state folder,
so the next one resumes from the last checkpoint and its offsets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from semirec.core.contracts import ContractError
from semirec.core.model_updates import (
    MODEL_UPDATE_KEY,
    DataThrough,
    Freshness,
    ModelUpdate,
    encode_model_update,
)
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
    ACTIVE,
    EPOCH,
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
from semirec.trainer.registry.repository import FencedError, ModelRepository, ModelRepositoryError

log = logging.getLogger(__name__)
# a version is served as a cascade (SEMIREC_RANKER_DEEP_TOP) only if the cascade keeps at least
# this mean share of its top 10 on the round's logged requests (issue 24's parity bound)
CASCADE_MIN_OVERLAP = 0.95

class _Received:
    """An aiokafka record as :func:`semirec.streams.dlq.dead_letter` reads a message (seconds)."""

    def __init__(self, record: Any) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.key, self.value = record.key, record.value
        self.timestamp = (record.timestamp or 0) / 1000


PARTITIONS_CHECK_S = 10.0  # how often the trainer looks for partitions added to samples
ROUND_HISTORY = 256  # rounds kept in OnlineTrainer.rounds (newest last; older ones dropped)


@dataclass(frozen=True)
class Promotion:
    """A version Triton now serves, and what it took."""

    version: int
    load_s: float  # Triton's load_model call
    first_answer_s: float  # from loaded to the version's first answer
    window: tuple[float, float]  # unix s: promote called -> alias moved
    freshness: Freshness  # as announced on model-updates
    ages: tuple[float, ...]  # each newly trained sample's age at the first answer (s)


@dataclass(frozen=True)
class RoundRecord:
    """What one round decided (:attr:`OnlineTrainer.rounds`: tests, benchmarks)."""

    trained: int  # new samples trained on (not the replay draw)
    holdout: int  # newest samples held out for the gate (trained on next round)
    skipped_without_vector: int
    serving: dict[str, float | None]  # the gate's metrics, nan as None
    candidate: dict[str, float | None]
    reasons: tuple[str, ...]  # why not promoted: the gate's, or "promotion_failed ..."
    seconds: float  # fine-tuning and judging
    exported: int | None = None  # version written to the model repository (gate passed)
    promotion: Promotion | None = None  # set once Triton serves the exported version

    @property
    def promoted(self) -> bool:
        return self.promotion is not None


class TrainerError(RuntimeError):
    """The trainer cannot start (no model to start from, no topic)."""


class OnlineTrainer:
    def __init__(self, settings: Settings, online: OnlineConfig | None = None, *,
                 state_dir: Path | None = None, repo: ModelRepository | None = None,
                 init: Path | None = None, history: int = ROUND_HISTORY,
                 lease_s: float | None = None) -> None:
        self.settings = settings
        self.online = online or OnlineConfig(seq_len=settings.seq_len,
                                             bucket_s=settings.time_bucket_s)
        self.state_dir = Path(state_dir or settings.trainer_state_dir)
        self.repo = repo or ModelRepository.from_settings(settings)
        self.init = init
        self.offsets: dict[int, int] = {}
        self.serving_version: int | None = None
        self.rounds: deque[RoundRecord] = deque(maxlen=history)  # the newest rounds, oldest first
        self.rounds_run = 0  # every round since start (``rounds`` keeps only the newest)
        self.learner: Learner | None = None
        self._partitions_checked = 0.0
        # (version, serving alias then) of a promotion that failed (Triton down): retried at
        # each round until it succeeds or someone promotes another version by hand
        self.unpromoted: tuple[int, int | None] | None = None
        self.lease_s = settings.trainer_lease_s if lease_s is None else lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.epoch: int | None = None  # fencing token while this trainer holds the lease
        self.lost: FencedError | None = None  # set by the heartbeat when the lease was lost
        self._heartbeat: asyncio.Task[None] | None = None

    # -- the lease -----------------------------------------------------------------------------
    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until this trainer holds the lease (True), or ``stop`` is set first (False)."""
        ACTIVE.set(0)
        waiting_for = None
        while True:
            got = await asyncio.to_thread(self.repo.acquire_lease, self.holder, self.lease_s)
            if isinstance(got, int):
                self.epoch = got
                break
            if got.holder != waiting_for:
                log.info("another trainer is active (%s, lease epoch %s): waiting",
                         got.holder, got.epoch)
                waiting_for = got.holder
            delay = min(max(0.05, got.expires_at - time.time()), self.lease_s / 3)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return False
                except TimeoutError:
                    pass
        ACTIVE.set(1)
        EPOCH.set(self.epoch)
        self._heartbeat = asyncio.create_task(self._renew())
        return True

    async def _renew(self) -> None:
        assert self.epoch is not None
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await asyncio.to_thread(self.repo.renew_lease, self.epoch, self.lease_s)
            except FencedError as exc:
                log.error("%s", exc)
                self.lost = exc
                ACTIVE.set(0)
                return
            except Exception as exc:  # the repository unreachable for a moment: retried
                log.warning("trainer lease not renewed: %s", exc)

    def _check_lease(self) -> None:
        if self.lost is not None:
            raise self.lost

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

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Take the lease (waiting while another trainer is active), restore, connect.
        False: ``stop`` was set while waiting (nothing else started)."""
        from aiokafka import AIOKafkaConsumer

        from semirec.core.item_store import ItemStore
        from semirec.core.kafka import ensure_topics, producer

        if not await self.acquire(stop):
            return False
        self._restore()  # after the lease: the previous holder's last checkpoint
        assert self.learner is not None
        self.table = ItemTable(self.learner.cfg.vector_dim)
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
        if not parts:
            raise TrainerError(f"topic {topics.samples!r} has no partitions")
        await self._assign(set(parts))
        self.producer = producer(s)
        await self.producer.start()
        if self.serving_version is not None and \
                self.repo.aliases().get("serving") != self.serving_version:
            await self._finish_promotion()
        await asyncio.to_thread(self.repo.ensure_serving)  # e.g. Triton restarted meanwhile
        if self.serving_version is not None:
            SERVING.set(self.serving_version)
        log.info("active trainer: lease epoch %s (%s), offsets %s", self.epoch, self.holder,
                 self.offsets)
        return True

    async def _assign(self, parts: set[int]) -> None:
        """Read ``parts`` of ``samples`` and those read already (this learner is the only
        one): each from the offset consumed so far (the checkpoint's), else the group's
        committed one, else the beginning."""
        from aiokafka import TopicPartition

        topic = self.settings.topics.samples
        parts |= {tp.partition for tp in self.consumer.assignment()}
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])  # resets positions
        for p in sorted(parts):
            tp = TopicPartition(topic, p)
            if p in self.offsets:
                self.consumer.seek(tp, self.offsets[p])
            else:
                committed = await self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                    self.offsets[p] = committed
                else:
                    await self.consumer.seek_to_beginning(tp)
        self._partitions_checked = time.monotonic()

    async def _follow_partitions(self) -> None:
        """Partitions added to ``samples`` since the last look (every PARTITIONS_CHECK_S)."""
        if time.monotonic() - self._partitions_checked < PARTITIONS_CHECK_S:
            return
        await self.consumer.topics()  # refreshes the metadata
        parts = set(self.consumer.partitions_for_topic(self.settings.topics.samples) or ())
        known = {tp.partition for tp in self.consumer.assignment()}
        self._partitions_checked = time.monotonic()
        if parts - known:
            log.info("samples grew partitions %s: reading them too", sorted(parts - known))
            await self._assign(parts)

    async def _finish_promotion(self) -> None:
        """A checkpoint names a version the alias does not: a crash stopped step 3."""
        version = self.serving_version
        assert version is not None
        if version not in self.repo.versions():
            return
        log.info("finishing the interrupted promotion of version %s", version)
        await asyncio.to_thread(self.repo.promote, version, fence=self.epoch)

    async def stop(self) -> None:
        """Close the clients, then give the lease up (a waiting trainer takes over at once)."""
        for closer in (getattr(self, "consumer", None), getattr(self, "producer", None)):
            if closer is not None:
                await closer.stop()
        if getattr(self, "items", None) is not None:
            await self.items.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.epoch is not None:
            await asyncio.to_thread(self.repo.release_lease, self.epoch)
            log.debug("trainer lease epoch %s released", self.epoch)
            self.epoch = None
            ACTIVE.set(0)

    # -- loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None, max_rounds: int | None = None) -> None:
        """Consume and train until ``stop`` is set or ``max_rounds`` rounds ran."""
        stop = stop or asyncio.Event()
        assert self.learner is not None
        last_round = time.monotonic()
        done = 0
        while not stop.is_set() and (max_rounds is None or done < max_rounds):
            self._check_lease()
            await self._follow_partitions()
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

    async def round(self) -> RoundRecord:
        """One round: :meth:`decide`, :meth:`persist`, :meth:`publish`; kept in :attr:`rounds`."""
        self._check_lease()
        await self._retry_promotion()  # an earlier round's publish that Triton refused
        result = await self.decide()
        version = await self.persist(result)
        record = await self.publish(result, version)
        self.rounds.append(record)
        self.rounds_run += 1
        return record

    async def decide(self) -> RoundResult:
        """Fine-tune a candidate on the pending samples and judge it (the gate's verdict).

        Only reads (the serving alias, item vectors from Redis); the learner is settled by
        :meth:`persist`."""
        await self._follow_manual_promotions()
        await self._fetch_vectors()
        assert self.learner is not None
        return await asyncio.to_thread(self.learner.round, self.table)

    async def persist(self, result: RoundResult) -> int | None:
        """Settle the round and make it durable: a passed candidate is exported as a new
        version (files only; Triton does not see it yet) and becomes the learner's model; then
        the checkpoint (naming that version) and only then the committed offsets. Returns the
        exported version (None: rejected, by the gate or because the export failed: the
        verdict then carries ``export_failed <why>``)."""
        learner = self.learner
        assert learner is not None
        version = None
        if result.verdict.promote:
            try:
                version = await asyncio.to_thread(self._export, result)
            except FencedError:
                raise
            except ModelRepositoryError as exc:  # this candidate cannot serve; the trainer goes on
                log.error("export of the passed candidate failed: %s; round rejected", exc)
                verdict = result.verdict
                result.verdict = replace(verdict, promote=False,
                                         reasons=(*verdict.reasons, f"export_failed {exc}"))
        if version is not None:
            learner.accept(result)
            self.serving_version = version
        else:
            learner.reject(result)
        await self._checkpoint()
        return version

    async def publish(self, result: RoundResult, version: int | None) -> RoundRecord:
        """Metrics of the round; an exported ``version`` is promoted in Triton (a failure is
        retried at the next round) and announced on ``model-updates``."""
        verdict = result.verdict
        ROUND_SECONDS.observe(result.seconds)
        for name, metrics in (("serving", verdict.serving), ("candidate", verdict.candidate)):
            for metric in ("auc", "gauc", "logloss"):
                if metric in metrics and not np.isnan(metrics[metric]):
                    EVAL.labels(name, metric).set(metrics[metric])
        record = RoundRecord(trained=len(result.trained), holdout=len(result.holdout),
                             skipped_without_vector=result.skipped_without_vector,
                             serving=finite(verdict.serving), candidate=finite(verdict.candidate),
                             reasons=tuple(verdict.reasons), seconds=result.seconds,
                             exported=version)
        if version is None:
            for reason in verdict.reasons:
                REJECTIONS.labels(reason.split()[0]).inc()
            log.info("candidate rejected: %s", "; ".join(verdict.reasons))
        else:
            began = time.time()
            try:
                timings = await asyncio.to_thread(self.repo.promote, version, fence=self.epoch)
            except FencedError:
                raise
            except ModelRepositoryError as exc:
                why = self._why(exc)
                log.error("promotion of version %s failed: %s; retried at the next round",
                          version, why)
                REJECTIONS.labels("promotion_failed").inc()
                record = replace(record, reasons=(*record.reasons, f"promotion_failed {why}"))
                self.unpromoted = (version, self.repo.aliases().get("serving"))
            else:
                PROMOTION_SECONDS.observe(timings["load_s"] + timings["first_answer_s"])
                freshness, ages = self._observe_freshness(result)
                record = replace(record, promotion=Promotion(
                    version=version, load_s=timings["load_s"],
                    first_answer_s=timings["first_answer_s"], window=(began, time.time()),
                    freshness=freshness, ages=tuple(ages)))
                TRAINED.inc(len(result.trained))
                SERVING.set(version)
                await self._announce(version, result, freshness)
        ROUNDS.labels("promoted" if record.promoted else "rejected").inc()
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
            await asyncio.to_thread(self.repo.promote, version, fence=self.epoch)
        except FencedError:
            raise
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
        fresh.counts = self.learner.counts
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
            deep_top = self._deep_top(result, metrics)
            checkpoint.save(Path(tmp), result.candidate, self.learner.cfg, {"metrics": metrics})
            return self.repo.export(Path(tmp), metrics=metrics, fence=self.epoch,
                                    deep_top=deep_top)

    def _deep_top(self, result: RoundResult, metrics: dict[str, Any]) -> int:
        """The repository's cascade for this candidate, or 0 (the whole graph) when the cascade
        would change its top 10 on the round's logged requests: mean overlap below
        :data:`CASCADE_MIN_OVERLAP` (``cascade_top10_overlap`` in ``metrics``)."""
        from semirec.trainer.registry.export import cascades

        assert self.learner is not None
        k = self.repo.deep_top
        if not cascades(result.candidate, k):
            return 0
        samples = [*self.learner.replay, *result.trained, *result.holdout]
        overlap = self.learner.cascade_overlap(result.candidate, samples, self.table, k)
        if overlap is None:
            return k
        metrics["cascade_top10_overlap"] = round(overlap, 4)
        if overlap < CASCADE_MIN_OVERLAP:
            log.warning("the cascade of %d changes the candidate's top 10 (mean overlap %.3f < "
                        "%s on logged requests): exported whole", k, overlap, CASCADE_MIN_OVERLAP)
            return 0
        return k

    async def _checkpoint(self) -> None:
        assert self.learner is not None
        extra = {"serving_version": self.serving_version, "epoch": self.epoch}
        offsets = dict(self.offsets)

        def write() -> None:  # under the fence: a trainer that lost its lease writes nothing
            assert self.learner is not None
            with self.repo.fenced(self.epoch):
                save_state(self.state_dir, self.learner, offsets, extra, epoch=self.epoch)

        await asyncio.to_thread(write)
        from aiokafka import TopicPartition

        topic = self.settings.topics.samples
        if self.offsets:
            await self.consumer.commit({TopicPartition(topic, p): o
                                        for p, o in self.offsets.items()})

    def _observe_freshness(self, result: RoundResult) -> tuple[Freshness, list[float]]:
        """Age of each newly trained sample now that a model trained on it answers."""
        now = time.time()
        ages = [now - s.appended_at for s in result.trained if s.appended_at > 0]
        for age in ages:
            FRESHNESS.observe(age)
        if not ages:
            return Freshness(), []
        return Freshness(p50_s=float(np.percentile(ages, 50)),
                         p95_s=float(np.percentile(ages, 95)), max_s=float(max(ages))), ages

    async def _announce(self, version: int, result: RoundResult, freshness: Freshness) -> None:
        trained = result.trained
        update = ModelUpdate(
            model="ranker", version=version, model_version=f"ranker/{version}",
            previous_version=self.repo.aliases().get("previous"),
            metrics=finite(result.verdict.candidate),
            serving_metrics=finite(result.verdict.serving),
            samples_trained=len(trained),
            data_through=DataThrough(
                offsets={str(p): o for p, o in sorted(self.offsets.items())},
                event_ts=max((s.ts for s in trained), default=None),
                appended_at=max((s.appended_at for s in trained), default=None)),
            freshness=freshness, promoted_at=time.time())
        await self.producer.send_and_wait(self.settings.topics.model_updates,
                                          key=MODEL_UPDATE_KEY, value=encode_model_update(update))
