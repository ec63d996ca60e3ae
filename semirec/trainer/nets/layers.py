"""Building blocks: the multi-head attention block of Fig. 2(c), hour-block time embeddings,
masked pooling and the prediction MLP.

Attention is split in two so that a block can be used as a *target attention*: the keys and
values of a user's sequence are projected once (:meth:`AttentionBlock.keys_values`) and any
number of queries (candidates) attend to them (:meth:`AttentionBlock.attend`). Padding is a
boolean mask (True = real entry); a query with no real key gets a zero attention output (never
NaN), so empty sequences are well defined.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NEG = -1e9  # additive mask for padded keys (finite: softmax of an all-padded row stays finite)
SPREAD = 30.0  # exported graphs: a padded key's score below its copy's; floor_scores' below the max


def unit(x: Tensor) -> Tensor:
    """``x`` L2-normalised along its last axis, zero rows staying zero: ``F.normalize``'s values,
    exported without the full-size ``Expand`` of the norms that ``F.normalize`` adds (a
    broadcast ``Div`` instead; the per-candidate vectors of a request are normalised so)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def rows_cosine(rows: Tensor, direction: Tensor) -> Tensor:
    """[B, N, d] unit rows, [B, d] a unit direction -> [B, N] their cosines (one batched matrix
    product: no [B, N, d] intermediate)."""
    return torch.bmm(rows, direction[..., None]).squeeze(-1)


def masked_unit(x: Tensor, mask: Tensor) -> Tensor:
    """[B, L, d] entries -> their :func:`unit` vectors, padding entries (``mask`` False) zero.
    One expression for every user-side module that needs it, so that onnxruntime's common
    subexpression elimination computes it (and the candidates' cosines to it) once."""
    return unit(x) * mask[..., None].to(x.dtype)


def softmax(scores: Tensor, floor: bool = True) -> Tensor:
    """Softmax over the last axis; in an exported (ONNX) graph of :func:`floor_scores` when
    ``floor`` (scores that may hold ``NEG``)."""
    if floor and torch.onnx.is_in_onnx_export():
        scores = floor_scores(scores)
    return torch.softmax(scores, dim=-1)


def floor_scores(scores: Tensor) -> Tensor:
    """Every score raised to at least its row's ``max - SPREAD``, so no softmax weight is denormal.

    A weight e^-30 is a normal float and changes the output far below float resolution; a
    masked key (``NEG``) or a score 88 or more below the row's max gives a denormal one, which
    costs an x86 core a microcode assist in onnxruntime's exponential and in the product with
    the values: its softmax ran 6x slower on padded sequences (a 500-candidate request 5.0 ->
    3.5-3.9 ms on a Xeon). Eager torch does not pay it (and training would pay for the floor), so
    only the exported graph has it, and only where :meth:`AttentionBlock.keys_values`'s padding
    copies cannot stand in for it (a causal mask, a query's own key).
    """
    return torch.maximum(scores, scores.amax(-1, keepdim=True) - SPREAD)


def copy_into_padding(x: Tensor, mask: Tensor) -> Tensor:
    """[B, L, d] with every padded slot holding the row's first real entry (an all-padded row
    keeps its slot 0): a padded key biased by ``-SPREAD`` then weighs e^-SPREAD times a real
    one, a normal float, without a floor per candidate."""
    first = mask.long().argmax(1)[:, None, None].expand(-1, 1, x.shape[-1])  # [B, 1, d]
    return torch.where(mask[..., None], x, x.gather(1, first))


class AttentionBlock(nn.Module):
    """MultiHead(Q, K, V) (Eq. 2-3), Add & Norm, two-layer feed-forward net, Add & Norm."""

    def __init__(
        self, dim: int = 128, heads: int = 8, ffn: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:  # [B, L, d] -> [B, H, L, dh]
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project a sequence once: scaled keys [B,H,dh,L], values [B,H,L,dh] (zero for an
        empty sequence), key bias [B,1,1,L] (0 for real entries, -1e9 for padding).

        In an exported graph padded slots are copies of a real entry (:func:`copy_into_padding`)
        with a bias of ``-SPREAD``: weights within 50 e^-30 of softmax's, and none denormal, so
        the candidates' softmax needs no :func:`floor_scores` (0.3 ms of a 500-candidate request on
        an AMD EPYC).
        """
        pad = NEG
        if torch.onnx.is_in_onnx_export():
            x, pad = copy_into_padding(x, mask), -SPREAD
        keys = self._split(self.k(x)).transpose(-1, -2) * (1.0 / math.sqrt(self.head_dim))
        keys = keys.contiguous()
        bias = torch.where(mask, 0.0, pad).to(x.dtype)[:, None, None, :]
        # an empty sequence gets zero values, so a query attending to it gets zero (once per user)
        values = self._split(self.v(x)) * mask.any(1).to(x.dtype)[:, None, None, None]
        return keys, values, bias

    def attend(
        self,
        x: Tensor,
        keys: Tensor,
        values: Tensor,
        bias: Tensor,
        causal: bool = False,
        with_self: bool = False,
    ) -> Tensor:
        """Queries ``x`` [B, Q, d] attend to projected keys/values; returns [B, Q, d].

        ``with_self``: each query also attends to its own key/value (a target token appended
        to the sequence, as in BST), still without recomputing the sequence side.
        """
        b, n, _ = x.shape
        h, k = self.heads, keys.shape[-1]
        if torch.onnx.is_in_onnx_export() and not (causal or with_self):
            scores = self._folded_scores(x, keys, bias)
        else:
            q = self._split(self.q(x))
            scores = torch.baddbmm(  # q @ keys + bias in one kernel, [B, H, Q, L]
                bias.expand(b, h, 1, k).reshape(b * h, 1, k),
                q.reshape(b * h, n, self.head_dim), keys.reshape(b * h, self.head_dim, k),
            ).view(b, h, n, k)
        if causal:
            scores = scores + torch.full(
                (n, keys.shape[-1]), NEG, dtype=x.dtype, device=x.device
            ).triu(1)
        if with_self:  # never folded: q is the split projection above
            own_keys = self._split(self.k(x)) * (1.0 / math.sqrt(self.head_dim))
            scores = torch.cat([scores, (q * own_keys).sum(-1, keepdim=True)], dim=-1)
            weights = softmax(scores)  # an all-padded row has no real key to copy
            mixed = weights[..., :-1] @ values + weights[..., -1:] * self._split(self.v(x))
            heads = mixed.transpose(1, 2).reshape(b, n, self.dim)
        else:
            heads = (softmax(scores, floor=causal) @ values).transpose(1, 2).reshape(b, n, self.dim)
        x = self.norm1(x + self.drop(self.out(heads)))
        return self.norm2(x + self.drop(self.ffn(x)))

    def _folded_scores(self, x: Tensor, keys: Tensor, bias: Tensor) -> Tensor:
        """q @ keys + bias as one MatMul: each head's query gets a constant 1 (a projection row
        of zeros with bias 1) and its keys the bias as one more row."""
        b, n, _ = x.shape
        h, dh, k = self.heads, self.head_dim, keys.shape[-1]
        w = torch.cat([self.q.weight.view(h, dh, -1), self.q.weight.new_zeros(h, 1, self.dim)], 1)
        bq = torch.cat([self.q.bias.view(h, dh), self.q.bias.new_ones(h, 1)], 1)
        q = nn.functional.linear(x, w.reshape(h * (dh + 1), -1), bq.reshape(-1))
        q = q.view(b, n, h, dh + 1).transpose(1, 2)  # [B, H, Q, dh + 1]
        return q @ torch.cat([keys, bias.expand(b, h, 1, k)], dim=2)  # [B, H, Q, L]

    def forward(self, x: Tensor, mask: Tensor, causal: bool = False) -> Tensor:
        """Self-attention over a sequence (Query = Key = Value = ``x``)."""
        return self.attend(x, *self.keys_values(x, mask), causal=causal)


class TimeEmbedding(nn.Module):
    """One learned vector per hour block, indexed by hours before the request (clipped)."""

    def __init__(self, dim: int = 128, max_age_hours: int = 168) -> None:
        super().__init__()
        self.max_age = max_age_hours
        self.table = nn.Embedding(max_age_hours + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, age_hours: Tensor) -> Tensor:
        return self.table(age_hours.clamp(0, self.max_age))


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """g(.): max over real positions, [B, L, d] -> [B, d]; zero for an empty sequence."""
    pooled = x.masked_fill(~mask[..., None], NEG).amax(dim=1)
    return pooled * mask.any(dim=1, keepdim=True)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Average over real positions, [B, L, d] -> [B, d]; zero for an empty sequence."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class Head(nn.Module):
    """The prediction MLP (input -> hidden -> 1) with dropout on its hidden layer.

    A.1's "a dropout with a rate 0.1 after the final MLP" read as the MLP's hidden layer: a
    dropout on the scalar logit would zero a tenth of the logits and regularise nothing."""

    def __init__(self, dim_in: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1)


class ContentSimilarity(nn.Module):
    """Explicit content similarity between a candidate and a user's sequence (beyond the paper).

    Per domain two features of a candidate ``c`` against the real entries ``x_1..x_n`` of the
    (windowed) sequence, all on L2-normalised item vectors: the cosine to their mean
    direction, ``cos(c, mean_i x̂_i)``, and the highest cosine to any of them,
    ``max_i cos(c, x_i)``; both 0 for an empty sequence. They are a learned linear term of the
    logit and inputs of the head: the attention can in principle compute them, but an MLP over
    ``[u, v_t]`` has to learn an inner product from data and does so poorly (docs/trainer.md).

    With ``recency`` (``+rec``) the same two features are also computed against two subsets of
    the entries, for session intent and recent taste: the entries of the newest hour block
    present (the smallest age among the real entries: the current session when it is 0) and
    the newest :data:`RECENT` real entries. Both subsets come from the ages and masks the
    graph already gets (entries are right-aligned, newest last).

    ``context`` runs once per user (normalised entries with padding zeroed, per subset its
    mean direction and key bias); ``features`` per candidate.
    """

    RECENT = 5  # entries in the "newest k" subset

    def __init__(self, recency: bool = False) -> None:
        super().__init__()
        self.recency = recency
        self.features_per_domain = 6 if recency else 2
        self.context_size = 7 if recency else 3  # tensors per domain in the user context

    def context(self, x: Tensor, mask: Tensor, age: Tensor | None = None) -> tuple[Tensor, ...]:
        rows = masked_unit(x, mask)
        masks = [mask]
        if self.recency:
            if age is None:
                raise ValueError("recency similarity needs the entries' ages")
            newest = age.masked_fill(~mask, 1 << 30).amin(1, keepdim=True)  # [B, 1]
            at_or_after = mask.sum(1, keepdim=True) - mask.long().cumsum(1) + mask.long()
            masks += [mask & (age == newest), mask & (at_or_after <= self.RECENT)]
        out: list[Tensor] = [rows]
        for m in masks:
            part = rows * m[..., None].to(x.dtype)
            out.append(unit(part.sum(1)))  # zero vector stays zero
            out.append(torch.where(m, 0.0, NEG).to(x.dtype)[:, None, :])  # [B, 1, L]
        return tuple(out)

    def features(self, candidates: Tensor, rows: Tensor, *parts: Tensor) -> Tensor:
        """[B, C, d] candidates -> [B, C, 2 or 6]: per subset (all entries; with recency the
        newest hour block and the newest ``RECENT``) the cosine to its mean direction and the max
        cosine."""
        c = unit(candidates)
        cos = torch.bmm(c, rows.transpose(1, 2))  # [B, C, L]
        out = []
        for mean, bias in zip(parts[0::2], parts[1::2], strict=True):
            has_any = (bias.amax(-1) == 0).to(c.dtype)  # [B, 1]
            out += [rows_cosine(c, mean), (cos + bias).amax(-1) * has_any]
        return torch.stack(out, dim=-1)
