"""``omnistream topics create|list``: the project's topics on an operator's own Kafka.

The flows and ``generate`` create the topics they need with ``kafka.partitions`` partitions
when they are missing, but a managed or locked-down cluster often refuses clients the right
to create topics, and its operators want to create them on purpose, with the replication
they chose. ``create`` makes every missing topic from the configuration
(``kafka.partitions``, ``kafka.replication_factor``) and leaves existing ones alone;
``list`` shows each with what the broker reports. ``doctor`` reads the same states.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic

from base import topics
from base.config import Config
from connectors.kafka_clients import make_admin

#: How long one metadata request or topic creation may take.
TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TopicState:
    """One project topic as the broker reports it (``partitions`` 0: missing)."""

    name: str
    partitions: int
    replication: int

    @property
    def missing(self) -> bool:
        return self.partitions == 0

    def short_of(self, config: Config) -> bool:
        """Fewer partitions than configured: keys would be spread over fewer partitions
        than the flows' parallelism is planned for, and Kafka cannot be told to split
        existing keys; said, never "fixed" by adding partitions (that moves keys)."""
        return 0 < self.partitions < config.kafka.partitions


def topic_states(config: Config, admin: AdminClient | None = None) -> list[TopicState]:
    """Every project topic (``base.topics.ALL_TOPICS`` with ``kafka.topic_prefix``), in that
    order, with its partitions and replication factor (of its first partition)."""
    admin = admin if admin is not None else make_admin(config)
    metadata = admin.list_topics(timeout=TIMEOUT_S)
    states = []
    for name in topics.ALL_TOPICS:
        full = config.topic(name)
        topic = metadata.topics.get(full)
        if topic is None or topic.error is not None or not topic.partitions:
            states.append(TopicState(full, 0, 0))
            continue
        first = topic.partitions[min(topic.partitions)]
        states.append(TopicState(full, len(topic.partitions), len(first.replicas)))
    return states


def _describe(state: TopicState) -> str:
    return f"{state.partitions} partitions, replication {state.replication}"


def create_topics(config: Config) -> int:
    """Create the missing topics; 0 when every topic now exists with at least the configured
    partitions, 1 when one could not be created or has fewer."""
    admin = make_admin(config)
    states = topic_states(config, admin)
    wanted = [
        NewTopic(
            state.name,
            num_partitions=config.kafka.partitions,
            replication_factor=config.kafka.replication_factor,
        )
        for state in states
        if state.missing
    ]
    failed: dict[str, str] = {}
    if wanted:
        futures = admin.create_topics(wanted, operation_timeout=TIMEOUT_S)
        for name, future in futures.items():
            try:
                future.result(timeout=TIMEOUT_S)
            except Exception as exc:  # the broker's reason, one line per topic
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    failed[name] = str(exc)
    width = max(len(state.name) for state in states)
    problems = 0
    for state in states:
        if state.missing and state.name in failed:
            print(f"FAIL      {state.name:<{width}}  {failed[state.name]}")
            problems += 1
        elif state.missing:
            print(
                f"created   {state.name:<{width}}  {config.kafka.partitions} partitions, "
                f"replication {config.kafka.replication_factor}"
            )
        elif state.short_of(config):
            print(
                f"MISMATCH  {state.name:<{width}}  {_describe(state)} (kafka.partitions is "
                f"{config.kafka.partitions}; left as it is)"
            )
            problems += 1
        else:
            print(f"exists    {state.name:<{width}}  {_describe(state)}")
    return 1 if problems else 0


def list_topics(config: Config) -> int:
    """Print every project topic with its partitions and replication, or ``missing``."""
    states = topic_states(config)
    width = max(len(state.name) for state in states)
    for state in states:
        print(f"{state.name:<{width}}  {'missing' if state.missing else _describe(state)}")
    return 0
