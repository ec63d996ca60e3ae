"""SEMI and the baselines: shapes, padding masks, empty sequences, user-side-once scoring."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from semirec.trainer.nets.configs import MODEL_NAMES, BlockConfig, ModelConfig, TrainConfig, paper
from semirec.trainer.nets.layers import (
    NEG,
    SPREAD,
    AttentionBlock,
    copy_into_padding,
    floor_scores,
)
from semirec.trainer.nets.ranker import UserBatch
from semirec.trainer.nets.semi import SEMI
from semirec.trainer.nets.zoo import build

D = 32
NEURAL = [m for m in MODEL_NAMES if m != "pop"] + ["semi_ccl+sim", "semi_product+sim"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(name: str) -> ModelConfig:
    return replace(paper(name), block=BlockConfig(dim=D, heads=4, ffn=D),
                   train=TrainConfig(seq_len=12))


def batch(lengths_v: list[int], lengths_p: list[int], width: int = 12, seed: int = 0) -> UserBatch:
    """Right-aligned sequences with the given real lengths; padded slots hold garbage on purpose."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths_v)

    def domain(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = torch.arange(width)[None] >= width - torch.tensor(lengths)[:, None]
        vec = torch.randn(b, width, D, generator=g)
        age = torch.randint(0, 200, (b, width), generator=g)
        return vec, age, mask

    return UserBatch(*domain(lengths_v), *domain(lengths_p))


def take(user: UserBatch, i: int, width_v: int, width_p: int) -> UserBatch:
    """User ``i`` alone, trimmed to its newest ``width_*`` slots (less padding)."""
    v, p = slice(-width_v, None), slice(-width_p, None)
    return UserBatch(user.video[i : i + 1, v], user.video_age[i : i + 1, v],
                     user.video_mask[i : i + 1, v], user.product[i : i + 1, p],
                     user.product_age[i : i + 1, p], user.product_mask[i : i + 1, p])


@pytest.fixture(params=NEURAL)
def model(request: pytest.FixtureRequest):
    torch.manual_seed(0)
    return build(tiny(request.param)).eval()


def test_shapes_and_empty_sequences(model) -> None:
    user = batch([12, 3, 0, 0], [12, 0, 5, 0])
    cands = torch.randn(4, 7, D)
    with torch.no_grad():
        scores = model.score(model.encode_user(user), cands)
        single = model(user, cands[:, 0])
    assert scores.shape == (4, 7) and single.shape == (4,)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(single, scores[:, 0], atol=1e-5, rtol=1e-5)


def test_padding_content_does_not_matter(model) -> None:
    user = batch([5, 2, 0], [4, 0, 3])
    noisy = UserBatch(
        torch.where(user.video_mask[..., None], user.video, torch.randn_like(user.video) * 100),
        torch.where(user.video_mask, user.video_age, 7), user.video_mask,
        torch.where(user.product_mask[..., None], user.product, 50.0), user.product_age,
        user.product_mask,
    )
    cands = torch.randn(3, 4, D)
    with torch.no_grad():
        a = model.score(model.encode_user(user), cands)
        b = model.score(model.encode_user(noisy), cands)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_user_side_once_equals_batch_forward(model) -> None:
    """score(encode_user(u), C candidates) == the batch forward of C (user, candidate) rows,
    and one user scored alone (with less padding) gives the same as inside a batch."""
    user = batch([12, 6, 1, 0], [9, 12, 0, 4])
    cands = torch.randn(4, 5, D)
    with torch.no_grad():
        shared = model.score(model.encode_user(user), cands)
        for i, (wv, wp) in enumerate([(12, 9), (6, 12), (1, 1), (1, 4)]):
            alone = take(user, i, wv, wp)
            rows = UserBatch(*(t.expand(5, *t.shape[1:]) for t in (
                alone.video, alone.video_age, alone.video_mask, alone.product,
                alone.product_age, alone.product_mask)))
            forward = model(rows, cands[i])
            torch.testing.assert_close(forward, shared[i], atol=1e-5, rtol=1e-5)


def test_attention_block_matches_torch_reference() -> None:
    torch.manual_seed(0)
    block = AttentionBlock(D, 4, D, dropout=0.0).eval()
    x = torch.randn(2, 6, D)
    mask = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    w = torch.cat([block.q.weight, block.k.weight, block.v.weight])
    b = torch.cat([block.q.bias, block.k.bias, block.v.bias])
    ref, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), D, 4, w, b, None, None, False,
        0.0, block.out.weight, block.out.bias, training=False, key_padding_mask=~mask,
        need_weights=False)
    ref = block.norm1(x + ref.transpose(0, 1))
    ref = block.norm2(ref + block.ffn(ref))
    with torch.no_grad():
        ours = block(x, mask)
    torch.testing.assert_close(ours[1, 2:], ref[1, 2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)


def test_attention_weights_are_never_denormal() -> None:
    """In the exported graph padded keys and scores far below the row's max get e^-SPREAD, a
    normal float, not the denormal weights that slow x86 down; every weight within float
    resolution of softmax's."""
    scores = torch.tensor([[0.0, -1.0, NEG, -200.0, -87.5, 3.0],
                           [NEG, NEG, NEG, NEG, NEG, NEG]])
    ours, plain = torch.softmax(floor_scores(scores), dim=-1), torch.softmax(scores, dim=-1)
    assert ours[0, 2] > 0 and ours[0, 2] >= float(torch.finfo(torch.float32).tiny)
    tiny = (ours != 0) & (ours.abs() < torch.finfo(torch.float32).tiny)
    assert not tiny.any()
    assert (ours[0, 2:5] / ours[0, 5]).allclose(torch.full((3,), math.exp(-SPREAD)))
    torch.testing.assert_close(ours, plain, atol=1e-12, rtol=1e-6)
    assert plain[0, 4] < torch.finfo(torch.float32).tiny  # what it replaces is denormal


def test_padding_copies_leave_the_attention_outputs_unchanged(monkeypatch) -> None:
    """In an exported graph padded keys are copies of the row's first real entry biased by
    -SPREAD (no floor per candidate) and the bias is folded into the scores' product: the same
    outputs as eager torch at every real position, for the candidates' attention and for an
    empty row."""
    torch.manual_seed(0)
    block = AttentionBlock(D, 4, D, 0.0).eval()
    x, cands = torch.randn(3, 9, D) * 3, torch.randn(3, 6, D)
    mask = torch.arange(9)[None] >= torch.tensor([4, 0, 9])[:, None]  # 5, 9, 0 real entries

    def outputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            keys, values, bias = block.keys_values(x, mask)
            return block(x, mask), block.attend(cands, keys, values, bias), bias

    eager = outputs()
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    exported = outputs()
    torch.testing.assert_close(exported[0][mask], eager[0][mask], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(exported[1], eager[1], atol=1e-6, rtol=1e-6)
    assert eager[2].min() == NEG and exported[2].min() == -SPREAD
    torch.testing.assert_close(copy_into_padding(x, mask)[0, :4], x[0, 4:5].expand(4, D))


def test_semi_matches_a_direct_reading_of_the_paper() -> None:
    """Recompute SEMI step by step from its modules (no key/value caching) and compare."""
    torch.manual_seed(1)
    model: SEMI = build(tiny("semi")).eval()
    user = batch([4], [6], width=6)
    cand = torch.randn(1, 3, D)
    t = model.time
    with torch.no_grad():
        v_intra = model.intra["video"].block(user.video + t(user.video_age), user.video_mask)
        p_intra = model.intra["product"].block(user.product + t(user.product_age),
                                               user.product_mask)
        joint = model.inter(torch.cat([v_intra, p_intra], 1),
                            torch.cat([user.video_mask, user.product_mask], 1))
        v_inter, p_inter = joint[:, :6], joint[:, 6:]
        v_t = cand + t(torch.zeros(1, 3, dtype=torch.long))
        outs = []
        for name, seq, mask in (("video", v_inter, user.video_mask),
                                ("product", p_inter, user.product_mask)):
            outs.append(model.target[name].attend(v_t, *model.target[name].keys_values(seq, mask)))
        direct = model.head(torch.cat([*outs, v_t], -1))
        fast = model.score(model.encode_user(user), cand)
    torch.testing.assert_close(fast, direct)


def test_domains_and_dropout_on_the_mlp_hidden_layer() -> None:
    assert tiny("semi").domains == ("video", "product")
    assert tiny("semi_video_ccl").domains == ("video",)
    assert tiny("semi_product").domains == ("product",)
    assert tiny("cross_bst").domains == ("video", "product")
    assert tiny("bst").domains == ("video",)
    model = build(tiny("semi"))
    drops = [m for m in model.head.mlp if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.1
    assert isinstance(model.head.mlp[-1], torch.nn.Linear)  # the logit itself is not dropped
    model.train()
    user = batch([3] * 64, [3] * 64)
    logits = torch.cat([model(user, torch.randn(64, D)) for _ in range(4)])
    assert (logits == 0).sum() == 0  # a dropout on the logit would zero about a tenth
    model.eval()
    torch.testing.assert_close(model(user, torch.ones(64, D)), model(user, torch.ones(64, D)))


def test_a_narrower_semi_projects_the_item_vectors_to_its_width() -> None:
    """block.dim below item_dim: the sequences and the candidate go through learned projections
    (the paper's width, block.dim == item_dim, has none and the same parameters as before)."""
    assert build(tiny("semi_ccl+sim")).project is None
    assert not any("project" in k for k in build(tiny("semi_ccl+sim")).state_dict())
    cfg = replace(tiny("semi_ccl+sim"), block=BlockConfig(dim=D // 2, heads=2, ffn=D // 2),
                  item_dim=D)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    model = build(cfg).eval()
    assert model.project.weight.shape == (D // 2, D)
    assert all(model.intra[d].project.weight.shape == (D // 2, D) for d in model.domains)
    user, cands = batch([12, 3, 0], [12, 0, 5]), torch.randn(3, 7, D)
    with torch.no_grad():
        scores = model.score(model.encode_user(user), cands)
        single = model(user, cands[:, 0])
        assert scores.shape == (3, 7) and torch.isfinite(scores).all()
        torch.testing.assert_close(single, scores[:, 0], atol=1e-5, rtol=1e-5)
        for module in (model.project, model.intra["video"].project):  # both are read
            module.weight.mul_(2.0)
            assert not torch.allclose(model.score(model.encode_user(user), cands), scores)
            module.weight.mul_(0.5)
    with pytest.raises(ValueError, match="above item_dim"):
        build(replace(cfg, item_dim=D // 4))
    assert replace(cfg, item_dim=0).vector_dim == D // 2 and cfg.vector_dim == D
    with pytest.raises(ValueError, match="a projection is SEMI's"):
        build(replace(tiny("din"), item_dim=2 * D))
