"""Ranker checkpoints: ``model.safetensors`` (weights) + ``config.json`` (ModelConfig + meta).

Only safe loaders are used: safetensors for tensors, JSON for everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from semirec.core import durable
from semirec.trainer.nets.configs import ModelConfig
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.nets.zoo import build

FORMAT = 2  # 2: dropout inside the head's MLP, item identity, the 7-day window
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save(directory: Path, model: Ranker, cfg: ModelConfig, meta: dict[str, Any] | None = None) \
        -> Path:
    """Weights, then config (each durable: :mod:`semirec.core.durable`); a crash leaves the old
    checkpoint or a folder without ``config.json``, which :func:`load` refuses."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f".{WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata={"format": str(FORMAT)})
    durable.replace(tmp, directory / WEIGHTS)
    body = {"format": FORMAT, "model": cfg.to_dict(), "meta": meta or {}}
    durable.write_atomic(directory / CONFIG, json.dumps(body, indent=2, sort_keys=True) + "\n")
    return directory


def load(directory: Path) -> tuple[Ranker, ModelConfig, dict[str, Any]]:
    """(model in eval mode, its config, meta) from a checkpoint directory."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not a ranker checkpoint ({CONFIG} + {WEIGHTS})")
    body = json.loads((directory / CONFIG).read_text())
    if body.get("format") != FORMAT:
        raise ValueError(f"{directory}: unknown checkpoint format {body.get('format')!r}")
    cfg = ModelConfig.from_dict(body["model"])
    model = build(cfg)
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    model.eval()
    return model, cfg, body.get("meta", {})
