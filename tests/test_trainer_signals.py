"""``+ses`` / ``+usr`` (semirec.trainer.nets.signals): the same user state gives the same feature
values offline (training samples) and online (serving's tensors through the exported graph),
including the 7-day window and the incomplete watches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from semirec.core.contracts import Domain, Event
from semirec.core.sequences import UserState, apply
from semirec.serving.catalog import CatalogIndex
from semirec.serving.features import rank_request
from semirec.trainer.nets.configs import BlockConfig, check_name, paper
from semirec.trainer.nets.ranker import UserBatch
from semirec.trainer.nets.zoo import build
from semirec.trainer.offline.samples import build_samples, in_window, user_batch
from semirec.trainer.offline.toy import ToyWorld, toy_world
from semirec.trainer.registry import export

D, SEQ = 32, 20


def _events() -> tuple[list[Event], ToyWorld]:
    """A toy world whose users' later half comes 8 days after the first (entries leave the
    window), plus a same-hour burst per user (the session block)."""
    world = toy_world(users=6, videos=30, products=30, dim=D, events_per_user=60, seed=3)
    out = []
    for e in world.events:
        j = int(e.event_id.split("-")[1])
        out.append(replace(e, ts=e.ts + (8 * 86400 if j >= 30 else 0)))
    return sorted(out, key=lambda e: (e.ts, e.event_id)), world


@pytest.fixture(scope="module")
def setup():
    events, world = _events()
    rows = {it["item_id"]: i + 1 for i, it in enumerate(world.items)}
    table = torch.cat([torch.zeros(1, D), torch.from_numpy(world.vectors)])
    catalog = CatalogIndex(D)
    catalog.upsert([it["item_id"] for it in world.items], world.vectors,
                   [Domain(it["domain"]) for it in world.items])
    torch.manual_seed(0)
    model = build(replace(paper("semi+sim+ses+usr"), block=BlockConfig(dim=D, heads=4, ffn=D))).eval()
    model.user_rate.prior_rate.fill_(0.37)
    return events, world, rows, table, catalog, model


def test_names() -> None:
    cfg = paper("semi_ccl+sim+rec+ses+usr+id")
    assert cfg.session_similarity and cfg.user_rate and cfg.item_identity
    assert cfg.full_name == "semi_ccl+sim+rec+ses+usr+id"
    for bad in ("semi+usr", "semi_ccl+sim+usr+ses", "din+sim+ses"):
        with pytest.raises(ValueError):
            check_name(bad)


def test_same_state_same_features_offline_and_online(setup) -> None:
    events, world, rows, table, catalog, model = setup
    samples = build_samples(events, rows, seq_len=50, window_hours=168)
    video_ids = [it["item_id"] for it in world.items if it["domain"] == "video"]
    rng = np.random.default_rng(0)
    cand_ids = [[str(x) for x in rng.choice(video_ids, 4, replace=False)] for _ in range(len(samples))]
    cand_rows = np.array([[rows[c] for c in ids] for ids in cand_ids])
    with torch.inference_mode():
        idx = np.arange(len(samples))
        ctx = model.encode_user(user_batch(samples, idx, table, SEQ))
        cands = table[torch.from_numpy(cand_rows).long()]
        offline = model.wide_features(ctx, cands).numpy()
        offline_p = torch.sigmoid(model.logits(ctx, cands)).numpy()
    # online: the states as ingest keeps them, tensors as serving builds them, the graph's path
    states: dict[str, UserState] = {}
    online, online_p, outside, current = [], [], 0, 0
    for offset, e in enumerate(events):
        state = states.setdefault(e.user_id, UserState())
        if e.domain is Domain.VIDEO:
            i = len(online)
            vecs, _ = catalog.vectors(cand_ids[i])
            req = rank_request(state, vecs, catalog, at=e.ts, seq_len=SEQ, skipped=True)
            feeds = {k: torch.from_numpy(v) for k, v in req.tensors.items()}
            ages = [feeds[f"{d}_age"][feeds[f"{d}_mask"]] for d in ("video", "product", "skipped")]
            outside += int(sum((~in_window(a)).sum() for a in ages))
            current += int(any((a == 0).any() for a in ages[:2]))
            for d in ("video", "product", "skipped"):
                feeds[f"{d}_mask"] = feeds[f"{d}_mask"] & in_window(feeds[f"{d}_age"])
            with torch.inference_mode():
                c = model.encode_user(export.user_batch(feeds))
                online.append(model.wide_features(c, feeds["candidates"])[0].numpy())
            online_p.append(export.torch_batch_scores(model, req.tensors)[0])
        apply(state, [(e, offset)], seq_len=50)
    assert len(online) == len(samples)
    assert outside > 0 and current > 0  # the window and the session flag were exercised
    usr = offline[..., -3:]
    assert np.ptp(usr[..., 0]) > 0.5 and np.ptp(usr[..., 1]) > 0.1  # the signals vary
    assert (samples.skipped > 0).any()
    np.testing.assert_allclose(np.stack(online), offline, atol=1e-5)
    np.testing.assert_allclose(np.stack(online_p), offline_p, atol=1e-5)


def test_user_rate_follows_the_users_completions(setup) -> None:
    """A user who completed videos like the candidate and left others gets a higher rate
    feature for the first kind (the feature, not the network, decides)."""
    *_, model = setup
    a, b = torch.zeros(1, 1, D), torch.zeros(1, 1, D)
    a[..., 0], b[..., 1] = 1.0, 1.0
    done = a.expand(1, 4, D)
    left = b.expand(1, 4, D)
    ones, age = torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.long)
    user = UserBatch(done, age, ones, done, age, ones, left, age, ones)
    with torch.inference_mode():
        f = model.user_rate.features(torch.cat([a, b], 1), *model.user_rate.context(user))
    assert f[0, 0, 0] > 1.0 > -1.0 > f[0, 1, 0]
    assert f[0, 0, 1] == f[0, 1, 1]  # the user's own rate, whatever the candidate


def test_logged_samples_give_the_offline_features(setup) -> None:
    """The online trainer's path (samples logged by ingest -> ``to_sample_set``) gives the
    feature values of the offline samples for the same watches."""
    from semirec.trainer.online.learner import samples_from_events, to_sample_set

    events, _, rows, table, _, model = setup
    offline = build_samples(events, rows, seq_len=50, window_hours=168)
    logged = to_sample_set(samples_from_events(events, seq_len=50), rows, seq_len=50)
    assert list(logged.event) == list(offline.event)
    idx = np.arange(len(offline))
    with torch.inference_mode():
        feats = [model.wide_features(model.encode_user(user_batch(s, idx, table, SEQ)),
                                     table[torch.from_numpy(s.target[:, None]).long()]).numpy()
                 for s in (offline, logged)]
    np.testing.assert_allclose(feats[1], feats[0], atol=1e-6)
