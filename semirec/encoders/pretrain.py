"""Pre-training of the fusion encoders on a catalog (SEMI A.5, scaled down).

Backbones stay frozen (their features come from the cache once); only the fusion
transformers learn, with three objectives on every batch:

- **text-image alignment**: the same fusion encodes each item twice, from its title alone and
  from its images alone; a symmetric InfoNCE loss (in-batch negatives, both domains) pulls the
  two views of an item together;
- **category classification** and **tag classification** (multi-label: softmax against the
  normalised multi-hot target) from the fused vector,
  through heads shared by both domains (so both domains' vectors share one space). The
  category and tag *inputs* are dropped at random (``label_dropout``), so the model must also
  infer them from content, which is what a new item without good metadata needs.

:func:`probe` measures what a downstream user gets: held-out items encoded from content only
(title + images; category and tags hidden), kNN category accuracy against the training items,
and title->image retrieval recall@1 among held-out items.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semirec.core.items import Item
from semirec.encoders.config import KEEP_WEIGHT, KEPT, OUT_DIM, SPLIT_RULE, SPLIT_RULES, EncoderConfig
from semirec.encoders.features import FeatureExtractor, ItemFeatures
from semirec.encoders.fusion import ItemFusion

# the demo cache key of the default recipe ("default": the learned fusion alone, as before)
RECIPE = f"kept-{SPLIT_RULE}-{KEEP_WEIGHT}" if KEPT == "auto" else "default"
# the review-tone axis of the ``tone`` rules: the text backbone's mean feature of the positive
# phrases minus that of the negative ones (fixed, generic review language; nothing of a catalog)
TONE_PHRASES = (
    ("I love it, it is perfect.", "Great quality and it fits beautifully.",
     "Absolutely gorgeous, I highly recommend it.", "So comfortable, I wear it all the time.",
     "It exceeded my expectations."),
    ("I was so disappointed, I returned it.", "Poor quality, it fell apart.",
     "It looked terrible and did not fit at all.", "Cheap fabric, not worth the money.",
     "Very unflattering, I would not recommend it."),
)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 0.1
    label_dropout: float = 0.5
    holdout: float = 0.2  # share of items kept out of training, for the probe
    seed: int = 0


@dataclass(slots=True)
class Catalog:
    """A catalog's fusion inputs and labels, on torch tensors."""

    text: torch.Tensor
    images: torch.Tensor
    image_mask: torch.Tensor
    category: torch.Tensor
    tags: torch.Tensor
    is_video: torch.Tensor  # [n] bool
    labels: list[str | None]  # category names (for the probe)

    @classmethod
    def build(cls, items: Sequence[Item], feats: ItemFeatures) -> Catalog:
        return cls(torch.from_numpy(feats.text), torch.from_numpy(feats.images),
                   torch.from_numpy(feats.image_mask), torch.from_numpy(feats.category),
                   torch.from_numpy(feats.tags),
                   torch.tensor([it.domain.value == "video" for it in items]),
                   [it.category for it in items])

    def __len__(self) -> int:
        return len(self.text)


def holdout_mask(item_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Deterministic split by a hash of the item id: True = held out."""
    cut = int(share * 2**32)
    return np.array([
        int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=4).digest(), "little") < cut
        for i in item_ids
    ])


def encode_views(fusion: ItemFusion, cat: Catalog, rows: torch.Tensor, *, view: str,
                 drop: float = 0.0, gen: torch.Generator | None = None) -> torch.Tensor:
    """Vectors of ``rows`` from one view: ``full`` (with label dropout), ``content``
    (title + images), ``text`` or ``image``. Rows keep their order."""
    out = torch.zeros(len(rows), fusion["video"].out_dim)
    for domain, flag in (("video", True), ("product", False)):
        sel = (cat.is_video[rows] == flag).nonzero().flatten()
        if len(sel) == 0:
            continue
        r = rows[sel]
        text, images, mask = cat.text[r], cat.images[r], cat.image_mask[r]
        category, tags = cat.category[r], cat.tags[r]
        present = torch.ones(len(r))
        if view == "full" and drop > 0:
            category = category * (torch.rand(len(r), generator=gen) >= drop)
            tags = tags * (torch.rand(len(r), 1, generator=gen) >= drop)
        if view in ("content", "text", "image"):
            category, tags = torch.zeros_like(category), torch.zeros_like(tags)
        if view == "text":
            mask = torch.zeros_like(mask)
        if view == "image":
            present = torch.zeros(len(r))
        out = out.index_put((sel,), fusion[domain](text, images, mask, category, tags, present))
    return out


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class Heads(nn.Module):
    """Category and tag classifiers shared by both domains (training only)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.category = nn.Linear(cfg.out_dim, cfg.category_buckets)
        self.tags = nn.Linear(cfg.out_dim, cfg.tag_buckets)
        self.scale = nn.Parameter(torch.tensor(math.log(10.0)))  # cosine -> logits

    def losses(self, z: torch.Tensor, category: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        s = self.scale.exp()
        loss = z.new_zeros(())
        has_cat = category > 0
        if has_cat.any():
            loss = loss + F.cross_entropy(s * self.category(z[has_cat]), category[has_cat])
        multi_hot = torch.zeros(len(z), self.tags.out_features).scatter_(1, tags, 1.0)
        multi_hot[:, 0] = 0.0
        has_tags = multi_hot.sum(1) > 0
        if has_tags.any():  # softmax over tags against the normalised multi-hot target
            target = multi_hot[has_tags] / multi_hot[has_tags].sum(1, keepdim=True)
            loss = loss + F.cross_entropy(s * self.tags(z[has_tags]), target)
        return loss


def probe(fusion: ItemFusion, cat: Catalog, held_out: np.ndarray, k: int = 10) -> dict[str, float]:
    """kNN category accuracy (content-only vectors) and title->image recall@1 on held-out items."""
    fusion.eval()
    rows = torch.arange(len(cat))
    with torch.no_grad():
        content = encode_views(fusion, cat, rows, view="content").numpy()
        test = torch.from_numpy(np.flatnonzero(held_out & cat.image_mask.any(dim=1).numpy()))
        zt = encode_views(fusion, cat, test, view="text").numpy()
        zi = encode_views(fusion, cat, test, view="image").numpy()
    labels = np.array([c or "" for c in cat.labels])
    train, test_np = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    sims = content[test_np] @ content[train].T
    top = np.argsort(-sims, axis=1)[:, :k]
    hits = []
    for row, neighbours in zip(test_np, top, strict=True):
        names, counts = np.unique(labels[train][neighbours], return_counts=True)
        hits.append(names[np.argmax(counts)] == labels[row])
    r1 = float(np.mean(np.argmax(zt @ zi.T, axis=1) == np.arange(len(zt)))) if len(zt) else 0.0
    return {"knn_category_acc": float(np.mean(hits)) if hits else 0.0, "text_to_image_r1": r1,
            "held_out": len(test_np), "k": k}


def _components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal directions of centred rows ``x`` and the std along each; a catalog
    with fewer rows than ``k`` gets zero directions for the rest (those dimensions stay 0)."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    basis = np.zeros((x.shape[1], k))
    std = np.ones(k)
    m = min(k, len(s))
    basis[:, :m] = vt[:m].T
    std[:m] = np.maximum(s[:m] / math.sqrt(max(len(x) - 1, 1)), 1e-6)
    return basis, std


def _kept_share(x: np.ndarray, basis: np.ndarray) -> float:
    """Share of the (centred) rows' variance that the orthonormal ``basis`` keeps."""
    total = float((x**2).sum())
    return round(float(((x @ basis) ** 2).sum()) / total, 4) if total > 0 else 0.0


def _within_category(x: np.ndarray, cat: Catalog, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` minus their category's mean over the ``fit`` rows (the global mean for no
    category or one unseen there): the within-category features; with the per-bucket centres
    (bucket 0 holds the global mean)."""
    bucket = cat.category.numpy()
    centre = np.tile(x[fit].mean(0), (int(cat.category.max()) + 1, 1))
    for b in np.unique(bucket[fit]):
        if b > 0:
            centre[b] = x[fit & (bucket == b)].mean(0)
    return x - centre[bucket], centre


def _image_residuals(cat: Catalog, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean frame feature minus its category's training mean: the within-category image
    features; with the per-bucket centres and which items have images."""
    mask = cat.image_mask.numpy().astype(np.float64)
    has_img = mask.any(1)
    mean_img = (cat.images.numpy() * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]
    resid, centre = _within_category(mean_img, cat, train & has_img)
    return resid, centre, has_img


def _title_residuals(cat: Catalog, train: np.ndarray, within: bool) -> tuple[np.ndarray, np.ndarray]:
    """Title features minus their training mean, or minus their category's training mean
    (``within``); with the per-bucket centres (all the global mean unless ``within``)."""
    text = cat.text.numpy().astype(np.float64)
    if within:
        return _within_category(text, cat, train)
    mean = text[train].mean(0)
    return text - mean, np.tile(mean, (int(cat.category.max()) + 1, 1))


def learned_dims(cat: Catalog, train: np.ndarray, out_dim: int = OUT_DIM) -> int:
    """Dimensions left to the learned part by the kept-components rule: room for the category
    simplex of the catalog's training items (one fewer than their categories), rounded up to a
    multiple of 8, at least 8 and at most ``out_dim // 2``."""
    categories = len(np.unique(cat.category.numpy()[train & (cat.category.numpy() > 0)]))
    return int(min(out_dim // 2, max(8, 8 * math.ceil((categories - 1) / 8))))


def choose_split(cat: Catalog, held_out: np.ndarray, out_dim: int = OUT_DIM,
                 rule: str = SPLIT_RULE) -> dict[str, Any]:
    """The catalog-only rule for the kept components (``pretrain --kept auto``, the default of the
    kept recipe): the learned part gets :func:`learned_dims`, and the rest is split between image
    and title components so that the **held-out reconstruction** of the frozen features from them
    is best: ``k_image`` maximises the held-out share of within-category image variance kept by
    the top ``k_image`` training components plus the held-out share of title variance kept by the
    top ``budget - k_image`` ones (each share relative to its own features' variance, so both
    backbones count alike). ``rule`` (:data:`SPLIT_RULES`) says whether the title components are
    within-category ones, like the image's (``heldout-recon-v2``), or global (``-v1``), and
    whether one of them is the review-tone axis (``heldout-recon-tone-v1``: ``text_components``
    counts it; the shares are those of the components beside it). Reads the
    catalog's features and category field only: no label of the world, no behaviour. Without
    held-out items the training shares decide."""
    if rule not in SPLIT_RULES:
        raise ValueError(f"unknown kept rule {rule!r}; known: {sorted(SPLIT_RULES)}")
    within, tone = SPLIT_RULES[rule]["title_within"], SPLIT_RULES[rule]["tone_axis"]
    train = ~held_out
    resid, _centre, has_img = _image_residuals(cat, train)
    title, _ = _title_residuals(cat, train, within)
    learned = learned_dims(cat, train, out_dim)
    budget = out_dim - learned - int(tone)  # components to split; the tone axis is a title dim
    score_rows = held_out if held_out.any() else train
    shares = []
    for x_fit, x_score in ((resid[train & has_img], resid[score_rows & has_img]),
                           (title[train], title[score_rows])):
        basis, _ = _components(x_fit, budget)
        per = ((x_score @ basis) ** 2).sum(0) / max(float((x_score**2).sum()), 1e-12)
        shares.append(np.concatenate([[0.0], np.cumsum(per)]))  # share kept by the top k, k = 0..budget
    total = shares[0] + shares[1][::-1]  # k image components and budget - k title ones
    k_img = int(np.argmax(total))
    return {"rule": rule, "title_within": within, "tone_axis": tone,
            "learned_dims": learned,
            "image_components": k_img, "text_components": budget - k_img + int(tone),
            "held_out_share_kept": {"image": round(float(shares[0][k_img]), 4),
                                    "text": round(float(shares[1][budget - k_img]), 4)}}


def _offsets(centre: np.ndarray, proj: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The global mean (bucket 0) and each bucket's centre projected relative to it: what
    :class:`~semirec.encoders.fusion.Kept` subtracts per category."""
    mean = centre[0]
    full = np.tile(mean, (buckets, 1))
    full[: min(len(centre), buckets)] = centre[:buckets]
    return mean, (full - mean) @ proj


def tone_direction(text_fn: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The review-tone axis of the text backbone ``text_fn``: mean feature of the positive
    :data:`TONE_PHRASES` minus that of the negative ones, unit-norm."""
    positive, negative = (np.asarray(text_fn(list(p)), np.float64).mean(0) for p in TONE_PHRASES)
    axis = positive - negative
    return axis / max(float(np.linalg.norm(axis)), 1e-12)


def fit_kept(fusion: ItemFusion, cat: Catalog, held_out: np.ndarray,
             tone: np.ndarray | None = None) -> dict[str, Any]:
    """Fit the kept components (:class:`~semirec.encoders.fusion.Kept`) on the training items'
    frozen features, the same in both domains; returns the share of variance they keep on
    training and on held-out items (the catalog's own check of the choice; no labels). With a
    ``tone`` axis (:func:`tone_direction`) the last title dimension is the part of that axis
    orthogonal to the title components, whitened like them."""
    kept = fusion["video"].kept
    if kept is None:
        return {}
    k_img, k_txt = kept.image_proj.shape[1], kept.text_proj.shape[1]
    train = ~held_out
    resid, centre, has_img = _image_residuals(cat, train)
    rows = train & has_img
    buckets = kept.image_offset.shape[0]
    basis, std = _components(resid[rows], k_img)
    image_mean, image_offset = _offsets(centre, basis / std, buckets)
    title, t_centre = _title_residuals(cat, train, kept.text_offset is not None)
    t_basis, t_std = _components(title[train], k_txt - (tone is not None))
    tone_report: dict[str, float] = {}
    if tone is not None:  # what the components miss of the tone axis, as one more dimension
        rest = tone - t_basis @ (t_basis.T @ tone)
        tone_report["axis_outside_components"] = round(float(np.linalg.norm(rest)), 4)
        rest = rest / max(float(np.linalg.norm(rest)), 1e-12)
        t_basis = np.concatenate([t_basis, rest[:, None]], axis=1)
        t_std = np.append(t_std, max(float((title[train] @ rest).std(ddof=1)), 1e-6))
    text_mean, text_offset = _offsets(t_centre, t_basis / t_std, buckets)
    state = {"image_mean": image_mean, "image_proj": basis / std, "image_offset": image_offset,
             "text_mean": text_mean, "text_proj": t_basis / t_std}
    if kept.text_offset is not None:
        state["text_offset"] = text_offset
    for domain in fusion.DOMAINS:
        buffers = fusion[domain].kept
        for name, value in state.items():
            getattr(buffers, name).copy_(torch.from_numpy(value.astype(np.float32)))
    test = held_out & has_img
    return {"image_components": k_img, "text_components": k_txt,
            "image_variance_kept": {"train": _kept_share(resid[rows], basis),
                                    "held_out": _kept_share(resid[test], basis)},
            "text_variance_kept": {"train": _kept_share(title[train], t_basis),
                                   "held_out": _kept_share(title[held_out], t_basis)},
            **({"tone_axis": tone_report} if tone_report else {})}


Progress = Callable[[int, int, float], None]  # (step, total_steps, loss)


def pretrain(fusion: ItemFusion, cfg: EncoderConfig, cat: Catalog, held_out: np.ndarray,
             train: TrainConfig, progress: Progress | None = None,
             tone: np.ndarray | None = None) -> dict[str, Any]:
    """Fit its kept components (with the ``tone`` axis if given), train ``fusion`` in place;
    returns the loss history and the probe before/after."""
    kept = fit_kept(fusion, cat, held_out, tone)
    before = probe(fusion, cat, held_out)
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    heads = Heads(cfg)
    params = list(fusion.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    rows_all = torch.from_numpy(np.flatnonzero(~held_out))
    steps_per_epoch = max(1, math.ceil(len(rows_all) / train.batch_size))
    total = train.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train.lr, total_steps=total,
                                                pct_start=0.1)
    history: list[float] = []
    step, started = 0, time.perf_counter()
    for _ in range(train.epochs):
        fusion.train()
        order = rows_all[torch.randperm(len(rows_all), generator=gen)]
        epoch_loss = 0.0
        for start in range(0, len(order), train.batch_size):
            rows = order[start:start + train.batch_size]
            if len(rows) < 2:
                continue
            z_full = encode_views(fusion, cat, rows, view="full", drop=train.label_dropout, gen=gen)
            z_text = encode_views(fusion, cat, rows, view="text")
            z_img = encode_views(fusion, cat, rows, view="image")
            pair = cat.image_mask[rows].any(dim=1)  # text-only items have no image view
            loss = heads.losses(z_full, cat.category[rows], cat.tags[rows])
            if int(pair.sum()) >= 2:
                loss = loss + info_nce(z_text[pair], z_img[pair], train.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            epoch_loss += float(loss.detach()) * len(rows)
            if progress:
                progress(step, total, float(loss.detach()))
        history.append(epoch_loss / max(1, len(rows_all)))
    fusion.eval()
    after = probe(fusion, cat, held_out)
    return {"train": asdict(train), "kept": kept, "loss_per_epoch": [round(x, 4) for x in history],
            "probe_untrained": before, "probe_pretrained": after,
            "train_items": int((~held_out).sum()), "seconds": round(time.perf_counter() - started, 1)}


def prepare(items: Sequence[Item], cfg: EncoderConfig, extractor: FeatureExtractor,
            train: TrainConfig) -> tuple[Catalog, np.ndarray, list[Item]]:
    """Features of the usable items, the catalog tensors and the held-out mask."""
    feats, ok, _errors = extractor.extract(items)
    usable = [items[i] for i in ok]
    cat = Catalog.build(usable, feats)
    return cat, holdout_mask([it.item_id for it in usable], train.holdout, train.seed), usable


def new_fusion(cfg: EncoderConfig) -> ItemFusion:
    return ItemFusion(cfg)
