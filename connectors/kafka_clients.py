"""The one place where Kafka client settings are assembled.

Every consumer, producer and admin client of the project is built here from the
configuration, so security settings (SASL, TLS) and tuning given under ``kafka.client`` reach
all of them alike.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from omnistream.config import Config

#: Producer defaults tuned for low latency on a local broker; ``kafka.client`` overrides them.
PRODUCER_DEFAULTS: dict[str, str] = {
    "linger.ms": "5",
    "compression.type": "none",
    "enable.idempotence": "false",
}


ClientSettings = dict[str, str | int | float | bool]


def client_settings(config: Config) -> ClientSettings:
    """Settings shared by every client: the brokers plus ``kafka.client``."""
    return {"bootstrap.servers": config.kafka.bootstrap, **config.kafka.client}


def brokers(config: Config) -> list[str]:
    return [b.strip() for b in config.kafka.bootstrap.split(",") if b.strip()]


def make_producer(config: Config, **overrides: str) -> Producer:
    return Producer({**PRODUCER_DEFAULTS, **client_settings(config), **overrides})


def make_consumer(config: Config, group_id: str, **overrides: str) -> Consumer:
    settings = {
        "group.id": group_id,
        "enable.auto.commit": "false",
        "auto.offset.reset": "earliest",
        **client_settings(config),
        **overrides,
    }
    return Consumer(settings)


def make_admin(config: Config) -> AdminClient:
    return AdminClient(client_settings(config))


def ensure_topics(config: Config, names: list[str], timeout_s: float = 30.0) -> None:
    """Create the (prefixed) topics that do not exist yet; existing ones are left alone."""
    admin = make_admin(config)
    wanted = [config.topic(name) for name in names]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(
            topic,
            num_partitions=config.kafka.partitions,
            replication_factor=config.kafka.replication_factor,
        )
        for topic in wanted
        if topic not in existing
    ]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # an already-existing topic (a race with another creator) is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise RuntimeError(f"cannot create topic {topic}: {exc}") from exc


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
