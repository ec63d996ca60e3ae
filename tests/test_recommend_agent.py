"""The recommendation agent in a real `semirec worker` (ingest + recommend) on the real broker,
redis-server and tritonserver with no ranker loaded: every answer comes from the fallback."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter

import orjson
import pytest

from semirec.cli.recommend import ask
from semirec.core.dead_letters import parse_dead_letter
from semirec.core.kafka import ensure_topics, ingest_topics, serving_topics
from semirec.core.recommendations import RecommendationRequest
from semirec.trainer.offline.toy import toy_world
from tests.conftest import settings_env
from tests.kafka_utils import consume_all, produce_raw
from tests.serving_utils import CATS, Recommendations, category, clicks, put_catalog
from tests.workers import running_worker

T0 = 1_700_000_000.0


@pytest.fixture(scope="module", autouse=True)
def no_ranker_loaded(stack):
    """This module is about the fallback: unload a ranker an earlier module left loaded
    (test order must not decide which path answers)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(stack.addresses.triton_grpc)
    try:
        if client.is_model_ready("ranker"):
            client.unload_model("ranker")
    finally:
        client.close()


@pytest.fixture(scope="module")
def world():
    return toy_world(users=10, videos=120, products=80, categories=CATS, dim=128, seed=5)


def products_of(cat: int, n: int) -> list[str]:
    return [f"p{i}" for i in range(80) if category(f"p{i}") == cat][:n]


@pytest.mark.parametrize("inline", [0, 1], ids=["user-updates", "inline"])
async def test_events_trigger_recommendations_that_follow_product_clicks(
        settings, redis_client, world, tmp_path, inline) -> None:
    """Through the user-updates topic, or (SEMIREC_RECOMMEND_INLINE) handed over in-process by
    ingest in the same worker: the same recommendations, and then no notice is published."""
    await put_catalog(settings.redis_url, world)
    await ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)})
    with running_worker(settings, tmp_path / "worker.log", "--agent", "ingest",
                        "--agent", "recommend", SEMIREC_RECOMMEND_INLINE=str(inline)):
        async with Recommendations(settings) as recs:
            await produce_raw(settings, clicks("alice", products_of(1, 5), T0, "a")
                              + clicks("bob", products_of(3, 5), T0, "b"))
            seen = await recs.wait(lambda s: {"alice", "bob"} <= {r.user_id for r in s})
            for user, cat in (("alice", 1), ("bob", 3)):
                rec = recs.latest(user)
                assert rec.fallback and rec.model_version == "fallback"
                assert rec.fallback_reason in ("triton_error", "breaker_open")  # no model loaded
                assert rec.event_id.startswith(("a-", "b-")) and len(rec.items) == 10
                assert rec.timings.event_to_publish_ms is not None
                assert rec.timings.event_to_publish_ms >= rec.timings.total_ms
                assert Counter(category(i.item_id) for i in rec.items)[cat] >= 8, rec.items
                assert [i.score for i in rec.items] == sorted((i.score for i in rec.items),
                                                              reverse=True)
            # alice turns to category 2: her recommendations follow
            n_before = len(seen)
            await produce_raw(settings, clicks("alice", products_of(2, 10), T0 + 3600, "a2"))
            await recs.wait(lambda s: any(r.user_id == "alice" and r.event_id.startswith("a2-")
                                          for r in s[n_before:]))
            rec = [r for r in recs.seen if r.user_id == "alice"][-1]
            assert Counter(category(i.item_id) for i in rec.items)[2] >= 6, rec.items
    notices = await consume_all(settings, settings.topics.user_updates, 1, timeout=1 + 4 * inline)
    assert (len(notices) == 0) if inline else notices


async def test_requests_are_answered_and_malformed_ones_dead_lettered(
        settings, redis_client, world, tmp_path) -> None:
    await put_catalog(settings.redis_url, world)
    await ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)})
    bad = [(b"u1", b"{not json"), (b"u1", orjson.dumps({"request_id": "r", "user_id": "u1",
                                                        "k": 0})),
           (b"u1", orjson.dumps({"user_id": "u1"})), (b"other", orjson.dumps(
               {"request_id": "r", "user_id": "u1"})), (b"u1", b"[1, 2]")]
    with running_worker(settings, tmp_path / "worker.log", "--agent", "recommend"):
        await produce_raw(settings, bad, topic=settings.topics.recommendation_requests)
        # a user nobody has seen: popular and fresh videos, not an error
        answer = await ask(settings, RecommendationRequest(
            request_id=uuid.uuid4().hex, user_id="newcomer", k=7), timeout_s=60)
        assert answer.user_id == "newcomer" and len(answer.items) == 7
        assert {i.source for i in answer.items} <= {"popular", "fresh"}
        # explicit candidates: unknown ids are skipped and counted
        given = ["v1", "v2", "v3", "nope", "p1"]
        answer = await ask(settings, RecommendationRequest(
            request_id="r-given", user_id="newcomer", k=5, candidates=given), timeout_s=30)
        assert {i.item_id for i in answer.items} == {"v1", "v2", "v3"}
        assert answer.skipped_without_vector == 2 and answer.request_id == "r-given"
        assert {i.source for i in answer.items} == {"request"}
    letters = [parse_dead_letter(r.value)
               for r in await consume_all(settings, settings.topics.events_dlq, len(bad))]
    assert len(letters) == len(bad)
    assert Counter(r.reason for r in letters) == Counter(
        ["undecodable", "bad_value", "missing_field", "key_mismatch", "not_an_object"])
    assert {r.stage for r in letters} == {"recommend"}
    assert {r.original() for r in letters} == {v for _, v in bad}


def test_cli_recommend_and_watch(settings, redis_client, world, tmp_path) -> None:
    """What a person types: `semirec recommend` (table with titles, or --json) and
    `semirec recommendations` (what subscribers receive)."""
    import asyncio

    asyncio.run(put_catalog(settings.redis_url, world))
    asyncio.run(ensure_topics(settings, {**ingest_topics(settings), **serving_topics(settings)}))
    env = settings_env(settings)

    def semirec(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "semirec", *args], env=env, text=True,
                              capture_output=True, timeout=120)

    with running_worker(settings, tmp_path / "worker.log", "--agent", "recommend"):
        machine = semirec("recommend", "dana", "--k", "4", "--json", "--timeout", "60")
        assert machine.returncode == 0, machine.stderr
        answer = json.loads(machine.stdout)
        assert answer["user_id"] == "dana" and len(answer["items"]) == 4
        assert answer["request_id"].startswith("cli-") and answer["fallback"] is True
        assert answer["fallback_reason"] in ("triton_error", "breaker_open")
        person = semirec("recommend", "dana", "--k", "3")
        assert person.returncode == 0, person.stderr
        assert "dana: 3 videos" in person.stdout and "video " in person.stdout  # toy titles
        said = " ".join(person.stdout.split())  # the table's title wraps
        assert "fallback (similarity + popularity; triton_error)" in said or "breaker_open)" in said
    watched = semirec("recommendations", "--user", "dana", "--json")
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [r["request_id"] for r in lines] == [answer["request_id"], lines[1]["request_id"]]
    silent = semirec("recommend", "dana", "--timeout", "1")  # no agent running now
    assert silent.returncode == 1 and "is a recommendation agent running" in silent.stderr
