"""Shared fixtures: one embedded broker + Redis per test session, isolated per test by prefixes.

Starting Tansu and redis-server costs well under a second, but creating them per test would
still multiply that by hundreds; instead every test gets its own topic prefix and Redis key
prefix on the shared stack, so tests cannot see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from base.config import Config
from base.topics import ALL_TOPICS
from connectors.kafka_clients import ensure_topics
from omnistream.embedded import EmbeddedStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """A started embedded stack (Tansu + redis-server) for the whole session.

    Topics are not created here (``topics=()``): each test creates its own prefixed set via
    ``omni_config``. Logs are in the session's temp directory (``.../embedded0/``), kept by
    pytest after a failure for inspection.
    """
    workdir = tmp_path_factory.mktemp("embedded")
    with EmbeddedStack(workdir=workdir, partitions=4, topics=()) as started:
        yield started


@pytest.fixture
def omni_config(stack: EmbeddedStack) -> Config:
    """A Config on the session stack with a topic prefix and Redis key prefix of its own.

    All CONTRACT topics exist (with ``stack.partitions`` partitions) under that prefix.
    """
    tag = uuid.uuid4().hex[:10]
    config = stack.config().with_overrides(
        kafka={"topic_prefix": f"t{tag}."},
        redis={"key_prefix": f"omni{tag}:"},
        pii={"key": f"test-secret-{tag}"},
    )
    ensure_topics(config, list(ALL_TOPICS))
    return config


@pytest.fixture
def redis_client(omni_config: Config) -> Iterator[redis.Redis]:
    """A Redis client on the stack's Redis (closed after the test; responses as bytes)."""
    client = redis.Redis.from_url(omni_config.redis.url)
    try:
        yield client
    finally:
        client.close()
