"""``semirec stack up``: the embedded stack in the foreground."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click

from semirec.core.stack import COMPONENTS, DEFAULT_MODEL_REPOSITORY, EmbeddedStack, StackError


def print_stopped(label: str, seconds: float, how: str) -> None:
    """One stderr line per part stopped: ``stopped tritonserver (0.4 s)``."""
    print(f"{how} {label} ({seconds:.1f} s)", file=sys.stderr, flush=True)


@click.group()
def stack() -> None:
    """The embedded stack (Tansu broker, redis-server, tritonserver on CPU)."""


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="First stdout line: a JSON object of addresses.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Keep data and logs here (kept on exit) instead of a temp dir (removed).")
@click.option("--without", multiple=True, type=click.Choice(COMPONENTS),
              help="Leave a component out (repeatable).")
@click.option("--model-repository", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_MODEL_REPOSITORY, show_default=True)
@click.option("--redis-cluster", is_flag=True,
              help="A local Redis Cluster (3 masters, 1 replica each) instead of one "
                   "redis-server; redis is then a redis+cluster:// URL.")
@click.option("--partitions", type=click.IntRange(1), default=None,
              help="Create every semirec topic with N partitions and export "
                   "SEMIREC_EVENT_PARTITIONS=N (default: the workers create them).")
@click.option("--tritons", type=click.IntRange(1), default=1, show_default=True,
              help="N tritonservers on the one model repository; SEMIREC_TRITON_GRPC lists them.")
def up(as_json: bool, directory: Path | None, without: tuple[str, ...],
       model_repository: Path, redis_cluster: bool, partitions: int | None,
       tritons: int) -> None:
    """Start the stack on free ports, print its addresses, run until SIGINT/SIGTERM/SIGHUP;
    then stop Triton, redis and the broker in that order, one stderr line each.

    Scale-out on one machine: `--redis-cluster --partitions 3 --tritons 2`."""
    stop = threading.Event()
    starting = True

    def on_signal(*_: object) -> None:
        stop.set()
        if starting:  # abort the start; EmbeddedStack.start stops what it started
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    components = [c for c in COMPONENTS if c not in without]
    s = EmbeddedStack(components, directory=directory, model_repository=model_repository,
                      on_stop=print_stopped, redis_cluster=redis_cluster, partitions=partitions,
                      tritons=tritons)
    try:
        s.start()
        starting = False
        addrs = {k: v for k, v in s.addresses.as_dict().items() if v}
        if as_json:
            print(json.dumps(addrs), flush=True)
        else:
            print("stack up: " + " ".join(f"{k}={v}" for k, v in addrs.items()), flush=True)
            exports = " ".join(f"{k}={v}" for k, v in s.addresses.env().items())
            print(f"  point other shells at it with: export {exports}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if dead := s.dead():
                raise click.ClickException(f"stack component(s) exited: {', '.join(dead)}; "
                                           f"logs in {s.dir}")
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:  # a signal while starting: start() has stopped what it started
        print("interrupted while starting", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        s.stop()
