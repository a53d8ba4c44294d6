"""The one place where Kafka client settings are assembled.

Every consumer, producer and admin client of the project is built here from the
configuration, so security settings (SASL, TLS) and tuning given under ``kafka.client`` reach
all of them alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from base.config import Config
from connectors.kafka_logging import LIBRDKAFKA_LOG, LibrdkafkaLog

#: Producer defaults tuned for low latency on a local broker; ``kafka.client`` overrides them.
#: Idempotence: without it a retried produce request can land after the next one, so two
#: messages of one key swap places and a subscriber keeping the latest ``stock.changes`` per
#: key ends on an older position. The idempotent producer keeps each partition's order across
#: retries (and drops the broker-side duplicates a retry would write); librdkafka then uses
#: ``acks=all`` and at most 5 requests in flight per connection. Cost on the embedded broker:
#: ``run stock_pool --until-idle`` over 100,000 events took 4.8–5.1 s against 4.7–4.9 s
#: without (two runs each); a bare producer sending 100,000 small messages before one flush
#: needs 0.7–1.2 s against 0.2–0.3 s.
PRODUCER_DEFAULTS: dict[str, str] = {
    "linger.ms": "5",
    "compression.type": "none",
    "enable.idempotence": "true",
}

#: librdkafka properties only a consumer uses (the ``C`` rows of librdkafka's CONFIGURATION.md,
#: global and topic tables, v2.15), plus confluent-kafka's own consumer callback.
#: Given to a producer or an admin client (a producer-type instance inside librdkafka) they
#: are ignored with a ``CONFWARN`` line on stderr, which is all these sets are here to avoid.
CONSUMER_ONLY: frozenset[str] = frozenset({
    "auto.commit.enable", "auto.commit.interval.ms", "auto.offset.reset", "check.crcs",
    "consume.callback.max.messages", "consume_cb", "coordinator.query.interval.ms",
    "enable.auto.commit", "enable.auto.offset.store", "enable.partition.eof",
    "fetch.error.backoff.ms", "fetch.max.bytes", "fetch.message.max.bytes", "fetch.min.bytes",
    "fetch.queue.backoff.ms", "fetch.wait.max.ms", "group.id", "group.instance.id",
    "group.protocol", "group.protocol.type", "group.remote.assignor", "heartbeat.interval.ms",
    "isolation.level", "max.partition.fetch.bytes", "max.poll.interval.ms", "max.poll.records",
    "offset.store.method", "offset.store.path", "offset.store.sync.interval.ms",
    "offset_commit_cb", "partition.assignment.strategy", "queued.max.messages.kbytes",
    "queued.min.messages", "rebalance_cb", "session.timeout.ms", "share.acknowledgement.mode",
    "on_commit",
})  # fmt: skip
#: librdkafka properties only a producer uses (the ``P`` rows, as above), plus
#: confluent-kafka's delivery callback.
PRODUCER_ONLY: frozenset[str] = frozenset({
    "acks", "batch.num.messages", "batch.size", "compression.codec", "compression.level",
    "compression.type", "delivery.report.only.error", "delivery.timeout.ms", "dr_cb",
    "dr_msg_cb", "enable.gapless.guarantee", "enable.idempotence", "linger.ms",
    "message.send.max.retries", "message.timeout.ms", "msg_order_cmp", "partitioner",
    "partitioner_cb", "produce.offset.report", "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes", "queue.buffering.max.messages", "queue.buffering.max.ms",
    "queuing.strategy", "request.required.acks", "request.timeout.ms", "retries",
    "sticky.partitioning.linger.ms", "transaction.timeout.ms", "transactional.id",
    "on_delivery",
})  # fmt: skip


ClientSettings = dict[str, str | int | float | bool | LibrdkafkaLog]


def librdkafka_logger() -> LibrdkafkaLog:
    """The ``logger`` every client gets: librdkafka's lines go through Python logging
    (logger ``librdkafka``), each kind at most once a minute (``connectors.kafka_logging``)."""
    return LIBRDKAFKA_LOG


def client_settings(config: Config) -> ClientSettings:
    """Settings shared by every client: the brokers, the ``logger`` (librdkafka's own lines
    through Python logging instead of a flood on stderr) plus ``kafka.client``, unfiltered.

    Prefer ``producer_settings``/``consumer_settings``/``admin_settings``, which leave out
    what the other kind of client would warn about."""
    return {
        "bootstrap.servers": config.kafka.bootstrap,
        "logger": librdkafka_logger(),
        **config.kafka.client,
    }


def _without(settings: ClientSettings, names: frozenset[str]) -> ClientSettings:
    return {key: value for key, value in settings.items() if key not in names}


def producer_settings(config: Config) -> ClientSettings:
    """What every producer gets: ``PRODUCER_DEFAULTS``, then the brokers and ``kafka.client``
    without its consumer-only properties.

    ``kafka.client`` is one set of settings for every client (SASL, TLS, tuning of either
    kind); each kind gets the shared ones and its own, so no client starts with ``CONFWARN``
    lines and a site's own choice still wins over our defaults."""
    return {**PRODUCER_DEFAULTS, **_without(client_settings(config), CONSUMER_ONLY)}


def consumer_settings(
    config: Config, defaults: Mapping[str, str | int | float | bool] | None = None
) -> ClientSettings:
    """What every consumer gets: ``defaults`` (the caller's consumer tuning), then the
    brokers and ``kafka.client`` without its producer-only properties (see
    ``producer_settings``)."""
    return {**(defaults or {}), **_without(client_settings(config), PRODUCER_ONLY)}


def admin_settings(config: Config) -> ClientSettings:
    """What an admin client gets: the brokers and ``kafka.client`` without the properties of
    either kind (librdkafka builds an admin client as a producer, and warns about consumer
    properties; producer properties would do nothing there)."""
    return _without(client_settings(config), CONSUMER_ONLY | PRODUCER_ONLY)


def brokers(config: Config) -> list[str]:
    return [b.strip() for b in config.kafka.bootstrap.split(",") if b.strip()]


def make_producer(config: Config, **overrides: str) -> Producer:
    return Producer({**producer_settings(config), **overrides})


def make_consumer(config: Config, group_id: str, **overrides: str) -> Consumer:
    defaults = {
        "group.id": group_id,
        "enable.auto.commit": "false",
        "auto.offset.reset": "earliest",
    }
    return Consumer({**consumer_settings(config, defaults), **overrides})


def make_admin(config: Config, **overrides: object) -> AdminClient:
    settings: dict[str, Any] = {**admin_settings(config), **overrides}
    return AdminClient(settings)


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
