"""Reading whole topics back in tests.

Consumers here use ``assign()`` rather than a consumer group: on Tansu the first group join
takes about half of ``session.timeout.ms`` (≈ 23 s with defaults), while ``assign()`` starts
fetching at once (see the findings in ``omnistream/embedded.py``).
"""

from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from connectors.kafka_clients import make_consumer
from omnistream.config import Config


def read_topic(config: Config, topic_name: str, timeout_s: float = 10.0) -> list[Message]:
    """Every message of a topic, from the beginning until each partition reports EOF.

    ``topic_name`` is the CONTRACT name (``stock.changes``); the configured prefix is applied.
    Messages come back ordered by partition, then offset. Flush producers before calling:
    what is not yet in the broker when a partition reaches its end is not read. Raises
    ``LookupError`` for a missing topic, ``TimeoutError`` when some partition never reaches
    its end within ``timeout_s``.
    """
    topic = config.topic(topic_name)
    consumer = make_consumer(
        config,
        group_id=f"read-topic-{uuid.uuid4().hex}",
        **{"enable.partition.eof": "true", "fetch.wait.max.ms": "10"},
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        topic_metadata = metadata.topics.get(topic)
        if (
            topic_metadata is None
            or topic_metadata.error is not None
            or not (topic_metadata.partitions)
        ):
            reason = topic_metadata.error if topic_metadata is not None else "not in metadata"
            raise LookupError(f"topic {topic!r} does not exist ({reason})")
        partitions = sorted(topic_metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"topic {topic!r}: partitions {sorted(pending)} did not reach their end "
                    f"within {timeout_s} s ({len(messages)} messages read)"
                )
            for message in consumer.consume(1000, min(remaining, 0.2)):
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                else:
                    raise RuntimeError(f"reading topic {topic!r}: {error}")
        messages.sort(key=lambda m: (m.partition(), m.offset()))
        return messages
    finally:
        consumer.close()


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
