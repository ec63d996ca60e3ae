"""Rankers: SEMI on Triton (async gRPC), the same ONNX graph in process, and the fallback.

:class:`ModelRanker` is what the recommender needs from a model ranker; both classes here
implement it.
:class:`TritonRanker` calls the ``ranker`` model with a time budget per call and raises
:class:`RankerUnavailable` for anything that is not a score (server down, timeout, model not
loaded, bad response), so the recommender can fall back. :class:`TritonReplicas` spreads the
calls over several tritonservers on one model repository (``SEMIREC_TRITON_GRPC=a:8001,b:8001``):
round-robin, a circuit breaker per server, a failed call retried on the next server, and the
versions the replicas answer with compared (skew is logged and measured).
:func:`triton_ranker` picks the one or the other. :class:`OnnxRanker` runs a version
directory's ``model.onnx`` with onnxruntime in this process (benchmarks, parity tests).
:func:`fallback_scores` ranks without a model: similarity to the user's profile blended with
popularity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from semirec.serving import metrics
from semirec.serving.breaker import CircuitBreaker, State
from semirec.serving.errors import RankerUnavailable

_T = TypeVar("_T")

log = logging.getLogger(__name__)

MODEL = "ranker"
OUTPUT = "score"
_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(bool): "BOOL"}


class ModelRanker(Protocol):
    async def rank(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """Scores [B, C] and the answering model version; raises RankerUnavailable."""
        ...

    async def identity_buckets(self) -> int:
        """0, or the hashed-id bucket count of a model with item identity."""
        ...

    async def takes_skipped(self) -> bool:
        """Whether the model reads the incomplete watches (``skipped*`` inputs, ``+usr``)."""
        ...

    async def problem(self) -> str | None:
        """Why the ranker cannot answer now, in one line, or None."""
        ...

    async def close(self) -> None: ...


class TritonRanker:
    """Scores [B, C] from the Triton ``ranker`` model; ``model_version`` from each response."""

    def __init__(self, url: str, *, model: str = MODEL, timeout_s: float = 0.1,
                 shared_memory: bool = False) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        self._id_buckets: int | None = None  # read from the loaded model's config when needed
        self._skipped = False  # read with _id_buckets
        self._last_version = ""
        # inputs through system shared memory (Triton on this host): no 2 MB protobuf per call
        self.shared_memory = shared_memory
        self._regions: list[_Region] = []  # free, registered with the server
        self._all_regions: list[_Region] = []  # free or in use by a call
        self._epoch = 0  # bumped when the regions are dropped: older ones die when given back
        self._made = 0

    async def identity_buckets(self) -> int:
        """The serving model's item-identity bucket count (0: it takes no identity inputs),
        from its Triton config (parameter ``id_buckets``, semirec/trainer/registry/repository.py); read again
        after an error or when another version answers."""
        if self._id_buckets is None:
            try:
                cfg = (await self.client.get_model_config(
                    self.model, as_json=True, client_timeout=self.timeout_s * 5))["config"]
            except Exception as exc:
                raise RankerUnavailable(f"triton {self.url}: {_first_line(exc)}") from exc
            names = {i["name"] for i in cfg.get("input", [])}
            param = cfg.get("parameters", {}).get("id_buckets", {}).get("string_value", "0")
            self._id_buckets = int(param) if "candidate_bucket" in names else 0
            self._skipped = "skipped" in names
        return self._id_buckets

    async def takes_skipped(self) -> bool:
        """Whether the serving model has the ``skipped*`` inputs (its Triton config's inputs;
        read with :meth:`identity_buckets`)."""
        await self.identity_buckets()
        return self._skipped

    async def rank(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        region = None
        try:
            if self.shared_memory:
                region = await self._region(sum(v.nbytes for v in tensors.values()))
            inputs = []
            offset = 0
            for name, value in tensors.items():
                tensor = self._grpc.InferInput(name, list(value.shape), _DTYPES[value.dtype])
                if region is None:
                    tensor.set_data_from_numpy(np.ascontiguousarray(value))
                else:
                    region.write(value, offset)
                    tensor.set_shared_memory(region.name, value.nbytes, offset)
                    offset += value.nbytes
                inputs.append(tensor)
            return await self._infer(inputs)
        except RankerUnavailable:
            if region is not None:  # perhaps a restarted server that forgot the regions
                await self._drop_regions()
            raise
        finally:
            if region is not None:
                await self._give_back(region)

    async def _region(self, nbytes: int) -> _Region:
        """A free registered region of at least ``nbytes`` (a new one when none is free)."""
        for k, region in enumerate(self._regions):
            if region.size >= nbytes:
                return self._regions.pop(k)
        import os

        import tritonclient.utils.shared_memory as shm

        size = max(nbytes, 4 << 20)
        self._made += 1  # names never reused: a dropped region may still be in use
        name = f"semirec-{os.getpid()}-{id(self)}-{self._made}"
        handle = shm.create_shared_memory_region(name, "/" + name, size)
        region = _Region(name, size, handle, self._epoch)
        self._all_regions.append(region)
        try:
            await self.client.register_system_shared_memory(name, "/" + name, size,
                                                            client_timeout=self.timeout_s * 5)
        except Exception as exc:
            self._all_regions.remove(region)
            shm.destroy_shared_memory_region(handle)
            raise RankerUnavailable(f"triton {self.url}: {_first_line(exc)}") from exc
        return region

    async def _drop_regions(self) -> None:
        """Forget every region (the server may have forgotten them): the free ones now, those a
        concurrent call is using when it gives them back (it still writes into its own)."""
        self._epoch += 1
        free, self._regions = self._regions, []
        for region in free:
            await self._destroy(region)

    async def _give_back(self, region: _Region) -> None:
        """After a call: free for the next one, or destroyed if dropped meanwhile."""
        if region.epoch == self._epoch:
            self._regions.append(region)
        else:
            await self._destroy(region)

    async def _destroy(self, region: _Region) -> None:
        import tritonclient.utils.shared_memory as shm

        with suppress(Exception):  # the server is gone or forgot it: nothing to undo there
            await self.client.unregister_system_shared_memory(region.name,
                                                              client_timeout=self.timeout_s)
        shm.destroy_shared_memory_region(region.handle)
        self._all_regions.remove(region)

    async def _infer(self, inputs: list) -> tuple[np.ndarray, str]:
        try:
            result = await asyncio.wait_for(
                self.client.infer(self.model, inputs, client_timeout=self.timeout_s,
                                  outputs=[self._grpc.InferRequestedOutput(OUTPUT)]),
                self.timeout_s * 2)  # the client timeout does not cover a stuck channel
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # InferenceServerException, grpc and asyncio errors alike
            self._id_buckets = None  # perhaps another version with other inputs: ask again
            raise RankerUnavailable(f"triton {self.url}: {_first_line(exc)}") from exc
        scores = result.as_numpy(OUTPUT)
        if scores is None:
            raise RankerUnavailable(f"triton {self.url}: response without {OUTPUT!r}")
        version = result.get_response().model_version
        if version != self._last_version:
            self._last_version, self._id_buckets = version, None
        return scores, f"{self.model}/{version}"

    async def problem(self) -> str | None:
        """Why the ranker cannot answer now, in one line (semirec.core.faults), or None."""
        from semirec.core.faults import classify

        try:
            if await self.client.is_model_ready(self.model, client_timeout=self.timeout_s * 5):
                return None
            return f"Triton at {self.url} (SEMIREC_TRITON_GRPC) has no {self.model} loaded: " \
                   "`semirec model load` loads the serving version"
        except Exception as exc:
            fault = classify(exc, triton=self.url)
            return fault.message if fault else f"Triton at {self.url}: {_first_line(exc)}"

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(self.model, client_timeout=self.timeout_s * 5))
        except Exception:
            return False

    async def close(self) -> None:
        await self._drop_regions()
        await self.client.close()


class TritonReplicas:
    """Several tritonservers serving one model repository, as one :class:`ModelRanker`.

    Each call goes to the next server in turn (round-robin) whose circuit breaker lets it
    through (``failures`` consecutive failures open it; after ``cooldown_s`` one call probes
    it); a failed call is retried on the next server while the time budget (``timeout_s``)
    lasts, so one server going away costs no answer. Only when every server failed or is
    skipped does :meth:`rank` raise :class:`RankerUnavailable` (the recommender falls back).

    The answering version is kept per server: while the replicas answer with different versions
    (a promotion under way, a replica that missed one) ``semirec_triton_version_skew`` is 1 and
    a warning names each server's version; ``skew_s`` sums the time spent so."""

    def __init__(self, urls: Sequence[str], *, model: str = MODEL, timeout_s: float = 0.1,
                 shared_memory: bool = False, failures: int = 2, cooldown_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("TritonReplicas needs at least one server")
        self.urls = list(urls)
        self.url = ",".join(self.urls)
        self.model = model
        self.timeout_s = timeout_s
        self.clock = clock
        self.servers = [TritonRanker(u, model=model, timeout_s=timeout_s, shared_memory=shared_memory)
                        for u in self.urls]
        self.breakers = [CircuitBreaker(failures, cooldown_s, clock) for _ in self.urls]
        self.versions: dict[str, str] = {}  # server -> version of its last answer
        self.skew_s = 0.0
        self._skew_since: float | None = None
        self._next = 0

    def _turn(self) -> list[int]:
        """Server indexes in this call's order (the round-robin start moves on each call)."""
        start, n = self._next, len(self.servers)
        self._next = (start + 1) % n
        return [(start + k) % n for k in range(n)]

    async def identity_buckets(self) -> int:
        """From the server the next call goes to first (a replica whose breaker is open is
        skipped; each server caches its answer until another version answers)."""
        return await self._model_input(TritonRanker.identity_buckets)

    async def takes_skipped(self) -> bool:
        """Whether the next server's model has the ``skipped*`` inputs (as :meth:`identity_buckets`)."""
        return await self._model_input(TritonRanker.takes_skipped)

    async def _model_input(self, ask: Callable[[TritonRanker], Awaitable[_T]]) -> _T:
        errors = []
        n = len(self.servers)
        for i in ((self._next + k) % n for k in range(n)):
            if self.breakers[i].state is State.OPEN:
                continue
            try:
                return await ask(self.servers[i])
            except RankerUnavailable as exc:
                self._failed(i)
                errors.append(str(exc))
        raise RankerUnavailable("; ".join(errors) or self._all_open())

    async def rank(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        started = self.clock()
        errors = []
        for i in self._turn():
            if errors and self.clock() - started >= self.timeout_s:
                break  # the budget went on a server that did not answer: fall back now
            if not self.breakers[i].allow():
                continue
            try:
                scores, version = await self.servers[i].rank(tensors)
            except RankerUnavailable as exc:
                self._failed(i)
                errors.append(str(exc))
                metrics.TRITON_RETRIES.labels(self.urls[i]).inc()
                continue
            self.breakers[i].success()
            self._answered(i, version)
            return scores, version
        raise RankerUnavailable("; ".join(errors) or self._all_open())

    def _all_open(self) -> str:
        return f"every Triton server ({self.url}) is skipped: circuit open after failures"

    def _failed(self, i: int) -> None:
        breaker = self.breakers[i]
        was = breaker.state
        breaker.failure()
        if breaker.state is State.OPEN and was is State.CLOSED:
            log.warning("Triton %s skipped for %.1f s (circuit open); the other servers answer",
                        self.urls[i], breaker.cooldown_s)
        if self.versions.pop(self.urls[i], None) is not None:  # it serves nothing now
            metrics.TRITON_SERVER_VERSION.labels(self.urls[i]).set(0)
            self._check_skew()

    def _answered(self, i: int, version: str) -> None:
        url = self.urls[i]
        if self.versions.get(url) == version:
            return
        self.versions[url] = version
        number = version.rpartition("/")[2]
        metrics.TRITON_SERVER_VERSION.labels(url).set(int(number) if number.isdigit() else 0)
        self._check_skew()

    def _check_skew(self) -> None:
        skewed = len(set(self.versions.values())) > 1
        now = self.clock()
        if skewed and self._skew_since is None:
            self._skew_since = now
            log.warning("Triton replicas answer with different versions: %s",
                        ", ".join(f"{u} {v}" for u, v in sorted(self.versions.items())))
        elif not skewed and self._skew_since is not None:
            spent = now - self._skew_since
            self.skew_s += spent
            metrics.TRITON_VERSION_SKEW_SECONDS.inc(spent)
            self._skew_since = None
            log.info("Triton replicas answer with one version again (%s) after %.1f s of skew",
                     next(iter(self.versions.values()), "-"), spent)
        metrics.TRITON_VERSION_SKEW.set(int(skewed))

    def skew(self) -> float:
        """Seconds the replicas have answered with different versions, the current stretch
        included."""
        return self.skew_s + (0.0 if self._skew_since is None else self.clock() - self._skew_since)

    async def problem(self) -> str | None:
        """None while any server has the model ready (a replica down is logged by
        :meth:`rank`); else every server's problem."""
        problems = await asyncio.gather(*(s.problem() for s in self.servers))
        if any(p is None for p in problems):
            return None
        return "; ".join(p for p in problems if p)

    async def ready(self) -> bool:
        return any(await asyncio.gather(*(s.ready() for s in self.servers)))

    async def close(self) -> None:
        for server in self.servers:
            await server.close()


def triton_ranker(addresses: str, *, timeout_s: float, shared_memory: bool = False) \
        -> TritonRanker | TritonReplicas:
    """The ranker for ``SEMIREC_TRITON_GRPC``: one server as ever, or the replicas it lists."""
    from semirec.core.settings import triton_servers

    urls = triton_servers(addresses)
    if len(urls) == 1:
        return TritonRanker(urls[0], timeout_s=timeout_s, shared_memory=shared_memory)
    return TritonReplicas(urls, timeout_s=timeout_s, shared_memory=shared_memory)


class _Region:
    """A system shared-memory region registered with Triton."""

    __slots__ = ("epoch", "handle", "name", "size")

    def __init__(self, name: str, size: int, handle: object, epoch: int = 0) -> None:
        self.name, self.size, self.handle, self.epoch = name, size, handle, epoch

    def write(self, value: np.ndarray, offset: int) -> None:
        buf = self.handle._mpsm_handle.buf  # type: ignore[attr-defined]
        np.ndarray(value.shape, value.dtype, buffer=buf[offset: offset + value.nbytes])[...] = value


class OnnxRanker:
    """The same request graph in process (onnxruntime, ``threads`` intra-op threads):
    ``model_onnx`` is the graph to load, ``model.onnx`` or its int8 copy (the repository
    resolves the precision: semirec.trainer.registry.precision.model_for), loaded as every
    server loads it (semirec.core.ranker_sessions)."""

    def __init__(self, model_onnx: Path, *, threads: int = 1, version: str = "onnx",
                 id_buckets: int = 0) -> None:
        from semirec.core.ranker_sessions import session

        self.session = session(model_onnx, threads)
        self.names = {i.name for i in self.session.get_inputs()}
        self.version = version
        if "candidate_bucket" in self.names and id_buckets <= 0:
            raise ValueError(f"{model_onnx} uses item identity: pass its id_buckets")
        self.id_buckets = id_buckets if "candidate_bucket" in self.names else 0

    async def identity_buckets(self) -> int:
        return self.id_buckets

    async def takes_skipped(self) -> bool:
        return "skipped" in self.names

    def rank_sync(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT], {k: v for k, v in tensors.items() if k in self.names})[0]

    async def rank(self, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        return await asyncio.to_thread(self.rank_sync, tensors), self.version

    async def problem(self) -> str | None:
        return None  # loaded in process: it answers or raises

    async def close(self) -> None:
        """Nothing to release beyond the session, which goes with the object."""


def fallback_scores(similarity: np.ndarray, popularity: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Model-free scores in [0, 1]: ``weight`` x similarity (cosine mapped to [0, 1]) plus the
    rest x popularity (already in [0, 1]); a user without a profile (similarity all 0) is
    ranked by popularity alone."""
    if not np.any(similarity):
        return popularity.astype(np.float32)
    return (weight * (similarity + 1.0) / 2.0 + (1.0 - weight) * popularity).astype(np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
