"""The paper's baselines on the same item vectors and the same user-side/candidate-side split.

- YouTubeNet [10]: user = average of the watched videos' vectors; MLP over [user, target].
- DIN [39]: local activation unit a(e_i, v_t) = MLP([e_i, v_t, e_i - v_t, e_i * v_t]) (sigmoid
  hidden layers, no softmax), user = sum_i a_i e_i; MLP over [user, target].
- BST [5]: one attention block (same as SEMI's, A.2) over the video sequence with the target
  appended, positions given by the same hour-block time embedding; the target position's output
  and the target go to the MLP.
- Cross-BST: BST over both domains' entries as one sequence (plus a learned domain embedding).
  Attention with time embeddings does not depend on token order, so concatenating the two
  time-stamped sequences is the same as merging them in time order.
- SASRec [Kang & McAuley 2018]: causal self-attention blocks over the video sequence with learned
  position embeddings (counted from the newest entry); the newest position's output u scores a
  target by <u, W v_t> + w.v_t + b.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from semirec.trainer.nets.configs import ModelConfig
from semirec.trainer.nets.layers import AttentionBlock, Head, TimeEmbedding, masked_mean
from semirec.trainer.nets.ranker import Context, Ranker, UserBatch


class YouTubeNet(Ranker):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head = Head(2 * cfg.block.dim, cfg.mlp_hidden, cfg.block.dropout)

    def encode_user(self, user: UserBatch) -> Context:
        return (masked_mean(user.video * self.item_scale, user.video_mask),)

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        query = candidates * self.item_scale
        return self.head(torch.cat([ctx[0][:, None].expand_as(query), query], dim=-1))


class DIN(Ranker):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, hidden = cfg.block.dim, cfg.din_attention_hidden
        self.dim = d
        self.first = nn.Linear(4 * d, hidden[0])
        layers: list[nn.Module] = [nn.Sigmoid()]
        for a, b in itertools.pairwise(hidden):
            layers += [nn.Linear(a, b), nn.Sigmoid()]
        layers.append(nn.Linear(hidden[-1], 1))
        self.rest = nn.Sequential(*layers)
        self.head = Head(2 * d, cfg.mlp_hidden, cfg.block.dropout)

    def encode_user(self, user: UserBatch) -> Context:
        return user.video * self.item_scale, user.video_mask

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        seq, mask = ctx  # [B, L, d], [B, L]
        query = candidates * self.item_scale  # [B, C, d]
        # first layer on [e, v, e - v, e * v] without materialising the concatenation
        w_e, w_v, w_d, w_p = self.first.weight.split(self.dim, dim=1)
        pre = (
            (seq @ (w_e + w_d).T)[:, None]  # [B, 1, L, h]
            + (query @ (w_v - w_d).T)[:, :, None]  # [B, C, 1, h]
            + (query[:, :, None, :] * seq[:, None]) @ w_p.T  # [B, C, L, h]
            + self.first.bias
        )
        weights = self.rest(pre).squeeze(-1) * mask[:, None].to(seq.dtype)  # [B, C, L]
        return self.head(torch.cat([weights @ seq, query], dim=-1))


class BST(Ranker):
    """BST over the video sequence, or Cross-BST over both domains (``cfg.domains``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        b = cfg.block
        self.domains = cfg.domains
        self.time = TimeEmbedding(b.dim, b.max_age_hours)
        self.domain_embedding = nn.Embedding(len(self.domains), b.dim)
        nn.init.normal_(self.domain_embedding.weight, std=0.02)
        self.block = AttentionBlock(b.dim, b.heads, b.ffn, b.dropout)
        self.head = Head(2 * b.dim, cfg.mlp_hidden, b.dropout)

    def encode_user(self, user: UserBatch) -> Context:
        tokens, masks = [], []
        for i, d in enumerate(self.domains):
            x, age, mask = user.domain(d)
            tokens.append(x * self.item_scale + self.time(age) + self.domain_embedding.weight[i])
            masks.append(mask)
        return self.block.keys_values(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        query = candidates * self.item_scale + self.time.table.weight[0]
        query = query + self.domain_embedding.weight[0]  # the target is a video
        out = self.block.attend(query, *ctx, with_self=True)
        return self.head(torch.cat([out, query], dim=-1))


class SASRec(Ranker):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        b = cfg.block
        self.positions = nn.Embedding(cfg.train.seq_len, b.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.blocks = nn.ModuleList(
            AttentionBlock(b.dim, b.heads, b.ffn, b.dropout) for _ in range(cfg.sasrec_blocks)
        )
        self.bilinear = nn.Linear(b.dim, b.dim)  # u -> W^T u + w
        self.bias = nn.Parameter(torch.zeros(()))

    def encode_user(self, user: UserBatch) -> Context:
        x, mask = user.video * self.item_scale, user.video_mask
        n = x.shape[1]
        if n > self.positions.num_embeddings:
            raise ValueError(
                f"sequence length {n} exceeds SASRec's {self.positions.num_embeddings}")
        # right-aligned: position 0 is the newest entry
        x = x + self.positions.weight[:n].flip(0)
        for block in self.blocks:
            x = block(x, mask, causal=True)
        newest = x[:, -1] * mask[:, -1:].to(x.dtype)  # zero for an empty sequence
        return (self.bilinear(newest),)

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        return torch.einsum("bcd,bd->bc", candidates * self.item_scale, ctx[0]) + self.bias
