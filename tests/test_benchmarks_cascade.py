"""benchmarks/cascade.py's cascade: the deep part on the wide part's top k, the rest kept below."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmarks.cascade import cascade_logits, wide_logits
from semirec.trainer.nets.configs import BlockConfig, TrainConfig, paper
from semirec.trainer.nets.zoo import build
from tests.test_trainer_models import D, batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = replace(paper("semi_ccl+sim+id"), block=BlockConfig(dim=D, heads=4, ffn=D),
                  train=TrainConfig(seq_len=12), id_buckets=64)
    m = build(cfg).eval()
    with torch.no_grad():  # zero at the start of training: give the wide part something to rank
        m.similarity_weight.weight.normal_()
        m.identity.bias.weight.normal_()
    return m


def test_the_cascade_keeps_the_full_logits_of_the_wide_parts_top_k(model) -> None:
    user = batch([12, 5], [7, 12])
    cands = torch.randn(2, 30, D)
    items = (torch.randint(0, 64, (2, 30)), torch.randint(0, 9, (2, 30)).float(),
             torch.randint(0, 3, (2, 30)).float())
    with torch.no_grad():
        ctx = model.encode_user(user)
        full = model.logits(ctx, cands, items)
        cheap = wide_logits(model, ctx, cands, items)
        assert torch.equal(cascade_logits(model, 30)(ctx, cands, items), full)  # k >= candidates
        got = cascade_logits(model, 8)(ctx, cands, items)
    top = cheap.topk(8, dim=1).indices
    kept = torch.zeros_like(full, dtype=torch.bool).scatter(1, top, True)
    assert torch.allclose(got[kept], full[kept], atol=1e-5)
    assert torch.equal(got[~kept], cheap[~kept] - 1e4)
    assert not torch.allclose(cheap, full)  # the deep part changes the order the cascade keeps
