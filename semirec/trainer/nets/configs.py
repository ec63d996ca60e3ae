"""Per-model hyper-parameters, RecBole style: one small dataclass per model.

Defaults are the paper's settings (SEMI A.1/A.2: d=128, 8 heads, FFN 128, dropout 0.1, Adam 1e-3,
batch 1024, CCL K=40x1024, m=0.999, tau=0.7, minimum video length 10). :func:`scaled` adapts the
sizes that only make sense at Taobao scale (batch, dictionary size, momentum, minimum lengths) to
a data set of a few thousand users, and :func:`quick` shrinks budgets for ``--quick`` runs.
Every change from the paper is explicit here and listed in docs/trainer.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

MODEL_NAMES = (
    "pop", "youtubenet", "din", "bst", "cross_bst", "sasrec",
    "semi", "semi_ccl", "semi_product", "semi_product_ccl", "semi_video", "semi_video_ccl",
)


@dataclass(frozen=True)
class BlockConfig:
    """One multi-head attention block (Fig. 2c) and the shared hour-block time embedding."""

    dim: int = 128
    heads: int = 8
    ffn: int = 128
    dropout: float = 0.1
    # §4.1: the ranker sees the last 7 days; entries older than this are masked out
    # (:func:`semirec.trainer.offline.samples.in_window`), so hour buckets 0..max_age_hours are all it embeds
    max_age_hours: int = 168


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training on P(watched completely)."""

    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decoupled decay (0 = the paper's Adam)
    epochs: int = 20
    patience: int = 3  # early stopping on validation AUC
    max_train_samples: int = 0  # 0 = all; otherwise a random subset (quick runs)
    seq_len: int = 50  # sequences are truncated to the newest seq_len entries per domain
    # learning rate of the "wide" linear terms (Ranker.wide_parameters) = lr x this, no decay
    wide_lr_scale: float = 1.0


@dataclass(frozen=True)
class CCLConfig:
    """Cross-domain contrastive pre-training (Algorithm 1)."""

    batch_size: int = 1024
    lr: float = 1e-3
    queue_size: int = 40 * 1024
    momentum: float = 0.999
    tau: float = 0.7
    epochs: int = 20
    min_video_len: int = 10  # keep records whose video sequence is longer than this
    min_product_len: int = 5  # ... and whose product sequence has at least this many
    records_per_user: int = 1  # the paper keeps one; more are masked out as each other's negatives
    use_time: bool = True  # add the time embedding in CCL (the paper); see scaled()


@dataclass(frozen=True)
class ModelConfig:
    """Everything one named model needs: architecture, supervised training, optional CCL."""

    name: str
    block: BlockConfig = field(default_factory=BlockConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ccl: CCLConfig | None = None
    mlp_hidden: int = 128  # SEMI A.1: MLP 128 -> 1
    # the item vectors' size when it is not block.dim (0: it is, as in the paper, where the
    # blocks work on the item vectors themselves): a SEMI model then first maps them to
    # block.dim with learned linear projections (beyond the paper; see vector_dim)
    item_dim: int = 0
    din_attention_hidden: tuple[int, ...] = (64, 32)
    sasrec_blocks: int = 2
    # item identity beside content (beyond the paper; semirec.trainer.nets.identity): a hashed per-item bias
    # and the item's smoothed completion rate, added to the logit
    item_identity: bool = False
    id_buckets: int = 1 << 18
    rate_prior_strength: float = 10.0  # pseudo-watches of the prior in the smoothed rate
    # explicit content similarity of the candidate to each sequence (beyond the paper; SEMI only;
    # semirec.trainer.nets.layers.ContentSimilarity): cosine to the mean direction and the max cosine
    content_similarity: bool = False
    # recency / session similarity (``+rec``, with ``+sim`` only): the same two features against
    # the entries of the newest hour block and against the newest RECENT_ENTRIES entries
    recency_similarity: bool = False
    # session intent (``+ses``, with ``+sim`` only; semirec.trainer.nets.signals.SessionSimilarity):
    # cosine to the newest hour block's clicks and watches together
    session_similarity: bool = False
    # the user's completion rate on content like the candidate (``+usr``, with ``+sim`` only;
    # semirec.trainer.nets.signals.UserRate), from complete and incomplete watches
    user_rate: bool = False

    @property
    def vector_dim(self) -> int:
        """The size of the item vectors the model reads (its inputs' last axis)."""
        return self.item_dim or self.block.dim

    @property
    def domains(self) -> tuple[str, ...]:
        """Which user sequences the model reads."""
        if self.name.startswith("semi_product"):
            return ("product",)
        if self.name.startswith(("semi_video", "youtubenet", "din", "bst", "sasrec")):
            return ("video",)
        if self.name == "pop":
            return ()
        return ("video", "product")

    @property
    def full_name(self) -> str:
        """The name with its additions, as ``--models`` takes it (``semi_ccl+sim+id``)."""
        return (self.name + (SIMILARITY_SUFFIX if self.content_similarity else "")
                + (RECENCY_SUFFIX if self.recency_similarity else "")
                + (SESSION_SUFFIX if self.session_similarity else "")
                + (USER_RATE_SUFFIX if self.user_rate else "")
                + (IDENTITY_SUFFIX if self.item_identity else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        ccl = raw.get("ccl")
        return cls(
            name=raw["name"],
            block=BlockConfig(**raw.get("block", {})),
            train=TrainConfig(**raw.get("train", {})),
            ccl=CCLConfig(**ccl) if ccl else None,
            mlp_hidden=raw.get("mlp_hidden", 128),
            item_dim=raw.get("item_dim", 0),
            din_attention_hidden=tuple(raw.get("din_attention_hidden", (64, 32))),
            sasrec_blocks=raw.get("sasrec_blocks", 2),
            item_identity=raw.get("item_identity", False),
            id_buckets=raw.get("id_buckets", 1 << 18),
            rate_prior_strength=raw.get("rate_prior_strength", 10.0),
            content_similarity=raw.get("content_similarity", False),
            recency_similarity=raw.get("recency_similarity", False),
            session_similarity=raw.get("session_similarity", False),
            user_rate=raw.get("user_rate", False),
        )


IDENTITY_SUFFIX = "+id"
SIMILARITY_SUFFIX = "+sim"
RECENCY_SUFFIX = "+rec"
SESSION_SUFFIX = "+ses"
USER_RATE_SUFFIX = "+usr"
# in this order: ``semi_ccl+sim+rec+ses+usr+id``
SUFFIXES = (SIMILARITY_SUFFIX, RECENCY_SUFFIX, SESSION_SUFFIX, USER_RATE_SUFFIX, IDENTITY_SUFFIX)


def split_name(name: str) -> tuple[str, str]:
    """``semi_ccl+sim+id`` -> (``semi_ccl``, ``+sim+id``): the network and its additions."""
    base, suffix = name, ""
    for s in reversed(SUFFIXES):
        if base.endswith(s):
            base, suffix = base.removesuffix(s), s + suffix
    return base, suffix


def base_name(name: str) -> str:
    """``semi_ccl+sim+rec+id`` -> ``semi_ccl``: the network; ``+sim`` adds explicit content
    similarity (SEMI only), ``+rec`` its recency / session features, ``+ses`` the newest hour
    block's similarity, ``+usr`` the user's completion rate, ``+id`` item identity."""
    return split_name(name)[0]


def check_name(name: str) -> None:
    base, suffix = split_name(name)
    if base not in MODEL_NAMES or (base == "pop" and suffix):
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)} "
                         f"(a neural one may end in {IDENTITY_SUFFIX!r}, a SEMI one in "
                         f"{SIMILARITY_SUFFIX!r}, then maybe {RECENCY_SUFFIX!r}, {SESSION_SUFFIX!r}, "
                         f"{USER_RATE_SUFFIX!r} in this order, then maybe {IDENTITY_SUFFIX!r})")
    if SIMILARITY_SUFFIX in suffix and not base.startswith("semi"):
        raise ValueError(f"{name!r}: {SIMILARITY_SUFFIX!r} (content similarity) exists for the "
                         "SEMI models only")
    for extra in (RECENCY_SUFFIX, SESSION_SUFFIX, USER_RATE_SUFFIX):
        if extra in suffix and SIMILARITY_SUFFIX not in suffix:
            raise ValueError(f"{name!r}: {extra!r} comes after {SIMILARITY_SUFFIX!r}")


def paper(name: str) -> ModelConfig:
    """The paper's settings for model ``name`` (CCL for the ``*_ccl`` models); ``+sim`` turns
    explicit content similarity on, ``+rec`` its recency features and ``+id`` item identity
    (none is in the paper)."""
    check_name(name)
    base, suffix = split_name(name)
    return ModelConfig(name=base, ccl=CCLConfig() if base.endswith("_ccl") else None,
                       item_identity=IDENTITY_SUFFIX in suffix,
                       content_similarity=SIMILARITY_SUFFIX in suffix,
                       recency_similarity=RECENCY_SUFFIX in suffix,
                       session_similarity=SESSION_SUFFIX in suffix,
                       user_rate=USER_RATE_SUFFIX in suffix)


# chosen on validation AUC only (docs/results.md, "Settings chosen on validation")
WEIGHT_DECAY = 0.1
CCL_TAU = 0.2
CCL_RECORDS_PER_USER = 4
WIDE_LR_SCALE = 100.0  # the content-similarity term's learning rate = lr x this (``+sim``)
# SEMI's sizes: 64 hidden units in the prediction MLP and the attention blocks' feed-forward nets
# instead of the paper's 128: the same validation AUC for ~23% fewer FLOPs per 500-candidate
# request (docs/results.md, "A smaller head and feed-forward nets")
MLP_HIDDEN = 64
BLOCK_FFN = 64
# ... and its attention blocks 64 wide with 4 heads, the item vectors projected to that width:
# the same validation AUC for ~36% less onnxruntime time per user (docs/results.md, "A narrower
# SEMI")
BLOCK_DIM = 64
BLOCK_HEADS = 4


def scaled(cfg: ModelConfig, n_train: int, n_ccl: int) -> ModelConfig:
    """Adapt Taobao-scale sizes to our data (10^4-10^5 samples, 10^3 users), and fix what does
    not work as the paper's values here.

    - batch 1024 -> 256 for supervised training (enough steps per epoch on ~10^5 samples);
    - AdamW weight decay ``WEIGHT_DECAY`` (chosen on validation; the paper gives none);
    - CCL batch 1024 -> 64, dictionary K -> at most half the pre-training set (rounded to whole
      batches) so a record's previous key has left the queue before it is seen again;
    - momentum 0.999 -> 0.99: with ~10^2-10^3 steps in all, 0.999 leaves the key encoders at
      their random initialisation (0.999^500 = 0.61);
    - minimum video length 10 -> 5 (our users have ~10-50 complete watches in all);
    - tau 0.7 -> ``CCL_TAU``: with L2-normalised codes 0.7 caps the logits at +-1.43;
    - ``CCL_RECORDS_PER_USER`` records per user (the user's other records are masked out as
      negatives) instead of one, with the CCL epochs divided by as much (the same number of
      steps as with one record per user);
    - no time embedding inside CCL: a record's two sequences share their active hours, so the
      pairing is solvable from timing alone (``semirec.trainer.nets.ccl.time_only_accuracy``);
    - the wide linear terms (``+sim``) learn at ``WIDE_LR_SCALE`` x lr without decay: their
      handful of weights must reach O(1), which Adam's steps of ~lr do not within a few hundred
      steps (chosen on validation, docs/results.md);
    - SEMI's MLP has ``MLP_HIDDEN`` hidden units and its attention blocks' feed-forward nets
      ``BLOCK_FFN``; its blocks are ``BLOCK_DIM`` wide (at most the item vectors' width, to
      which they are projected: ``item_dim``) with ``BLOCK_HEADS`` heads (the same validation
      AUC, a cheaper ranker).
    """
    train = replace(cfg.train, batch_size=min(cfg.train.batch_size, max(32, n_train // 200), 256),
                    weight_decay=WEIGHT_DECAY, wide_lr_scale=WIDE_LR_SCALE)
    ccl = cfg.ccl
    if ccl is not None:
        batch = min(64, ccl.batch_size)
        queue = max(batch, min(ccl.queue_size, (max(n_ccl, 2 * batch) // 2 // batch) * batch))
        ccl = replace(ccl, batch_size=batch, queue_size=queue, momentum=0.99, min_video_len=5,
                      tau=CCL_TAU, records_per_user=CCL_RECORDS_PER_USER, use_time=False,
                      epochs=max(1, ccl.epochs // CCL_RECORDS_PER_USER))
    if cfg.name.startswith("semi"):
        width = cfg.vector_dim
        dim = min(BLOCK_DIM, width)
        cfg = replace(cfg, mlp_hidden=MLP_HIDDEN, item_dim=0 if dim == width else width,
                      block=replace(cfg.block, ffn=BLOCK_FFN, dim=dim, heads=BLOCK_HEADS))
    return replace(cfg, train=train, ccl=ccl)


def quick(cfg: ModelConfig) -> ModelConfig:
    """Budgets for ``--quick``: fewer epochs, shorter sequences, a training subset."""
    train = replace(cfg.train, batch_size=64, epochs=3, patience=1, max_train_samples=6000,
                    seq_len=20)
    ccl = (replace(cfg.ccl, epochs=max(1, 8 // cfg.ccl.records_per_user))
           if cfg.ccl is not None else None)
    return replace(cfg, train=train, ccl=ccl, sasrec_blocks=1)
