"""CCL (Algorithm 1): InfoNCE, queue dictionaries, momentum update, gradients, SEMI init."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semirec.trainer.nets.ccl import CCL, info_nce, init_from_ccl
from semirec.trainer.nets.configs import BlockConfig, CCLConfig, TrainConfig, paper
from semirec.trainer.nets.ranker import UserBatch
from semirec.trainer.nets.zoo import build

D = 16


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cfg(name: str = "semi_ccl", queue: int = 8, momentum: float = 0.9):
    return replace(paper(name), block=BlockConfig(dim=D, heads=2, ffn=D),
                   train=TrainConfig(seq_len=6),
                   ccl=CCLConfig(batch_size=4, queue_size=queue, momentum=momentum, tau=0.7))


def users(n: int, seed: int = 0) -> UserBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 6, dtype=torch.bool)
    mask[0, :3] = False
    return UserBatch(torch.randn(n, 6, D, generator=g), torch.randint(0, 50, (n, 6), generator=g),
                     mask, torch.randn(n, 6, D, generator=g),
                     torch.randint(0, 50, (n, 6), generator=g), mask.clone())


def test_info_nce_hand_case() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    # query 0: logits (2, 0, -2), positive 0; query 1: logits (0, 2, 0), positive 1
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
                - math.log(math.exp(2) / (1 + math.exp(2) + 1))) / 2
    got = info_nce(q, keys, torch.tensor([0, 1]), tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_queue_is_a_ring_of_the_newest_keys() -> None:
    model = CCL(cfg(queue=6))
    a, b = torch.full((4, D), 1.0), torch.full((4, D), 2.0)
    slots = model.enqueue(a, -a)
    assert slots.tolist() == [0, 1, 2, 3] and int(model.pointer) == 4
    slots = model.enqueue(b, -b)
    assert slots.tolist() == [4, 5, 0, 1] and int(model.pointer) == 2
    # the oldest two keys of the first batch survive, the rest were dequeued
    assert model.queue_video[:, 0].tolist() == [2, 2, 1, 1, 2, 2]
    assert model.queue_product[:, 0].tolist() == [-2, -2, -1, -1, -2, -2]
    with pytest.raises(ValueError, match="larger than the dictionary"):
        model.enqueue(torch.zeros(7, D), torch.zeros(7, D))


def test_loss_uses_the_freshly_enqueued_positive_and_no_grads_reach_keys() -> None:
    torch.manual_seed(0)
    model = CCL(cfg(queue=8))
    user = users(4)
    loss = model.loss(user)
    loss.backward()
    assert all(p.grad is None for p in model.key.parameters())
    assert all(not p.requires_grad for p in model.key.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.query.parameters())
    # recompute Eq. 5 + 6 by hand (eval mode: no dropout): after loss() the batch's keys sit
    # at slots 0..3 of both dictionaries and are the positives
    model.eval()
    model.pointer.zero_()
    with torch.no_grad():
        loss = model.loss(user)
        kv, kp = model.keys(user)
        torch.testing.assert_close(model.queue_video[:4], kv)
        torch.testing.assert_close(model.queue_product[:4], kp)
        qv = model.encode(model.query, "video", user)
        qp = model.encode(model.query, "product", user)
        target = torch.arange(4)
        by_hand = (F.cross_entropy(qv @ model.queue_product.T / 0.7, target)
                   + F.cross_entropy(qp @ model.queue_video.T / 0.7, target))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_momentum_update_formula() -> None:
    model = CCL(cfg(momentum=0.9))
    for p in model.query.parameters():
        p.data.add_(1.0)
    before_k = [p.clone() for p in model.key.parameters()]
    query = [p.clone() for p in model.query.parameters()]
    model.momentum_update()
    for k0, q, k1 in zip(before_k, query, model.key.parameters(), strict=True):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)
    for q0, q1 in zip(query, model.query.parameters(), strict=True):
        assert torch.equal(q0, q1)  # the query side is untouched


def test_key_encoders_start_equal_to_query_encoders() -> None:
    model = CCL(cfg())
    for k, q in zip(model.key.parameters(), model.query.parameters(), strict=True):
        assert torch.equal(k, q) and k.data_ptr() != q.data_ptr()


def test_max_pooling_ignores_padding() -> None:
    model = CCL(cfg()).eval()
    user = users(2)
    with torch.no_grad():
        a = model.encode(model.query, "video", user)
        junk = user.video.clone()
        junk[0, :3] = 1e3  # padded slots of user 0
        b = model.encode(model.query, "video", UserBatch(junk, *list(vars(user).values())[1:]))
    torch.testing.assert_close(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2))


def test_semi_is_initialised_from_the_query_encoders() -> None:
    torch.manual_seed(0)
    ccl = CCL(cfg())
    for p in ccl.query.parameters():
        p.data.normal_()
    for name, domains in (("semi_ccl", ("video", "product")), ("semi_video_ccl", ("video",)),
                          ("semi_product_ccl", ("product",))):
        semi = build(cfg(name))
        init_from_ccl(semi, ccl)
        assert torch.equal(semi.time.table.weight, ccl.query["time"].table.weight)
        for d in domains:
            for a, b in zip(semi.intra[d].parameters(), ccl.query[d].parameters(), strict=True):
                assert torch.equal(a, b)


def test_pretraining_aligns_the_two_domains() -> None:
    """Pairs whose video and product sequences share a latent vector (rotated for products):
    after CCL a video query retrieves its own product sequence among all records (random:
    1/96), which the untrained encoders cannot."""
    from semirec.trainer.offline.fit import pretrain_ccl
    from semirec.trainer.offline.samples import SampleSet, user_batch

    rng = np.random.default_rng(0)
    n, width = 96, 6
    latent = rng.normal(size=(n, D))
    rotation = np.linalg.qr(rng.normal(size=(D, D)))[0]  # the domain gap: products live elsewhere
    video = np.repeat(latent, width, axis=0)
    product = np.repeat(latent @ rotation, width, axis=0)
    table = np.vstack([np.zeros((1, D)), video, product])
    table[1:] += 0.3 * rng.normal(size=(2 * n * width, D))
    table = table.astype(np.float32)
    rows = 1 + np.arange(2 * n * width).reshape(2, n, width).transpose(1, 0, 2)
    zeros = np.zeros((n, width), np.int32)
    records = SampleSet(np.array([f"u{i}" for i in range(n)], dtype=object), np.ones(n, np.int32),
                        np.ones(n, np.float32), np.arange(n, dtype=np.float64),
                        np.array([str(i) for i in range(n)], dtype=object),
                        rows[:, 0].astype(np.int32), zeros, rows[:, 1].astype(np.int32), zeros)
    c = replace(cfg(), ccl=replace(cfg().ccl, queue_size=32, batch_size=16, momentum=0.9,
                                   epochs=15, lr=3e-3))
    model, losses = pretrain_ccl(c, records, torch.from_numpy(table), seed=0, seq_len=width)
    # with L2-normalised codes and tau = 0.7 the loss floor is about 2 (log(K) - 1/tau) = 4.1
    assert losses[-1] < losses[0] - 0.5, losses
    with torch.no_grad():
        user = user_batch(records, np.arange(n), torch.from_numpy(table), width)
        qv = model.encode(model.query, "video", user)
        kp = model.encode(model.key, "product", user)
        qp = model.encode(model.query, "product", user)
        kv = model.encode(model.key, "video", user)
    hits_v = ((qv @ kp.T).argmax(1) == torch.arange(n)).float().mean().item()
    hits_p = ((qp @ kv.T).argmax(1) == torch.arange(n)).float().mean().item()
    assert hits_v > 0.5 and hits_p > 0.5, (hits_v, hits_p)


def test_same_user_keys_are_not_negatives() -> None:
    """A dictionary entry excluded for a query changes nothing but that query's softmax."""
    torch.manual_seed(0)
    q = F.normalize(torch.randn(3, D), dim=-1)
    keys = F.normalize(torch.randn(6, D), dim=-1)
    positives = torch.tensor([0, 1, 2])
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    exclude[0, 4] = True  # key 4 is another record of query 0's user
    exclude[1, 1] = True  # the positive itself is never excluded
    masked = info_nce(q, keys, positives, 0.1, exclude)
    logits = q @ keys.T / 0.1
    by_hand = (F.cross_entropy(logits[0:1, [0, 1, 2, 3, 5]], torch.tensor([0]))
               + F.cross_entropy(logits[1:3], positives[1:], reduction="sum")) / 3
    assert masked.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # in the loss: owners in the queue mask the same user's other records
    model = CCL(cfg(queue=8)).eval()
    user = users(4)
    owners = torch.tensor([7, 7, 8, 9])  # records 0 and 1 belong to one user
    model.enqueue(*model.keys(user), torch.tensor([7, 3, 3, 3]))  # slot 0: user 7 too
    with torch.no_grad():
        loss = model.loss(user, owners)  # batch goes to slots 4..7
        qv = model.encode(model.query, "video", user)
        qp = model.encode(model.query, "product", user)
        exclude = (owners[:, None] == model.queue_owner[None]) & (owners[:, None] >= 0)
        assert exclude[0].tolist() == [True, False, False, False, True, True, False, False]
        expected = (info_nce(qv, model.queue_product, torch.arange(4, 8), 0.7, exclude)
                    + info_nce(qp, model.queue_video, torch.arange(4, 8), 0.7, exclude))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(model.loss(user).item(), rel=1e-3)


def _timing_only_records(n: int = 96, width: int = 6, seed: int = 0):
    """Records whose items carry no content at all (zero vectors) but whose two sequences share
    their ages, as a user's active hours do: only timing pairs the domains."""
    from semirec.trainer.offline.samples import SampleSet

    rng = np.random.default_rng(seed)
    table = np.zeros((1 + 2 * n * width, D), np.float32)
    rows = (1 + np.arange(2 * n * width).reshape(2, n, width)).astype(np.int32)
    ages = np.sort(rng.choice(160, size=(n, width)), axis=1)[:, ::-1].astype(np.int32)
    records = SampleSet(np.array([f"u{i}" for i in range(n)], dtype=object), np.ones(n, np.int32),
                        np.ones(n, np.float32), np.arange(n, dtype=np.float64),
                        np.array([str(i) for i in range(n)], dtype=object),
                        rows[0], ages.copy(), rows[1], ages.copy())
    return records, torch.from_numpy(table)


@pytest.mark.parametrize("use_time", [True, False])
def test_ccl_cannot_pair_the_domains_from_timing_alone(use_time: bool) -> None:
    """With the time embedding inside CCL (the paper), the pairing is learned from shared
    active hours alone: item vectors zeroed, accuracy far above chance. Without it (our
    setting) zeroed items leave nothing to pair by: accuracy = chance."""
    from semirec.trainer.nets.ccl import time_only_accuracy
    from semirec.trainer.offline.fit import pretrain_ccl, user_codes
    from semirec.trainer.offline.samples import user_batch

    records, table = _timing_only_records()
    c = replace(cfg(), ccl=replace(cfg().ccl, queue_size=32, batch_size=16, momentum=0.9,
                                   epochs=6, lr=1e-2, tau=0.1, use_time=use_time))
    model, _ = pretrain_ccl(c, records, table, seed=0, seq_len=6)
    user = user_batch(records, np.arange(len(records)), table, 6)
    owners = torch.from_numpy(user_codes(records))
    acc = time_only_accuracy(model, user, owners)
    chance = 1 / len(records)
    if use_time:
        assert acc > 0.5, acc  # chance: 1/96
    else:
        assert acc == pytest.approx(chance, abs=1e-6), acc
