"""The Kafka side of every flow: ``KafkaIO`` (the production ``connectors.operators.FlowIO``),
the sink that produces ``OutMessage``s and checks their delivery, a batch sink for the Redis
stores, and the one place rejections become dead-letter records.

Kafka consumer errors are rejections too (``consumer_error``), so nothing is dropped
silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import orjson
from bytewax.connectors.kafka import KafkaError, KafkaSink
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from base import stopping
from base.config import Config
from base.metrics import DEADLETTERS
from base.topics import CLOUDEVENT_TOPICS
from connectors.envelopes import CLOUDEVENT_HEADERS, OutMessage, deadletter_record
from connectors.kafka_clients import admin_settings, brokers, consumer_settings, producer_settings
from connectors.kafka_source import (
    AlignedKafkaSource,
    list_partitions,
)
from domain.events import Origin, Rejection

X = TypeVar("X")

#: Consumer settings for a live flow against the embedded broker; ``kafka.client`` in the
#: configuration overrides them. The embedded broker (Tansu) holds every fetch for the whole
#: ``fetch.wait.max.ms`` even when data arrives meanwhile, so that wait, once per hop, is most
#: of trigger latency. With a consumer per input partition (a dozen or more per flow) short
#: waits made the broker spend a core answering empty fetches: 10 ms → trigger p99 14.6 s,
#: 100 ms → 3.0 s, 250 ms → starved flows in half the runs, so it was 500 ms (p99 540–790
#: ms). Now a worker has one consumer for all its partitions (``connectors.kafka_source``),
#: and 100 ms gave trigger p99 474 ms and stock freshness p99 216 ms in the benchmark's
#: latency run (``omnistream bench``, 1,000 events/s, 2 cores). A fetch with data returns at
#: once, so backlogs are read as fast as with long waits; against Apache Kafka, whose
#: fetches wake on new data, the wait only bounds idle polling.
#: ``queued.max.messages.kbytes`` bounds the consumer's read-ahead, now one consumer's for
#: all the worker's partitions: librdkafka's default (64 MiB) let a flow catching up on a
#: backlog hold hundreds of MB of prefetched messages; 2 MiB (the cap of each of the old
#: per-partition consumers) halved the flows' events/s with one consumer (stock_pool 15,000
#: against 29,000–31,000); 16 MiB gives them back (peak RSS of stock_pool 304 MB against 197
#: MB on the benchmark's 200,000 events). The benchmark's reference pipeline has its own.
CONSUMER_DEFAULTS: dict[str, str] = {
    "fetch.wait.max.ms": "100",
    "queued.max.messages.kbytes": "16384",
    "fetch.min.bytes": "1",
    "statistics.interval.ms": "0",
}


class KafkaIO:
    """A flow's inputs and outputs on the configured Kafka cluster (a
    ``connectors.operators.FlowIO``).

    With ``until_idle`` the source stops at the end of every partition, so the flow ends
    once its inputs are drained."""

    def __init__(self, config: Config, *, until_idle: bool) -> None:
        self.config = config
        self.until_idle = until_idle

    def source(self, topic_names: Sequence[str]) -> AlignedKafkaSource:
        config = self.config
        return AlignedKafkaSource(
            brokers(config),
            [config.topic(name) for name in topic_names],
            add_config=consumer_settings(config, CONSUMER_DEFAULTS),
            admin_config=admin_settings(config),
            tail=not self.until_idle,
            batch_size=config.kafka.batch_size,
            alignment_ms=int(config.flow.alignment_seconds * 1000),
        )

    def sink(self, topic_name: str | None) -> DynamicSink[OutMessage]:
        config = self.config
        sink = PairSink(
            brokers(config),
            None if topic_name is None else config.topic(topic_name),
            add_config=producer_settings(config),
            cloudevent_topics=frozenset(config.topic(name) for name in CLOUDEVENT_TOPICS),
        )
        # PairSink subclasses KafkaSink for its producer but takes OutMessage pairs.
        return cast("DynamicSink[OutMessage]", sink)

    def partitions(self, topic_names: Sequence[str]) -> dict[str, int]:
        config = self.config
        counts = list_partitions(
            admin_settings(config), [config.topic(name) for name in topic_names], timeout_s=10.0
        )
        return {name: counts[config.topic(name)] for name in topic_names}


def consumer_error(err: KafkaError[Any, Any]) -> Rejection:
    msg = err.msg
    origin = Origin(msg.topic or "", msg.partition or 0, msg.offset or 0, msg.key)
    return Rejection("kafka_error", str(err.err), origin, msg.value or b"")


def event_rejection(reason: str, error: str, origin: Origin, **fields: Any) -> Rejection:
    """A rejection found after decoding, when the raw bytes are no longer at hand."""
    return Rejection(reason, error, origin, orjson.dumps(fields))


def deadletter_message(
    rejection: Rejection, flow_name: str, topic: str | None = None
) -> OutMessage:
    """The ``deadletter`` record of a rejection, counted in the dead-letter metric."""
    DEADLETTERS.labels(flow_name, rejection.reason).inc()
    key, value = deadletter_record(rejection, flow_name)
    return OutMessage(key, value, topic)


class DeliveryFailed(RuntimeError):
    """The broker finally refused a message (after librdkafka's own retries)."""


class _PairPartition(StatelessSinkPartition[OutMessage]):
    def __init__(self, producer: Producer, topic: str, cloudevent_topics: frozenset[str]) -> None:
        self._producer = producer
        self._topic = topic
        self._cloudevent_topics = cloudevent_topics
        self._failures: list[str] = []

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def write_batch(self, items: list[OutMessage]) -> None:
        produce = self._producer.produce
        cloudevent_topics = self._cloudevent_topics
        delivered = self._delivered
        for key, value, topic in items:
            topic = topic or self._topic
            # Structured-mode CloudEvents say so in their header; dead letters and
            # events.resolved (plain JSON, possibly in the same batch) carry none.
            headers = CLOUDEVENT_HEADERS if topic in cloudevent_topics else None
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
        # Delivered before Bytewax moves on (and may snapshot past the batch): at least once.
        self._flush()
        self._raise_failures()

    def _flush(self) -> None:
        """Wait for every delivery, in short steps: with the broker gone librdkafka keeps a
        message for up to its delivery timeout (300 s), and a stop request must not wait
        for that. Stopped so, the batch is produced again when the flow resumes."""
        while self._producer.flush(0.5):  # how many are still queued
            if stopping.stop_requested():
                raise stopping.StopRequested("stop requested while Kafka did not take a batch")

    def _raise_failures(self) -> None:
        """A message the broker refused for good must not be skipped silently: the flow
        stops, and a restart from its last snapshot produces the batch again."""
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(
                f"{len(failures)} output message(s) not delivered, first: {failures[0]}"
            )

    def close(self) -> None:
        try:
            self._flush()
        except stopping.StopRequested:
            return  # stopping anyway: what was not delivered is produced again on resume
        self._raise_failures()


class PairSink(KafkaSink):
    """Bytewax's ``KafkaSink`` (the same producer, built the same way from ``add_config``)
    for ``OutMessage`` pairs: it skips the per-message conversion step and dataclass, the
    empty headers list and the ``poll`` per message that Bytewax's sink pays, and still
    flushes each batch. Messages to ``cloudevent_topics`` (full names) get the
    structured-mode ``content-type`` header (``CLOUDEVENT_HEADERS``), the others none."""

    def __init__(
        self,
        brokers: list[str],
        topic: str | None,
        add_config: dict[str, Any] | None = None,
        cloudevent_topics: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(brokers, topic, add_config)
        self._cloudevent_topics = cloudevent_topics

    def build(  # type: ignore[override]
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _PairPartition:
        partition = super().build(step_id, worker_index, worker_count)
        return _PairPartition(partition._producer, self._topic or "", self._cloudevent_topics)


class _BatchPartition(StatelessSinkPartition[X], Generic[X]):
    def __init__(self, write_batch: Callable[[list[X]], None], close: Callable[[], None]) -> None:
        self._write_batch = write_batch
        self._close = close

    def write_batch(self, items: list[X]) -> None:
        self._write_batch(items)

    def close(self) -> None:
        self._close()


class BatchSink(DynamicSink[X], Generic[X]):
    """A sink that hands each worker's batches to a writer built per worker.

    ``open_writer()`` returns ``(write_batch, close)``; used for Redis stores, so each batch is
    one pipelined round trip.
    """

    def __init__(
        self, open_writer: Callable[[], tuple[Callable[[list[X]], None], Callable[[], None]]]
    ) -> None:
        self._open_writer = open_writer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _BatchPartition[X]:
        write_batch, close = self._open_writer()
        return _BatchPartition(write_batch, close)
