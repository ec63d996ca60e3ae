"""Cross-domain Contrastive Learning (§3.3, Algorithm 1), MoCo style.

Query encoders f_vs, f_ps (and the time embedding the two domains share) are trained; key
encoders z_vs, z_ps are momentum copies (Eq. 9) that never receive gradients. Each domain has a
queue dictionary of K keys. Per mini-batch, as in Algorithm 1: encode the batch with the key
encoders and enqueue it (dequeuing the oldest), then encode it with the query encoders and score
each video query against every product key in the dictionary (Eq. 5) and each product query
against every video key (Eq. 6); the positive is the key of the same record, which is in the
dictionary because it was just enqueued. Loss = the two cross-entropies (Eq. 7-8). g(.) is max
pooling over real positions; queries and keys are L2-normalised as in MoCo (the paper follows
MoCo; unnormalised max-pooled vectors would give logits in the hundreds at tau = 0.7), so tau
must be small (0.07-0.2; 0.7 caps the logits at +-1.43). Key encoders run without dropout.

Beyond the paper: several records per user may be pre-trained; each dictionary slot remembers
whose record it came from, and a query's other same-user keys are masked out as negatives
(they are not negatives). ``use_time=False`` leaves the time embedding out of CCL, because a
record's video and product sequences share their active hours: :func:`time_only_accuracy`
measures how well the pairing is solved from timing alone (item vectors zeroed).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semirec.trainer.nets.configs import CCLConfig, ModelConfig
from semirec.trainer.nets.layers import TimeEmbedding, masked_max
from semirec.trainer.nets.ranker import UserBatch
from semirec.trainer.nets.semi import SEMI, SequenceEncoder

DOMAINS = ("video", "product")


def info_nce(queries: Tensor, dictionary: Tensor, positives: Tensor, tau: float,
             exclude: Tensor | None = None) -> Tensor:
    """Mean of -log softmax(q . k_j / tau)[positive] over the batch (Eq. 5/6 + cross-entropy).

    ``exclude`` [B, K] bool: dictionary entries left out of query b's softmax (never its
    positive)."""
    logits = queries @ dictionary.T / tau
    if exclude is not None:
        keep_positive = F.one_hot(positives, logits.shape[1]).bool()
        logits = logits.masked_fill(exclude & ~keep_positive, float("-inf"))
    return F.cross_entropy(logits, positives)


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
        self.register_buffer("queue_owner", torch.full((k,), -1, dtype=torch.long))  # user code
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> CCL:
        """Key encoders always run without dropout: dictionary keys are deterministic."""
        super().train(mode)
        self.key.eval()
        return self

    def encode(self, side: nn.ModuleDict, domain: str, user: UserBatch) -> Tensor:
        """q = g(f(s)) or k = g(z(s)), L2-normalised, [B, d]."""
        x, age, mask = user.domain(domain)
        time = side["time"] if self.settings.use_time else _no_time
        hidden = side[domain](x * self.item_scale, age, mask, time)
        return F.normalize(masked_max(hidden, mask), dim=-1)

    @torch.no_grad()
    def keys(self, user: UserBatch) -> tuple[Tensor, Tensor]:
        return self.encode(self.key, "video", user), self.encode(self.key, "product", user)

    @torch.no_grad()
    def enqueue(self, video_keys: Tensor, product_keys: Tensor, owners: Tensor | None = None) \
            -> Tensor:
        """Replace the oldest entries of both dictionaries; returns the positions written.
        ``owners``: the records' user codes (-1 = unknown, never masked)."""
        k, n = self.queue_video.shape[0], video_keys.shape[0]
        if n > k:
            raise ValueError(f"mini-batch {n} is larger than the dictionary {k}")
        slots = (self.pointer + torch.arange(n)) % k
        self.queue_video[slots] = video_keys
        self.queue_product[slots] = product_keys
        self.queue_owner[slots] = -1 if owners is None else owners
        self.pointer.copy_((self.pointer + n) % k)
        return slots

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (Eq. 9)."""
        m = self.settings.momentum
        for pk, pq in zip(self.key.parameters(), self.query.parameters(), strict=True):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    def loss(self, user: UserBatch, owners: Tensor | None = None) -> Tensor:
        """One step of Algorithm 1 lines 10-18 (enqueues the batch's keys as a side effect).
        ``owners`` [B]: user codes; keys of the same user's other records are not negatives."""
        slots = self.enqueue(*self.keys(user), owners)
        exclude = None
        if owners is not None:
            exclude = (owners[:, None] == self.queue_owner[None, :]) & (owners[:, None] >= 0)
        q_video = self.encode(self.query, "video", user)
        q_product = self.encode(self.query, "product", user)
        tau = self.settings.tau
        return info_nce(q_video, self.queue_product, slots, tau, exclude) + info_nce(
            q_product, self.queue_video, slots, tau, exclude
        )


def _no_time(age: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32)


@torch.no_grad()
def pairing_accuracy(ccl: CCL, user: UserBatch, owners: Tensor) -> float:
    """Share of records whose video query's nearest product key (among the batch's records,
    the same user's other records left out) is its own, and vice versa; chance = 1/B."""
    was_training = ccl.training
    ccl.eval()
    qv, qp = ccl.encode(ccl.query, "video", user), ccl.encode(ccl.query, "product", user)
    kv, kp = ccl.keys(user)
    ccl.train(was_training)
    same = (owners[:, None] == owners[None, :]) & ~torch.eye(len(owners), dtype=torch.bool)
    hits = []
    for q, k in ((qv, kp), (qp, kv)):
        sims = (q @ k.T).masked_fill(same, float("-inf"))
        own = sims.diagonal()[:, None]
        # ties count as a share (all-equal scores give exactly chance)
        higher, tied = (sims > own).sum(1), (sims == own).sum(1)
        hits.append(((higher == 0).float() / tied.float()).mean().item())
    return float(sum(hits) / 2)


def time_only_accuracy(ccl: CCL, user: UserBatch, owners: Tensor) -> float:
    """:func:`pairing_accuracy` with every item vector zeroed: what timing alone gives away."""
    blank = UserBatch(torch.zeros_like(user.video), user.video_age, user.video_mask,
                      torch.zeros_like(user.product), user.product_age, user.product_mask)
    return pairing_accuracy(ccl, blank, owners)


def init_from_ccl(model: SEMI, ccl: CCL) -> None:
    """Initialise SEMI's sequence encoders (and the shared time embedding, if CCL used it) from
    CCL's query side."""
    if ccl.settings.use_time:
        model.time.load_state_dict(ccl.query["time"].state_dict())
    for d in model.domains:
        model.intra[d].load_state_dict(ccl.query[d].state_dict())
