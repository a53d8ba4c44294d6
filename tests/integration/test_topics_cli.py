"""``omnistream topics create|list`` on the session's embedded broker, each test under a
topic prefix of its own. What the broker holds afterwards is read with a bare AdminClient,
not the command's own code."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from base import topics
from base.config import Config
from tests.fail_fast_helpers import NOISE, start

pytestmark = pytest.mark.integration


def fresh(omni_config: Config, **kafka: object) -> Config:
    """The test's config under a prefix with no topic yet."""
    prefix = f"tc{uuid.uuid4().hex[:8]}."
    return omni_config.with_overrides(kafka={"topic_prefix": prefix, **kafka})


def cli(args: list[str], config: Config, tmp_path: Path) -> tuple[int | None, list[str], str]:
    run = start(args, config, tmp_path, f"topics-{uuid.uuid4().hex[:6]}")
    try:
        code, _ = run.wait(120)
    finally:
        run.kill()
    return code, run.lines(), run.output()


def bare_admin(config: Config) -> AdminClient:
    """An admin client of confluent-kafka alone (its lines through logging, not stderr)."""
    return AdminClient(
        {"bootstrap.servers": config.kafka.bootstrap, "logger": logging.getLogger("test")}
    )


def on_broker(config: Config) -> dict[str, tuple[int, int]]:
    """The project's topics the broker has: name → (partitions, replicas of partition 0)."""
    metadata = bare_admin(config).list_topics(timeout=10)
    found = {}
    for name in topics.ALL_TOPICS:
        topic = metadata.topics.get(config.topic(name))
        if topic is not None and topic.error is None and topic.partitions:
            found[config.topic(name)] = (len(topic.partitions), len(topic.partitions[0].replicas))
    return found


def test_create_makes_every_topic_then_reports_them_as_existing(
    omni_config: Config, tmp_path: Path
) -> None:
    config = fresh(omni_config, partitions=3)
    code, lines, output = cli(["topics", "list"], config, tmp_path)
    assert code == 0, output
    assert [line.split() for line in lines] == [
        [config.topic(name), "missing"] for name in topics.ALL_TOPICS
    ]

    code, lines, output = cli(["topics", "create"], config, tmp_path)
    assert code == 0, output
    assert not any(mark in output for mark in NOISE)
    assert [line.split() for line in lines] == [
        ["created", config.topic(name), "3", "partitions,", "replication", "1"]
        for name in topics.ALL_TOPICS
    ]
    assert on_broker(config) == {config.topic(name): (3, 1) for name in topics.ALL_TOPICS}

    code, lines, output = cli(["topics", "create"], config, tmp_path)  # idempotent
    assert code == 0, output
    assert [line.split()[:3] for line in lines] == [
        ["exists", config.topic(name), "3"] for name in topics.ALL_TOPICS
    ]
    code, lines, output = cli(["topics", "list"], config, tmp_path)
    assert code == 0, output
    assert [line.split() for line in lines] == [
        [config.topic(name), "3", "partitions,", "replication", "1"] for name in topics.ALL_TOPICS
    ]


def test_a_topic_with_fewer_partitions_is_a_mismatch(omni_config: Config, tmp_path: Path) -> None:
    config = fresh(omni_config, partitions=4)
    short = config.topic(topics.POS_SALES)
    admin = bare_admin(config)
    admin.create_topics([NewTopic(short, num_partitions=2, replication_factor=1)])[short].result(
        timeout=30
    )
    code, lines, output = cli(["topics", "create"], config, tmp_path)
    assert code == 1, output
    by_topic = {line.split()[1]: line.split()[0] for line in lines}
    assert by_topic[short] == "MISMATCH"
    (line,) = [line for line in lines if short in line]
    assert line.split()[2:] == [
        "2", "partitions,", "replication", "1", "(kafka.partitions", "is", "4;", "left", "as",
        "it", "is)",
    ]  # fmt: skip
    assert {t: s for t, s in by_topic.items() if t != short} == {
        config.topic(name): "created" for name in topics.ALL_TOPICS if name != topics.POS_SALES
    }
    expected = {config.topic(name): (4, 1) for name in topics.ALL_TOPICS}
    expected[short] = (2, 1)  # left as it was
    assert on_broker(config) == expected
