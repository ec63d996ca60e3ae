"""benchmarks/sizes.py: ``--served`` builds the network the trainer serves, ``--set`` on top."""

from __future__ import annotations

from benchmarks.sizes import ranker_config
from semirec.cli.evaluate import parse_settings
from semirec.trainer.nets.zoo import build

SERVED = "semi_ccl+sim+ses+usr+id"
# the served sizes as docs/serving.md's commands spell them out with --set since 2026-12-08
DOCUMENTED = "block.dim=64,block.heads=4,item_dim=128,block.ffn=64,mlp_hidden=64"


def _network(cfg) -> tuple:
    return cfg.block, cfg.item_dim, cfg.mlp_hidden


def test_served_sizes_are_the_trainers_and_the_documented_ones() -> None:
    served, documented = ranker_config(SERVED, served=True), ranker_config(SERVED, parse_settings(DOCUMENTED))
    assert _network(served) == _network(documented)
    shapes = [{k: tuple(v.shape) for k, v in build(c).state_dict().items()} for c in (served, documented)]
    assert shapes[0] == shapes[1]
    paper = ranker_config(SERVED)  # without --served: the paper's width, no projection
    assert (paper.block.dim, paper.item_dim) == (128, 0) and _network(paper) != _network(served)
    assert ranker_config(SERVED, {"mlp_hidden": 32}, served=True).mlp_hidden == 32  # --set on top
