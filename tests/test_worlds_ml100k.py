"""MovieLens-100k from the installed recbole wheel: counts, labels, contract."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from semirec.core.contracts import validate_event
from semirec.worlds import World, load_world
from semirec.worlds.movielens import ml100k_dir


@pytest.fixture(scope="module")
def ml() -> World:
    return load_world("ml100k")


def _raw_ratings() -> list[list[str]]:
    lines = (ml100k_dir() / "ml-100k.inter").read_text().splitlines()
    assert lines[0].startswith("user_id:token\titem_id:token\trating:float")
    return [line.split("\t") for line in lines[1:] if line]


def test_counts(ml: World) -> None:
    assert len(ml.events) == 100_000
    assert len(ml.user_ids()) == 943
    assert len(ml.items) == len(ml.item_ids("video")) == 1682
    assert ml.item_ids("product") == []
    assert ml.true_prob == {} and ml.item_probs is None


def test_a_rating_is_a_watch_complete_when_four_or_more(ml: World) -> None:
    labels = {f"ml-{u}-{i}": float(r) >= 4 for u, i, r, _ in _raw_ratings()}
    assert {e.event_id: e.complete for e in ml.events} == labels
    assert 0.5 < sum(labels.values()) / len(labels) < 0.6


def test_events_in_contract_and_time_order(ml: World) -> None:
    assert len({e.event_id for e in ml.events}) == len(ml.events)
    assert all(a.ts <= b.ts for a, b in zip(ml.events, ml.events[1:], strict=False))
    item_ids = set(ml.item_ids("video"))
    for e in ml.events:
        assert validate_event(e.to_dict()) == e
        assert e.action == "watch" and e.item_id in item_ids


def test_movies_carry_title_and_genres(ml: World) -> None:
    toy = next(i for i in ml.items if i["item_id"] == "m1")
    assert toy == {"item_id": "m1", "domain": "video", "title": "Toy Story (1995)",
                   "tags": ["animation", "children's", "comedy"], "category": "animation",
                   "images": []}
    assert all(i["title"] and i["tags"] and i["category"] == i["tags"][0] for i in ml.items)


def test_no_size_flags(ml: World) -> None:
    with pytest.raises(ValueError, match="fixed size"):
        load_world("ml100k", users=10)


def test_cli_ml100k(tmp_path) -> None:
    from semirec.cli import cli

    result = CliRunner().invoke(cli, ["world", "ml100k", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["events"], report["users"], report["videos"]) == (100_000, 943, 1682)
    assert report["probe_auc"]["product_history"] is None  # no product domain
    assert not (tmp_path / "truth.jsonl").exists()


def test_items_satisfy_the_item_contract(ml: World) -> None:
    from semirec.core.items import validate_item

    for item in ml.items:
        assert validate_item(item).images == ()
