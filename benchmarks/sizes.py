"""The ranker a benchmark builds: the paper's sizes (``paper()``), or with ``--served`` the
network the trainer makes of that model by default (``scaled()``: what ``semirec demo`` and the
online trainer serve, whatever its sizes are then), changed by ``--set`` either way."""

from __future__ import annotations

from collections.abc import Mapping

from semirec.trainer.nets.configs import ModelConfig, paper, scaled
from semirec.trainer.offline.evaluate import override

# scaled() reads the data's size only for training's batch and CCL queue sizes, not the network's
_SAMPLES = 100_000


def ranker_config(name: str, settings: Mapping[str, float] | None = None,
                  served: bool = False) -> ModelConfig:
    """``name``'s configuration: the paper's sizes or (``served``) the trainer's, then ``settings``
    (``semirec evaluate --set``'s, parsed)."""
    cfg = paper(name)
    if served:
        cfg = scaled(cfg, _SAMPLES, _SAMPLES)
    return override(cfg, settings or {})


SERVED_HELP = "the network the trainer serves of this model by default (scaled()), not the paper's sizes"
