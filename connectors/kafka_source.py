"""The flows' Kafka source: Bytewax's partitioned source, plus what event-time order needs.

Bytewax's own ``KafkaSource`` is close, but it cannot say when a tailing partition has been
read to its end, and it lists partitions without a timeout. This one:

- tells the flow when a partition is at its end (``PartitionEnd`` at the end of the batch
  that reached the high watermark of the last fetch, or on librdkafka's end-of-partition
  event), so a partition with nothing in flight holds nothing back
  (``domain.progress``); with ``tail=False`` the partition then stops;
- aligns partitions on event time while catching up: a partition whose latest event time is
  more than ``alignment_ms`` ahead of the slowest partition that is catching up (more than a
  batch behind its high watermark) in this process waits, as Flink's watermark alignment
  does, so the event-time buffers downstream stay small even when one topic would otherwise
  be read days ahead of another. Live, no partition is a batch behind and nothing waits
  (the benchmark's generator runs event time hundreds of times faster than the wall clock,
  where an alignment against partitions merely between two fetches held triggers back).
  Alignment only bounds memory and is per process; the order comes from the reports.
- lists partitions with a timeout, failing with one clear message;
- reports each partition's consumer lag (``omnistream_consumer_lag_messages``): Bytewax
  assigns partitions itself and commits no offsets, so the broker's group tools
  (``kafka-consumer-groups``, Burrow, kafka-exporter) see no consumer group to measure. The
  figure is end offset minus position from what the consumer already holds (the high
  watermark cached from its last fetch, the offset after the last message handed to the
  flow), set after every batch: no request to the broker. Only the process whose worker
  reads a partition reports it, so a flow's processes together report each partition once.

Event times are not known here (the payload is decoded downstream, on the same worker):
``READ_PROGRESS`` is where the decode step records them for the alignment.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from base.metrics import CONSUMER_LAG
from base.topics import ALL_TOPICS
from connectors.worker_local import WorkerLocal

#: How long a partition waiting for the others sleeps before it looks again.
ALIGNMENT_WAIT = timedelta(milliseconds=50)


@dataclass(frozen=True, slots=True)
class PartitionEnd:
    """The consumer of ``topic``/``partition`` reached the end of what the broker holds."""

    topic: str
    partition: int


SourceItem = KafkaSourceMessage[Any, Any] | KafkaError[Any, Any] | PartitionEnd


def consumer_lag(next_offset: int, low: int, high: int) -> int | None:
    """Messages of a partition still to read: ``high − position``, or None while unknown.

    ``next_offset`` is the offset of the next message the flow reads (the one after the last
    handed to it, or the resume offset of a snapshot), or a logical offset (negative, e.g.
    ``OFFSET_BEGINNING``) while nothing has been read from the start: then the position is
    the partition's first offset ``low``. ``low``/``high`` are the watermarks the consumer
    caches from its fetches (negative until a fetch told them). A position below ``low`` (a
    snapshot older than the retention) is read from ``low``. Never negative: a cached high
    watermark older than the message just read counts as the end (lag 0).

    >>> consumer_lag(7, 0, 10), consumer_lag(10, 0, 10), consumer_lag(-2, 3, 10)
    (3, 0, 7)
    """
    if high < 0:
        return None
    if next_offset < 0 or next_offset < low:
        if low < 0:
            return None
        next_offset = low
    return max(0, high - next_offset)


def topic_label(topic: str) -> str:
    """The ``topic`` label of a full topic name: the CONTRACT name it ends with (the
    configured prefix dropped, as in ``omnistream_events_consumed_total``), else the name.

    The source is given full names only; every flow input is ``prefix + CONTRACT name``,
    and no CONTRACT name ends with another, so the longest match is the one.

    >>> topic_label("acme.pos.sales"), topic_label("pos.sales"), topic_label("other")
    ('pos.sales', 'pos.sales', 'other')
    """
    matches = [name for name in ALL_TOPICS if topic.endswith(name)]
    return max(matches, key=len) if matches else topic


class ReadProgress:
    """Latest event time read per partition in this process, for source alignment.

    Written by the decode step, read by the source partitions of every worker thread of the
    process; a lock keeps the two consistent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, int], int] = {}
        self._at_end: set[tuple[str, int]] = set()
        #: Partitions more than a batch behind their high watermark.
        self._catching_up: set[tuple[str, int]] = set()

    def record(self, topic: str, partition: int, latest_ms: int | None, at_end: bool) -> None:
        key = (topic, partition)
        with self._lock:
            if latest_ms is not None and latest_ms > self._latest.get(key, latest_ms - 1):
                self._latest[key] = latest_ms
            if at_end:
                self._at_end.add(key)
            else:
                self._at_end.discard(key)

    def backlog(self, topic: str, partition: int, catching_up: bool) -> None:
        """Written by the source partition after each poll."""
        key = (topic, partition)
        with self._lock:
            if catching_up:
                self._catching_up.add(key)
            else:
                self._catching_up.discard(key)

    def ahead_by(self, topic: str, partition: int) -> int:
        """How far (event-time ms) this partition is ahead of the slowest partition that is
        catching up; 0 when it is the slowest, nothing is catching up or nothing is known."""
        key = (topic, partition)
        with self._lock:
            own = self._latest.get(key)
            if own is None:
                return 0
            behind = [
                t
                for k, t in self._latest.items()
                if k != key and k in self._catching_up and k not in self._at_end
            ]
        return max(0, own - min(behind)) if behind else 0

    def forget(self, topic: str, partition: int) -> None:
        """A partition that stopped (``tail=False``) must not hold the others back."""
        with self._lock:
            self._at_end.add((topic, partition))
            self._catching_up.discard((topic, partition))


#: The one registry of this process (each flow runs in a process of its own).
READ_PROGRESS = ReadProgress()


def list_partitions(
    config: dict[str, Any], topics: Iterable[str], timeout_s: float
) -> dict[str, int]:
    """Partition count of each topic, or ``RuntimeError`` naming the brokers and the topic."""
    admin = AdminClient(config)
    counts: dict[str, int] = {}
    for topic in topics:
        try:
            metadata = admin.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:  # transport failure or timeout
            raise RuntimeError(
                f"cannot read the partitions of Kafka topic {topic!r} from "
                f"{config.get('bootstrap.servers')} within {timeout_s:g} s: {exc}"
            ) from None
        topic_metadata = metadata.topics.get(topic)
        if (
            topic_metadata is None
            or topic_metadata.error is not None
            or not (topic_metadata.partitions)
        ):
            reason = topic_metadata.error if topic_metadata is not None else "not in metadata"
            raise RuntimeError(f"Kafka topic {topic!r} cannot be read: {reason}")
        counts[topic] = len(topic_metadata.partitions)
    return counts


#: Fills without waiting a partition's ``take`` may add to reach its ``limit``.
MAX_TOP_UPS = 8


class _WorkerConsumer:
    """One librdkafka consumer for every partition of one source step that one worker
    thread reads, each partition's messages kept apart until that partition asks for them.

    Why one, not one per partition as Bytewax's ``KafkaSource`` has: a flow reads a dozen
    partitions or more, and each consumer sends its own fetches. The embedded broker (Tansu)
    holds every fetch for the whole ``fetch.wait.max.ms`` even when data arrives meanwhile,
    so the wait is what trigger latency is made of, and with a consumer per partition a
    shorter wait made the broker spend a core answering empty fetches (``connectors.streams``,
    ``CONSUMER_DEFAULTS``). One consumer per worker sends one fetch for all its partitions.
    Against Apache Kafka it saves connections and threads (each consumer has a thread per
    broker and its own read-ahead).

    What it keeps: each partition still snapshots its own offset and is assigned from it;
    librdkafka resumes a partition after the last message ``consume`` handed out, so a
    message is in exactly one place (librdkafka or one partition's buffer) until the
    partition returns it to the flow. A partition whose buffer holds ``hold`` messages (one
    waiting for the others to align, or one read faster than the flow takes it) is paused
    until its buffer is half empty, so the buffers stay bounded like librdkafka's queue.

    Not thread-safe, and needs not be: Bytewax builds and drives a worker's partitions on
    that worker's thread, and the registry is per thread.
    """

    def __init__(self, config: dict[str, Any], fill_size: int, hold: int) -> None:
        self.consumer = Consumer(config)
        self._fill_size = fill_size
        self._hold = hold
        self._buffers: dict[tuple[str, int], deque[Message]] = {}
        self._paused: set[tuple[str, int]] = set()

    def add(self, assigned: TopicPartition) -> None:
        self.consumer.incremental_assign([assigned])
        self._buffers[(assigned.topic, assigned.partition)] = deque()

    def release(self, topic: str, partition: int) -> bool:
        """Stop reading a partition; True when it was the last (the consumer is closed)."""
        self._buffers.pop((topic, partition), None)
        self._paused.discard((topic, partition))
        if self._buffers:
            self.consumer.incremental_unassign([TopicPartition(topic, partition)])
            return False
        self.consumer.close()
        return True

    def take(self, topic: str, partition: int, limit: int) -> list[Message]:
        """Up to ``limit`` of the partition's messages (end-of-partition events included),
        fetching when it has none buffered. Errors that name no assigned partition (a
        broker down) go to the partition that asked, so they reach the flow once."""
        key = (topic, partition)
        buffer = self._buffers[key]
        strays: list[Message] = []
        if not buffer:
            self._fill(0.001, strays)
        # Top up from what librdkafka already holds (no wait): a fill is spread over every
        # partition, so without this a worker reading 8 partitions got batches of about
        # an eighth of ``limit``, and a flow with a Redis round trip per batch made 8 times
        # as many (identity_stitch lost a fifth of its events/s).
        for _ in range(MAX_TOP_UPS):
            if len(buffer) >= limit or not self._fill(0.0, strays):
                break
        taken = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        if key in self._paused and len(buffer) <= self._hold // 2:
            self._paused.discard(key)
            self.consumer.resume([TopicPartition(topic, partition)])
        return strays + taken

    def _fill(self, timeout_s: float, strays: list[Message]) -> int:
        """One ``consume`` into the partitions' buffers (errors that name no assigned
        partition into ``strays``); the number of messages it returned."""
        messages = self.consumer.consume(self._fill_size, timeout_s)
        for msg in messages:
            target = self._buffers.get((msg.topic() or "", msg.partition() or 0))
            if target is not None:
                target.append(msg)
            elif msg.error() is not None:
                strays.append(msg)
            # else: a message of a partition just released; whoever reads that
            # partition next reads it again from its own snapshot.
        self._pause_full()
        return len(messages)

    def _pause_full(self) -> None:
        full = [
            k for k, b in self._buffers.items() if len(b) >= self._hold and k not in self._paused
        ]
        if full:
            self._paused.update(full)
            self.consumer.pause([TopicPartition(t, p) for t, p in full])

    def watermarks(self, assigned: TopicPartition) -> tuple[int, int]:
        return self.consumer.get_watermark_offsets(assigned, cached=True)  # type: ignore[no-any-return]


class _WorkerConsumers:
    """This thread's shared consumers, by (step id, consumer settings)."""

    def __init__(self) -> None:
        self._local = WorkerLocal()

    @property
    def by_step(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], _WorkerConsumer]:
        if not hasattr(self._local, "by_step"):
            self._local.by_step = {}
        return self._local.by_step  # type: ignore[no-any-return]


_WORKER_CONSUMERS = _WorkerConsumers()


class _Partition(StatefulSourcePartition[SourceItem, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        tail: bool,
        alignment_ms: int | None,
        flow_name: str = "",
        step_id: str = "",
    ) -> None:
        self._shared_key = (step_id, frozenset(config.items()))
        shared = _WORKER_CONSUMERS.by_step.get(self._shared_key)
        self._assigned = TopicPartition(topic, partition, offset)
        if shared is None:
            shared = _WorkerConsumer(config, fill_size=batch_size, hold=4 * batch_size)
            shared.add(self._assigned)  # kept only once it reads a partition
            _WORKER_CONSUMERS.by_step[self._shared_key] = shared
        else:
            shared.add(self._assigned)
        self._shared = shared
        #: The last batch ended at the partition's end (``PartitionEnd`` already sent).
        self._at_end = False
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._alignment_ms = alignment_ms
        self._stopping = False
        self._awake: datetime | None = None
        self._lag_labels = (flow_name, topic_label(topic), str(partition))
        #: The lag series, created once the lag is known (absent before the first fetch).
        self._lag: Gauge | None = None

    def next_batch(self) -> list[SourceItem]:
        if self._stopping:
            READ_PROGRESS.forget(self._topic, self._partition)
            raise StopIteration
        if (
            self._alignment_ms is not None
            and READ_PROGRESS.ahead_by(self._topic, self._partition) > self._alignment_ms
        ):
            self._awake = datetime.now(UTC) + ALIGNMENT_WAIT
            self._report_lag(self._watermarks())
            return []
        self._awake = None
        batch: list[SourceItem] = []
        last_offset: int | None = None
        end_event = False
        for msg in self._shared.take(self._topic, self._partition, self._batch_size):
            error = msg.error()
            if error is not None and error.code() == ConfluentKafkaError._PARTITION_EOF:
                end_event = True
                continue
            message: KafkaSourceMessage[Any, Any] = KafkaSourceMessage(
                key=msg.key(),
                value=msg.value(),
                topic=msg.topic(),
                headers=list(msg.headers() or []),  # type: ignore[arg-type]
                latency=msg.latency(),
                offset=msg.offset(),
                partition=msg.partition(),
                timestamp=msg.timestamp(),
            )
            batch.append(message if error is None else KafkaError(error, message))
            offset = msg.offset()
            if offset is not None and offset >= 0:
                last_offset = offset
        if last_offset is not None:
            self._offset = last_offset + 1
        watermarks = self._watermarks()
        self._report_lag(watermarks)
        backlog = self._backlog(watermarks[1])
        READ_PROGRESS.backlog(self._topic, self._partition, backlog > self._batch_size)
        at_end = end_event or (backlog == 0 and (batch or not self._at_end))
        if batch and not at_end:
            self._at_end = False
        elif at_end and (batch or not self._at_end):
            # Once per arrival at the end (librdkafka's own event comes later, or not at all
            # for a batch that ended exactly at the high watermark of its fetch).
            self._at_end = True
            batch.append(PartitionEnd(self._topic, self._partition))
            if not self._tail:
                self._stopping = True
        return batch

    def _watermarks(self) -> tuple[int, int]:
        """(low, high) watermarks of the last fetch, negative while no fetch has told them
        (the cached values cost no request)."""
        try:
            low, high = self._shared.watermarks(self._assigned)
        except KafkaException:
            return -1, -1
        return low, high

    def _backlog(self, high: int) -> int:
        """Messages between the next offset and the high watermark of the last fetch; -1
        while no fetch has told it."""
        return max(0, high - self._offset) if high >= 0 else -1

    def _report_lag(self, watermarks: tuple[int, int]) -> None:
        """Set this partition's lag series; it stays as it was while the lag is unknown."""
        lag = consumer_lag(self._offset, *watermarks)
        if lag is None:
            return
        if self._lag is None:
            self._lag = CONSUMER_LAG.labels(*self._lag_labels)
        self._lag.set(lag)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        # A partition this process no longer reads reports nothing (its series would keep a
        # stale figure; the process that reads it next reports it).
        if self._lag is not None:
            self._lag = None
            try:
                CONSUMER_LAG.remove(*self._lag_labels)
            except KeyError:
                pass
        if self._shared.release(self._topic, self._partition):
            _WORKER_CONSUMERS.by_step.pop(self._shared_key, None)


class AlignedKafkaSource(FixedPartitionedSource[SourceItem, int]):
    """Every partition of ``topics`` (prefixed names), from the beginning or from the
    recovery snapshot; see the module docstring for what it adds to Bytewax's source."""

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        *,
        add_config: dict[str, Any],
        admin_config: dict[str, Any] | None = None,
        tail: bool,
        batch_size: int,
        alignment_ms: int | None,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        self._config = {"bootstrap.servers": ",".join(brokers), **add_config}
        #: For listing partitions: librdkafka warns about consumer properties there.
        self._admin_config = {"bootstrap.servers": ",".join(brokers), **(admin_config or {})}
        self._topics = topics
        self._tail = tail
        self._batch_size = batch_size
        self._alignment_ms = alignment_ms
        self._timeout_s = metadata_timeout_s

    def list_parts(self) -> list[str]:
        counts = list_partitions(self._admin_config, self._topics, self._timeout_s)
        return [f"{p}-{topic}" for topic, n in counts.items() for p in range(n)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        index, topic = for_part.split("-", 1)
        config = {
            # Bytewax assigns partitions itself and keeps offsets in its recovery snapshots.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            **self._config,
            "enable.partition.eof": "true",
        }
        return _Partition(
            config,
            topic,
            int(index),
            OFFSET_BEGINNING if resume_state is None else resume_state,
            self._batch_size,
            self._tail,
            self._alignment_ms,
            # The step id is "<dataflow id>.<step>", and the dataflow id is the flow's name
            # (base.flow_names), the ``flow`` label of every metric.
            flow_name=step_id.split(".", 1)[0],
            step_id=step_id,
        )
