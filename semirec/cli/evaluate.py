"""``semirec evaluate`` (every model, the paper's protocol) and ``semirec train`` (one model)."""

from __future__ import annotations

import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from semirec.trainer.nets.configs import MODEL_NAMES, check_name

DATA = ("world", "ml100k")


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(1) if torch.get_num_interop_threads() != 1 else None


def _load(data: str, size: str, world_seed: int, encoder: Path | None, console: Console,
          max_rank_cases: int, vectors_from: str = "encoder", runtime: str = "torch"):
    """World -> item vectors (cached) -> prepared samples, split and negatives."""
    from semirec.trainer.offline.ceiling import observable_item_probs
    from semirec.trainer.offline.evaluate import EvalProtocol, prepare
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.worlds import load_world

    with console.status(f"loading {data} and its item vectors (cached after the first run)"):
        world = (load_world("world", seed=world_seed, size=size) if data == "world"
                 else load_world("ml100k"))
        if vectors_from == "truth":
            if data != "world":
                raise click.BadParameter("only the generated world knows its items' attributes",
                                         param_hint="--vectors")
            from semirec.trainer.offline.ceiling import truth_vectors

            vectors = truth_vectors(world)
        else:
            vectors = item_vectors(world.items, checkpoint=encoder, runtime=runtime)
        observable = observable_item_probs(world) if world.item_probs is not None else None
        prepared = prepare(data, world.items, world.events, vectors, world.true_prob or None,
                           EvalProtocol(max_rank_cases=max_rank_cases),
                           item_probs=world.item_probs, observable_probs=observable)
    return prepared


class _Bars:
    """rich progress: one bar for all runs, one for the current run (samples processed);
    parallel runs (``--jobs``) only report finished runs."""

    def __init__(self, progress: Progress, runs: int) -> None:
        self.progress = progress
        self.overall = progress.add_task("models", total=runs)
        self.current: Any = None

    def run_started(self, name: str, seed: int, total: int):
        self.current = self.progress.add_task(f"{name} seed {seed}", total=total)
        return lambda n: self.progress.advance(self.current, n)

    def run_finished(self, name: str, seed: int, metrics: dict[str, Any]) -> None:
        line = f"{name} seed {seed}: AUC {metrics['auc']:.4f} GAUC {metrics['gauc']:.4f}"
        if self.current is not None:
            self.progress.update(self.current, completed=self.progress.tasks[self.current].total,
                                 description=line)
        self.progress.advance(self.overall)
        if self.current is None or not self.progress.console.is_terminal:
            self.progress.console.print(f"{line} ({metrics['seconds']:.0f} s)")
        self.current = None


def parse_settings(text: str) -> dict[str, float]:
    """``a.b=1,c.d=2`` -> ``{"a.b": 1.0, "c.d": 2.0}`` (``--set``)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise click.BadParameter(f"{part!r} is not key=value", param_hint="--set")
        out[key.strip()] = float(value)
    return out


def _table(result: dict[str, Any]) -> Table:
    from semirec.trainer.offline.evaluate import TABLE_METRICS as METRICS

    oracle = result.get("oracle_auc")
    observable = result.get("observable_oracle_auc")
    table = Table(title=f"{result['data']}: mean ± std over {result['seeds']} seed(s)"
                  + (f", oracle AUC {oracle:.4f}" if oracle is not None else "")
                  + (f", observable oracle AUC {observable:.4f}" if observable else ""))
    table.add_column("model")
    for m in METRICS:
        table.add_column(m + (" (paper)" if m == "hr@3" else ""), justify="right")
    table.add_column("s/run", justify="right")
    best = {m: max(r.get(m, -1.0) for r in result["results"]) for m in METRICS}
    for row in result["results"]:
        cells = []
        for m in METRICS:
            if m not in row:
                cells.append("-")
                continue
            text = f"{row[m]:.4f} ± {row[f'{m}_std']:.4f}"
            cells.append(f"[bold]{text}[/bold]" if row[m] == best[m] else text)
        table.add_row(row["model"], *cells, f"{row['seconds']:.0f}")
    return table


@click.command()
@click.option("--data", type=click.Choice(DATA), default="world", show_default=True)
@click.option("--quick", is_flag=True, help="Small budgets (subset, 3 epochs, sequences of 20).")
@click.option("--seeds", type=click.IntRange(1, 20), default=None,
              help="Training seeds per model [default: 3, or 1 with --quick].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object last on stdout.")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write DATA[-quick].md and DATA[-quick].png into this directory.")
@click.option("--models", default=",".join(MODEL_NAMES), show_default=True,
              help="Comma-separated subset of the models; a neural model's name + '+id' adds "
                   "item identity (hashed id bias + smoothed completion rate), a SEMI model's "
                   "+ '+sim' explicit content similarity, then optionally '+rec' (recency "
                   "features), '+ses' (the newest hour block's similarity), '+usr' (the user's "
                   "completion rate on like content), in this order, then '+id' "
                   "(e.g. '+sim+ses+usr+id').")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Runs (model x seed) in parallel processes, one torch thread each.")
@click.option("--set", "settings", default="", help="Override settings for every model, e.g. "
              "'train.weight_decay=0.1,ccl.tau=0.2,mlp_hidden=64' (train.*, ccl.*, block.*, "
              "mlp_hidden, rate_prior_strength; to choose them on validation AUC).")
@click.option("--size", default="demo", show_default=True, help="Generated world preset.")
@click.option("--world-seed", type=int, default=0, show_default=True)
@click.option("--encoder", type=click.Path(exists=True, path_type=Path), default=None,
              help="Item encoder checkpoint [default: $SEMIREC_ENCODER_CHECKPOINT or built-in].")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True,
              help="torch threads (1 is fastest on a shared 2-core machine).")
@click.option("--train-fraction", type=click.FloatRange(0.01, 1.0), default=1.0,
              show_default=True, help="Train on a random share of the training split.")
@click.option("--vectors", "vectors_from", type=click.Choice(["encoder", "truth"]),
              default="encoder", show_default=True,
              help="Diagnostic: 'truth' = the generated items' latent attributes, not encoder "
                   "output (separates the encoder's share of the gap to the oracle).")
@click.option("--encoder-runtime", type=click.Choice(["torch", "onnx", "onnx-int8"]), default="torch",
              show_default=True, help="What encodes the item vectors: eager torch, or the exported "
              "models under onnxruntime (fp32, or with the int8 text model).")
def evaluate(data: str, quick: bool, seeds: int | None, as_json: bool, report: Path | None,
             models: str, jobs: int, settings: str, size: str, world_seed: int, encoder: Path | None,
             threads: int, train_fraction: float, vectors_from: str, encoder_runtime: str) -> None:
    """Train and evaluate every model on DATA with the paper's protocol.

    Chronological split (last 20% of watches = test), sequences cut to 7 days; AUC and GAUC of
    P(complete), also for users with <= 2 videos; HR@10 against 100 popularity-matched
    negatives; AUC within the videos shown together; the paper's HR@3 against 300 random
    videos not watched before; mean ± std over seeds; on the generated world also the oracle
    and the observable oracle.
    """
    from semirec.trainer.offline.evaluate import evaluate as run_all

    names = [m.strip() for m in models.split(",") if m.strip()]
    for name in names:
        try:
            check_name(name)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--models") from err
    seeds = seeds or (1 if quick else 3)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    _threads(threads)
    err = Console(stderr=True)
    started = time.perf_counter()
    prepared = _load(data, size, world_seed, encoder, err, 1000 if quick else 5000, vectors_from,
                     encoder_runtime)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        result = run_all(prepared, names, seeds, quick, _Bars(progress, len(names) * seeds),
                         train_fraction, jobs, parse_settings(settings))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["vectors"] = vectors_from
    result["encoder_runtime"] = encoder_runtime
    result["command"] = "semirec evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    if report:
        from semirec.trainer.offline.report import write_report

        for path in write_report(result, report):
            err.print(f"wrote {path}")
    if as_json:
        click.echo(json.dumps(result))
    else:
        Console().print(_table(result))
        click.echo(f"wall time {result['wall_s']:.0f} s")


@click.command()
@click.option("--data", type=click.Choice(DATA), default="world", show_default=True)
@click.option("--model", "name", default="semi_ccl", show_default=True,
              help="A neural model; append '+sim' (SEMI: explicit content similarity, no new "
                   "graph inputs; then '+rec' recency features, '+ses' session similarity, "
                   "'+usr' the user's completion rate (extra graph inputs)) and/or '+id' "
                   "(item identity, extra graph inputs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Checkpoint directory (model.safetensors + config.json).")
@click.option("--onnx", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also export the request graph to this ONNX file.")
@click.option("--quick", is_flag=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", default="demo", show_default=True)
@click.option("--world-seed", type=int, default=0, show_default=True)
@click.option("--encoder", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True)
def train(data: str, name: str, out: Path, onnx: Path | None, quick: bool, seed: int, size: str,
          world_seed: int, encoder: Path | None, threads: int) -> None:
    """Train one model on DATA's training split, save a checkpoint, optionally export ONNX."""
    from semirec.trainer.nets import checkpoint
    from semirec.trainer.offline.evaluate import model_config, run_model_trained

    try:
        check_name(name)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--model") from err
    if name == "pop":
        raise click.BadParameter("pop is not a neural model", param_hint="--model")

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    _threads(threads)
    err = Console(stderr=True)
    prepared = _load(data, size, world_seed, encoder, err, 1000)
    cfg = model_config(name, prepared, quick)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        bars = _Bars(progress, 1)
        from semirec.trainer.offline.evaluate import work_units

        tick = bars.run_started(name, seed, work_units(name, cfg, prepared))
        model, metrics = run_model_trained(name, prepared, cfg, seed, tick)
        bars.run_finished(name, seed, metrics)
    checkpoint.save(out, model, cfg, {"data": data, "seed": seed, "metrics": metrics})
    click.echo(f"saved {out}")
    if onnx:
        from semirec.trainer.registry.export import export_onnx

        click.echo(f"exported {export_onnx(model, onnx, cfg.vector_dim)}")
    click.echo(json.dumps({"model": name, **{k: metrics[k] for k in ("auc", "hr@3")}}))
