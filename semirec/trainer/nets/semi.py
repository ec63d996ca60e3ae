"""SEMI (§3.4): intra-domain encoders, an inter-domain block, target attention per domain, MLP.

User side (once per request): for each domain, item vector (projected to the blocks' width when
they are narrower, ``ModelConfig.item_dim``) + hour-block time embedding (one table
shared by both domains) -> intra-domain attention block (§3.2.3) -> V_intra / P_intra; the
concatenation [V_intra, P_intra] -> inter-domain attention block -> V_inter / P_inter, whose keys
and values are projected for the two target-attention blocks.

Candidate side (per candidate): v_t^in = item vector + time embedding of the current hour block;
target attention (Query = v_t^in, Key = Value = V_inter or P_inter) -> u_v, u_p;
MLP(concat[u_v, u_p, v_t^in]) -> dropout -> logit (sigmoid gives P(watched completely)).

The ablations SEMI-Video / SEMI-Product are the same network on one domain (the inter block then
attends within that domain only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semirec.trainer.nets.configs import ModelConfig
from semirec.trainer.nets.layers import AttentionBlock, ContentSimilarity, Head, TimeEmbedding
from semirec.trainer.nets.ranker import Context, Ranker, UserBatch
from semirec.trainer.nets.signals import SessionSimilarity, UserRate


def _block(cfg: ModelConfig) -> AttentionBlock:
    b = cfg.block
    return AttentionBlock(b.dim, b.heads, b.ffn, b.dropout)


def projection(cfg: ModelConfig) -> nn.Linear | None:
    """item_dim -> block.dim, learned (no bias: the time embedding adds one), when they differ."""
    if cfg.vector_dim == cfg.block.dim:
        return None
    if cfg.item_dim < cfg.block.dim:
        raise ValueError(f"block.dim {cfg.block.dim} above item_dim {cfg.item_dim}")
    return nn.Linear(cfg.item_dim, cfg.block.dim, bias=False)


class SequenceEncoder(nn.Module):
    """§3.2.3 multi-modal sequence encoder: (vector + time embedding) -> attention block.

    The time embedding is passed in, not owned, because both domains share it.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.project = projection(cfg)
        self.block = _block(cfg)

    def forward(self, x: Tensor, age: Tensor, mask: Tensor, time: TimeEmbedding) -> Tensor:
        if self.project is not None:
            x = self.project(x)
        return self.block(x + time(age), mask)


class SEMI(Ranker):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.domains = cfg.domains
        if not self.domains or set(self.domains) - {"video", "product"}:
            raise ValueError(f"SEMI needs video and/or product domains, got {self.domains}")
        self.time = TimeEmbedding(cfg.block.dim, cfg.block.max_age_hours)
        self.intra = nn.ModuleDict({d: SequenceEncoder(cfg) for d in self.domains})
        self.inter = _block(cfg)
        self.target = nn.ModuleDict({d: _block(cfg) for d in self.domains})
        self.project = projection(cfg)  # the candidates' own (v_t^in at block.dim)
        self.similarity = (ContentSimilarity(cfg.recency_similarity) if cfg.content_similarity
                           else None)
        n_sim = 0 if self.similarity is None else \
            self.similarity.features_per_domain * len(self.domains)
        if (cfg.session_similarity or cfg.user_rate) and self.similarity is None:
            raise ValueError("+ses / +usr come with +sim")
        if cfg.session_similarity and self.domains != ("video", "product"):
            raise ValueError("+ses needs both domains")
        self.session = SessionSimilarity() if cfg.session_similarity else None
        self.user_rate = UserRate() if cfg.user_rate else None
        n_sim += sum(m.n_features for m in (self.session, self.user_rate) if m is not None)
        # the similarity features' own linear term of the logit (zero at the start)
        self.similarity_weight = nn.Linear(n_sim, 1) if n_sim else None
        if self.similarity_weight is not None:
            nn.init.zeros_(self.similarity_weight.weight)
            nn.init.zeros_(self.similarity_weight.bias)
        self.head = Head(cfg.block.dim * (len(self.domains) + 1) + n_sim, cfg.mlp_hidden,
                         cfg.block.dropout)

    def encode_user(self, user: UserBatch) -> Context:
        intra, masks = [], []
        for d in self.domains:
            x, age, mask = user.domain(d)
            intra.append(self.intra[d](x * self.item_scale, age, mask, self.time))
            masks.append(mask)
        joint = self.inter(torch.cat(intra, dim=1), torch.cat(masks, dim=1))
        parts = joint.split([m.shape[1] for m in masks], dim=1)
        ctx: list[Tensor] = []
        for d, part, mask in zip(self.domains, parts, masks, strict=True):
            ctx.extend(self.target[d].keys_values(part, mask))
        if self.similarity is not None:  # after the 3 tensors per domain of the target blocks
            for d in self.domains:
                x, age, mask = user.domain(d)
                ctx.extend(self.similarity.context(x, mask, age))
            if self.session is not None:
                ctx.extend(self.session.context(user))
            if self.user_rate is not None:
                ctx.extend(self.user_rate.context(user))
        return tuple(ctx)

    def wide_parameters(self) -> list[nn.Parameter]:
        return [] if self.similarity_weight is None else list(self.similarity_weight.parameters())

    def wide_features(self, ctx: Context, candidates: Tensor) -> Tensor:
        """[B, C, n] the hand-made features of ``+sim`` (and ``+rec``, ``+ses``, ``+usr``, in
        this order) that the linear term and the head read; [B, C, 0] without ``+sim``."""
        if self.similarity is None:
            return candidates.new_zeros((*candidates.shape[:2], 0))
        n, k = 3 * len(self.domains), self.similarity.context_size
        feats = [self.similarity.features(candidates, *ctx[n + k * i : n + k * (i + 1)])
                 for i in range(len(self.domains))]
        at = n + k * len(self.domains)
        for extra in (self.session, self.user_rate):
            if extra is not None:
                feats.append(extra.features(candidates, *ctx[at : at + extra.context_size]))
                at += extra.context_size
        return torch.cat(feats, dim=-1)

    @property
    def has_wide_part(self) -> bool:
        return self.similarity_weight is not None  # +sim

    def wide_logits_of(self, feats: Tensor,
                       items: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """The linear term over :meth:`wide_features` ``feats``, plus item identity: the logit
        without the head."""
        if self.similarity_weight is None:
            raise NotImplementedError("a SEMI model without +sim has no wide part")
        return self.plus_identity(self.similarity_weight(feats).squeeze(-1), items)

    def head_logits(self, ctx: Context, candidates: Tensor, feats: Tensor | None) -> Tensor:
        """[B, C] the head's term of the logit, given the candidates' :meth:`wide_features`
        ``feats`` (None without ``+sim``): :meth:`logits` = this + :meth:`wide_logits`."""
        query = candidates * self.item_scale
        if self.project is not None:
            query = self.project(query)
        query = query + self.time.table.weight[0]  # v_t^in, age 0
        users = [
            self.target[d].attend(query, *ctx[3 * i : 3 * i + 3])
            for i, d in enumerate(self.domains)
        ]
        return self.head(torch.cat([*users, query] + ([] if feats is None else [feats]), dim=-1))

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        if self.similarity is None or self.similarity_weight is None:
            return self.head_logits(ctx, candidates, None)
        feats = self.wide_features(ctx, candidates)
        return self.head_logits(ctx, candidates, feats) + self.similarity_weight(feats).squeeze(-1)
