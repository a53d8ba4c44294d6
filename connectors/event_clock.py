"""Event-time clocks for the timers of rule_triggers.

A timer (a cart's deadline, the end of quiet hours, a clearance waiting for its audience)
fires when the *input* has moved past it, not when the wall clock has: a replay of yesterday
fires the same triggers as the live run did. Each input stream (a Kafka partition, or the
stock inputs as a whole) has its own clock, the largest event time seen on it minus a grace
for slightly out-of-order events. A customer's events all travel in one partition of
``events.resolved`` (it is keyed by customer), so a cart is judged against the partition that
also carries the customer's order.

While tailing live topics, a stream that has been silent for ``idle_advance`` is assumed to
move on with the wall clock (its producers stamp events with the current time), so timers
fire within seconds even when traffic is sparse. With ``--until-idle`` this is off and
timers follow event time alone.

Clocks are per worker thread (``WorkerClocks``, one set per built flow): a key's state lives
on one worker, and that worker's clock has seen exactly the events that worker processed, so
a live timer never fires ahead of a record of its key still in flight to it.

The end of a replay is another matter: by then every record has been processed, and the
input has moved as far as the latest event time *read*, on whichever worker read it.
``InputMarks`` holds that, for the whole process: the decoding step notes each batch's
latest event time per input group before any record of the batch reaches a key, so when the
stateful steps see the end of their input, every worker's reads are in it (a worker's own
clock has only seen its own keys' records: with several workers, timers left for the end
fired or not depending on which worker a key landed on).

A clock lives outside Bytewax's state, so a recovery snapshot does not hold it: every
stateful step that reads one carries the marks of its streams (``marks()``) in each key's
snapshot and gives them back on resume (``restore()``). Without that, a flow resumed after
the last event of a partition had been read (and snapshotted) never saw that partition's
clock again, and every timer left for the end of a replay on it was silently dropped
(issue 14: 254 cart-abandonment coupons of 2,247 triggers missing after a late SIGKILL).
The keys snapshotted in an epoch together hold the clock as it stood at its end (the key of
the last event read on a stream is among them), so the largest restored mark of each stream
is the mark the run was killed with, as far as the resumed offsets are concerned. The same
holds for ``InputMarks``: the latest record read of a group reached a key, which snapshots
the group's read mark (``ClockMarks``) in that epoch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from connectors.worker_local import WorkerLocal

#: Longest wait between two looks at a pending timer; a re-check is cheap.
MAX_WAIT_S = 30.0
MIN_WAIT_S = 0.05


class EventClock:
    def __init__(
        self,
        grace_ms: int,
        idle_advance_ms: int | None,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self.grace_ms = grace_ms
        self.idle_advance_ms = idle_advance_ms
        self._wall_ms = wall_ms
        self._latest: dict[Hashable, int] = {}
        self._arrived: dict[Hashable, float] = {}
        #: first (wall, event) observation, to estimate how fast event time moves
        self._first: tuple[float, int] | None = None

    def observe(self, stream: Hashable, ts_ms: int) -> None:
        now = self._wall_ms()
        if ts_ms >= self._latest.get(stream, ts_ms):
            self._latest[stream] = ts_ms
        self._arrived[stream] = now
        if self._first is None:
            self._first = (now, ts_ms)

    def marks(self, group: str | None = None) -> dict[Hashable, int]:
        """The latest event time per stream (of ``group``, streams being ``(group, n)``), to
        keep in a recovery snapshot: a clock is not Bytewax state."""
        if group is None:
            return dict(self._latest)
        return {s: ts for s, ts in self._latest.items() if isinstance(s, tuple) and s[0] == group}

    def mark(self, stream: Hashable) -> int | None:
        """The latest event time seen on ``stream`` (None before its first event)."""
        return self._latest.get(stream)

    def restore(self, marks: dict[Hashable, int]) -> None:
        """Take back marks from a recovery snapshot: each stream moves to the later of its
        own mark and the restored one (several keys restore the same stream). A restored
        stream counts as just heard from, so live timers wait ``idle_advance`` as after any
        event instead of jumping ahead by the time the flow was down."""
        now = self._wall_ms()
        for stream, ts_ms in marks.items():
            if ts_ms > self._latest.get(stream, ts_ms - 1):
                self._latest[stream] = ts_ms
            self._arrived.setdefault(stream, now)

    def watermark(self, stream: Hashable) -> int | None:
        """Event time up to which ``stream`` is complete, or None before its first event."""
        latest = self._latest.get(stream)
        if latest is None:
            return None
        mark = latest - self.grace_ms
        if self.idle_advance_ms is not None:
            silent = self._wall_ms() - self._arrived[stream] - self.idle_advance_ms
            if silent > 0:
                mark += int(silent)
        return mark

    def low_watermark(self, group: str) -> int | None:
        """Event time up to which *every* stream of ``group`` (streams are ``(group, n)``) is
        complete: the slowest partition decides, so records from several partitions can be
        taken in event-time order whatever their arrival order. No grace: within a partition
        the order is the producer's.

        While tailing, a partition silent for ``idle_advance`` holds nothing back (it has
        nothing in flight); when all are silent, event time moves on with the wall clock
        from the latest event seen.
        """
        streams = [s for s in self._latest if isinstance(s, tuple) and s[0] == group]
        if not streams:
            return None
        if self.idle_advance_ms is None:
            return min(self._latest[s] for s in streams)
        now = self._wall_ms()
        active = [s for s in streams if now - self._arrived[s] <= self.idle_advance_ms]
        if active:
            return min(self._latest[s] for s in active)
        last_arrival = max(self._arrived[s] for s in streams)
        silent = now - last_arrival - self.idle_advance_ms
        return max(self._latest[s] for s in streams) + max(0, int(silent))

    def latest(self) -> int | None:
        """The largest event time seen on any stream (at the end of a replay, the end)."""
        return max(self._latest.values(), default=None)

    def speed(self) -> float:
        """Event-time milliseconds per wall millisecond so far (at least 1)."""
        if self._first is None:
            return 1.0
        wall0, event0 = self._first
        elapsed = self._wall_ms() - wall0
        progressed = max(self._latest.values(), default=event0) - event0
        return max(1.0, progressed / elapsed) if elapsed > 0 else 1.0

    def wake_at(
        self, stream: Hashable, deadline_ms: int | None, *, group: bool = False
    ) -> datetime | None:
        """When to look at a timer again: when the stream's clock (with ``group``, the low
        watermark of the group named ``stream``) should have reached the deadline at the pace
        event time has been moving, within [MIN_WAIT_S, MAX_WAIT_S]."""
        if deadline_ms is None:
            return None
        mark = self.low_watermark(str(stream)) if group else self.watermark(stream)
        if mark is None:
            wait_s = MAX_WAIT_S
        else:
            wait_s = (deadline_ms - mark) / self.speed() / 1000
            if self.idle_advance_ms is not None and wait_s > 0:
                wait_s += self.idle_advance_ms / 1000
            wait_s = min(MAX_WAIT_S, max(MIN_WAIT_S, wait_s))
        return datetime.now(UTC) + timedelta(seconds=wait_s)


class WorkerClocks:
    """The clocks of one flow, by name, one set per worker thread (created on first use)."""

    def __init__(self, grace_ms: int, idle_advance_ms: int | None) -> None:
        self.grace_ms = grace_ms
        self.idle_advance_ms = idle_advance_ms
        self._local = WorkerLocal()

    def clock(self, name: str) -> EventClock:
        """The calling worker thread's clock called ``name``."""
        registry: dict[str, EventClock] | None = getattr(self._local, "clocks", None)
        if registry is None:
            registry = self._local.clocks = {}
        clock = registry.get(name)
        if clock is None:
            clock = registry[name] = EventClock(self.grace_ms, self.idle_advance_ms)
        return clock


class InputMarks:
    """The latest event time read of each input group (``events.resolved``, the stock
    inputs …), for every worker thread of the process."""

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, group: str, ts_ms: int | None) -> None:
        """A batch read up to ``ts_ms`` of ``group`` (also: a mark restored from a snapshot)."""
        if ts_ms is None:
            return
        with self._lock:
            if ts_ms > self._latest.get(group, ts_ms - 1):
                self._latest[group] = ts_ms

    def latest(self, group: str) -> int | None:
        with self._lock:
            return self._latest.get(group)


@dataclass(frozen=True, slots=True)
class ClockMarks:
    """What a key's recovery snapshot keeps of the clocks of its input group."""

    #: this worker's clock: the latest event time per stream of the group
    streams: dict[Hashable, int]
    #: the latest event time read of the group, by the whole process (``InputMarks``)
    read: int | None


class ReceiptWaits:
    """Where each location's receipts are read, and which sku × locations of a replay wait
    for them, for every worker thread of the process (``flows.rule_triggers``).

    In a replay a sku × location of a perishable sku takes a stock change only once its
    location's receipts have been read up to it (``domain.trigger_engine.LocationTriggers``).
    How far they have been read must reach the key *behind* the receipts themselves, or a
    receipt still in flight to the key's worker would be overtaken: so this registry does not
    answer the key; it tells the worker that reads the location's ``wms.movements``
    partition whom to send a ``ReceiptsRead`` mark after each batch of that partition, on
    the path the batch's receipts took. A mark sent there counts every receipt of the
    location read up to the end of the batch, as ``wms.movements`` is keyed by location, so a
    location's receipts are all in one partition, in the order they were produced.

    A location seen on more than one partition (a producer that did not key by location)
    is never said to be read: its keys wait for the end of the input, which is always safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: location → the wms.movements partitions its movements were read from
        self._partitions: dict[str, set[int]] = {}
        #: partition → the locations read from it
        self._locations: dict[int, set[str]] = {}
        #: partition → the sku × locations whose perishable receipts were read from it
        self._receiving: dict[int, set[tuple[str, str]]] = {}
        #: location → (sku, location) → event time of its earliest waiting stock change
        self._waiting: dict[str, dict[tuple[str, str], int]] = {}

    def located(self, location_id: str, partition: int, sku: str | None = None) -> None:
        """A movement of ``location_id`` (a perishable receipt of ``sku``) was read from
        ``partition``; noted by the reading worker before the batch's marks are made."""
        with self._lock:
            self._partitions.setdefault(location_id, set()).add(partition)
            self._locations.setdefault(partition, set()).add(location_id)
            if sku is not None:
                self._receiving.setdefault(partition, set()).add((sku, location_id))

    def wait(self, sku: str, location_id: str, since_ms: int) -> None:
        """The sku × location holds stock changes from ``since_ms`` on until its location's
        receipts are read up to them."""
        with self._lock:
            keys = self._waiting.setdefault(location_id, {})
            key = (sku, location_id)
            keys[key] = min(since_ms, keys.get(key, since_ms))

    def due(self, partition: int, read_ms: int, *, at_end: bool = False) -> list[tuple[str, str]]:
        """The sku × locations to send a mark that ``partition`` has been read up to
        ``read_ms``: those waiting for no later than that; at the end of the partition also
        every sku × location that received perishable goods from it (so none of them waits
        for the end of the whole input). Each wait is answered once; a key still holding
        changes afterwards waits again."""
        with self._lock:
            due: set[tuple[str, str]] = set()
            for location in self._locations.get(partition, ()):
                keys = self._waiting.get(location)
                if not keys or self._partitions.get(location) != {partition}:
                    continue
                ready = [key for key, since in keys.items() if since <= read_ms]
                for key in ready:
                    del keys[key]
                due.update(ready)
                if not keys:
                    del self._waiting[location]
            if at_end:
                due.update(
                    key
                    for key in self._receiving.get(partition, ())
                    if self._partitions.get(key[1]) == {partition}
                )
        return sorted(due)
