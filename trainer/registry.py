"""Model name -> network class."""

from __future__ import annotations

from trainer.baselines import BST, DIN, SASRec, YouTubeNet
from trainer.configs import ModelConfig
from trainer.identity import ItemIdentity
from trainer.ranker import Ranker
from trainer.semi import SEMI

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
    model = NETWORKS[cfg.name](cfg)
    if cfg.item_identity:
        model.identity = ItemIdentity(cfg.id_buckets, cfg.rate_prior_strength)
    return model
