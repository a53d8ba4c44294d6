"""Event-time clocks of rule_triggers: watermarks, idle advance, pace and wake-up times."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from connectors.event_clock import (
    MAX_WAIT_S,
    MIN_WAIT_S,
    EventClock,
    InputMarks,
    ReceiptWaits,
    WorkerClocks,
)

T0 = 1_795_313_730_000  # an event time in November 2026
#: Slack for the real ``datetime.now`` read inside ``wake_at`` and around it.
TOLERANCE = timedelta(seconds=0.5)


class FakeWall:
    """A wall clock in milliseconds that only moves when told to."""

    def __init__(self, start_ms: float = 1_000_000.0) -> None:
        self.now_ms = start_ms

    def __call__(self) -> float:
        return self.now_ms

    def advance(self, ms: float) -> None:
        self.now_ms += ms


def make_clock(
    grace_ms: int = 500, idle_advance_ms: int | None = None
) -> tuple[EventClock, FakeWall]:
    wall = FakeWall()
    return EventClock(grace_ms, idle_advance_ms, wall_ms=wall), wall


def assert_wakes_after(result: datetime | None, before: datetime, seconds: float) -> None:
    after = datetime.now(UTC)
    assert result is not None
    wait = timedelta(seconds=seconds)
    assert before + wait - TOLERANCE <= result <= after + wait + TOLERANCE


def test_no_watermark_before_the_first_event() -> None:
    clock, _ = make_clock()
    assert clock.watermark(0) is None
    assert clock.latest() is None
    clock.observe(0, T0)
    assert clock.watermark(1) is None  # another stream has seen nothing yet


def test_watermark_is_the_latest_event_time_minus_grace_per_stream() -> None:
    clock, _ = make_clock(grace_ms=500)
    clock.observe(0, T0)
    clock.observe(0, T0 + 2_000)
    clock.observe(1, T0 + 60_000)
    assert clock.watermark(0) == T0 + 2_000 - 500
    assert clock.watermark(1) == T0 + 60_000 - 500  # streams do not share a clock
    assert clock.latest() == T0 + 60_000


def test_an_older_event_does_not_move_the_watermark_back() -> None:
    clock, _ = make_clock(grace_ms=500)
    clock.observe("s", T0 + 10_000)
    clock.observe("s", T0)  # late, out of order
    assert clock.watermark("s") == T0 + 10_000 - 500
    clock.observe("s", T0 + 10_001)
    assert clock.watermark("s") == T0 + 10_001 - 500


def test_without_idle_advance_the_wall_clock_does_not_move_event_time() -> None:
    clock, wall = make_clock(grace_ms=500, idle_advance_ms=None)
    clock.observe("s", T0)
    wall.advance(3_600_000)  # an hour of silence
    assert clock.watermark("s") == T0 - 500


def test_a_silent_stream_moves_on_with_the_wall_clock_after_idle_advance() -> None:
    clock, wall = make_clock(grace_ms=500, idle_advance_ms=1_000)
    clock.observe("s", T0)
    wall.advance(1_000)
    assert clock.watermark("s") == T0 - 500  # silent exactly idle_advance: not yet
    wall.advance(2_000)  # 3000 ms of silence in all
    assert clock.watermark("s") == T0 - 500 + 2_000
    clock.observe("other", T0)  # another stream's event does not end this silence
    assert clock.watermark("s") == T0 - 500 + 2_000
    clock.observe("s", T0 + 100)  # a new event on the stream resets its silence
    assert clock.watermark("s") == T0 + 100 - 500
    wall.advance(1_500)
    assert clock.watermark("s") == T0 + 100 - 500 + 500


def test_speed_is_at_least_one_and_measures_fast_replay() -> None:
    clock, wall = make_clock()
    assert clock.speed() == 1.0  # nothing seen yet
    clock.observe("s", T0)
    assert clock.speed() == 1.0  # no wall time elapsed
    wall.advance(10)
    clock.observe("s", T0 + 10_000)  # ten seconds of events in ten wall milliseconds
    assert clock.speed() == pytest.approx(1_000.0)


def test_speed_never_drops_below_one_when_event_time_is_slow() -> None:
    clock, wall = make_clock()
    clock.observe("s", T0)
    wall.advance(10_000)
    clock.observe("s", T0 + 100)
    assert clock.speed() == 1.0


def test_wake_at_is_none_without_a_deadline() -> None:
    clock, _ = make_clock()
    clock.observe("s", T0)
    assert clock.wake_at("s", None) is None


def test_wake_at_waits_the_longest_for_a_stream_without_events() -> None:
    clock, _ = make_clock()
    before = datetime.now(UTC)
    assert_wakes_after(clock.wake_at("s", T0), before, MAX_WAIT_S)


def test_wake_at_stays_within_the_minimum_and_maximum_wait() -> None:
    clock, _ = make_clock(grace_ms=0)
    clock.observe("s", T0)
    before = datetime.now(UTC)
    assert_wakes_after(clock.wake_at("s", T0 - 60_000), before, MIN_WAIT_S)  # already due
    before = datetime.now(UTC)
    assert_wakes_after(clock.wake_at("s", T0 + 86_400_000), before, MAX_WAIT_S)  # a day away
    before = datetime.now(UTC)
    assert_wakes_after(clock.wake_at("s", T0 + 5_000), before, 5.0)  # at real-time pace


def test_wake_at_is_short_when_event_time_runs_fast() -> None:
    clock, wall = make_clock(grace_ms=0)
    clock.observe("s", T0)
    wall.advance(10)
    clock.observe("s", T0 + 10_000)  # event time runs 1000x faster than the wall
    deadline = T0 + 10_000 + 1_000_000  # 1000 s of event time ahead
    before = datetime.now(UTC)
    assert_wakes_after(clock.wake_at("s", deadline), before, 1.0)  # capped at 30 s otherwise


def test_wake_at_adds_the_idle_advance_while_tailing() -> None:
    clock, _ = make_clock(grace_ms=0, idle_advance_ms=2_000)
    clock.observe("s", T0)
    before = datetime.now(UTC)
    assert_wakes_after(clock.wake_at("s", T0 + 3_000), before, 3.0 + 2.0)


def test_low_watermark_waits_for_the_slowest_partition() -> None:
    clock, _ = make_clock(grace_ms=500)
    assert clock.low_watermark("events") is None
    clock.observe(("events", 0), T0 + 5_000)
    clock.observe(("events", 1), T0 + 1_000)
    clock.observe(("other", 0), T0)  # another group does not hold this one back
    clock.observe("events", T0 - 99_000)  # nor does a plain stream of the same name
    assert clock.low_watermark("events") == T0 + 1_000  # no grace
    before = datetime.now(UTC)
    result = clock.wake_at("events", T0 + 1_000 + 4_000, group=True)
    assert_wakes_after(result, before, 4.0)


def test_low_watermark_skips_silent_partitions_and_moves_on_when_all_are_silent() -> None:
    clock, wall = make_clock(idle_advance_ms=1_000)
    clock.observe(("events", 0), T0 + 1_000)
    wall.advance(2_000)
    clock.observe(("events", 1), T0 + 5_000)
    # partition 0 has been silent for 2 s (> idle_advance): it holds nothing back
    assert clock.low_watermark("events") == T0 + 5_000
    wall.advance(4_000)  # both silent; the latest arrival was 4 s ago
    assert clock.low_watermark("events") == T0 + 5_000 + 3_000


def test_clocks_are_one_per_name_and_per_thread_and_per_flow() -> None:
    flow = WorkerClocks(500, None)
    mine = flow.clock("a")
    assert flow.clock("a") is mine
    assert flow.clock("b") is not mine
    assert mine.grace_ms == 500
    assert mine.idle_advance_ms is None
    # Another flow built in the same process (a test after another) has clocks of its own.
    assert WorkerClocks(500, None).clock("a") is not mine
    theirs: list[EventClock] = []
    worker = threading.Thread(target=lambda: theirs.extend(flow.clock("a") for _ in range(2)))
    worker.start()
    worker.join()
    assert len(theirs) == 2
    assert theirs[0] is theirs[1]  # the same within the other thread
    assert theirs[0] is not mine  # but not the calling thread's clock


def test_input_marks_are_shared_by_every_thread_and_only_move_forward() -> None:
    """The end of a replay's input is the latest event time any worker read."""
    marks = InputMarks()
    assert marks.latest("resolved") is None
    readers = [
        threading.Thread(target=lambda ts=ts: marks.note("resolved", ts))
        for ts in (T0 + 5, T0 + 9, T0 + 1)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    marks.note("resolved", None)  # a batch with nothing of the group
    marks.note("resolved", T0)  # a snapshot restored after later reads
    assert marks.latest("resolved") == T0 + 9
    assert marks.latest("stock") is None


def test_marks_restore_into_a_fresh_clock_taking_the_latest_of_each_stream() -> None:
    """A clock is not Bytewax state: keys carry its marks in their snapshots and a resumed
    process restores them (several keys restore the same stream; the latest counts)."""
    clock, _ = make_clock(grace_ms=500)
    clock.observe(("stock", 0), T0)
    clock.observe(("stock", 1), T0 + 9_000)
    clock.observe(("views", 0), T0 + 1)
    assert clock.marks("stock") == {("stock", 0): T0, ("stock", 1): T0 + 9_000}
    assert clock.mark(("stock", 1)) == T0 + 9_000
    assert clock.mark(("stock", 7)) is None

    resumed, _ = make_clock(grace_ms=500)
    resumed.restore({("stock", 0): T0 + 3_000})  # a key snapshotted later …
    resumed.restore(clock.marks("stock"))  # … and one snapshotted earlier
    assert resumed.marks() == {("stock", 0): T0 + 3_000, ("stock", 1): T0 + 9_000}
    assert resumed.latest() == T0 + 9_000
    assert resumed.low_watermark("stock") == T0 + 3_000
    resumed.observe(("stock", 0), T0 + 1_000)  # replayed events do not move it back
    assert resumed.mark(("stock", 0)) == T0 + 3_000


def test_a_restored_stream_counts_as_just_heard_from_while_tailing() -> None:
    clock, wall = make_clock(grace_ms=500, idle_advance_ms=500)
    clock.restore({0: T0})
    assert clock.watermark(0) == T0 - 500  # no jump by the time the flow was down
    wall.advance(1_500)
    assert clock.watermark(0) == T0 - 500 + 1_000


def test_a_wait_for_receipts_is_answered_once_by_the_partition_of_its_location() -> None:
    """The reader of a location's ``wms.movements`` partition is told whom to send a mark
    after its batch: the keys of that location waiting for no later than what it has read."""
    waits = ReceiptWaits()
    waits.located("ST-1", 2)
    waits.wait("MILK", "ST-1", T0 + 5_000)
    waits.wait("MILK", "ST-1", T0 + 1_000)  # an earlier held change: the earliest counts
    waits.wait("EGGS", "ST-1", T0 + 9_000)
    assert waits.due(1, T0 + 60_000) == []  # another partition says nothing of ST-1
    assert waits.due(2, T0 + 999) == []
    assert waits.due(2, T0 + 1_000) == [("MILK", "ST-1")]
    assert waits.due(2, T0 + 1_000) == []  # answered once
    assert waits.due(2, T0 + 60_000) == [("EGGS", "ST-1")]


def test_a_location_not_yet_read_or_read_from_two_partitions_waits_for_the_end() -> None:
    waits = ReceiptWaits()
    waits.wait("MILK", "ST-1", T0)
    assert waits.due(0, T0 + 60_000) == []  # no movement of ST-1 read anywhere yet
    waits.located("ST-1", 0)
    waits.located("ST-1", 3)  # its receipts may be behind on the other partition
    assert waits.due(0, T0 + 60_000) == [] and waits.due(3, T0 + 60_000) == []
    assert waits.due(0, 2**62, at_end=True) == []


def test_the_end_of_a_partition_marks_every_key_that_received_perishables_from_it() -> None:
    waits = ReceiptWaits()
    waits.located("ST-1", 1, "MILK")
    waits.located("ST-2", 1, "EGGS")
    waits.located("ST-2", 1)  # a movement that is no perishable receipt
    waits.located("ST-3", 0, "MILK")
    assert waits.due(1, T0) == []  # nobody waits
    assert waits.due(1, 2**62, at_end=True) == [("EGGS", "ST-2"), ("MILK", "ST-1")]
