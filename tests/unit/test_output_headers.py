"""Output messages as the flows' sinks hand them to the producer: the CloudEvents Kafka
binding's structured-mode ``content-type`` header on every CloudEvent topic, none on the
plain-JSON ones (``deadletter``, ``events.resolved``), and ``forget``'s ``erased`` change
published like the flow's own changes.

The producer is replaced by a recorder (the sinks build Bytewax's ``KafkaSink`` producer);
``tests/integration/test_subscriber_example.py`` reads the same headers back from a broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import bytewax.connectors.kafka as bytewax_kafka
import pytest
from bytewax.dataflow import Dataflow

from base import topics
from base.config import Config
from connectors import kafka_clients
from connectors.envelopes import CLOUDEVENT_CONTENT_TYPE, OutMessage
from connectors.streams import PairSink
from domain.identity import IdentityChange
from omnistream import identity_cli
from omnistream.runner import FLOWS
from tests.flow_builds import build_flow

STRUCTURED = [("content-type", b"application/cloudevents+json")]


class RecordingProducer:
    """Stands in for confluent-kafka's ``Producer``: keeps what was produced."""

    instances: ClassVar[list[RecordingProducer]] = []

    def __init__(self, config: dict[str, Any], **_: Any) -> None:
        self.config = config
        self.produced: list[tuple[str, bytes | None, Any]] = []
        RecordingProducer.instances.append(self)

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                **kwargs: Any) -> None:  # fmt: skip
        self.produced.append((topic, key, kwargs.get("headers")))

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = -1) -> int:
        return 0


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingProducer]]:
    RecordingProducer.instances = []
    monkeypatch.setattr(bytewax_kafka, "Producer", RecordingProducer)
    monkeypatch.setattr(kafka_clients, "Producer", RecordingProducer)
    yield RecordingProducer.instances


def config() -> Config:
    return Config().with_overrides(kafka={"topic_prefix": "acme."}, pii={"key": "unit-secret"})


def pair_sinks(flow: Dataflow) -> list[PairSink]:
    sinks: list[PairSink] = []

    def walk(step: Any) -> None:
        sinks.extend(value for value in vars(step).values() if isinstance(value, PairSink))
        for sub in getattr(step, "substeps", []):
            walk(sub)

    walk(flow)
    return sinks


def test_the_header_is_the_cloudevents_json_format_media_type() -> None:
    assert CLOUDEVENT_CONTENT_TYPE == "application/cloudevents+json"
    assert topics.CLOUDEVENT_TOPICS.isdisjoint({topics.DEADLETTER, topics.EVENTS_RESOLVED})


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_sink_heads_cloudevents_and_only_cloudevents(
    name: str, producers: list[RecordingProducer]
) -> None:
    """Each sink of each flow gets one message for every topic it may write (a sink without
    a topic of its own writes each message to the topic the message names): CloudEvent
    topics carry the structured-mode header, plain-JSON topics none."""
    cfg = config()
    sinks = pair_sinks(build_flow(FLOWS[name], cfg))
    assert sinks
    full_names = {cfg.topic(t): t for t in topics.ALL_TOPICS}
    for sink in sinks:
        partition = sink.build("step", 0, 1)
        if sink._topic is None:  # one sink for several topics: every output topic, by name
            partition.write_batch([OutMessage(b"k", b"{}", full) for full in full_names])
        else:
            partition.write_batch([OutMessage(b"k", b"{}"), OutMessage(None, b"{}")])
    written = [entry for producer in producers for entry in producer.produced]
    assert written
    for full, _key, headers in written:
        short = full_names[full]
        assert headers == (STRUCTURED if short in topics.CLOUDEVENT_TOPICS else None), short


def test_every_cloudevent_topic_is_written_by_some_flow(producers: list[RecordingProducer]) -> None:
    """A CloudEvent topic no sink writes (a renamed topic) or a flow topic missing from
    ``CLOUDEVENT_TOPICS`` (a new output) would leave messages without their header."""
    cfg = config()
    own_topics: set[str] = set()
    for module in FLOWS.values():
        for sink in pair_sinks(build_flow(module, cfg)):
            if sink._topic is not None:
                own_topics.add(sink._topic)
    short = {cfg.topic(t): t for t in topics.ALL_TOPICS}
    written = {short[t] for t in own_topics}
    # identity.changes and events.resolved go through identity_stitch's multi-topic sink,
    # orders.sourced and store.tasks (and pickup transfers) through stock_pool's; store.tasks
    # also through rule_triggers' own sink (store visits).
    multi_topic = {topics.IDENTITY_CHANGES, topics.ORDERS_SOURCED, topics.STORE_TASKS}
    assert written - {topics.DEADLETTER} <= topics.CLOUDEVENT_TOPICS
    assert (written - {topics.DEADLETTER}) | multi_topic == topics.CLOUDEVENT_TOPICS
    assert topics.STORE_TASKS in written  # rule_triggers' visits


def test_flow_sinks_are_idempotent_producers(producers: list[RecordingProducer]) -> None:
    cfg = config()
    for sink in pair_sinks(build_flow(FLOWS["stock_pool"], cfg)):
        sink.build("step", 0, 1)
    assert producers
    assert all(p.config["enable.idempotence"] == "true" for p in producers)


def test_forget_publishes_erased_as_a_structured_cloudevent(
    producers: list[RecordingProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    erased = IdentityChange("erased", "cust-1", ("user:u-1", "anon:d-1"))

    class Store:
        def forget(self, _ident: str) -> IdentityChange:
            return erased

        def close(self) -> None:
            pass

    monkeypatch.setattr(identity_cli.IdentityStore, "from_config", lambda _config: Store())
    assert identity_cli.forget(config(), "user", "u-1") == 0
    [producer] = producers
    assert producer.config["enable.idempotence"] == "true"
    # The change, and the notice in the customer's own stream (plain JSON, like every
    # events.resolved record).
    assert producer.produced == [
        ("acme.identity.changes", b"cust-1", STRUCTURED),
        ("acme.events.resolved", b"cust-1", None),
    ]


def test_a_message_the_broker_never_takes_stops_the_sink() -> None:
    """A delivery that fails for good raises instead of being skipped: the flow stops and a
    restart produces the batch again from the last snapshot (at least once)."""
    from connectors.envelopes import OutMessage
    from connectors.kafka_clients import make_producer
    from connectors.streams import DeliveryFailed, _PairPartition

    dead = Config().with_overrides(kafka={"bootstrap": "127.0.0.1:1"})
    partition = _PairPartition(
        make_producer(dead, **{"message.timeout.ms": "300"}), "stock.changes", frozenset()
    )
    with pytest.raises(DeliveryFailed, match="1 output message"):
        partition.write_batch([OutMessage(b"k", b"{}", None)])
    partition.close()  # nothing left to report
