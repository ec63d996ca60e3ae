"""``semirec model``: export a ranker checkpoint into the Triton repository, list, promote, roll back."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from semirec.trainer.registry.repository import ModelRepository, ModelRepositoryError, VersionInfo


def _repository() -> ModelRepository:
    from semirec.core.settings import Settings

    return ModelRepository.from_settings(Settings.from_env())


def _fail(exc: Exception) -> None:
    """Triton unreachable, without the model, or not configured: re-raised for the CLI's one
    line and exit code (semirec.core.faults); the verb's own failures: exit 1."""
    from semirec.core.faults import classify

    if classify(exc) is not None:
        raise exc
    raise click.ClickException(str(exc)) from exc


def _table(rows: list[VersionInfo]) -> Table:
    table = Table(title="ranker versions")
    for col in ("version", "aliases", "model", "created (UTC)", "checkpoint sha256", "auc",
                "deep top"):
        table.add_column(col, justify="right" if col in ("version", "auc", "deep top") else "left")
    for r in rows:
        auc = r.metrics.get("auc")
        table.add_row(str(r.version), ", ".join(r.aliases), r.model, r.created_at[:19],
                      r.sha256[:12], "" if auc is None else f"{auc:.4f}",
                      str(r.deep_top) if r.deep_top else "all",
                      style="bold green" if "serving" in r.aliases else None)
    return table


@click.group()
def model() -> None:
    """The ranker in the Triton model repository (SEMIREC_MODEL_REPOSITORY): numbered versions,
    a `serving` alias that Triton loads, `previous` for rollback."""


@model.command()
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--promote", "then_promote", is_flag=True, help="Load it in Triton and serve it.")
@click.option("--json", "as_json", is_flag=True)
def export(checkpoint_dir: Path, then_promote: bool, as_json: bool) -> None:
    """Export CHECKPOINT_DIR (model.safetensors + config.json) as a new version."""
    repo = _repository()
    try:
        version = repo.export(checkpoint_dir)
        timings = repo.promote(version) if then_promote else None
    except (ModelRepositoryError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    info = repo.info(version)
    if as_json:
        click.echo(json.dumps({**info.as_dict(), "promote": timings,
                               **({"failed": repo.unconverged} if timings else {})}))
        return
    graph = f"a cascade of {info.deep_top}" if info.deep_top else "the whole graph"
    click.echo(f"exported {repo.dir / str(version)} (sha256 {info.sha256[:12]}, {graph})")
    if timings:
        click.echo(f"serving version {version} (loaded in {timings['load_s']:.1f} s)")
        _unconverged(repo)


@model.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def list_versions(as_json: bool) -> None:
    """Kept versions, newest first, with their aliases."""
    rows = _repository().list()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows]))
    else:
        Console().print(_table(rows))


@model.command()
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True)
def promote(version: int, as_json: bool) -> None:
    """Load VERSION in Triton, wait until it answers, make it `serving`."""
    repo = _repository()
    try:
        timings = repo.promote(version)
    except ModelRepositoryError as exc:
        _fail(exc)
    _report(repo, timings, as_json)


@model.command()
@click.option("--json", "as_json", is_flag=True)
def rollback(as_json: bool) -> None:
    """Serve the `previous` version again."""
    repo = _repository()
    try:
        repo.rollback()
    except ModelRepositoryError as exc:
        _fail(exc)
    _report(repo, repo.last_promotion, as_json)


@model.command()
@click.option("--json", "as_json", is_flag=True)
def load(as_json: bool) -> None:
    """Reload the `serving` version (after tritonserver restarted: explicit mode)."""
    repo = _repository()
    try:
        if repo.load_serving() is None:
            raise ModelRepositoryError("no serving version yet: semirec model promote VERSION")
    except ModelRepositoryError as exc:
        _fail(exc)
    _report(repo, repo.last_promotion, as_json)


def _report(repo: ModelRepository, timings: dict[str, float], as_json: bool) -> None:
    aliases = repo.aliases()
    if as_json:
        click.echo(json.dumps({**aliases, **timings, "failed": repo.unconverged}))
    else:
        click.echo(f"serving version {aliases['serving']} (previous "
                   f"{aliases.get('previous', '-')}; loaded in {timings['load_s']:.1f} s)")
        _unconverged(repo)


def _unconverged(repo: ModelRepository) -> None:
    """One stderr line per listed Triton that did not load the version (the others did)."""
    for server, why in repo.unconverged.items():
        click.echo(f"warning: Triton {server} does not serve it: {why} (`semirec model load` "
                   "retries)", err=True)
