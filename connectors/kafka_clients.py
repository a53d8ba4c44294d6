"""The one place where Kafka client settings are assembled.

Every consumer, producer and admin client of the project is built here from the
configuration, so security settings (SASL, TLS) and tuning given under ``kafka.client`` reach
all of them alike.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer
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
