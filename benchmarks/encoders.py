"""Item encoding throughput: eager torch vs the exported ONNX models (onnxruntime), in one run.

Both paths run the full pipeline (tokenise, decode images, text + image backbones, fusion)
with the feature cache off, on the same generated-world items, alternating rounds so that
load from other processes hits both alike; the best round of each counts. Also reports the
cached path (backbone features from the cache, fusion only) and the max |torch - onnx|.

    .venv/bin/python benchmarks/encoders.py [--items 256] [--rounds 3] [--threads 1] [--json]
        [--image-sizes 32,64,96,128]   # also: EfficientNet-Lite0 speed/quality per input side

Last stdout line with --json: {"items_per_s_eager", "items_per_s_exported", "ratio", ...}.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import orjson

# Run as a script, this folder is sys.path[0] and this file would shadow the encoders package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def image_size_sweep(sizes: list[int], n: int) -> dict[str, dict[str, float]]:
    """Per input side: EfficientNet-Lite0 ms/image and leave-one-out kNN@10 accuracy of the
    Fashion-MNIST class on its features (first ``n`` test images, production decode path)."""
    import io

    from PIL import Image

    from encoders.image import ImageBackbone, decode_image
    from worlds.sources import fashion_mnist

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


def timed(fn, items) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn(items)
    return time.perf_counter() - start, out


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

    from encoders.cache import FeatureCache
    from encoders.export import export_repository
    from encoders.exported import OnnxItemEncoder
    from encoders.pipeline import ItemEncoder
    from encoders.sample import sample_items

    torch.set_num_threads(threads)
    items = sample_items(n_items, seed)[:n_items]
    with tempfile.TemporaryDirectory(prefix="semirec-bench-enc-") as tmp:
        repo = Path(tmp) / "models"
        export_repository(repo, checkpoint)
        eager = ItemEncoder(checkpoint, cache=None)
        exported = OnnxItemEncoder(repo, threads=threads)
        warm = items[:8]
        eager.encode(warm)
        exported.encode(warm)
        t_eager, t_onnx = [], []
        for _ in range(rounds):
            dt, v_eager = timed(eager.encode, items)
            t_eager.append(dt)
            dt, v_onnx = timed(exported.encode, items)
            t_onnx.append(dt)
        cached = ItemEncoder(checkpoint, cache=FeatureCache(Path(tmp) / "features.sqlite"))
        cached.encode(items)  # fill the cache
        t_cached, _ = timed(cached.encode, items)
    summary = {
        "items": len(items), "rounds": rounds, "threads": threads,
        "items_per_s_eager": round(len(items) / min(t_eager), 1),
        "items_per_s_exported": round(len(items) / min(t_onnx), 1),
        "ratio": round(min(t_eager) / min(t_onnx), 2),
        "items_per_s_cached": round(len(items) / t_cached, 1),
        "max_abs_diff": float(np.abs(v_eager - v_onnx).max()),
        "encoder_version": eager.version,
    }
    if image_sizes:
        summary["image_size_sweep"] = image_size_sweep(
            [int(x) for x in image_sizes.split(",")], sweep_images)
    if not as_json:
        for key, value in summary.items():
            click.echo(f"{key}: {value}")
    click.echo(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
