"""Multimodal item encoders: title + images + category/tags -> one 128-d vector per item.

Public interface (loaded lazily, so that importing a submodule stays light)::

    encode_items(items, *, checkpoint=None, batch_size=64) -> np.ndarray  # [N, 128] float32
    encoder_version(checkpoint=None) -> str
    ENCODER_VERSION  # the version of the default encoder (checkpoint=None)
    ItemEncoder, EncoderConfig

See docs/encoders.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENCODER_VERSION", "EncoderConfig", "ItemEncoder", "encode_items", "encoder_version"]


def __getattr__(name: str) -> Any:
    if name in ("encode_items", "encoder_version", "ItemEncoder"):
        from semirec.encoders import pipeline

        return getattr(pipeline, name)
    if name == "EncoderConfig":
        from semirec.encoders.config import EncoderConfig

        return EncoderConfig
    if name == "ENCODER_VERSION":
        from semirec.encoders.pipeline import encoder_version

        return encoder_version()
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")
