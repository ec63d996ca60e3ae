"""Model name -> network class."""

from __future__ import annotations

from trainer.baselines import BST, DIN, SASRec, YouTubeNet
from trainer.configs import ModelConfig
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
    return NETWORKS[cfg.name](cfg)
