"""The generated two-domain world: reproducible, sized by flags, in contract, driven by content."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from semirec.core.contracts import validate_event
from semirec.core.items import validate_item
from semirec.core.sequences import replay
from semirec.worlds import World, load_world, make_config
from semirec.worlds.categories import CATEGORIES
from semirec.worlds.config import START_TS
from semirec.worlds.files import read_world, write_world
from semirec.worlds.stats import auc, probe_aucs

SLUGS = {c.slug for c in CATEGORIES}


@pytest.fixture(scope="module")
def tiny() -> World:
    return load_world("world", seed=0)


def _fingerprint(world: World) -> tuple:
    return ([e.to_dict() for e in world.events], world.items, world.true_prob)


def test_same_seed_same_world_and_other_seed_differs(tiny: World) -> None:
    again = load_world("world", seed=0)
    assert _fingerprint(again) == _fingerprint(tiny)
    other = load_world("world", seed=1)
    assert [e.to_dict() for e in other.events] != [e.to_dict() for e in tiny.events]
    assert other.items != tiny.items
    assert list(other.true_prob.values()) != list(tiny.true_prob.values())


def test_sizes_follow_flags() -> None:
    world = load_world("world", seed=7, users=40, videos=25, products=30, days=4)
    assert len(world.item_ids("video")) == 25
    assert len(world.item_ids("product")) == 30
    assert len(world.user_ids()) == 40  # every user has at least one session
    assert all(START_TS <= e.ts < START_TS + 4 * 86400 for e in world.events)
    demo = make_config("demo")
    assert (demo.users, demo.videos, demo.products) == (2500, 1500, 2000)
    with pytest.raises(ValueError, match="unknown world option"):
        load_world("world", userz=3)
    with pytest.raises(ValueError, match="link"):
        load_world("world", link=1.5)
    with pytest.raises(ValueError, match="unknown world"):
        load_world("nope")


def test_events_are_in_the_event_contract(tiny: World) -> None:
    ids = [e.event_id for e in tiny.events]
    assert len(set(ids)) == len(ids)
    assert [e.ts for e in tiny.events] == sorted(e.ts for e in tiny.events)
    domain_of = {item["item_id"]: item["domain"] for item in tiny.items}
    for e in tiny.events:
        assert validate_event(e.to_dict()) == e
        assert domain_of[e.item_id] == e.domain.value
    watches = {e.event_id for e in tiny.events if e.domain == "video"}
    assert set(tiny.true_prob) == watches
    assert all(0.0 < p < 1.0 for p in tiny.true_prob.values())
    per_user_ts = Counter((e.user_id, e.ts) for e in tiny.events)
    assert max(per_user_ts.values()) == 1  # one event per user per second: an unambiguous order


def test_items_are_in_the_item_contract_with_real_content(tiny: World) -> None:
    frames = make_config().frames
    for item in tiny.items:
        parsed = validate_item(item)
        assert item["category"] in SLUGS and item["category"] in item["tags"]
        assert len(item["title"].split()) >= 3
        assert len(parsed.images) == (frames if item["domain"] == "video" else 1)
        image = Image.open(io.BytesIO(base64.b64decode(item["images"][0])))
        assert (image.format, image.size, image.mode) == ("PNG", (28, 28), "L")
    for domain in ("video", "product"):
        assert {i["category"] for i in tiny.items if i["domain"] == domain} == SLUGS
    titles = [i["title"] for i in tiny.items if i["domain"] == "product"]
    assert len(set(titles)) > 0.9 * len(titles)


def test_video_histories_are_sparse_and_product_histories_dense(tiny: World) -> None:
    states = replay(tiny.events)
    videos = np.mean([len(s.video) for s in states.values()])
    products = np.mean([len(s.product) for s in states.values()])
    assert 1 < videos < products / 2


def test_sessions_follow_the_clock(tiny: World) -> None:
    hours = Counter(int(e.ts // 3600) % 24 for e in tiny.events)
    assert sum(hours[h] for h in range(18, 23)) > 3 * sum(hours[h] for h in range(1, 6))
    per_session = Counter((e.user_id, int(e.ts // 3600)) for e in tiny.events)
    assert np.mean(list(per_session.values())) > 3  # bursts of events, not a uniform trickle


def test_completion_is_calibrated_and_driven_by_content(tiny: World) -> None:
    watches = [e for e in tiny.events if e.domain == "video"]
    assert abs(np.mean([e.complete for e in watches]) - 0.5) < 0.05
    probes = probe_aucs(tiny)
    assert probes["oracle"] > 0.75
    assert probes["item_rate"] < probes["oracle"] - 0.15  # content-blind: clearly worse
    assert probes["user_item_rate"] < probes["oracle"] - 0.15
    assert probes["product_history"] > 0.58  # the product domain tells about videos


def test_item_probs_agree_with_true_prob(tiny: World) -> None:
    assert tiny.item_probs is not None
    watches = [e for e in tiny.events if e.domain == "video"][::50]
    got = [tiny.item_probs(e.user_id, [e.item_id], e.ts)[0] for e in watches]
    np.testing.assert_allclose(got, [tiny.true_prob[e.event_id] for e in watches], rtol=1e-12)
    e = watches[0]
    probs = tiny.item_probs(e.user_id, tiny.item_ids("video"), e.ts)
    assert probs.shape == (len(tiny.item_ids("video")),) and 0 < probs.min() < probs.max() < 1
    with pytest.raises(KeyError, match="unknown video"):
        tiny.item_probs(e.user_id, ["p00000"], e.ts)


def test_cross_domain_link_strength_is_real() -> None:
    weak = probe_aucs(load_world("world", seed=2, link=0.0))["product_history"]
    strong = probe_aucs(load_world("world", seed=2, link=1.0))["product_history"]
    assert weak < 0.58 < strong
    assert strong > weak + 0.08


def _early_late_shift(world: World) -> float:
    """Mean total-variation distance between a user's click categories in the first/last third."""
    cat = {item["item_id"]: item["category"] for item in world.items}
    t0, t1 = world.events[0].ts, world.events[-1].ts
    third = (t1 - t0) / 3
    early: defaultdict[str, Counter[str]] = defaultdict(Counter)
    late: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for e in world.events:
        if e.domain == "product" and e.ts < t0 + third:
            early[e.user_id][cat[e.item_id]] += 1
        elif e.domain == "product" and e.ts > t1 - third:
            late[e.user_id][cat[e.item_id]] += 1
    shifts = []
    for u, a in early.items():
        b = late.get(u, Counter())
        na, nb = a.total(), b.total()
        if na >= 5 and nb >= 5:
            shifts.append(0.5 * sum(abs(a[c] / na - b[c] / nb) for c in SLUGS))
    return float(np.mean(shifts))


def test_drift_moves_interests_over_time() -> None:
    still = _early_late_shift(load_world("world", seed=1, drift=0.0))
    drifting = _early_late_shift(load_world("world", seed=1, drift=1.0))
    assert drifting > still + 0.1


def test_files_round_trip(tiny: World, tmp_path) -> None:
    write_world(tiny, tmp_path)
    back = read_world(tmp_path)
    assert back.name == "world" and back.item_probs is None
    assert _fingerprint(back) == _fingerprint(tiny)
    assert back.params == json.loads(json.dumps(tiny.params))


def test_cli_generate_writes_a_world(tmp_path) -> None:
    from semirec.cli import cli

    out = tmp_path / "w"
    result = CliRunner().invoke(cli, ["world", "generate", "--users", "30", "--videos", "20",
                                      "--products", "25", "--days", "3", "--seed", "4",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["users"], report["videos"], report["products"]) == (30, 20, 25)
    back = read_world(out)
    assert len(back.events) == report["events"]
    assert report["oracle_auc"] == pytest.approx(auc(
        np.array([back.true_prob[e.event_id] for e in back.events if e.domain == "video"]),
        np.array([bool(e.complete) for e in back.events if e.domain == "video"])))
    assert json.loads((out / "world.json").read_text())["params"]["seed"] == 4
