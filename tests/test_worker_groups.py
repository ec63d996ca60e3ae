"""Consumer groups per agent, static membership, and topics checked against the settings."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import replace

from aiokafka.admin import NewTopic

from semirec.core.faults import EXIT_CONFIG
from semirec.core.kafka import admin
from semirec.core.settings import Settings
from tests.conftest import settings_env
from tests.event_script import encode, scripted_events
from tests.kafka_utils import produce_raw, wait_committed
from tests.workers import running_worker


def test_each_agent_has_its_own_default_group() -> None:
    s = Settings.from_env({})
    assert [s.group_for([a]) for a in ("ingest", "catalog", "recommend")] == \
        ["semirec-ingest", "semirec-catalog", "semirec-recommend"]
    assert s.group_for(["recommend", "ingest"]) == "semirec-ingest-recommend"
    assert s.events_group == "semirec-ingest"
    custom = Settings.from_env({"SEMIREC_CATALOG_GROUP": "cat", "SEMIREC_INSTANCE_ID": "w-1"})
    assert custom.group_for(["catalog"]) == "cat" and custom.instance_id == "w-1"
    one = Settings.from_env({"SEMIREC_CONSUMER_GROUP": "all"})
    assert one.group_for(["catalog"]) == one.group_for(["ingest", "recommend"]) == one.events_group == "all"


def test_inline_hand_over_needs_both_agents_and_then_keeps_the_events_fetch_wait() -> None:
    from semirec.cli.worker import settings_for

    s = Settings.from_env({"SEMIREC_FETCH_MAX_WAIT_MS": "50", "SEMIREC_REC_FETCH_MAX_WAIT_MS": "25"})
    inline = replace(s, recommend_inline=1)
    assert settings_for(s, ["ingest"]).fetch_max_wait_ms == 50
    assert settings_for(s, ["ingest", "recommend"]).fetch_max_wait_ms == 25  # the notices' hop
    both = settings_for(inline, ["recommend", "ingest"])
    assert both.recommend_inline == 1 and both.fetch_max_wait_ms == 50  # no notices' hop
    for alone in (["ingest"], ["recommend"], ["catalog", "recommend"]):  # nobody to hand over to
        assert settings_for(inline, alone).recommend_inline == 0
    assert settings_for(inline, ["recommend"]).fetch_max_wait_ms == 25


def test_inline_ingest_lingers_as_the_recommendation_agent_would() -> None:
    """Inline, ingest's batch is the ranking's: SEMIREC_RANK_LINGER_MS holds it open (up to a
    full Triton call); ingest that announces to recommendation workers never lingers."""
    from semirec.streams.app import create_app
    from semirec.streams.ingest import register_ingest
    from semirec.streams.runtime import runtime_of

    base = Settings.from_env({"SEMIREC_RANK_LINGER_MS": "20", "SEMIREC_RANK_BATCH": "6"})
    for inline, linger, most in ((0, 0.0, base.batch_max), (1, 0.02, 6)):
        s = replace(base, recommend_inline=inline)
        app = create_app(s, app_id=f"inline-linger-{inline}")
        register_ingest(app, s)
        (agent,) = [a for a in runtime_of(app).batch_agents if a.name == "ingest"]
        assert (agent.linger_s, agent.linger_max) == (linger, most)


async def test_worker_refuses_topics_with_other_partition_counts(settings) -> None:
    client = admin(settings)
    await client.start()
    try:
        await client.create_topics([NewTopic(settings.topics.events, 2, 1)])
    finally:
        await client.close()
    env = {**settings_env(settings), "SEMIREC_EVENT_PARTITIONS": "4"}
    done = subprocess.run([sys.executable, "-m", "semirec", "worker", "--agent", "ingest"], env=env,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert len(lines) == 1 and f"topic '{settings.topics.events}' has 2 partitions" in lines[0]
    assert "SEMIREC_EVENT_PARTITIONS=4" in lines[0]


async def test_static_member_in_its_agent_group_survives_a_restart(settings, redis_client,
                                                                   tmp_path) -> None:
    """No SEMIREC_CONSUMER_GROUP: the ingest worker joins SEMIREC_INGEST_GROUP, as a static
    member (SEMIREC_INSTANCE_ID); restarted with the same id it goes on where it stopped."""
    group = f"ingest-{uuid.uuid4().hex[:8]}"
    env = {"SEMIREC_CONSUMER_GROUP": "", "SEMIREC_INGEST_GROUP": group,
           "SEMIREC_INSTANCE_ID": "ingest-0"}
    waiting = replace(settings, consumer_group=group)
    messages = encode(scripted_events(users=10, per_user=40, seed=3))
    half = len(messages) // 2
    with running_worker(settings, tmp_path / "w1.log", "--agent", "ingest", **env) as proc:
        await wait_committed(waiting, await produce_raw(settings, messages[:half]), proc=proc)
    with running_worker(settings, tmp_path / "w2.log", "--agent", "ingest", **env) as proc:
        await wait_committed(waiting, await produce_raw(settings, messages[half:]), proc=proc)
