"""semirec on a real local Redis Cluster (3 masters, 1 replica each, free ports): the stores,
popularity, SCAN over every node, ingest through a real worker, a failover mid-stream."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.cluster import key_slot

from semirec.core.contracts import Domain, Event
from semirec.core.faults import EXIT_CONFIG, classify
from semirec.core.item_store import ItemStore, ItemVector
from semirec.core.redis_client import is_cluster, redis_client, sync_redis_client
from semirec.core.redis_cluster import LocalRedisCluster
from semirec.core.sequences import UserState, replay
from semirec.core.settings import Settings
from semirec.core.store import SequenceStore, user_key
from semirec.serving import popularity as pop
from semirec.serving.catalog import CatalogIndex
from semirec.serving.identity import IdentityIndex
from tests.conftest import settings_env
from tests.event_script import encode, scripted_events
from tests.kafka_utils import produce_raw, wait_committed
from tests.test_ingest import comparable, stored_states
from tests.workers import running_worker


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(masters=3, replicas=1) as c:
        yield c


@pytest.fixture
def cluster_url(cluster: LocalRedisCluster) -> Iterator[str]:
    client = sync_redis_client(cluster.url)
    client.flushdb()  # every primary
    client.close()
    yield cluster.url


@pytest.fixture
async def aclient(cluster_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(cluster_url, decode_responses=False)
    yield client
    await client.aclose()


def nodes_holding(client: redis.Redis, keys: list[str]) -> set[str]:
    """Names of the primaries that own the slots of ``keys``."""
    return {client.nodes_manager.get_node_from_slot(key_slot(k.encode())).name for k in keys}


async def test_sequence_store_on_the_cluster(aclient, cluster_url) -> None:
    store = SequenceStore(aclient, cache_users=0)
    assert store.cluster
    users = [f"u{i}" for i in range(50)]
    loaded = await store.load(users)
    assert all(token == b"" and state == UserState() for token, state in loaded)
    states = []
    for i, (_, state) in enumerate(loaded):
        state.version += 1
        state.video.append((1, f"v{i}"))
        states.append(state)
    writes = [(u, token, s) for u, (token, _), s in zip(users, loaded, states, strict=True)]
    assert await store.save(writes) == [True] * 50
    # the same tokens again: every compare-and-set loses (someone wrote since), none applies
    assert await store.save(writes) == [False] * 50
    again = await store.load(users)
    assert [s.video for _, s in again] == [[(1, f"v{i}")] for i in range(50)]
    # SCAN visits every primary: all 50 users, though no node holds them all
    assert sorted(await store.user_ids(count=7)) == sorted(users)
    sync = sync_redis_client(cluster_url)
    assert len(nodes_holding(sync, [user_key(u) for u in users])) == 3
    sync.close()


async def test_item_store_on_the_cluster(aclient) -> None:
    store = ItemStore(aclient)
    rng = np.random.default_rng(0)
    recs = [ItemVector(f"v{i}", Domain.VIDEO, rng.standard_normal(8).astype(np.float32), "enc-1")
            for i in range(40)]
    assert await store.put_many(recs, titles={"v1": "one"}) == 40
    got = await store.get_many(["v3", "missing", "v39"], dim=8)
    assert got.found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got.vectors[0], recs[3].vector)
    assert await store.ids(Domain.VIDEO) == sorted(r.item_id for r in recs)
    assert await store.count(Domain.VIDEO) == 40
    assert await store.titles(["v1", "v2"]) == {"v1": "one"}
    assert {i for i, _ in await store.changes_after(0)} == {r.item_id for r in recs}


def _watch(i: int, item: str, complete: bool, hour: int) -> Event:
    return Event(event_id=f"e{i}", user_id=f"u{i % 7}", item_id=item, domain=Domain.VIDEO,
                 action="watch", ts=float(hour * 3600 + i), complete=complete)


async def test_popularity_counts_spread_over_the_cluster(aclient, cluster_url) -> None:
    events = [_watch(i, f"v{i % 60}", i % 3 != 0, 1000 + i % 2) for i in range(600)]
    events.append(Event(event_id="p", user_id="u", item_id="p1", domain=Domain.PRODUCT,
                        action="click", ts=1000 * 3600.0))
    completes = await pop.count_watches(aclient, events[:300])
    completes += await pop.count_watches(aclient, events[300:])
    watches = Counter(e.item_id for e in events if e.domain is Domain.VIDEO)
    done = Counter(e.item_id for e in events if e.domain is Domain.VIDEO and e.complete)
    assert completes == sum(done.values())
    items = [*sorted(watches), "never"]
    w, c = await pop.watch_counts(aclient, items)
    assert w.tolist() == [watches.get(i, 0) for i in items]
    assert c.tolist() == [done.get(i, 0) for i in items]
    snap = pop.PopularitySnapshot(window_hours=24)
    await snap.refresh(aclient)
    assert snap.counts == dict(done) and snap.newest_hour == 1001
    catalog = CatalogIndex(dim=4)
    catalog.upsert(items, np.ones((len(items), 4), np.float32), [Domain.VIDEO] * len(items))
    index = IdentityIndex(catalog, read_limit=1)  # each shard's feed read one entry a call
    assert await index.refresh(aclient) == len(watches)  # the first: read whole, per shard
    assert len(index.positions) == pop.CLUSTER_SHARDS and index.feed_resets == 0
    got = index.tensors(catalog.rows(items), 1024)
    assert got["candidate_watches"][0].tolist() == w.tolist()
    assert got["candidate_completes"][0].tolist() == c.tolist()
    for lo in (0, 20, 40):  # then the feed: three entries on most shards
        await pop.count_watches(aclient, events[lo:lo + 20])
    assert await index.refresh(aclient) == len({e.item_id for e in events[:60]})
    w, c = await pop.watch_counts(aclient, items)
    got = index.tensors(catalog.rows(items), 1024)
    assert got["candidate_watches"][0].tolist() == w.tolist()
    assert got["candidate_completes"][0].tolist() == c.tolist() and index.feed_resets == 0
    read = snap.hours_read  # the snapshot reads again only the shards' hours written since
    await snap.refresh(aclient)
    fresh = pop.PopularitySnapshot(window_hours=24)
    await fresh.refresh(aclient)
    assert snap.counts == fresh.counts and snap.ranked == fresh.ranked
    assert snap.hours_read - read == len({(pop.shard_of(e.item_id, pop.CLUSTER_SHARDS), e.ts // 3600)
                                          for e in events[:60] if e.complete})
    # no hot slot: the counts live under every shard's tag, on every primary
    sync = sync_redis_client(cluster_url)
    keys = [k.decode() for k in sync.scan_iter(match="semirec:*")]
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys}
    assert len(tags) == pop.CLUSTER_SHARDS
    assert len(nodes_holding(sync, keys)) == 3
    sync.close()


def test_cluster_errors_are_transient_and_a_plain_url_on_a_cluster_is_a_config_error(
        cluster_url) -> None:
    for exc in (rex.MovedError("3999 127.0.0.1:7001"), rex.AskError("3999 127.0.0.1:7001"),
                rex.TryAgainError("TRYAGAIN"), rex.ClusterDownError("CLUSTERDOWN down"),
                rex.ReadOnlyError("READONLY replica"), rex.MasterDownError("MASTERDOWN")):
        fault = classify(exc, kafka="k:9092", redis_url=cluster_url, triton="t:8001")
        assert fault is not None and not fault.fatal, exc
    # one node of the cluster named by a plain redis:// URL: the first key elsewhere is MOVED
    node = cluster_url.removeprefix("redis+cluster://").split(",")[0]
    env = {**settings_env(Settings()), "SEMIREC_REDIS_URL": f"redis://{node}/0"}
    errors = [subprocess.run([sys.executable, "-m", "semirec", "user", f"user-{i}"], env=env,
                             capture_output=True, text=True, timeout=60) for i in range(3)]
    moved = [e for e in errors if e.returncode == EXIT_CONFIG]
    assert moved, [e.stderr for e in errors]  # 3 users: at least one lives on another node
    lines = moved[0].stderr.strip().splitlines()
    assert len(lines) == 1 and "redis+cluster://" in lines[0]


@pytest.mark.parametrize("how", ["failover", "kill"])
async def test_ingest_into_the_cluster_survives_a_failover(settings, cluster, cluster_url, how,
                                                           tmp_path) -> None:
    """A real worker ingests a scripted stream into the cluster; halfway, one master's replica
    takes over, by a CLUSTER FAILOVER or because the master is killed (SIGKILL; the replica is
    promoted after the node timeout): the worker follows the redirections and retries what
    failed meanwhile, without a crash, and the final state equals a replay of the events."""
    settings = replace(settings, redis_url=cluster_url)
    events = scripted_events(users=30, per_user=120, seed=5)
    messages = encode(events)
    half = len(messages) // 2
    with running_worker(settings, tmp_path / "worker.log", "--agent", "ingest") as proc:
        first = await produce_raw(settings, messages[:half])
        await wait_committed(settings, first, proc=proc)
        master = cluster.master_ports()[0]
        replica = cluster.replica_of(master)
        if how == "failover":
            await asyncio.to_thread(cluster.failover, replica)
        else:
            cluster.kill(master)
        ends = await produce_raw(settings, messages[half:])
        if how == "kill":
            await asyncio.to_thread(cluster.wait_master, replica)
        await wait_committed(settings, ends, proc=proc)
        states = await stored_states(settings)
        assert proc.poll() is None
    if how == "kill":  # back as a replica of its former replica, for the tests after this one
        await asyncio.to_thread(cluster.start_node, master)
        await asyncio.to_thread(cluster.wait_ok)
    expected = {u: s for u, s in replay(events).items() if s.video or s.product}
    assert comparable(states) == comparable(expected)
    client = redis_client(cluster_url)
    try:
        assert is_cluster(client)
        w, _ = await pop.watch_counts(client, ["v1", "v2"])
        want = Counter(e.item_id for e in events if e.domain is Domain.VIDEO)
        if how == "failover":  # redirected commands are re-sent alone: each watch counted once
            assert w.tolist() == [want["v1"], want["v2"]]
        else:  # a count call that failed on the dead node is retried whole: at least once
            assert w[0] >= want["v1"] and w[1] >= want["v2"]
    finally:
        await client.aclose()
