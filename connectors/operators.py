"""The small typed steps every flow's main path is made of: read, decode, dead-letter.

A flow reads its inputs through a ``FlowIO`` — Kafka in production
(``connectors.streams.KafkaIO``), ``bytewax.testing`` sources and sinks in the in-process
tests (``tests/inprocess.py``) — so the same ``build`` runs in both.

Work moves a Kafka batch at a time: ``decode`` turns one batch of source items into one
``Decoded`` (records, rejections, a progress report per partition), and the flow's own steps
map that one item. A Bytewax step per *event* costs more than most of what a flow does
with it; a step per *batch* costs nothing worth measuring, so each flow can afford to name
its steps (``resolve_identities``, ``route_movements`` …) instead of folding them into a
decoder callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic, StatefulLogic
from bytewax.outputs import DynamicSink

from base.config import Config
from base.metrics import EVENTS_CONSUMED
from base.topics import DEADLETTER
from connectors.decode import message_event_time
from connectors.envelopes import OutMessage
from connectors.kafka_source import READ_PROGRESS, PartitionEnd, SourceItem
from connectors.streams import consumer_error, deadletter_message
from domain.events import Origin, Rejection
from domain.progress import PartitionReport

R = TypeVar("R")
Y = TypeVar("Y")

#: (CONTRACT topic name, message value, origin) → a record, a ``Rejection``, or None for a
#: message the flow does not need (counted as consumed, its event time still read).
MessageDecoder = Callable[[str, bytes, Origin], Any]


class FlowIO(Protocol):
    """Where a flow's messages come from and go to."""

    def source(self, topic_names: Sequence[str]) -> Source[SourceItem]:
        """The flow's input: every partition of ``topic_names`` (CONTRACT names)."""
        ...

    def sink(self, topic_name: str | None) -> DynamicSink[OutMessage]:
        """Where ``OutMessage``s go: to ``topic_name`` (a CONTRACT name), or each to its
        own ``OutMessage.topic`` (a full topic name) when None."""
        ...

    def partitions(self, topic_names: Sequence[str]) -> dict[str, int]:
        """Partition count of each topic (CONTRACT names)."""
        ...


@dataclass(frozen=True, slots=True)
class Decoded(Generic[R]):
    """What one Kafka batch decoded to."""

    records: list[R]
    rejections: list[Rejection]
    #: how far each partition of the batch has been read (``domain.progress``)
    reports: list[PartitionReport]


def read(step_id: str, flow: Dataflow, io: FlowIO, topic_names: Sequence[str]) -> Stream[Any]:
    """The flow's input step: source items of every partition of ``topic_names``."""
    return op.input(step_id, flow, io.source(topic_names))


def decode(
    step_id: str,
    items: Stream[Any],
    config: Config,
    flow_name: str,
    topic_names: Sequence[str],
    decoder: MessageDecoder,
) -> Stream[Decoded[Any]]:
    """Decode a Kafka batch at a time into one ``Decoded`` per batch.

    Counts what the flow consumed per topic once per batch (a counter increment per message
    takes a lock each time). A partition's report carries the largest event time read on it
    so far: of the records decoded, and of the batch's last message the decoder skipped,
    whose time alone is read. Consumer errors become ``kafka_error`` rejections, so nothing
    is dropped silently.
    """
    decode_batch = _batch_decoder(config, flow_name, topic_names, decoder)
    return op.flat_map_batch(step_id, items, lambda batch: [decode_batch(batch)])


def records(step_id: str, batches: Stream[Decoded[R]]) -> Stream[R]:
    """The records of every batch, one by one (for flows that work per record)."""
    return op.flat_map(step_id, batches, lambda batch: batch.records)


def rejections(step_id: str, batches: Stream[Decoded[Any]]) -> Stream[Rejection]:
    """The rejections of every batch, one by one."""
    return op.flat_map(step_id, batches, lambda batch: batch.rejections)


def per_batch(
    step_id: str, batches: Stream[Decoded[R]], work: Callable[[Decoded[R]], list[Y]]
) -> Stream[Y]:
    """Apply a flow's step to each batch as a whole (one Redis round trip per batch …)."""
    return op.flat_map(step_id, batches, work)


V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")


class BatchedLogic(StatefulLogic[V, W, S]):
    """A ``StatefulLogic`` that also sees the end of each batch of its key's items
    (``end_batch``), for work worth doing once per batch rather than once per item."""

    def end_batch(self, outcomes: list[W]) -> list[W]:
        """What ``on_item`` returned for the batch's items, in order; returns what to send."""
        return outcomes


class _Adapter(StatefulBatchLogic[V, W, S]):
    """A key's logic under ``stateful_batch``, as ``op.stateful`` runs it: items one by
    one, a discarded logic built anew for the key's next item."""

    def __init__(
        self, logic: StatefulLogic[V, W, S], builder: Callable[[S | None], StatefulLogic[V, W, S]]
    ) -> None:
        self.logic: StatefulLogic[V, W, S] | None = logic
        self.builder = builder

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        out: list[W] = []
        for value in values:
            if self.logic is None:
                self.logic = self.builder(None)
            outcomes, discard = self.logic.on_item(value)
            out.extend(outcomes)
            if discard:
                self.logic = None
        return out, self.logic is None

    def on_notify(self) -> tuple[Iterable[W], bool]:
        assert self.logic is not None
        return self.logic.on_notify()

    def on_eof(self) -> tuple[Iterable[W], bool]:
        assert self.logic is not None
        return self.logic.on_eof()

    def notify_at(self) -> datetime | None:
        assert self.logic is not None
        return self.logic.notify_at()

    def snapshot(self) -> S:
        assert self.logic is not None
        return self.logic.snapshot()


class _Batches(_Adapter[V, W, S]):
    """``_Adapter`` with ``end_batch`` called on the outcomes of each logic."""

    logic: BatchedLogic[V, W, S] | None

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        sent: list[W] = []
        pending: list[W] = []
        for value in values:
            if self.logic is None:
                self.logic = cast(BatchedLogic[V, W, S], self.builder(None))
            outcomes, discard = self.logic.on_item(value)
            pending.extend(outcomes)
            if discard:
                sent += self.logic.end_batch(pending)
                pending, self.logic = [], None
        if self.logic is not None:
            sent += self.logic.end_batch(pending)
        return sent, self.logic is None


class _BatchesUnsaved(_Batches[V, W, S]):
    """``_Batches`` of a flow run without recovery (``keyed_state``)."""

    def snapshot(self) -> S:
        return None  # type: ignore[return-value]


@operator
def stateful_batches(
    step_id: str,
    up: KeyedStream[V],
    builder: Callable[[S | None], BatchedLogic[V, W, S]],
    *,
    snapshots: bool = True,
) -> KeyedStream[W]:
    """``op.stateful`` with ``BatchedLogic.end_batch``. Its inner step is named as
    ``op.stateful``'s, so a step moved from one to the other resumes its snapshots.
    ``snapshots``: as ``keyed_state``."""
    adapter = _Batches if snapshots else _BatchesUnsaved

    def shim(resume: S | None) -> _Batches[V, W, S]:
        return adapter(builder(resume), builder)

    return op.stateful_batch("stateful_batch", up, shim)


# --- state without snapshots ---------------------------------------------------------------
#
# Bytewax asks every key changed in an epoch for its snapshot at the epoch's end whether or
# not recovery is configured, and throws the snapshots away when it is not: rule_triggers
# deep-copied each customer it had seen in the epoch, stock_pool its whole pool, every ten
# seconds, for nothing, and the copies stalled the flow while they were made. A flow built
# with ``snapshots=False`` (``omnistream run`` without ``recovery.dir``) gives None instead.
# With recovery the snapshots are taken as before, through Bytewax's own operators, so their
# step ids (part of the recovery databases) do not change.


class _Items(_Adapter[V, W, S]):
    """``_Adapter`` whose snapshot is never taken."""

    def snapshot(self) -> S:
        return None  # type: ignore[return-value]


class _Mapped(StatefulLogic[V, W, S]):
    """``op.stateful_map``'s mapper as a ``StatefulLogic`` (a None state discards the key)."""

    def __init__(self, mapper: Callable[[S | None, V], tuple[S | None, W]]) -> None:
        self.mapper = mapper
        self.state: S | None = None

    def on_item(self, value: V) -> tuple[Iterable[W], bool]:
        self.state, out = self.mapper(self.state, value)
        return (out,), self.state is None

    def snapshot(self) -> S:
        return None  # type: ignore[return-value]


@operator
def _unsaved(
    step_id: str, up: KeyedStream[V], builder: Callable[[S | None], StatefulLogic[V, W, S]]
) -> KeyedStream[W]:
    return op.stateful_batch("stateful_batch", up, lambda _: _Items(builder(None), builder))


def keyed_state(
    step_id: str,
    up: KeyedStream[V],
    builder: Callable[[S | None], StatefulLogic[V, W, S]],
    *,
    snapshots: bool = True,
) -> KeyedStream[W]:
    """``op.stateful``, or without recovery (``snapshots=False``) the same logic whose
    snapshots are never taken (see above)."""
    if snapshots:
        return op.stateful(step_id, up, builder)
    return _unsaved(step_id, up, builder)


def keyed_map(
    step_id: str,
    up: KeyedStream[V],
    mapper: Callable[[S | None, V], tuple[S | None, W]],
    *,
    snapshots: bool = True,
) -> KeyedStream[W]:
    """``op.stateful_map``, or without recovery the same mapper whose state is never
    snapshotted (see above)."""
    if snapshots:
        return op.stateful_map(step_id, up, mapper)
    return _unsaved(step_id, up, lambda _: _Mapped(mapper))


def output(step_id: str, io: FlowIO, topic_name: str | None, messages: Stream[OutMessage]) -> None:
    """Publish ``messages`` to ``topic_name`` (a CONTRACT name), or each to its own topic."""
    op.output(step_id, messages, io.sink(topic_name))


def dead_letters(step_id: str, io: FlowIO, flow_name: str, found: Stream[Rejection] | None) -> None:
    """Publish rejections on ``deadletter``, counted per flow and reason."""
    if found is None:
        return
    encoded = op.map(f"{step_id}_encode", found, lambda r: deadletter_message(r, flow_name))
    output(step_id, io, DEADLETTER, encoded)


def _unprefixed(config: Config, topic: str) -> str:
    prefix = config.kafka.topic_prefix
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


def _batch_decoder(
    config: Config, flow_name: str, topic_names: Sequence[str], decoder: MessageDecoder
) -> Callable[[list[SourceItem]], Decoded[Any]]:
    # Per-topic lookups done once, not per message (this runs for every input message).
    names = {config.topic(name): name for name in topic_names}
    # Created up front so every input's series exists (at 0) before its first message.
    consumed = {name: EVENTS_CONSUMED.labels(flow_name, name) for name in topic_names}
    #: (full topic, partition) → largest event time read so far (this worker's).
    latest: dict[tuple[str, int], int] = {}

    def decode_batch(batch: list[SourceItem]) -> Decoded[Any]:
        found: list[Any] = []
        refused: list[Rejection] = []
        counts: dict[str, int] = {}
        batch_latest: dict[tuple[str, int], int | None] = {}
        skipped: dict[tuple[str, int], bytes | None] = {}
        ended: set[tuple[str, int]] = set()
        for msg in batch:
            if isinstance(msg, PartitionEnd):
                key = (msg.topic, msg.partition)
                ended.add(key)
                batch_latest.setdefault(key, None)
                continue
            if isinstance(msg, KafkaError):
                refused.append(consumer_error(msg))
                continue
            topic = msg.topic or ""
            partition = msg.partition or 0
            key = (topic, partition)
            ended.discard(key)
            name = names.get(topic) or _unprefixed(config, topic)
            counts[name] = counts.get(name, 0) + 1
            origin = Origin(topic, partition, msg.offset or 0, msg.key)
            record = decoder(name, msg.value or b"", origin)
            if record is None:
                skipped[key] = msg.value
                batch_latest.setdefault(key, None)
                continue
            if isinstance(record, Rejection):
                refused.append(record)
                batch_latest.setdefault(key, None)
                continue
            found.append(record)
            ts = getattr(record, "ts_ms", None)
            seen = batch_latest.get(key)
            if ts is not None and (seen is None or ts > seen):
                batch_latest[key] = ts
            else:
                batch_latest.setdefault(key, None)
        for key, value in skipped.items():
            ts = message_event_time(value)
            seen = batch_latest.get(key)
            if ts is not None and (seen is None or ts > seen):
                batch_latest[key] = ts
        reports: list[PartitionReport] = []
        for key, ts in batch_latest.items():
            before = latest.get(key)
            if ts is not None and (before is None or ts > before):
                latest[key] = before = ts
            at_end = key in ended
            READ_PROGRESS.record(key[0], key[1], before, at_end)
            name = names.get(key[0]) or _unprefixed(config, key[0])
            reports.append(PartitionReport(name, key[1], before, at_end))
        for name, count in counts.items():
            (consumed.get(name) or EVENTS_CONSUMED.labels(flow_name, name)).inc(count)
        return Decoded(found, refused, reports)

    return decode_batch
