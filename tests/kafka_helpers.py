"""Reading whole topics back in tests (``read_topic`` lives with the Kafka clients: the
backtest reads recorded topics the same way).

Consumers here use ``assign()`` rather than a consumer group: on Tansu the first group join
takes about half of ``session.timeout.ms`` (≈ 23 s with defaults), while ``assign()`` starts
fetching at once (see the findings in ``omnistream/embedded.py``).
"""

from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from base.config import Config
from connectors.kafka_clients import make_consumer, read_topic

__all__ = ["TopicWatcher", "read_json", "read_topic"]


def read_json(config: Config, topic_name: str, timeout_s: float = 10.0) -> list[dict]:
    """The JSON values of :func:`read_topic` (tombstones, i.e. null values, skipped)."""
    return [
        orjson.loads(value)
        for message in read_topic(config, topic_name, timeout_s)
        if (value := message.value()) is not None
    ]


class TopicWatcher:
    """Follows a topic from its beginning while a test runs (assign, no group), keeping every
    decoded value, so a test can wait for the effect of what it just produced."""

    def __init__(self, config: Config, topic_name: str) -> None:
        self.consumer = make_consumer(config, group_id=f"watch-{uuid.uuid4().hex}")
        topic = config.topic(topic_name)
        metadata = self.consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.values: list[dict] = []

    def poll(self, seconds: float = 0.1) -> None:
        for message in self.consumer.consume(1000, seconds):
            if message.error() is None:
                self.values.append(orjson.loads(message.value()))

    def wait_for(self, predicate: object, timeout_s: float = 30.0) -> None:
        """Poll until some value satisfies ``predicate``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        check = predicate if callable(predicate) else None
        assert check is not None
        while not any(check(value) for value in self.values):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching message within {timeout_s} s")
            self.poll()

    def close(self) -> None:
        self.consumer.close()


def read_topics(
    config: Config, names: tuple[str, ...], timeout_s: float = 60.0
) -> dict[str, list[Message]]:
    """Every message of each topic (CONTRACT names), as ``read_topic`` reads one, with one
    consumer for all of them (one per topic costs a few tenths of a second each)."""
    consumer = make_consumer(
        config,
        group_id=f"read-topics-{uuid.uuid4().hex}",
        **{"enable.partition.eof": "true", "fetch.wait.max.ms": "10"},
    )
    try:
        names_of = {config.topic(name): name for name in names}
        metadata = consumer.list_topics(timeout=timeout_s)
        pending = {
            (topic, partition)
            for topic in names_of
            for partition in metadata.topics[topic].partitions
        }
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(pending)])
        found: dict[str, list[Message]] = {name: [] for name in names}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sorted(pending)} did not reach their end in {timeout_s} s")
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    found[names_of[message.topic() or ""]].append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((message.topic() or "", message.partition() or 0))
                else:
                    raise RuntimeError(f"reading {message.topic()}: {error}")
        for messages in found.values():
            messages.sort(key=lambda m: (m.partition() or 0, m.offset() or 0))
        return found
    finally:
        consumer.close()
