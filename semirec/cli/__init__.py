"""The ``semirec`` command line. Every verb's module is in this package; each loads lazily."""

from __future__ import annotations

import faulthandler
import importlib
import logging
import signal
import sys
import traceback

import click

# verb -> "module:attribute" of a click command or group. Loaded only when invoked,
# so `semirec --help` and light verbs never import torch.
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("semirec.cli.demo:demo",
             "The whole system live with a simulated audience, measured against the truth."),
    "stack": ("semirec.cli.stack:stack", "Run the embedded broker, Redis and Triton."),
    "worker": ("semirec.cli.worker:worker", "Run stream agents: ingest, catalog, recommend."),
    "produce": ("semirec.cli.produce:produce", "Publish JSON-lines events to the events topic."),
    "user": ("semirec.cli.user:user", "Show a user's video and product sequences."),
    "items": ("semirec.cli.encoders:items", "Encode catalog items (JSON lines) into vectors in Redis."),
    "encoders": ("semirec.cli.encoders:encoders",
                 "Pre-train, export (ONNX/Triton), version and probe the item encoders."),
    "world": ("semirec.cli.world:world", "Generate the two-domain world or convert MovieLens-100k."),
    "lag": ("semirec.cli.lag:lag", "Consumer lag per partition (table, JSON, watch, exporter)."),
    "evaluate": ("semirec.cli.evaluate:evaluate", "Train and evaluate SEMI, CCL and the baselines offline."),
    "train": ("semirec.cli.evaluate:train", "Train one ranker; save a checkpoint (and ONNX)."),
    "trainer": ("semirec.cli.trainer:trainer", "Incremental trainer: samples topic -> gated promotions."),
    "model": ("semirec.cli.model:model", "Ranker versions on Triton: export, list, promote, rollback."),
    "recommend": ("semirec.cli.recommend:recommend", "Ask for a user's recommendations and print them."),
    "recommendations": ("semirec.cli.recommend:recommendations", "Watch the recommendations topic."),
}

# verbs that run as services and keep their libraries' logs (faust configures them)
LOGGING_VERBS = {"worker"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module, _, attr = VERBS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> object:
        """Run the verb; a connection, authentication or configuration failure becomes one
        line on stderr and its exit code (semirec.core.faults); ``semirec -v`` adds the traceback."""
        if ctx.invoked_subcommand not in LOGGING_VERBS and not ctx.params.get("verbose"):
            # client libraries log each failed connection attempt; the one line below says it
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            from semirec.core.faults import classify

            fault = classify(exc)
            if fault is None:
                raise  # not a fault of the environment: a bug, whose traceback must show
            if ctx.params.get("verbose"):
                traceback.print_exc()
            print(f"Error: {fault.message}", file=sys.stderr)
            ctx.exit(fault.exit_code)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, VERBS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semirec")
@click.option("-v", "--verbose", is_flag=True,
              help="On a connection, authentication or configuration failure, also print the traceback.")
def cli(verbose: bool) -> None:
    """semirec: streaming SEMI recommendations for e-commerce micro-videos.

    Addresses and names come from SEMIREC_* environment variables (see docs/configuration.md);
    `semirec stack up` starts a local stack and prints them. Exit codes: 0 ok, 1 the verb
    failed, 2 usage, 67 no such user, 69 a service is unreachable, 70 a worker agent met an
    unexpected error, 77 credentials refused, 78 configuration error (docs/reliability.md).
    """


def main() -> None:
    # SIGUSR1 writes every thread's stack to stderr (a part's log): what the demo sends a part
    # that does not stop in time, before it kills it (a faust worker's own handler replaces this
    # one and also lists its asyncio tasks)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cli()
