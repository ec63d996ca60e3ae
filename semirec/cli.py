"""The ``semirec`` command line. Verbs live next to what they drive and load lazily."""

from __future__ import annotations

import importlib

import click

# verb -> "module:attribute" of a click command or group. Loaded only when invoked,
# so `semirec --help` and light verbs never import torch.
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("sim.cli:demo", "The whole system live with a simulated audience, measured against the truth."),
    "stack": ("semirec.stack_cli:stack", "Run the embedded broker, Redis and Triton."),
    "worker": ("streams.worker_cli:worker", "Run stream agents: ingest, catalog, recommend."),
    "produce": ("semirec.produce_cli:produce", "Publish JSON-lines events to the events topic."),
    "user": ("semirec.user_cli:user", "Show a user's video and product sequences."),
    "items": ("encoders.cli:items", "Encode catalog items (JSON lines) into vectors in Redis."),
    "encoders": ("encoders.cli:encoders", "Pre-train, export (ONNX/Triton) and version the item encoders."),
    "world": ("worlds.cli:world", "Generate the two-domain world or convert MovieLens-100k."),
    "lag": ("semirec.lag_cli:lag", "Consumer lag per partition (table, JSON, watch, exporter)."),
    "evaluate": ("trainer.cli:evaluate", "Train and evaluate SEMI, CCL and the baselines offline."),
    "train": ("trainer.cli:train", "Train one ranker; save a checkpoint (and ONNX)."),
    "model": ("trainer.model_cli:model", "Ranker versions on Triton: export, list, promote, rollback."),
    "recommend": ("serving.cli:recommend", "Ask for a user's recommendations and print them."),
    "recommendations": ("serving.cli:recommendations", "Watch the recommendations topic."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module, _, attr = VERBS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, VERBS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semirec")
def cli() -> None:
    """semirec: streaming SEMI recommendations for e-commerce micro-videos.

    Addresses and names come from SEMIREC_* environment variables (see docs/configuration.md);
    `semirec stack up` starts a local stack and prints them.
    """


def main() -> None:
    cli()
