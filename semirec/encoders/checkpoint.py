"""Encoder checkpoints: ``encoder.safetensors`` (fusion weights) + ``encoder.json`` (config, meta).

The *encoder version* names what produced a vector: ``fusion-<sha256[:12]>`` of the weights
and config files of a checkpoint, or ``init-<sha256[:12]>`` of the config for the untrained
(seeded) fusion. It is stored next to every item vector so readers can tell versions apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from semirec.core import durable
from semirec.encoders.config import EncoderConfig
from semirec.encoders.fusion import ItemFusion

WEIGHTS = "encoder.safetensors"
CONFIG = "encoder.json"


@dataclass(slots=True)
class Checkpoint:
    config: EncoderConfig
    version: str
    path: Path | None = None  # the weights file; None for the untrained fusion
    meta: dict[str, Any] = field(default_factory=dict)


def resolve(checkpoint: Path | str | None) -> Path | None:
    """The weights file for ``checkpoint`` (a directory or the ``.safetensors`` file).

    ``None`` means ``$SEMIREC_ENCODER_CHECKPOINT`` when set, else the untrained fusion.
    """
    if checkpoint is None:
        from semirec.core.settings import Settings

        checkpoint = Settings.from_env().encoder_checkpoint
        if not checkpoint:
            return None
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    if not path.with_suffix(".json").is_file():
        raise FileNotFoundError(f"encoder checkpoint config {path.with_suffix('.json')} is missing")
    return path


def read(checkpoint: Path | str | None, config: EncoderConfig | None = None) -> Checkpoint:
    """Config and version of a checkpoint (no weights loaded)."""
    path = resolve(checkpoint)
    if path is None:
        cfg = config or EncoderConfig()
        return Checkpoint(cfg, f"init-{cfg.digest()[:12]}")
    raw = path.with_suffix(".json").read_bytes()
    data = json.loads(raw)
    digest = hashlib.sha256(path.read_bytes() + raw).hexdigest()
    return Checkpoint(EncoderConfig.from_dict(data["config"]), f"fusion-{digest[:12]}", path,
                      data.get("meta", {}))


def load_fusion(ckpt: Checkpoint) -> ItemFusion:
    fusion = ItemFusion(ckpt.config)
    if ckpt.path is not None:
        fusion.load_state_dict(load_file(str(ckpt.path)), strict=True)
    return fusion.eval()


def save(directory: Path, fusion: ItemFusion, config: EncoderConfig, meta: dict[str, Any]) -> Checkpoint:
    """Write ``encoder.safetensors`` + ``encoder.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in fusion.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "semirec-encoder-1"})
    durable.replace(tmp, directory / WEIGHTS)
    durable.write_atomic(directory / CONFIG,
                         json.dumps({"config": config.to_dict(), "meta": meta}, indent=2, sort_keys=True))
    return read(directory)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
