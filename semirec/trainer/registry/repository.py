"""The Triton model repository as a registry for one model, ``ranker``: versions, aliases, swaps.

Tensor contract of model ``ranker`` (the batched request graph of
:mod:`semirec.trainer.registry.export`; every model declares every input, whichever domains it
reads). B = users in the request (1..64), L =
``settings.seq_len`` (left-padded, newest last, mask False on padding; an empty sequence is L
slots of mask False), C = candidates (a fixed count per request), d = item-vector size (128):

=================  ==============  ======================================================
name               dtype / shape   meaning
=================  ==============  ======================================================
``video``          FP32 [B, L, d]  item vectors of the user's completely watched videos
``video_age``      INT64 [B, L]    hours before the request (clipped by the model)
``video_mask``     BOOL [B, L]     True = real entry
``product``        FP32 [B, L, d]  item vectors of the user's clicked products
``product_age``    INT64 [B, L]
``product_mask``   BOOL [B, L]
``candidates``     FP32 [B, C, d]  candidate video vectors
``score`` (out)    FP32 [B, C]     P(watched completely)
=================  ==============  ======================================================

Triton's config dims leave out the batch axis (``[-1, 128]``, ``[-1]``); the infer response's
``model_version`` says which version answered.

On disk (``root`` = ``settings.model_repository``)::

    ranker/config.pbtxt           CPU: python backend running model.onnx with onnxruntime
    ranker/configs/tensorrt.pbtxt GPU: the same tensors on a TensorRT plan
    ranker/<n>/model.onnx         batched request graph      (build outputs, not in git)
    ranker/<n>/model.int8.onnx    its int8 copy (precision int8, or auto on a VNNI CPU: made at
                                  export, or by the server that first needs it;
                                  semirec.trainer.registry.precision)
    ranker/<n>/model.py           python-backend shim over semirec.encoders.triton_onnx
    ranker/<n>/meta.json          version, checkpoint sha256, model config, created_at, metrics
    ranker/<n>/checkpoint/        the safetensors checkpoint it was exported from
    ranker/aliases.json           {"serving": n, "previous": m, "last_version": k}
    ranker/trainer-lease.json     {"epoch": e, "holder": ..., "expires_at": unix s}

Every change of ``aliases.json`` and of the lease is made under an ``fcntl`` lock on
``ranker/.lock``; version numbers are allocated under it (``last_version``: never reused).
The online trainer holds a lease (:meth:`ModelRepository.acquire_lease`): its ``epoch`` is a
fencing token, incremented at each change of holder, which :meth:`ModelRepository.export`,
:meth:`ModelRepository.promote` and :meth:`ModelRepository.fenced` check under the lock, so a
trainer that lost its lease (paused past its expiry, cut off) cannot export, promote or
checkpoint (:class:`FencedError`).

Versions are immutable and numbered; what serves is the ``serving`` alias (mlflow style). A
version is written into a temporary folder and renamed into place, so Triton never sees half of
one. :meth:`ModelRepository.promote` loads exactly that version in explicit model-control mode
(``load_model`` with a config override whose ``version_policy`` names it; Triton keeps the old
version serving until the new one is loaded and warmed up), checks that it answers, and only
then moves the alias. :meth:`ModelRepository.rollback` promotes ``previous``. The newest
``keep`` versions (and every aliased one) are kept.

Several tritonservers may serve the repository (``triton_grpc`` = ``a:8001,b:8001``, shared
storage): promote loads the version on each in turn and moves the alias when at least one
answers with it (``unconverged`` names the servers that did not; :meth:`ensure_serving` catches
them up); it also writes the serving version into the variant's config file, so that a server
loading the model from disk (restarted with ``--load-model=ranker``) serves the alias; and no
version is pruned while a listed server has it loaded (or does not answer the question).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semirec.core import durable
from semirec.trainer.nets.configs import ModelConfig
from semirec.trainer.registry.precision import (
    DEFAULT_PRECISION,
    INT8_ONNX,
    Int8ParityError,
    check_precision,
    quantize_checked,
    resolve,
)

log = logging.getLogger(__name__)

MODEL = "ranker"
META, ONNX, PLAN, MODEL_PY_FILE = "meta.json", "model.onnx", "model.plan", "model.py"
ALIASES, LOCK, CHECKPOINT_DIR, LEASE = "aliases.json", ".lock", "checkpoint", "trainer-lease.json"
ENGINE_VARIANT = "tensorrt"
MAX_BATCH = 64
QUEUE_DELAY_US = 500
WARMUP_LEN, WARMUP_CANDIDATES = 50, 500
TRT_PROFILE = {"batch": (1, 8, MAX_BATCH), "len": (1, 50, 255), "candidates": (1, 500, 1000)}
MODEL_PY = '''"""Triton python backend: serve this version's model.onnx with onnxruntime."""

import os
import sys

# the stub's embedded interpreter ignores PYTHONPATH: honour it, so a checkout's own semirec
# is served rather than the installed one (a no-op where PYTHONPATH is unset)
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                if p and p not in sys.path]

from semirec.encoders.triton_onnx import TritonPythonModel  # noqa: E402, F401
'''


class ModelRepositoryError(RuntimeError):
    """The repository cannot do what was asked (unknown version, no alias, bad checkpoint)."""


class FencedError(ModelRepositoryError):
    """A trainer's fencing token is no longer the lease's epoch: another trainer took over."""


@dataclass(frozen=True)
class Lease:
    """The trainer lease as stored: ``epoch`` (fencing token), who holds it, until when, and
    for how long each renewal extends it."""

    epoch: int
    holder: str
    expires_at: float
    ttl_s: float = 0.0

    def held(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)


class PromotionError(ModelRepositoryError):
    """Triton did not load or answer with the version; the alias was not moved."""


# -- config.pbtxt -----------------------------------------------------------------------------


def tensors(dim: int, identity: bool = False, skipped: bool = False) \
        -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(inputs, outputs) as (name, Triton type, dims without the batch axis), derived from the
    request graph's own example batch, so new inputs in ``semirec.trainer.registry.export.INPUTS`` follow; a
    ``+usr`` model (``skipped``) also has ``semirec.trainer.registry.export.SKIPPED_INPUTS``, a
    model with item identity ``semirec.trainer.registry.export.IDENTITY_INPUTS``."""
    from semirec.trainer.registry.export import OUTPUT, example_batch

    types = {"float32": "FP32", "int64": "INT64", "bool": "BOOL", "int32": "INT32"}
    batch = example_batch(1, dim, 2, 2, 2, identity=identity, skipped=skipped)
    names = list(batch)
    inputs = [(name, types[str(batch[name].dtype)], [-1, *map(int, batch[name].shape[2:])])
              for name in names]
    return inputs, [(OUTPUT, "FP32", [-1])]


def render(dim: int = 128, variant: str = "python", id_buckets: int = 0,
           version: int | None = None, precision: str = DEFAULT_PRECISION,
           skipped: bool = False) -> str:
    """``config.pbtxt`` text (CPU python backend, or the TensorRT variant) for ``dim``-d items;
    ``id_buckets`` > 0: a model with item identity (its inputs, and the bucket count as the
    ``id_buckets`` parameter, which the serving client reads to hash item ids); ``version``:
    the policy loads exactly that version (what promote writes), else the latest; ``precision``:
    the python backend's graph (``fp32`` model.onnx, ``int8`` model.int8.onnx, ``auto`` either,
    chosen by the server's CPU); ``skipped``: a
    ``+usr`` model (the incomplete watches' inputs, which the serving client sees in the
    config's inputs)."""
    check_precision(precision)
    inputs, outputs = tensors(dim, identity=id_buckets > 0, skipped=skipped)

    def block(kind: str, rows: list[tuple[str, str, list[int]]]) -> str:
        lines = [f'  {{ name: "{n}", data_type: TYPE_{t}, dims: [ {", ".join(map(str, d))} ] }}'
                 for n, t, d in rows]
        return f"{kind} [\n" + ",\n".join(lines) + "\n]\n"

    def warm(n: str, t: str, d: list[int]) -> str:
        shape = [WARMUP_CANDIDATES if n.startswith("candidate") else WARMUP_LEN, *d[1:]]
        return (f'    {{ key: "{n}", value: {{ data_type: TYPE_{t}, '
                f'dims: [ {", ".join(map(str, shape))} ], zero_data: true }} }}')

    head = ("# SEMI ranker: P(watched completely) of C candidate videos for B users; tensor\n"
            "# contract and generator: semirec/trainer/registry/repository.py (render).\n"
            f'name: "{MODEL}"\n')
    if variant == "python":
        head += 'backend: "python"\n'
    elif variant == ENGINE_VARIANT:
        head += f'platform: "tensorrt_plan"\ndefault_model_filename: "{PLAN}"\n'
    else:
        raise ValueError(f"unknown variant {variant!r}")
    body = (f"max_batch_size: {MAX_BATCH}\n"
            + ("# promote() loads exactly the serving version (a config override naming it)\n"
               "version_policy: { latest: { num_versions: 1 } }\n" if version is None else
               "# the serving alias, written by promote(): a server that loads the model from\n"
               "# disk (a restart with --load-model, poll mode) loads it, not the latest\n"
               f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n")
            + block("input", inputs) + block("output", outputs)
            + f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n")
    if variant == "python":
        body += ('instance_group [ { count: 1, kind: KIND_CPU } ]\n'
                 'parameters: { key: "intra_op_threads", value: { string_value: "1" } }\n'
                 f'parameters: {{ key: "precision", value: {{ string_value: "{precision}" }} }}\n')
    else:
        body += "instance_group [ { count: 1, kind: KIND_GPU } ]\n"
    if id_buckets:
        body += f'parameters: {{ key: "id_buckets", value: {{ string_value: "{id_buckets}" }} }}\n'

    body += ("# a version is READY only after it answered this request\n"
             "model_warmup [ {\n"
             f'  name: "one user, {WARMUP_LEN} entries, {WARMUP_CANDIDATES} candidates"\n'
             "  batch_size: 1\n  inputs: [\n"
             + ",\n".join(warm(*row) for row in inputs) + "\n  ]\n} ]\n")
    return head + body


def trtexec_shapes(dim: int, identity: bool = False, skipped: bool = False) -> str:
    """``--minShapes/--optShapes/--maxShapes`` for ``trtexec`` over :data:`TRT_PROFILE`."""
    inputs, _ = tensors(dim, identity, skipped)
    parts = []
    for i, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        shapes = []
        for name, _t, dims in inputs:
            axis = "candidates" if name.startswith("candidate") else "len"
            shape = [TRT_PROFILE["batch"][i], TRT_PROFILE[axis][i], *dims[1:]]
            shapes.append(f"{name}:" + "x".join(map(str, shape)))
        parts.append(f"{flag}=" + ",".join(shapes))
    return " ".join(parts)


def build_engine(version_dir: Path) -> Path:
    """``trtexec`` (``$TRTEXEC`` or on PATH) builds ``model.plan`` from ``model.onnx`` with the
    shapes in ``trtexec_args.txt`` (as ``triton_models/build_tensorrt.sh`` does). GPU only."""
    import shlex
    import subprocess

    trtexec = os.environ.get("TRTEXEC") or shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if not os.access(trtexec, os.X_OK):
        raise ModelRepositoryError("trtexec not found (set TRTEXEC): the tensorrt variant needs it")
    shapes = shlex.split((version_dir / "trtexec_args.txt").read_text())
    tmp = version_dir / f"{PLAN}.tmp"
    done = subprocess.run([trtexec, f"--onnx={version_dir / ONNX}", f"--saveEngine={tmp}",
                           *shapes, "--skipInference"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise ModelRepositoryError(f"trtexec failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return tmp.replace(version_dir / PLAN)


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    version: int
    sha256: str
    model: str
    dim: int
    created_at: str
    metrics: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    checkpoint: str = ""
    id_buckets: int = 0  # > 0: the model uses item identity (semirec.trainer.nets.identity)
    skipped: bool = False  # the model reads the incomplete watches (``+usr``)
    deep_top: int = 0  # > 0: the graph is a cascade of that many (export.cascade_probs)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "aliases": list(self.aliases), "model": self.model,
                "dim": self.dim, "sha256": self.sha256, "created_at": self.created_at,
                "metrics": self.metrics, "checkpoint": self.checkpoint,
                "deep_top": self.deep_top}


def _id_buckets(model_config: Mapping[str, Any]) -> int:
    return int(model_config.get("id_buckets", 0)) if model_config.get("item_identity") else 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json(body: Mapping[str, Any]) -> str:
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


class ModelRepository:
    """Versions of ``ranker`` under ``root`` and the Triton server (gRPC) that serves them."""

    def __init__(self, root: Path, triton_grpc: str | None = None, *, keep: int = 5,
                 variant: str = "python", load_timeout_s: float = 300.0,
                 precision: str = "fp32", deep_top: int = 0) -> None:
        """``precision``: the python backend's graph; ``fp32`` here (the exported graph itself),
        :meth:`from_settings` passes ``SEMIREC_RANKER_PRECISION`` (default ``auto``).
        ``deep_top``: versions are exported as a cascade of that many (0 = off here;
        :meth:`from_settings` passes ``SEMIREC_RANKER_DEEP_TOP``, default 150;
        :func:`semirec.trainer.registry.export.cascade_probs`)."""
        if keep < 2:
            raise ValueError("keep must be >= 2 (serving and previous)")
        self.root = Path(root)
        self.dir = self.root / MODEL
        self.triton_grpc = triton_grpc
        self.servers = [a.strip() for a in triton_grpc.split(",")] if triton_grpc else []
        self.keep = keep
        self.variant = variant
        self.load_timeout_s = load_timeout_s
        self.precision = check_precision(precision)
        self.deep_top = deep_top
        self.last_promotion: dict[str, float] = {}
        self.unconverged: dict[str, str] = {}  # server -> why the last promotion missed it

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> ModelRepository:
        return cls(Path(settings.model_repository_path), settings.triton_grpc,
                   keep=settings.model_keep_versions, variant=settings.triton_model_config or
                   "python", precision=settings.ranker_precision,
                   deep_top=settings.ranker_deep_top, **kw)

    # -- reading -------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Exported version numbers, ascending."""
        if not self.dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.dir.iterdir()
                      if p.name.isdigit() and (p / META).is_file())

    def aliases(self) -> dict[str, int]:
        """``serving`` / ``previous`` -> version (absent when unset)."""
        raw = self._state()
        return {k: int(raw[k]) for k in ("serving", "previous") if raw.get(k) is not None}

    def info(self, version: int) -> VersionInfo:
        path = self.dir / str(version) / META
        if not path.is_file():
            raise ModelRepositoryError(f"{MODEL} version {version} does not exist in {self.dir}")
        meta = json.loads(path.read_text())
        names = tuple(k for k, v in self.aliases().items() if v == version)
        return VersionInfo(version=int(meta["version"]), sha256=meta["checkpoint_sha256"],
                           model=ModelConfig.from_dict(meta["model"]).full_name,
                           dim=int(meta["dim"]),
                           created_at=meta["created_at"], metrics=meta.get("metrics") or {},
                           aliases=names, checkpoint=meta.get("checkpoint", ""),
                           id_buckets=_id_buckets(meta["model"]),
                           skipped=bool(meta["model"].get("user_rate", False)),
                           deep_top=int(meta.get("deep_top", 0)))

    def checkpoint_dir(self, version: int) -> Path:
        """The safetensors checkpoint that ``version`` was exported from (a copy)."""
        self.info(version)
        return self.dir / str(version) / CHECKPOINT_DIR

    def triton_config(self, version: int) -> str:
        """The JSON config override that loads exactly ``version`` (for ``load_model``)."""
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2

        msg = text_format.Parse(self.config_text(version), model_config_pb2.ModelConfig())
        return json_format.MessageToJson(msg, preserving_proto_field_name=True)

    def config_text(self, version: int) -> str:
        """``config.pbtxt`` (or the variant's) text that loads exactly ``version``."""
        info = self.info(version)
        return render(info.dim, self.variant, info.id_buckets, version=version,
                      precision=self.precision, skipped=info.skipped)

    def config_path(self) -> Path:
        """The config file a server reads from disk: ``config.pbtxt``, or the variant's
        (``--model-config-name=tensorrt``)."""
        return self.dir / ("config.pbtxt" if self.variant == "python"
                           else f"configs/{self.variant}.pbtxt")

    # -- writing -------------------------------------------------------------------------------
    def export(self, checkpoint_dir: Path, metrics: Mapping[str, Any] | None = None, *,
               fence: int | None = None, deep_top: int | None = None) -> int:
        """Write a new version from a ranker checkpoint; returns its number (allocated under
        the lock: concurrent exports get distinct numbers). ``fence``: the trainer's lease
        epoch, checked under the lock (:class:`FencedError`). ``deep_top``: the cascade of this
        version (default: the repository's; 0 = the whole graph).

        The ONNX graph is checked against the torch model on a random batch (``onnx_max_abs_diff``
        in the meta); a cascade also on a batch with more candidates than its ``deep_top`` (which
        the meta records: 0 = none), through :func:`~semirec.trainer.registry.export.cascade_diff`;
        ``metrics`` default to the checkpoint's own."""
        from semirec.trainer.nets import checkpoint
        from semirec.trainer.registry.export import (
            cascade_diff,
            cascades,
            example_batch,
            export_batched_onnx,
            fit_buckets,
            onnx_session,
            torch_batch_scores,
            uses_skipped,
        )

        checkpoint_dir = Path(checkpoint_dir)
        model, cfg, ckpt_meta = checkpoint.load(checkpoint_dir)
        dim = cfg.vector_dim
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{uuid.uuid4().hex[:12]}"
        try:
            tmp.mkdir()
            k = self.deep_top if deep_top is None else deep_top
            deep_top = k if cascades(model, k) else 0
            export_batched_onnx(model, tmp / ONNX, dim, deep_top=deep_top)
            session, diff = onnx_session(tmp / ONNX), 0.0
            for candidates in (17, deep_top + 50) if deep_top else (17,):
                batch = fit_buckets(model, example_batch(3, dim, 11, 6, candidates, seed=7,
                                                         identity=model.identity is not None,
                                                         skipped=uses_skipped(model)))
                got = session.run(["score"], batch)[0]  # a cascade: its best k are the model's
                diff = max(diff, cascade_diff(got, torch_batch_scores(model, batch),
                                              deep_top or candidates))
            if not diff < 1e-4:
                raise ModelRepositoryError(f"ONNX export differs from torch by {diff:.2e}")
            shutil.copytree(checkpoint_dir, tmp / CHECKPOINT_DIR,
                            ignore=shutil.ignore_patterns("*.tmp", ".*"))
            (tmp / MODEL_PY_FILE).write_text(MODEL_PY)
            (tmp / "trtexec_args.txt").write_text(trtexec_shapes(
                dim, model.identity is not None, uses_skipped(model)) + "\n")
            int8 = {}
            if self.variant == ENGINE_VARIANT:
                build_engine(tmp)
            elif resolve(self.precision) == "int8":  # served as int8: made (and checked) now
                try:
                    int8 = {"int8_max_abs_diff": quantize_checked(tmp / ONNX, tmp / INT8_ONNX)}
                except Int8ParityError as exc:
                    raise ModelRepositoryError(str(exc)) from exc
            meta = {
                "model": cfg.to_dict(), "dim": dim,
                "checkpoint": str(checkpoint_dir.resolve()),
                "checkpoint_sha256": file_sha256(checkpoint_dir / checkpoint.WEIGHTS),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "metrics": dict(metrics if metrics is not None else ckpt_meta.get("metrics", {})),
                "onnx_max_abs_diff": diff, "deep_top": deep_top, **int8,
            }
            with self._locked(renew=fence):
                self._check_fence(fence)
                state = self._state()
                version = max([*self.versions(), int(state.get("last_version") or 0)]) + 1
                (tmp / META).write_text(_json({"version": version, **meta}))
                durable.replace(tmp, self.dir / str(version))  # fsynced, renamed, dir fsynced
                self._save_state({**state, "last_version": version})
                self._prune()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return version

    def promote(self, version: int, *, fence: int | None = None) -> dict[str, float]:
        """Load ``version`` in every listed Triton, wait until it answers, then make it
        ``serving``. ``fence``: the trainer's lease epoch, checked under the lock before Triton
        is asked (the lease cannot change hands until the alias moved: acquiring needs the lock).

        Returns timings (the slowest server's): ``load_s`` (the ``load_model`` call: a new
        python stub starts and warms up) and ``first_answer_s``; ``servers``: how many serve it.
        With one server, a failure raises and the alias does not move (Triton keeps the version
        it served). With several, the servers are loaded one after the other and the alias
        moves when at least one answers with the version; :attr:`unconverged` names the others
        and why (each logged; :meth:`ensure_serving` retries them), :class:`PromotionError`
        when none does."""
        with self._locked(renew=fence):
            self._check_fence(fence)
            self.info(version)
            if not self.servers:
                raise ModelRepositoryError("no Triton address (SEMIREC_TRITON_GRPC)")
            timings = self._converge(version, self.servers)
            state = self._state()
            serving = state.get("serving")
            if serving != version:
                state = {**state, "serving": version, "previous": serving}
            durable.write_atomic(self.dir / ALIASES, _json({**state, "promoted_at": time.time()}))
            durable.write_atomic(self.config_path(), self.config_text(version))
            self._prune()
        self.last_promotion = timings
        return timings

    def _converge(self, version: int, servers: list[str]) -> dict[str, float]:
        """Load ``version`` on each of ``servers`` in turn (lock held); timings of the slowest.
        Sets :attr:`unconverged`; raises when no server serves it."""
        loads: list[tuple[float, float]] = []
        failed: dict[str, PromotionError] = {}
        config = self.triton_config(version)
        for server in servers:
            try:
                loads.append(self._load_on(server, version, config))
            except PromotionError as exc:
                failed[server] = exc
        self.unconverged = {server: str(exc) for server, exc in failed.items()}
        if not loads:
            first = next(iter(failed.values()))
            if len(failed) == 1:
                raise first
            raise PromotionError("; ".join(f"{s}: {e}" for s, e in failed.items())) \
                from first.__cause__ or first
        for server, exc in failed.items():
            log.warning("Triton %s does not serve %s version %s (the others do): %s", server,
                        MODEL, version, exc)
        return {"load_s": round(max(t for t, _ in loads), 3),
                "first_answer_s": round(max(a for _, a in loads), 3),
                "servers": len(loads)}

    def _load_on(self, server: str, version: int, config: str) -> tuple[float, float]:
        """Load ``version`` on ``server`` and wait until it answers: (load_s, first_answer_s)."""
        client = self._client(server)
        started = time.perf_counter()
        try:
            client.load_model(MODEL, config=config)
        except Exception as exc:  # tritonclient raises InferenceServerException
            raise PromotionError(f"Triton did not load {MODEL} version {version}: {exc}") \
                from exc
        loaded = time.perf_counter()
        self._wait_answers(client, version, self.info(version).dim)
        return loaded - started, time.perf_counter() - loaded

    def rollback(self) -> int:
        """Promote ``previous`` (which becomes ``serving``; the old serving becomes previous)."""
        previous = self.aliases().get("previous")
        if previous is None:
            raise ModelRepositoryError("no previous version to roll back to")
        self.promote(previous)
        return previous

    def load_serving(self) -> int | None:
        """(Re)load the ``serving`` version, e.g. after Triton restarted; None when unset."""
        serving = self.aliases().get("serving")
        if serving is not None:
            self.promote(serving)
        return serving

    def loaded(self, server: str) -> set[int] | None:
        """Versions of the ranker that ``server`` has loaded, loading or unloading (its
        repository index); None when it does not answer."""
        try:
            index = self._client(server).get_model_repository_index(
                as_json=True, client_timeout=5.0).get("models", [])
        except Exception:  # not answering: the caller decides what that means
            return None
        return {int(m["version"]) for m in index if m.get("name") == MODEL
                and str(m.get("version", "")).isdigit() and m.get("state") != "UNAVAILABLE"}

    def ensure_serving(self) -> int | None:
        """Make every listed Triton serve exactly the ``serving`` version when it does not (a
        restarted tritonserver, one that loaded another version or missed a promotion); no-op
        for those that do. Raises when no listed server serves it afterwards;
        :attr:`unconverged` names those that still do not. Returns the serving version (None
        when unset)."""
        serving = self.aliases().get("serving")
        if serving is None:
            return None
        behind = []
        for server in self.servers:
            try:
                index = self._client(server).get_model_repository_index(as_json=True)
                ready = {m.get("version") for m in index.get("models", [])
                         if m.get("name") == MODEL and m.get("state") == "READY"}
            except Exception:  # server not answering: the load reports it
                ready = set()
            if ready != {str(serving)}:
                behind.append(server)
        self.unconverged = {}
        if behind:
            with self._locked():
                try:
                    self._converge(serving, behind)
                except PromotionError:
                    if len(behind) == len(self.servers):
                        raise
                    log.warning("Triton %s do not serve %s version %s (the others do)",
                                ", ".join(self.unconverged), MODEL, serving)
        return serving

    def list(self) -> list[VersionInfo]:
        """Every kept version, newest first."""
        return [self.info(v) for v in reversed(self.versions())]

    # -- the trainer lease (one active trainer) ------------------------------------------------
    def lease(self) -> Lease | None:
        """The stored lease (None: no trainer ever held one)."""
        path = self.dir / LEASE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return Lease(int(raw["epoch"]), str(raw["holder"]), float(raw["expires_at"]),
                     float(raw.get("ttl_s", 0.0)))

    def acquire_lease(self, holder: str, ttl_s: float) -> int | Lease:
        """Take the trainer lease when nobody holds it (never held, released, or expired):
        returns the new epoch (the previous one + 1, the fencing token). Otherwise returns the
        lease in force (who holds it, until when)."""
        with self._locked():
            current = self.lease()
            if current is not None and current.held() and current.holder != holder:
                return current
            epoch = (current.epoch if current else 0) + 1
            self._write_lease(Lease(epoch, holder, time.time() + ttl_s, ttl_s))
            return epoch

    def renew_lease(self, epoch: int, ttl_s: float) -> None:
        """Extend the lease of ``epoch`` by ``ttl_s`` from now (:class:`FencedError`: lost)."""
        with self._locked():
            current = self._check_fence(epoch)
            assert current is not None
            self._write_lease(replace(current, expires_at=time.time() + ttl_s, ttl_s=ttl_s))

    def release_lease(self, epoch: int) -> None:
        """Give the lease up now (a waiting trainer takes it at once); no-op when lost."""
        with self._locked():
            current = self.lease()
            if current is not None and current.epoch == epoch:
                self._write_lease(replace(current, expires_at=0.0))

    @contextmanager
    def fenced(self, epoch: int | None) -> Iterator[None]:
        """Hold the repository lock while the lease's epoch is ``epoch`` (None: unfenced), for
        a write that a stale trainer must not make (the trainer's checkpoint)."""
        with self._locked(renew=epoch):
            self._check_fence(epoch)
            yield

    def _check_fence(self, epoch: int | None) -> Lease | None:  # lock held
        current = self.lease()
        if epoch is None:
            return current
        if current is None or current.epoch != epoch:
            holder = f"epoch {current.epoch}, held by {current.holder}" if current else "none"
            raise FencedError(f"trainer lease epoch {epoch} is stale (lease now: {holder}): "
                              "another trainer took over; this one must stop")
        return current

    def _extend(self, epoch: int | None) -> None:  # lock held
        """A fenced operation renews the lease when it ends: it held the lock, so the holder's
        own renewal waited (a Triton load can outlast the lease)."""
        current = self.lease()
        if epoch is not None and current is not None and current.epoch == epoch:
            self._write_lease(replace(current, expires_at=time.time() + current.ttl_s))

    def _write_lease(self, lease: Lease) -> None:
        durable.write_atomic(self.dir / LEASE, _json({
            "epoch": lease.epoch, "holder": lease.holder, "expires_at": lease.expires_at,
            "ttl_s": lease.ttl_s}))

    # -- internals -----------------------------------------------------------------------------
    def _client(self, server: str | None = None):  # -> tritonclient.grpc.InferenceServerClient
        if not self.servers:
            raise ModelRepositoryError("no Triton address (SEMIREC_TRITON_GRPC)")
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(server or self.servers[0])

    def _wait_answers(self, client, version: int, dim: int) -> None:
        import tritonclient.grpc as grpcclient

        from semirec.trainer.registry.export import example_batch

        info = self.info(version)
        id_buckets = info.id_buckets
        batch = example_batch(1, dim, 1, 1, 1, identity=id_buckets > 0, skipped=info.skipped)
        if id_buckets:
            batch["candidate_bucket"] %= id_buckets
        inputs = []
        names = tensors(dim, id_buckets > 0, info.skipped)[0]
        for name, (n, t, _d) in zip(batch, names, strict=True):
            tensor = grpcclient.InferInput(n, list(batch[name].shape), t)
            tensor.set_data_from_numpy(batch[name])
            inputs.append(tensor)
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            try:
                result = client.infer(MODEL, inputs, model_version=str(version),
                                      client_timeout=10.0)
                answered = result.get_response().model_version
                if answered == str(version):
                    return
                problem = f"version {answered} answered"
            except Exception as exc:  # not ready yet, or refused
                problem = str(exc)
            if time.monotonic() > deadline:
                raise PromotionError(f"{MODEL} version {version} never answered: {problem}")
            time.sleep(0.05)

    def _state(self) -> dict[str, Any]:
        path = self.dir / ALIASES
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_state(self, state: Mapping[str, Any]) -> None:
        durable.write_atomic(self.dir / ALIASES, _json(state))

    def _prune(self) -> list[int]:
        """Remove versions beyond the newest ``keep`` that no alias names and no listed Triton
        has loaded (lock held); none while a listed Triton does not answer (it may hold any)."""
        pinned = set(self.aliases().values())
        versions = self.versions()
        doomed = [v for v in versions[:-self.keep] if v not in pinned]
        if doomed and self.servers:
            for server in self.servers:
                held = self.loaded(server)
                if held is None:
                    log.warning("not pruning %s versions %s: Triton %s does not say what it "
                                "has loaded", MODEL, doomed, server)
                    return []
                pinned |= held
            doomed = [v for v in doomed if v not in pinned]
        for v in doomed:
            shutil.rmtree(self.dir / str(v), ignore_errors=True)
        return doomed

    @contextmanager
    def _locked(self, renew: int | None = None) -> Iterator[None]:
        """The repository lock; ``renew``: a fenced operation, which renews the lease of that
        epoch when it ends (:meth:`_extend`), whether it succeeded or not."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                try:
                    if renew is not None:
                        self._extend(renew)
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
