"""Two per-candidate signals of the stream beside content similarity (beyond the paper).

- :class:`SessionSimilarity` (``+ses``): session intent. The entries of the newest hour block
  present in *both* sequences together (product clicks and complete watches with the smallest
  age among the real entries), their mean direction (L2-normalised item vectors), and per
  candidate ``cos(c, mean)`` and the same cosine when that block is the request's own hour
  (age 0), else 0. Computed from the ages and masks the graph already gets.
- :class:`UserRate` (``+usr``): the user's own completion rate on content like the candidate,
  from the complete watches (``video``) and the incomplete ones (``skipped``, new graph inputs)
  in the user's state. The serving path has item vectors and no item metadata, so "like the
  candidate" (the same format and category, which the titles and tags carry into the vectors)
  is a content kernel: watch ``i`` weighs ``w_i = exp((cos(c, x_i) - 1) / TAU)``. With
  ``W_c`` / ``W_s`` the weights of complete / incomplete watches, ``n_c`` / ``n_s`` their counts
  and ``p`` the training set's completion rate (a buffer):
  ``overall = (n_c + K_USER p) / (n_c + n_s + K_USER)`` (the user's rate, smoothed toward ``p``),
  ``rate = (W_c + K overall) / (W_c + W_s + K)`` (smoothed toward the user's rate); the features
  are ``logit(rate) - logit(p)``, ``logit(overall) - logit(p)`` and ``log(1 + W_c + W_s)``.

Both feed the ``+sim`` linear term and the head (semirec.trainer.nets.semi.SEMI); ``context``
runs once per user, ``features`` per candidate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semirec.trainer.nets.layers import masked_unit, rows_cosine, unit
from semirec.trainer.nets.ranker import UserBatch

_FAR = 1 << 30  # an age no real entry has


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


class SessionSimilarity(nn.Module):
    """Cosine to the newest hour block's entries of both domains (``+ses``)."""

    n_features = 2
    context_size = 2  # mean direction [B, d], current-hour flag [B, 1]

    def context(self, user: UserBatch) -> tuple[Tensor, Tensor]:
        x = torch.cat([user.video, user.product], dim=1)
        age = torch.cat([user.video_age, user.product_age], dim=1)
        mask = torch.cat([user.video_mask, user.product_mask], dim=1)
        newest = age.masked_fill(~mask, _FAR).amin(1, keepdim=True)  # [B, 1]
        block = (mask & (age == newest))[..., None].to(x.dtype)
        mean = unit((unit(x) * block).sum(1))
        return mean, (newest == 0).to(x.dtype)

    def features(self, candidates: Tensor, mean: Tensor, current: Tensor) -> Tensor:
        cos = rows_cosine(unit(candidates), mean)  # [B, C]
        return torch.stack([cos, cos * current], dim=-1)


class UserRate(nn.Module):
    """The user's smoothed completion rate on content like the candidate (``+usr``)."""

    TAU = 0.1  # kernel width in cosine units
    K = 1.0  # pseudo-weight of the user's own rate in the per-candidate rate
    K_USER = 5.0  # pseudo-watches of the prior in the user's rate
    n_features = 3
    context_size = 5

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("prior_rate", torch.tensor(0.5))

    def context(self, user: UserBatch) -> tuple[Tensor, ...]:
        done, done_mask = user.video, user.video_mask
        if user.skipped is None or user.skipped_mask is None:
            raise ValueError("+usr needs the incomplete watches (skipped, skipped_age, skipped_mask)")
        left, left_mask = user.skipped, user.skipped_mask
        mc, ms = done_mask.to(done.dtype), left_mask.to(done.dtype)
        n_c, n_s = mc.sum(1, keepdim=True), ms.sum(1, keepdim=True)
        overall = (n_c + self.K_USER * self.prior_rate) / (n_c + n_s + self.K_USER)  # [B, 1]
        # the complete watches as ContentSimilarity's context has them (the same expression:
        # the candidates' cosines to them are computed once in the exported graph)
        return (masked_unit(done, done_mask), mc[:, None, :],
                masked_unit(left, left_mask), ms[:, None, :], overall)

    def features(self, candidates: Tensor, done: Tensor, mc: Tensor, left: Tensor, ms: Tensor,
                 overall: Tensor) -> Tensor:
        c = unit(candidates)
        w_c = (torch.exp((torch.bmm(c, done.transpose(1, 2)) - 1.0) / self.TAU) * mc).sum(-1)
        w_s = (torch.exp((torch.bmm(c, left.transpose(1, 2)) - 1.0) / self.TAU) * ms).sum(-1)
        rate = (w_c + self.K * overall) / (w_c + w_s + self.K)  # [B, C]
        prior = _logit(self.prior_rate)
        return torch.stack([_logit(rate) - prior, (_logit(overall) - prior).expand_as(rate),
                            torch.log1p(w_c + w_s)], dim=-1)
