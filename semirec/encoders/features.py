"""Items -> backbone features (text, frames, category and tag ids), through the feature cache.

Per batch, every distinct title and image is looked up in the cache by content hash; only the
misses run through a backbone (in batches). An item whose image cannot be read or decoded
is reported with its error and left out; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from semirec.core.items import Item, ItemError
from semirec.encoders.cache import FeatureCache, content_key
from semirec.encoders.config import IMAGE_FEATURES, EncoderConfig
from semirec.encoders.image import ImageBackbone, decode_image
from semirec.encoders.text import TextBackbone
from semirec.encoders.vocab import category_ids, tag_ids


@dataclass(slots=True)
class ItemFeatures:
    """Fusion inputs for ``n`` items (frames padded to the batch's longest)."""

    text: np.ndarray  # [n, text_dim] float32
    images: np.ndarray  # [n, F, 1280] float32
    image_mask: np.ndarray  # [n, F] bool
    category: np.ndarray  # [n] int64
    tags: np.ndarray  # [n, T] int64

    def __len__(self) -> int:
        return len(self.text)

    def take(self, rows: Sequence[int] | np.ndarray) -> ItemFeatures:
        rows = np.asarray(rows, dtype=np.int64)
        frames = max(int(self.image_mask[rows].sum(1).max(initial=1)), 1)
        tags = max(int((self.tags[rows] > 0).sum(1).max(initial=1)), 1)
        return ItemFeatures(self.text[rows], self.images[rows, :frames],
                            self.image_mask[rows, :frames], self.category[rows],
                            self.tags[rows, :tags])


TextFn = Callable[[Sequence[str]], np.ndarray]
ImageFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[str, int, int], None]  # (cache space, computed so far, misses in total)


class FeatureExtractor:
    """Backbones + cache. ``text_fn``/``image_fn`` replace the torch backbones (e.g. onnxruntime)."""

    def __init__(self, config: EncoderConfig, cache: FeatureCache | None = None, *,
                 text_fn: TextFn | None = None, image_fn: ImageFn | None = None,
                 batch_size: int = 64) -> None:
        self.config = config
        self.cache = cache
        self.batch_size = batch_size
        self.text_backbone = TextBackbone(config.text_backbone, config.text_max_tokens)
        self._image_backbone: ImageBackbone | None = None
        self.text_fn = text_fn or self.text_backbone.features
        self.image_fn = image_fn or self._torch_images
        self.text_space = self.text_backbone.space
        self.image_space = f"effnet-lite0@{config.image_size}"
        self.progress: Progress | None = None

    def _torch_images(self, pixels: np.ndarray) -> np.ndarray:
        if self._image_backbone is None:
            self._image_backbone = ImageBackbone(self.config.image_size)
        return self._image_backbone.features(pixels, self.batch_size)

    def _lookup(self, space: str, keys: list[bytes]) -> list[np.ndarray | None]:
        return self.cache.get_many(space, keys) if self.cache else [None] * len(keys)

    def _cached(self, space: str, keys: list[bytes], compute: Callable[[list[int]], np.ndarray],
                dim: int, got: list[np.ndarray | None] | None = None) -> np.ndarray:
        """Vectors for ``keys`` (``got``: an earlier cache lookup of them); ``compute(rows)``
        fills the cache misses."""
        got = self._lookup(space, keys) if got is None else got
        missing = [i for i, v in enumerate(got) if v is None]
        out = np.zeros((len(keys), dim), np.float32)
        for i, v in enumerate(got):
            if v is not None:
                out[i] = v
        for start in range(0, len(missing), self.batch_size):
            rows = missing[start:start + self.batch_size]
            vecs = compute(rows)
            out[rows] = vecs
            if self.cache:
                self.cache.put_many(space, [keys[i] for i in rows], vecs)
            if self.progress:
                self.progress(space, start + len(rows), len(missing))
        return out

    def extract(self, items: Sequence[Item]) -> tuple[ItemFeatures, list[int], dict[int, ItemError]]:
        """Features of the usable items, their indices in ``items``, and the errors of the rest."""
        cfg = self.config
        errors: dict[int, ItemError] = {}
        raw: dict[bytes, bytes] = {}  # image key -> file bytes
        item_keys: list[list[bytes]] = []
        for i, item in enumerate(items):
            keys = []
            try:
                for ref in item.images[: cfg.max_frames]:
                    data = ref.read()
                    key = content_key(data)
                    raw.setdefault(key, data)
                    keys.append(key)
            except ItemError as exc:
                errors[i] = exc
            item_keys.append(keys)

        image_keys = list(dict.fromkeys(k for i, ks in enumerate(item_keys) if i not in errors for k in ks))
        cached = dict(zip(image_keys, self._lookup(self.image_space, image_keys), strict=True))
        pixels: dict[bytes, np.ndarray] = {}
        bad_keys: dict[bytes, ItemError] = {}
        for key, vec in cached.items():
            if vec is None:
                try:
                    pixels[key] = decode_image(raw[key], cfg.image_size)
                except ItemError as exc:
                    bad_keys[key] = exc
        for i, keys in enumerate(item_keys):
            if i not in errors and (bad := next((bad_keys[k] for k in keys if k in bad_keys), None)):
                errors[i] = bad
        image_keys = [k for k in image_keys if k not in bad_keys]
        image_feats = self._cached(
            self.image_space, image_keys,
            lambda rows: self.image_fn(np.stack([pixels[image_keys[r]] for r in rows])),
            IMAGE_FEATURES, got=[cached[k] for k in image_keys],
        )
        image_row = {k: r for r, k in enumerate(image_keys)}

        ok = [i for i in range(len(items)) if i not in errors]
        titles = list(dict.fromkeys(items[i].title for i in ok))
        if self.text_backbone.max_padding is not None:  # similar lengths in each backbone batch
            titles.sort(key=len)
        text_feats = self._cached(
            self.text_space, [content_key(t) for t in titles],
            lambda rows: self.text_fn([titles[r] for r in rows]), cfg.text_dim,
        )
        text_row = {t: r for r, t in enumerate(titles)}

        frames = max([len(item_keys[i]) for i in ok] + [1])
        images = np.zeros((len(ok), frames, IMAGE_FEATURES), np.float32)
        mask = np.zeros((len(ok), frames), bool)
        for row, i in enumerate(ok):
            for f, key in enumerate(item_keys[i]):
                images[row, f] = image_feats[image_row[key]]
                mask[row, f] = True
        feats = ItemFeatures(
            text=text_feats[[text_row[items[i].title] for i in ok]].reshape(len(ok), cfg.text_dim),
            images=images, image_mask=mask,
            category=category_ids([items[i].category for i in ok], cfg.category_buckets),
            tags=tag_ids([items[i].tags for i in ok], cfg.tag_buckets),
        )
        return feats, ok, errors
