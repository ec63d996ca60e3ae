"""Catalog ingestion end to end: the catalog agent (real broker, redis) and `semirec items encode`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from semirec.cli import cli
from semirec.core.contracts import Domain, Reason
from semirec.core.dead_letters import parse_dead_letter
from semirec.core.item_store import ItemStore
from semirec.core.kafka import ensure_topics
from semirec.core.settings import Settings
from semirec.encoders.pipeline import ItemEncoder
from semirec.encoders.sample import sample_items
from semirec.streams.catalog import catalog_topics
from tests.conftest import private_encoder_cache, settings_env
from tests.kafka_utils import committed, consume_all, produce_raw
from tests.workers import running_worker


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A feature cache shared by this process and the worker; one torch thread."""
    yield from private_encoder_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return sample_items(24, seed=7)


def malformed(items: list[dict]) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected reason) for refused item messages."""
    bad_png = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    no_title = {k: v for k, v in items[2].items() if k != "title"}
    return [
        (b"x1", b"{not json", Reason.UNDECODABLE),
        (items[2]["item_id"].encode(), orjson.dumps(no_title), Reason.MISSING_FIELD),
        (b"someone-else", orjson.dumps(items[3]), Reason.KEY_MISMATCH),
        (b"img1", orjson.dumps(dict(items[4], item_id="img1", images=[bad_png])),
         Reason.BAD_IMAGE),
    ]


async def stored(settings: Settings, ids: list[str]):
    store = ItemStore.from_url(settings.redis_url)
    try:
        return await store.get_many(ids)
    finally:
        await store.close()


async def wait_items_committed(settings: Settings, total: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        got = await committed(settings, settings.consumer_group, settings.topics.items,
                              settings.event_partitions)
        if sum(got.values()) >= total:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"items not committed after {timeout}s: {got} of {total}")


async def test_catalog_agent_stores_vectors_and_dead_letters_bad_items(
        settings: Settings, redis_client, cache_dir: Path, items: list[dict], tmp_path: Path) -> None:
    valid = items[5:17]
    renamed = dict(valid[0], title=valid[0]["title"] + " (new season)")  # a later upsert
    messages = [(i["item_id"].encode(), orjson.dumps(i)) for i in valid]
    bad = malformed(items)
    for n, (key, value, _) in enumerate(bad):
        messages.insert(3 * n + 1, (key, value))
    messages.append((renamed["item_id"].encode(), orjson.dumps(renamed)))
    await ensure_topics(settings, catalog_topics(settings))
    with running_worker(settings, tmp_path / "worker.log", "--agent", "catalog",  # fp32: 1e-4 parity
                        SEMIREC_CACHE_DIR=str(cache_dir), SEMIREC_ENCODER_RUNTIME="onnx") as proc:
        await produce_raw(settings, messages, topic=settings.topics.items)
        await wait_items_committed(settings, len(messages), proc)

    latest = [renamed, *valid[1:]]
    encoder = ItemEncoder(cache=None)  # eager torch: the agent's onnxruntime path must match it
    expected = encoder.encode(latest)
    got = await stored(settings, [i["item_id"] for i in latest])
    assert got.found.all()
    assert set(got.versions) == {encoder.version}
    assert got.domains == [Domain(i["domain"]) for i in latest]
    assert np.abs(got.vectors - expected).max() < 1e-4  # the renamed title's vector, not the old
    assert (cache_dir / "onnx" / encoder.version / "text_encoder" / "1" / "model.onnx").is_file()
    assert not (await stored(settings, ["img1", "x1"])).found.any()

    letters = await consume_all(settings, settings.topics.events_dlq, len(bad))
    records = [parse_dead_letter(r.value) for r in letters]
    assert sorted(r.reason for r in records) == sorted(b[2] for b in bad)
    assert {r.original() for r in records} == {b[1] for b in bad}
    for r in records:
        assert r.stage == "catalog" and r.source.topic == settings.topics.items
        assert r.message


def test_items_encode_cli_bulk(settings: Settings, redis_client, cache_dir: Path,
                               items: list[dict], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SEMIREC_ENCODER_RUNTIME", "onnx")  # fp32, for the 1e-4 parity below
    good = items[:6]
    lines = [orjson.dumps(i) for i in good]
    lines.insert(2, b'{"item_id": "z", "domain": "video"}')  # no title
    lines.insert(4, b"not json at all")
    lines.append(orjson.dumps(dict(good[1], title="Replaced title")))
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    result = CliRunner().invoke(cli, ["items", "encode", str(path), "--rejects", str(rejects),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stored"] == 6 and summary["rejected"] == 2
    assert summary["reasons"] == {"missing_field": 1, "undecodable": 1}
    assert summary["duplicates_replaced"] == 1
    rows = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["line"], r["reason"]) for r in rows] == [(3, "missing_field"), (5, "undecodable")]
    latest = [good[0], dict(good[1], title="Replaced title"), *good[2:]]
    got = asyncio.run(stored(settings, [i["item_id"] for i in latest]))
    assert got.found.all() and set(got.versions) == {summary["encoder_version"]}
    assert summary["runtime"] == "onnx"
    assert np.abs(got.vectors - ItemEncoder(cache=None).encode(latest)).max() < 1e-4
