"""Shared fixtures: one real embedded stack per test session, isolated names per test."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import pytest
import redis

from semirec.core.settings import Settings, Topics
from semirec.core.stack import DEFAULT_MODEL_REPOSITORY, LOCAL_GROUP_TIMINGS, EmbeddedStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """Tansu + redis-server + tritonserver on free ports, for the whole session.

    Triton serves a session-private copy of ``triton_models/`` (explicit model control), so
    tests may export models into ``stack.model_repository`` and load them.
    """
    repo = tmp_path_factory.mktemp("triton") / "models"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    with EmbeddedStack(model_repository=repo) as s:
        yield s


@pytest.fixture
def settings(stack: EmbeddedStack) -> Settings:
    """Settings pointing at the session stack, with topic names and a group unique to the test."""
    tag = uuid.uuid4().hex[:8]
    env = {**stack.addresses.env(), **LOCAL_GROUP_TIMINGS}
    base = Settings.from_env(env)
    topics = Topics(**{f.name: f"{getattr(base.topics, f.name)}-{tag}" for f in fields(Topics)})
    return replace(base, topics=topics, consumer_group=f"semirec-ingest-{tag}")


@pytest.fixture
def redis_client(stack: EmbeddedStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.addresses.redis)
    client.flushdb()
    yield client
    client.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for a child process (``semirec worker`` etc.) that sees ``settings``."""
    env = dict(os.environ)
    env.update(LOCAL_GROUP_TIMINGS)
    env.update({
        "SEMIREC_KAFKA": settings.kafka,
        "SEMIREC_REDIS_URL": settings.redis_url,
        "SEMIREC_TRITON_GRPC": settings.triton_grpc,
        "SEMIREC_CONSUMER_GROUP": settings.consumer_group,
        "SEMIREC_EVENT_PARTITIONS": str(settings.event_partitions),
    })
    for f in fields(Topics):
        env[f"SEMIREC_TOPIC_{f.name.upper()}"] = getattr(settings.topics, f.name)
    return env


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Tiny tensors: one torch thread avoids OpenMP hand-offs on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def private_encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """For a module's fixture: one torch thread (fastest on shared small machines), a feature
    cache of its own, and no encoder checkpoint from the environment."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("feature-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMIREC_CACHE_DIR", str(cache))
        mp.delenv("SEMIREC_ENCODER_CHECKPOINT", raising=False)
        yield cache
    torch.set_num_threads(threads)
