"""The flow's progress over all its input partitions, and a buffer that releases in event time.

Why this exists: during a rebuild from history the partitions of a flow's input topics are
read at very different speeds — one topic may be read to its end before another has started.
Judging an event against the latest event time of *its key* then refuses valid events as
"too late" and applies a store's sales before the receipt they followed. Instead:

- every Kafka batch reports, per partition, the largest event time read so far on it and
  whether the partition was read to its end (``PartitionReport``);
- ``InputProgress`` folds the reports of every input partition into two figures:
  ``release_bound`` (everything older has been read on every partition that is still being
  read: it can be applied in event-time order) and ``progress_ms`` (the low watermark of the
  whole flow, for lateness and for forgetting);
- ``EventTimeBuffer`` holds what arrived ahead of the release bound and gives it back in
  event-time order.

A partition read to its end holds nothing back (it has nothing in flight), so a live flow,
whose partitions are at their end between batches, applies what it reads at once. The
memory this buffer needs during a replay is bounded by aligning the sources
(``connectors.kafka_source``): a partition ahead of the slowest by more than a bound waits.

Pure: no Kafka, no clock. The reports come in with the data, on the same path, so a bound is
never ahead of what has actually arrived.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from domain.resumable import resumable

T = TypeVar("T")

#: ``release_bound`` when every partition was read to its end: release everything.
END_OF_INPUT = 2**62

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """How far one input partition has been read, as of one batch."""

    #: Input topic without the configured prefix.
    topic: str
    partition: int
    #: Largest event time read so far on the partition; None while nothing carried one.
    latest_ms: int | None
    #: The partition was read to its end (as of this batch).
    at_end: bool

    @property
    def key(self) -> Partition:
        return (self.topic, self.partition)


@resumable
@dataclass(slots=True)
class InputProgress:
    """What the reports that reached one keyed state say about every input partition.

    ``expected`` are the partitions known when the flow was built: until each has reported,
    nothing is released (an unread partition may hold anything). A partition that reports
    without being expected (a topic that gained partitions) joins them.
    """

    expected: frozenset[Partition] = frozenset()
    latest: dict[Partition, int] = field(default_factory=dict)
    reported: set[Partition] = field(default_factory=set)
    at_end: set[Partition] = field(default_factory=set)
    #: Monotone low watermark of the flow (see ``progress_ms``).
    watermark_ms: int | None = None

    def report(self, reports: Iterable[PartitionReport]) -> None:
        for r in reports:
            key = r.key
            self.reported.add(key)
            if r.latest_ms is not None and r.latest_ms > self.latest.get(key, r.latest_ms - 1):
                self.latest[key] = r.latest_ms
            if r.at_end:
                self.at_end.add(key)
            else:
                self.at_end.discard(key)
        self._advance()

    def _partitions(self) -> set[Partition]:
        return set(self.expected) | self.reported

    def release_bound(self) -> int | None:
        """Event time below which every partition still being read has been read: records
        older than this can be applied in event-time order. None: hold everything (some
        partition has not reported, or is being read and has shown no event time yet)."""
        bound = END_OF_INPUT
        for key in self._partitions():
            if key in self.at_end:
                continue
            latest = self.latest.get(key)
            if key not in self.reported or latest is None:
                return None
            bound = min(bound, latest)
        return bound

    def _advance(self) -> None:
        """The flow's low watermark: the slowest partition still being read decides; when
        every partition is at its end, the latest event time read anywhere. It never goes
        back (a partition that gets new data after its end does not undo forgetting)."""
        reading: list[int] = []
        for key in self._partitions():
            if key in self.at_end:
                continue
            latest = self.latest.get(key)
            if key not in self.reported or latest is None:
                return
            reading.append(latest)
        candidate = min(reading) if reading else max(self.latest.values(), default=None)
        if candidate is not None and (self.watermark_ms is None or candidate > self.watermark_ms):
            self.watermark_ms = candidate

    @property
    def progress_ms(self) -> int | None:
        """Low watermark of the whole flow: an event older than this by more than a horizon
        is late; state older than it by more than a horizon can be forgotten."""
        return self.watermark_ms

    def __deepcopy__(self, memo: dict[int, object]) -> InputProgress:
        """A recovery snapshot forgets which partitions were at their end: after a restart a
        partition may have new data, and its source says again whether it is at its end."""
        return InputProgress(
            self.expected, dict(self.latest), set(self.reported), set(), self.watermark_ms
        )


@resumable
@dataclass(slots=True)
class EventTimeBuffer(Generic[T]):
    """Items waiting for the release bound, given back in (event time, tie-break) order.

    The tie-break (a movement or event id) makes the order of equal event times a function
    of the input, not of the order partitions were read in.
    """

    #: (event time, tie-break, arrival number, item): the arrival number only separates
    #: equal keys (a duplicate of a buffered movement), so items are never compared.
    heap: list[tuple[int, str, int, T]] = field(default_factory=list)
    arrivals: int = 0

    def add(self, ts_ms: int, tie_break: str, item: T) -> None:
        self.arrivals += 1
        heapq.heappush(self.heap, (ts_ms, tie_break, self.arrivals, item))

    def release(self, bound: int | None) -> list[T]:
        """Every item with event time below ``bound``, oldest first (all at END_OF_INPUT)."""
        out: list[T] = []
        if bound is None:
            return out
        heap = self.heap
        while heap and (heap[0][0] < bound or bound == END_OF_INPUT):
            out.append(heapq.heappop(heap)[3])
        return out

    def __len__(self) -> int:
        return len(self.heap)

    def __deepcopy__(self, memo: dict[int, object]) -> EventTimeBuffer[T]:
        """Items are values the buffer does not change: copying the list is a full copy."""
        return EventTimeBuffer(list(self.heap), self.arrivals)


def partitions_of(counts: dict[str, int]) -> frozenset[Partition]:
    """Every (topic, partition) of topics with the given partition counts."""
    return frozenset((topic, p) for topic, n in counts.items() for p in range(n))
