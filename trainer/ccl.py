"""Cross-domain Contrastive Learning (§3.3, Algorithm 1), MoCo style.

Query encoders f_vs, f_ps (and the time embedding the two domains share) are trained; key
encoders z_vs, z_ps are momentum copies (Eq. 9) that never receive gradients. Each domain has a
queue dictionary of K keys. Per mini-batch, as in Algorithm 1: encode the batch with the key
encoders and enqueue it (dequeuing the oldest), then encode it with the query encoders and score
each video query against every product key in the dictionary (Eq. 5) and each product query
against every video key (Eq. 6); the positive is the key of the same record, which is in the
dictionary because it was just enqueued. Loss = the two cross-entropies (Eq. 7-8). g(.) is max
pooling over real positions; queries and keys are L2-normalised as in MoCo (the paper follows
MoCo; unnormalised max-pooled vectors would give logits in the hundreds at tau = 0.7). Key
encoders run without dropout.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.configs import CCLConfig, ModelConfig
from trainer.layers import TimeEmbedding, masked_max
from trainer.ranker import UserBatch
from trainer.semi import SEMI, SequenceEncoder

DOMAINS = ("video", "product")


def info_nce(queries: Tensor, dictionary: Tensor, positives: Tensor, tau: float) -> Tensor:
    """Mean of -log softmax(q . k_j / tau)[positive] over the batch (Eq. 5/6 + cross-entropy)."""
    return F.cross_entropy(queries @ dictionary.T / tau, positives)


class CCL(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.ccl is None:
            raise ValueError(f"model {cfg.name!r} has no CCL config")
        self.settings: CCLConfig = cfg.ccl
        d, k = cfg.block.dim, cfg.ccl.queue_size
        self.query = nn.ModuleDict({
            "time": TimeEmbedding(d, cfg.block.max_age_hours),
            "video": SequenceEncoder(cfg),
            "product": SequenceEncoder(cfg),
        })
        self.key = copy.deepcopy(self.query)  # Algorithm 1 line 1: same initial parameters
        self.key.requires_grad_(False).eval()
        self.register_buffer("item_scale", torch.tensor(1.0))
        self.register_buffer("queue_video", F.normalize(torch.randn(k, d), dim=-1))
        self.register_buffer("queue_product", F.normalize(torch.randn(k, d), dim=-1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> CCL:
        """Key encoders always run without dropout: dictionary keys are deterministic."""
        super().train(mode)
        self.key.eval()
        return self

    def encode(self, side: nn.ModuleDict, domain: str, user: UserBatch) -> Tensor:
        """q = g(f(s)) or k = g(z(s)), L2-normalised, [B, d]."""
        x, age, mask = user.domain(domain)
        hidden = side[domain](x * self.item_scale, age, mask, side["time"])
        return F.normalize(masked_max(hidden, mask), dim=-1)

    @torch.no_grad()
    def keys(self, user: UserBatch) -> tuple[Tensor, Tensor]:
        return self.encode(self.key, "video", user), self.encode(self.key, "product", user)

    @torch.no_grad()
    def enqueue(self, video_keys: Tensor, product_keys: Tensor) -> Tensor:
        """Replace the oldest entries of both dictionaries; returns the positions written."""
        k, n = self.queue_video.shape[0], video_keys.shape[0]
        if n > k:
            raise ValueError(f"mini-batch {n} is larger than the dictionary {k}")
        slots = (self.pointer + torch.arange(n)) % k
        self.queue_video[slots] = video_keys
        self.queue_product[slots] = product_keys
        self.pointer.copy_((self.pointer + n) % k)
        return slots

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (Eq. 9)."""
        m = self.settings.momentum
        for pk, pq in zip(self.key.parameters(), self.query.parameters(), strict=True):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    def loss(self, user: UserBatch) -> Tensor:
        """One step of Algorithm 1 lines 10-18 (enqueues the batch's keys as a side effect)."""
        slots = self.enqueue(*self.keys(user))
        q_video = self.encode(self.query, "video", user)
        q_product = self.encode(self.query, "product", user)
        tau = self.settings.tau
        return info_nce(q_video, self.queue_product, slots, tau) + info_nce(
            q_product, self.queue_video, slots, tau
        )


def init_from_ccl(model: SEMI, ccl: CCL) -> None:
    """Initialise SEMI's sequence encoders and shared time embedding from CCL's query side."""
    model.time.load_state_dict(ccl.query["time"].state_dict())
    for d in model.domains:
        model.intra[d].load_state_dict(ccl.query[d].state_dict())
