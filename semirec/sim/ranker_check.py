"""The demo's ranker against plain content similarity, offline, on the demo's own world.

Trains each model as the demo does (``--quick``, the world of ``semirec demo``'s defaults, the
item vectors of ``$SEMIREC_ENCODER_CHECKPOINT``) and prints per model and seed: AUC on the
training, validation and test samples, the AUC of plain content similarity on the same test
samples (cosine of the candidate to the mean direction of the user's newest 10 products and 10
videos in the window; no truth), the AUC on the validation and test samples with an incomplete
watch in the request's own hour, as given and with those same-hour skips left out
(``fresh_skip_auc``: does the model rank better knowing them?), and the TRUTH DIAGNOSTIC (reads
the world's truth: mean true
P(complete) of the top 10 over the catalog and within serving's recall candidates,
:mod:`semirec.sim.truth_diagnostic`) of the model, similarity, popularity, random and the oracle.

    python -m semirec.sim.ranker_check --models semi_ccl,semi_ccl+sim --seeds 3 [--json]
"""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np


def similarity_scores(samples: Any, table: Any, newest: int = 10) -> np.ndarray:
    """Cosine of each sample's target to the mean direction of its newest ``newest`` products
    and videos (0 without any)."""
    import torch

    unit = torch.nn.functional.normalize(table, dim=1).numpy()
    out = np.zeros(len(samples), np.float32)
    for i in range(len(samples)):
        rows = ([r for r in samples.video[i] if r > 0][-newest:]
                + [r for r in samples.product[i] if r > 0][-newest:])
        if rows:
            out[i] = unit[samples.target[i]] @ unit[rows].mean(0)
    return out


def same_hour_skips(samples: Any) -> np.ndarray:
    """[S, L] bool: the incomplete watches of the request's own hour block (age 0)."""
    return (samples.skipped > 0) & (samples.skipped_age == 0)


def without_fresh_skips(samples: Any) -> Any:
    """``samples`` with :func:`same_hour_skips` left out, the older ones right-aligned again
    (as if those skips were not known yet)."""
    from dataclasses import replace

    older = (samples.skipped > 0) & ~same_hour_skips(samples)
    rows, ages = np.zeros_like(samples.skipped), np.zeros_like(samples.skipped_age)
    for i in range(len(rows)):
        keep = older[i]
        n = int(keep.sum())
        if n:
            rows[i, -n:], ages[i, -n:] = samples.skipped[i][keep], samples.skipped_age[i][keep]
    return replace(samples, skipped=rows, skipped_age=ages)


def fresh_skip_auc(model: Any, samples: Any, table: Any, seq_len: int, items: Any) -> dict[str, Any]:
    """AUC on the samples with a same-hour skip, as given and with those skips left out."""
    from semirec.trainer.offline.fit import predict
    from semirec.trainer.offline.metrics import auc

    fresh = samples.subset(np.flatnonzero(same_hour_skips(samples).any(axis=1)))
    out: dict[str, Any] = {"samples": len(fresh)}
    if len(fresh) and 0 < fresh.label.mean() < 1:
        for name, s in (("with", fresh), ("without", without_fresh_skips(fresh))):
            out[name] = round(auc(s.label, predict(model, s, s.target[:, None], table, seq_len,
                                                   items=items)[:, 0]), 4)
    return out


def check(models: list[str], seeds: int, users: int, cases: int,
          settings: dict[str, float] | None = None) -> dict[str, Any]:
    import torch

    from semirec.sim.truth_diagnostic import diagnose, torch_scorer
    from semirec.trainer.offline.evaluate import model_config, prepare, train_model
    from semirec.trainer.offline.fit import predict
    from semirec.trainer.offline.metrics import auc
    from semirec.trainer.offline.vectors import item_vectors
    from semirec.worlds import load_world

    torch.set_num_threads(1)
    world = load_world("world", seed=0, size="demo", users=users, new_videos=30)
    vectors = item_vectors(world.items)
    data = prepare("world", world.items, world.events, vectors)
    test = data.test
    out: dict[str, Any] = {"stats": data.stats(),
                           "similarity_test_auc": round(auc(test.label, similarity_scores(
                               test, data.table)), 4), "runs": []}
    for name in models:
        cfg = model_config(name, data, True, settings=settings)
        for seed in range(seeds):
            model, info = train_model(name, data, cfg, seed)
            items = data.features(cfg.id_buckets) if cfg.item_identity else None
            row: dict[str, Any] = {"model": name, "seed": seed, "best_epoch": info["best_epoch"]}
            for split in ("train", "val", "test"):
                s = getattr(data, split)
                row[f"{split}_auc"] = round(auc(s.label, predict(
                    model, s, s.target[:, None], data.table, cfg.train.seq_len,
                    items=items)[:, 0]), 4)
            row["fresh_skip_auc"] = {split: fresh_skip_auc(model, getattr(data, split), data.table,
                                                           cfg.train.seq_len, items)
                                     for split in ("val", "test")}
            row["truth_diagnostic"] = diagnose(world, vectors, torch_scorer(model, world, vectors),
                                               cases=cases)
            out["runs"].append(row)
    return out


@click.command()
@click.option("--models", default="semi_ccl,semi_ccl+sim", show_default=True)
@click.option("--seeds", default=3, show_default=True)
@click.option("--users", default=300, show_default=True, help="The demo's default.")
@click.option("--cases", default=100, show_default=True)
@click.option("--set", "overrides", default="", help="Settings for every model, as `semirec "
              "evaluate --set` takes them ('train.epochs=6,block.dropout=0.3'): choose them on "
              "the validation AUC, not on the TRUTH DIAGNOSTIC.")
@click.option("--json", "as_json", is_flag=True)
def main(models: str, seeds: int, users: int, cases: int, overrides: str, as_json: bool) -> None:
    """The demo's ranker vs plain content similarity (AUCs; TRUTH DIAGNOSTIC top-10)."""
    from semirec.cli.evaluate import parse_settings

    result = check(models.split(","), seeds, users, cases, parse_settings(overrides))
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"similarity test AUC {result['similarity_test_auc']}  {result['stats']}")
    for r in result["runs"]:
        d = r["truth_diagnostic"]
        click.echo(f"{r['model']} seed {r['seed']}: AUC train {r['train_auc']} val {r['val_auc']} "
                   f"test {r['test_auc']} (best epoch {r['best_epoch']}); with same-hour skips "
                   f"{r['fresh_skip_auc']}; TRUTH DIAGNOSTIC top-10 "
                   f"catalog model {d['model']} similarity {d['similarity']}, among candidates "
                   f"model {d['among_candidates']['model']} similarity "
                   f"{d['among_candidates']['similarity']} random {d['among_candidates']['random']}")


if __name__ == "__main__":
    main()
