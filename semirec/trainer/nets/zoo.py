"""Model name -> network class."""

from __future__ import annotations

from semirec.trainer.nets.baselines import BST, DIN, SASRec, YouTubeNet
from semirec.trainer.nets.configs import ModelConfig
from semirec.trainer.nets.identity import ItemIdentity
from semirec.trainer.nets.ranker import Ranker
from semirec.trainer.nets.semi import SEMI

NETWORKS: dict[str, type[Ranker]] = {
    "youtubenet": YouTubeNet,
    "din": DIN,
    "bst": BST,
    "cross_bst": BST,
    "sasrec": SASRec,
    "semi": SEMI,
    "semi_ccl": SEMI,
    "semi_product": SEMI,
    "semi_product_ccl": SEMI,
    "semi_video": SEMI,
    "semi_video_ccl": SEMI,
}


def build(cfg: ModelConfig) -> Ranker:
    if cfg.name not in NETWORKS:
        raise ValueError(f"{cfg.name!r} is not a neural ranker ({', '.join(NETWORKS)})")
    if cfg.vector_dim != cfg.block.dim and not cfg.name.startswith("semi"):
        raise ValueError(f"{cfg.name!r} reads the item vectors at its own width: item_dim "
                         f"{cfg.item_dim} must be block.dim {cfg.block.dim} (a projection is SEMI's)")
    model = NETWORKS[cfg.name](cfg)
    if cfg.item_identity:
        model.identity = ItemIdentity(cfg.id_buckets, cfg.rate_prior_strength)
    return model
