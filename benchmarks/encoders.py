"""Item encoding throughput: eager torch vs the exported ONNX models (onnxruntime), in one run.

All paths run the full pipeline (tokenise, decode images, text + image backbones, fusion)
with the feature cache off, on the same generated-world items, alternating rounds so that
load from other processes hits them alike; the best round of each counts:

- ``exported``: onnxruntime, titles in length groups (what the catalog agent and
  ``semirec items encode`` use);
- ``eager``: torch, the same length groups (like for like);
- ``eager_padded``: torch, titles in input order padded to the longest of each batch of 64
  (every path before length groups);
- ``exported_int8``: ``exported`` with the int8 text model (runtime ``onnx-int8``), with its
  fidelity to ``exported``: cosine of the item vectors and the overlap of each item's 10
  nearest neighbours in the batch (``int8_*``).

Rates are given per wall second and per CPU second of this process (``cpu_``: items per
core-second, the steadier figure on a shared machine), with the CPU seconds of each stage in
the best round. Also: the cached path (fusion only), max |torch - onnx|, the machine (CPU
model, instruction-set flags, load average) and the onnxruntime session settings.

    python -m benchmarks.encoders [--items 256] [--rounds 3] [--threads 1] [--json]
        [--image-sizes 32,64,96,128]   # also: EfficientNet-Lite0 speed/quality per input side

Last stdout line with --json: {"items_per_s_eager", "items_per_s_exported", "ratio", ...}; ``ratio``
is eager over the *default* runtime (``default_runtime``: ``$SEMIREC_ENCODER_RUNTIME``, else the
built-in default), ``ratio_fp32`` / ``ratio_int8`` name the runtime. The CPU model and its
instruction-set flags are printed on stderr first (and under ``machine``), so figures from
different machines are not mixed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from benchmarks.machine import finish, print_describe
from benchmarks.machine import machine as shared_machine

PATHS = ("eager_padded", "eager", "exported", "exported_int8")
DEFAULT_PATH = {"onnx": "exported", "onnx-int8": "exported_int8", "torch": "eager"}  # runtime -> path


def machine() -> dict[str, Any]:
    """:func:`benchmarks.machine.machine` plus torch's version and CPU capability."""
    import torch

    return {**shared_machine(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


class Stages:
    """CPU seconds per stage (text, image, fusion) of one encoder, reset per round."""

    def __init__(self, encoder: Any) -> None:
        self.seconds: dict[str, float] = {}
        ex = encoder.extractor
        ex.text_fn = self._wrap("text", ex.text_fn)
        ex.image_fn = self._wrap("image", ex.image_fn)
        encoder.fuse_features = self._wrap("fusion", encoder.fuse_features)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - start
        return timed


def image_size_sweep(sizes: list[int], n: int) -> dict[str, dict[str, float]]:
    """Per input side: EfficientNet-Lite0 ms/image and leave-one-out kNN@10 accuracy of the
    Fashion-MNIST class on its features (first ``n`` test images, production decode path)."""
    import io

    from PIL import Image

    from semirec.encoders.image import ImageBackbone, decode_image
    from semirec.worlds.sources import fashion_mnist

    images, labels = fashion_mnist("t10k")
    pngs = []
    for img in images[:n]:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    labels = labels[:n]
    out = {}
    for size in sizes:
        backbone = ImageBackbone(size)
        pixels = np.stack([decode_image(b, size) for b in pngs])
        backbone.features(pixels[:64])  # warm-up
        start = time.perf_counter()
        feats = backbone.features(pixels)
        ms = (time.perf_counter() - start) / n * 1000
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        sims = feats @ feats.T
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1)[:, :10]
        votes = np.array([np.bincount(labels[t], minlength=10).argmax() for t in top])
        out[str(size)] = {"ms_per_image": round(ms, 2),
                          "knn10_acc": round(float((votes == labels).mean()), 3)}
    return out


def timed(fn: Callable[[Any], np.ndarray], items: list) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds of this process, result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(items)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def int8_fidelity(fp32: np.ndarray, int8: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine of int8 to fp32 item vectors, and how many of each item's k nearest neighbours
    (cosine, within the batch) the int8 vectors keep."""
    a = fp32 / np.linalg.norm(fp32, axis=1, keepdims=True)
    b = int8 / np.linalg.norm(int8, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)

    def neighbours(x: np.ndarray) -> np.ndarray:
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    overlap = [len(set(p) & set(q)) / k for p, q in zip(neighbours(a), neighbours(b), strict=True)]
    return {"int8_cos_min": round(float(cos.min()), 4), "int8_cos_mean": round(float(cos.mean()), 4),
            f"int8_knn{k}_overlap": round(float(np.mean(overlap)), 3)}


@click.command()
@click.option("--items", "n_items", default=256, show_default=True, help="Items per round.")
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds per path.")
@click.option("--threads", default=1, show_default=True, help="Threads for torch and onnxruntime.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--image-sizes", default="", help="Also sweep image sizes, e.g. 32,64,96,128.")
@click.option("--sweep-images", default=2000, show_default=True, help="Images per sweep size.")
@click.option("--json", "as_json", is_flag=True)
def main(n_items: int, rounds: int, threads: int, checkpoint: Path | None, seed: int,
         image_sizes: str, sweep_images: int, as_json: bool) -> None:
    import torch

    from semirec.encoders.cache import FeatureCache
    from semirec.encoders.export import export_repository
    from semirec.encoders.exported import OnnxItemEncoder
    from semirec.encoders.pipeline import ItemEncoder, runtime_setting
    from semirec.encoders.sample import sample_items

    torch.set_num_threads(threads)
    items = sample_items(n_items, seed)[:n_items]
    at_start = machine()
    default = runtime_setting()
    print_describe(at_start)
    click.echo(f"default runtime: {default}", err=True)
    with tempfile.TemporaryDirectory(prefix="semirec-bench-enc-") as tmp:
        repo = Path(tmp) / "models"
        export_cpu = time.process_time()
        export_repository(repo, checkpoint)
        export_cpu = time.process_time() - export_cpu
        encoders = {"eager_padded": ItemEncoder(checkpoint, cache=None),
                    "eager": ItemEncoder(checkpoint, cache=None),
                    "exported": OnnxItemEncoder(repo, threads=threads),
                    "exported_int8": OnnxItemEncoder(repo, threads=threads, precision="int8")}
        encoders["eager_padded"].extractor.text_backbone.max_padding = None
        stages = {name: Stages(enc) for name, enc in encoders.items()}
        for enc in encoders.values():
            enc.encode(items[:8])  # warm-up
        runs: dict[str, list[tuple[float, float, dict[str, float]]]] = {p: [] for p in PATHS}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(rounds):
            for name in PATHS:
                stages[name].seconds = {}
                wall, cpu, vectors[name] = timed(encoders[name].encode, items)
                runs[name].append((wall, cpu, stages[name].seconds))
        cached = ItemEncoder(checkpoint, cache=FeatureCache(Path(tmp) / "features.sqlite"))
        cached.encode(items)  # fill the cache
        t_cached, _, _ = timed(cached.encode, items)
    n = len(items)
    best_wall = {p: min(r[0] for r in runs[p]) for p in PATHS}
    best_cpu = {p: min(runs[p], key=lambda r: r[1]) for p in PATHS}
    summary: dict[str, Any] = {
        "items": n, "rounds": rounds, "threads": threads,
        **{f"items_per_s_{p}": round(n / best_wall[p], 1) for p in PATHS},
        "default_runtime": default,
        "ratio": round(best_wall["eager"] / best_wall[DEFAULT_PATH.get(default, "eager")], 2),
        "ratio_fp32": round(best_wall["eager"] / best_wall["exported"], 2),
        "ratio_vs_eager_padded": round(best_wall["eager_padded"] / best_wall["exported"], 2),
        **{f"cpu_items_per_s_{p}": round(n / best_cpu[p][1], 1) for p in PATHS},
        "cpu_ratio": round(best_cpu["eager"][1] / best_cpu["exported"][1], 2),
        "cpu_ratio_vs_eager_padded": round(best_cpu["eager_padded"][1] / best_cpu["exported"][1], 2),
        "ratio_int8": round(best_wall["eager"] / best_wall["exported_int8"], 2),
        "cpu_ratio_int8": round(best_cpu["eager"][1] / best_cpu["exported_int8"][1], 2),
        **int8_fidelity(vectors["exported"], vectors["exported_int8"]),
        "stage_cpu_s": {p: {k: round(v, 3) for k, v in best_cpu[p][2].items()} for p in PATHS},
        "items_per_s_cached": round(n / t_cached, 1),
        "max_abs_diff": float(np.abs(vectors["eager"] - vectors["exported"]).max()),
        "max_abs_diff_padded": float(np.abs(vectors["eager_padded"] - vectors["exported"]).max()),
        "export_cpu_s": round(export_cpu, 1),
        "encoder_version": encoders["eager"].version,
        "onnxruntime_session": encoders["exported"].settings,
    }
    finish(summary, at_start)
    print_describe(summary["machine"])
    if image_sizes:
        summary["image_size_sweep"] = image_size_sweep(
            [int(x) for x in image_sizes.split(",")], sweep_images)
    if not as_json:
        for key, value in summary.items():
            click.echo(f"{key}: {value}")
    click.echo(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
