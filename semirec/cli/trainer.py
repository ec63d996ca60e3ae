"""``semirec trainer run``: the incremental trainer (samples topic -> gated promotions)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import replace
from pathlib import Path

import click


@click.group()
def trainer() -> None:
    """The incremental trainer (docs/online-training.md)."""


@trainer.command()
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Checkpoint folder [SEMIREC_TRAINER_STATE_DIR].")
@click.option("--init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Checkpoint to start from when there is no trainer state "
              "(default: the serving ranker version).")
@click.option("--round-samples", type=click.IntRange(10), default=None,
              help="Train a candidate every N new samples.")
@click.option("--round-seconds", type=click.FloatRange(0.1), default=None,
              help="... or every T seconds.")
@click.option("--min-round-samples", type=click.IntRange(1), default=None)
@click.option("--max-rounds", type=click.IntRange(1), default=None, help="Stop after K rounds.")
def run(state_dir: Path | None, init: Path | None, round_samples: int | None,
        round_seconds: float | None, min_round_samples: int | None, max_rounds: int | None) -> None:
    """Consume `samples`, fine-tune, promote gated candidates into Triton, announce them.
    One trainer is active per model repository; another one waits for its lease."""
    import torch

    from semirec.core.metrics import start_http
    from semirec.core.settings import Settings
    from semirec.trainer.online.learner import OnlineConfig
    from semirec.trainer.online.service import OnlineTrainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    torch.set_num_threads(1)
    settings = Settings.from_env()
    online = OnlineConfig(seq_len=settings.seq_len, bucket_s=settings.time_bucket_s)
    changes = {k: v for k, v in (("round_samples", round_samples), ("round_seconds", round_seconds),
                                 ("min_round_samples", min_round_samples)) if v is not None}
    online = replace(online, **changes)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = await start_http(settings.metrics_port) if settings.metrics_port else None
        service = OnlineTrainer(settings, online, state_dir=state_dir, init=init)
        try:  # a failed start (Triton unreachable, ...) closes its clients too
            if await service.start(stop):  # waits while another trainer holds the lease
                await service.run(stop, max_rounds)
        finally:
            await service.stop()
            if server is not None:
                await server.close()

    from semirec.trainer.registry.repository import FencedError

    try:
        asyncio.run(main())
    except FencedError as exc:  # another trainer took over: this one made no stale write
        raise click.ClickException(str(exc)) from exc
