"""The ranker a benchmark builds: the paper's sizes (``paper()``), or with ``--served`` the
network the trainer makes of that model by default (``scaled()``: what ``semirec demo`` and the
online trainer serve, whatever its sizes are then), changed by ``--set`` either way."""

from __future__ import annotations

from semirec.cli.evaluate import parse_settings
from semirec.trainer.nets.configs import ModelConfig, paper, scaled
from semirec.trainer.offline.evaluate import override

# scaled() reads the data's size only for training's batch and CCL queue sizes, not the network's
_SAMPLES = 100_000


def ranker_config(name: str, settings: str = "", served: bool = False) -> ModelConfig:
    """``name``'s configuration: the paper's sizes or (``served``) the trainer's, then ``settings``
    (``semirec evaluate --set``'s text)."""
    cfg = paper(name)
    if served:
        cfg = scaled(cfg, _SAMPLES, _SAMPLES)
    return override(cfg, parse_settings(settings))


SERVED_HELP = ("the network the trainer serves of this model by default (scaled(): since "
               "2026-12-08 the SEMI blocks 64 wide with 4 heads), not the paper's sizes")
