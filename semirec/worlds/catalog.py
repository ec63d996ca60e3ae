"""Products and micro-videos with real content, plus the latent attributes behind them.

A product is one Fashion-MNIST image of its category and one real review of that category
(headline + start of the text as its title). A video is about one featured product: its
frames are that product's image plus further images of the category, its title is a format
("try-on", "haul", ...) and the product's review text. What users respond to is derived from
that content, so a content encoder can recover it:

- ``category``: the Fashion-MNIST class (also in the title words, tags and pixels),
- ``style``: within-category image style (within-class PCA of the pixels; mean over frames),
- ``format`` (videos): in the tags and the title,
- ``quality``: partly the review's star rating (visible as the text's sentiment), partly noise.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from semirec.worlds.categories import CATEGORIES, VIDEO_FORMATS
from semirec.worlds.config import WorldConfig
from semirec.worlds.sources import Snippet, image_style, images_of_class, review_snippets

TITLE_WORDS = 24


@dataclass(frozen=True, slots=True)
class Side:
    """Latent attributes of one domain's items, aligned with ``ids``."""

    ids: list[str]
    category: np.ndarray  # [n] int, index into CATEGORIES
    style: np.ndarray  # [n, style_dims]
    quality: np.ndarray  # [n]
    log_pop: np.ndarray  # [n] exposure / click popularity
    fmt: np.ndarray  # [n] int, index into VIDEO_FORMATS (videos; zeros for products)
    stars: np.ndarray | None = None  # [n] the review's 1-5 stars (videos: the featured product's)


@dataclass(frozen=True, slots=True)
class Catalog:
    items: list[dict]  # item contract, products then videos
    products: Side
    videos: Side
    featured: np.ndarray  # [videos] index of each video's product


def png_base64(image: np.ndarray) -> str:
    """A grayscale image as base64 PNG (no data-URI prefix)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def snippet_title(s: Snippet) -> str:
    words = s.body.split()
    body = " ".join(words[:TITLE_WORDS]) + (" ..." if len(words) > TITLE_WORDS else "")
    return f"{s.headline}. {body}" if s.headline else body


def _unique(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


class _Pools:
    """Draws images and review snippets per category without repeats until a pool runs out."""

    def __init__(self, demand: np.ndarray, rng: np.random.Generator) -> None:
        snippets = review_snippets()
        self.images = [images_of_class(c.fmnist_label, int(demand[i])) for i, c in enumerate(CATEGORIES)]
        self.image_order = [rng.permutation(len(p)) for p in self.images]
        self.snippets = snippets
        self.snippet_order = [rng.permutation(len(s)) for s in snippets]
        self.used_images = [0] * len(CATEGORIES)
        self.used_snippets = [0] * len(CATEGORIES)

    def images_for(self, cat: int, n: int) -> np.ndarray:
        order = self.image_order[cat]
        idx = order[(self.used_images[cat] + np.arange(n)) % len(order)]
        self.used_images[cat] += n
        return self.images[cat][idx]

    def snippet_for(self, cat: int) -> Snippet:
        order = self.snippet_order[cat]
        s = self.snippets[cat][order[self.used_snippets[cat] % len(order)]]
        self.used_snippets[cat] += 1
        return s


def _categories(n: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cats = rng.choice(len(weights), size=n, p=weights)
    cats[: len(weights)] = np.arange(len(weights))  # every category present
    return cats


def build_catalog(cfg: WorldConfig, rng: np.random.Generator) -> Catalog:
    n_cat, dims = len(CATEGORIES), cfg.style_dims
    weights = rng.dirichlet(np.full(n_cat, 4.0))
    p_cat = _categories(cfg.products, weights, rng)
    featured = rng.choice(cfg.products, size=cfg.videos, replace=cfg.videos > cfg.products)
    featured[:n_cat] = [int(np.flatnonzero(p_cat == c)[0]) for c in range(n_cat)]
    v_cat = p_cat[featured]
    demand = np.bincount(p_cat, minlength=n_cat) + (cfg.frames - 1) * np.bincount(v_cat, minlength=n_cat)
    pools = _Pools(demand, rng)

    items: list[dict] = []
    p_style = np.zeros((cfg.products, dims))
    p_rating = np.zeros(cfg.products)
    p_image: list[np.ndarray] = []
    p_snippet: list[Snippet] = []
    p_ids = [f"p{i:05d}" for i in range(cfg.products)]
    for i, cat in enumerate(p_cat):
        image = pools.images_for(cat, 1)
        snippet = pools.snippet_for(cat)
        p_image.append(image[0])
        p_snippet.append(snippet)
        p_style[i] = image_style(image, CATEGORIES[cat].fmnist_label, dims)[0]
        p_rating[i] = snippet.rating
        items.append({
            "item_id": p_ids[i], "domain": "product", "title": snippet_title(snippet),
            "tags": _unique([CATEGORIES[cat].slug, *snippet.tags]),
            "category": CATEGORIES[cat].slug, "images": [png_base64(image[0])],
        })

    fmt = rng.integers(len(VIDEO_FORMATS), size=cfg.videos)
    v_style = np.zeros((cfg.videos, dims))
    v_ids = [f"v{i:05d}" for i in range(cfg.videos)]
    for i, (cat, prod) in enumerate(zip(v_cat, featured, strict=True)):
        frames = np.concatenate([p_image[prod][None], pools.images_for(cat, cfg.frames - 1)])
        v_style[i] = image_style(frames, CATEGORIES[cat].fmnist_label, dims).mean(0) * np.sqrt(cfg.frames)
        snippet, name = p_snippet[prod], VIDEO_FORMATS[fmt[i]]
        items.append({
            "item_id": v_ids[i], "domain": "video",
            "title": f"{name.capitalize()}: {snippet_title(snippet)}",
            "tags": _unique([CATEGORIES[cat].slug, name, *snippet.tags]),
            "category": CATEGORIES[cat].slug, "images": [png_base64(f) for f in frames],
        })

    p_quality = 0.3 * (p_rating - 3) + rng.normal(0, 0.3, cfg.products)
    v_quality = 0.3 * (p_rating[featured] - 3) + rng.normal(0, 0.35, cfg.videos)
    products = Side(p_ids, p_cat, p_style, p_quality,
                    rng.normal(0, 0.8, cfg.products) + p_quality, np.zeros(cfg.products, int),
                    p_rating.copy())
    videos = Side(v_ids, v_cat, v_style, v_quality,
                  rng.normal(0, 0.8, cfg.videos) + 0.5 * v_quality, fmt, p_rating[featured])
    return Catalog(items, products, videos, featured)
