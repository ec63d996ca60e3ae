"""The interface every neural ranker implements: user side once, candidates many times.

``encode_user(UserBatch) -> Context`` runs everything that depends only on the user's
sequences (a tuple of tensors with a leading batch axis); ``score(Context, candidates[B, C, d])
-> logits[B, C]`` runs only what depends on the candidate. Training uses ``forward`` (one target
per user), which is the same two calls with C = 1, so serving and training share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

Context = tuple[Tensor, ...]


@dataclass(frozen=True)
class UserBatch:
    """Right-aligned (newest last) item vectors, hours-before-request and masks per domain."""

    video: Tensor  # [B, Lv, d] float
    video_age: Tensor  # [B, Lv] int64
    video_mask: Tensor  # [B, Lv] bool, True = real entry
    product: Tensor  # [B, Lp, d]
    product_age: Tensor  # [B, Lp]
    product_mask: Tensor  # [B, Lp]
    # incomplete video watches, as ``video`` (read by ``+usr`` models only; None: not gathered)
    skipped: Tensor | None = None  # [B, Ls, d]
    skipped_age: Tensor | None = None  # [B, Ls]
    skipped_mask: Tensor | None = None  # [B, Ls]

    def domain(self, name: str) -> tuple[Tensor, Tensor, Tensor]:
        if name == "video":
            return self.video, self.video_age, self.video_mask
        if name == "product":
            return self.product, self.product_age, self.product_mask
        raise ValueError(f"unknown domain {name!r}")

    @property
    def size(self) -> int:
        return self.video.shape[0]


class Ranker(nn.Module):
    """Base class: logits of P(watched completely | user sequences, candidate video).

    ``identity`` (set by :func:`semirec.trainer.nets.zoo.build` for models configured with item
    identity) adds a per-candidate term from the item's hashed id and its completion counts."""

    def __init__(self) -> None:
        super().__init__()
        # item vectors are multiplied by this (set from the training table) so that their
        # scale matches the learned time embeddings whatever the encoder's output norm is
        self.register_buffer("item_scale", torch.tensor(1.0))
        self.identity: nn.Module | None = None

    def encode_user(self, user: UserBatch) -> Context:
        raise NotImplementedError

    def wide_parameters(self) -> list[nn.Parameter]:
        """Parameters of linear terms over a few hand-made features (a "wide" part, as in
        Wide & Deep), which :func:`semirec.trainer.offline.fit.fit` trains with their own learning rate."""
        return []

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, ctx: Context, candidates: Tensor,
               items: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """``score`` plus, for a model with item identity, its per-candidate term; ``items`` =
        (bucket, watches, completes), each [B, C] (see :mod:`semirec.trainer.nets.identity`)."""
        return self.plus_identity(self.score(ctx, candidates), items)

    def plus_identity(self, logits: Tensor,
                      items: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        """``logits`` [B, C] plus item identity's term, for a model with item identity."""
        if self.identity is None:
            return logits
        if items is None:
            raise ValueError("this model uses item identity: pass the items' inputs")
        return logits + self.identity(*items)

    @property
    def has_wide_part(self) -> bool:
        """Whether :meth:`wide_logits` exists (a cascade can rank by it)."""
        return False

    def wide_logits(self, ctx: Context, candidates: Tensor,
                    items: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """[B, C] the cheap part of :meth:`logits` (a few FLOPs per candidate) that a cascade ranks
        every candidate by before the whole logit is computed for the best of them
        (:mod:`semirec.trainer.registry.export`, ``deep_top``); only if :attr:`has_wide_part`."""
        return self.wide_logits_of(self.wide_features(ctx, candidates), items)

    def wide_features(self, ctx: Context, candidates: Tensor) -> Tensor:
        """[B, C, n] the hand-made per-candidate features :meth:`wide_logits` is linear in."""
        raise NotImplementedError(f"{type(self).__name__} has no wide part")

    def wide_logits_of(self, feats: Tensor,
                       items: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """:meth:`wide_logits` from the candidates' :meth:`wide_features`."""
        raise NotImplementedError(f"{type(self).__name__} has no wide part")

    def head_logits(self, ctx: Context, candidates: Tensor, feats: Tensor | None) -> Tensor:
        """:meth:`logits` less :meth:`wide_logits`, given the candidates' :meth:`wide_features`
        (a cascade computes those once for all candidates)."""
        raise NotImplementedError(f"{type(self).__name__} has no wide part")

    def forward(self, user: UserBatch, target: Tensor,
                items: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """Training/AUC path: one target vector per user, [B, d] -> logits [B] (``items``
        [B, 1] each)."""
        return self.logits(self.encode_user(user), target[:, None, :], items)[:, 0]
