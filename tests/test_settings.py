"""Settings from the environment: defaults, overrides, security, clear errors."""

from __future__ import annotations

import faust
import pytest

from semirec.core.redis_client import redis_client, sync_redis_client
from semirec.core.settings import Settings, SettingsError, triton_servers
from semirec.core.urls import redact
from semirec.streams.app import broker_credentials


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.topics.events, s.topics.items, s.topics.recommendations,
            s.topics.recommendation_requests, s.topics.events_dlq) == (
        "events", "items", "recommendations", "recommendation-requests", "events-dlq")
    assert (s.seq_len, s.time_bucket_s) == (50, 3600)
    assert s.kafka_kwargs() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_overrides() -> None:
    s = Settings.from_env({"SEMIREC_KAFKA": "k1:9092,k2:9092", "SEMIREC_REDIS_URL": "redis://r:1/2",
                           "SEMIREC_TRITON_GRPC": "t:8001", "SEMIREC_TOPIC_EVENTS": "ev",
                           "SEMIREC_SEQ_LEN": "20", "SEMIREC_TIME_BUCKET_S": "60",
                           "SEMIREC_SESSION_TIMEOUT_S": "2.5"})
    assert (s.kafka, s.redis_url, s.triton_grpc, s.topics.events) == (
        "k1:9092,k2:9092", "redis://r:1/2", "t:8001", "ev")
    assert (s.seq_len, s.time_bucket_s, s.session_timeout_s) == (20, 60, 2.5)


@pytest.mark.parametrize(("env", "message"), [
    ({"SEMIREC_SEQ_LEN": "fifty"}, "SEMIREC_SEQ_LEN='fifty': expected int"),
    ({"SEMIREC_SEQ_LEN": "0"}, "SEMIREC_SEQ_LEN must be 1..255"),
    ({"SEMIREC_TIME_BUCKET_S": "-1"}, "SEMIREC_TIME_BUCKET_S must be > 0"),
    ({"SEMIREC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "is unknown"),
    ({"SEMIREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL needs"),
    ({"SEMIREC_ENCODER_RUNTIME": "tensorflow"}, "SEMIREC_ENCODER_RUNTIME must be onnx, onnx-int8 or torch"),
    ({"SEMIREC_TRITON_GRPC": "t1:8001,http://t2:8001"}, "expected host:port"),
    ({"SEMIREC_TRITON_GRPC": "t1:8001,"}, "expected host:port"),
    ({"SEMIREC_TRITON_GRPC": "t1:8001, t1:8001"}, "names a server twice"),
    ({"SEMIREC_RANKER_PRECISION": "fp16"}, "SEMIREC_RANKER_PRECISION must be auto, fp32 or int8"),
    ({"SEMIREC_RECOMMEND_INLINE": "2"}, "SEMIREC_RECOMMEND_INLINE must be 0 or 1"),
])
def test_bad_values_are_clear_errors(env, message) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_several_triton_servers_are_a_comma_separated_list() -> None:
    s = Settings.from_env({"SEMIREC_TRITON_GRPC": "t1:8001, t2:8001"})
    assert triton_servers(s.triton_grpc) == ["t1:8001", "t2:8001"]
    assert triton_servers(Settings().triton_grpc) == ["127.0.0.1:8001"]


def test_redis_cluster_urls_choose_the_cluster_client() -> None:
    """A ``redis+cluster://`` URL (any nodes of the cluster) makes the one factory build redis-py's
    cluster client; a database other than 0 is a configuration error; passwords never show."""
    import redis.asyncio.cluster as aiocluster

    s = Settings.from_env({"SEMIREC_REDIS_URL": "redis+cluster://r1:7000,r2:7001"})
    assert s.redis_url == "redis+cluster://r1:7000,r2:7001"
    with pytest.raises(SettingsError, match="only database 0"):
        Settings.from_env({"SEMIREC_REDIS_URL": "redis+cluster://r:7000/1"})
    with pytest.raises(SettingsError, match="not host:port"):
        Settings.from_env({"SEMIREC_REDIS_URL": "redis+cluster://r:7000,r:x"})
    client = redis_client("rediss+cluster://u:s3cret@r1:7000,r2:7001/0", socket_timeout=1.0)
    assert isinstance(client, aiocluster.RedisCluster)
    assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == \
        [("r1", 7000), ("r2", 7001)]
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["password"], kwargs["username"], kwargs["socket_timeout"]) == ("s3cret", "u", 1.0)
    assert redact("rediss+cluster://u:s3cret@r1:7000,r2:7001/0") == \
        "rediss+cluster://u:***@r1:7000,r2:7001/0"
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SEMIREC_REDIS_URL": "redis+cluster://:s3cret@r:7000/2"})
    assert "s3cret" not in str(err.value)


def test_redis_clients_keep_their_options() -> None:
    for make in (redis_client, sync_redis_client):
        client = make("redis://127.0.0.1:1/3", socket_timeout=1.0, health_check_interval=5)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["health_check_interval"], kwargs["db"]) == (1.0, 5, 3)


def test_sasl_reaches_aiokafka_and_faust_without_leaking_the_password() -> None:
    s = Settings.from_env({"SEMIREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "SEMIREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "SEMIREC_KAFKA_SASL_USERNAME": "svc", "SEMIREC_KAFKA_SASL_PASSWORD": "s3cret"})
    kw = s.kafka_kwargs()
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512" and kw["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(s)
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "svc"
    assert "s3cret" not in repr(creds)
