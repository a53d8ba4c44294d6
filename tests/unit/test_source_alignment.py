"""Source alignment: who waits for whom (``connectors.kafka_source.ReadProgress``)."""

from __future__ import annotations

from connectors.kafka_source import ReadProgress

MIN = 60_000


def test_a_partition_ahead_of_one_catching_up_waits() -> None:
    progress = ReadProgress()
    progress.record("wms", 0, 100 * MIN, at_end=False)
    progress.record("click", 0, 10 * MIN, at_end=False)
    progress.backlog("click", 0, catching_up=True)
    assert progress.ahead_by("wms", 0) == 90 * MIN
    assert progress.ahead_by("click", 0) == 0  # the slowest never waits


def test_nobody_waits_for_a_partition_between_two_fetches() -> None:
    """Live, every partition keeps up: one that is not at its end only because a fetch is in
    flight holds nobody back, however far event time runs ahead (the benchmark's clock)."""
    progress = ReadProgress()
    progress.record("wms", 0, 100 * MIN, at_end=False)
    progress.record("click", 0, 10 * MIN, at_end=False)
    progress.backlog("click", 0, catching_up=False)
    assert progress.ahead_by("wms", 0) == 0


def test_a_partition_at_its_end_or_stopped_holds_nobody_back() -> None:
    progress = ReadProgress()
    progress.record("wms", 0, 100 * MIN, at_end=False)
    progress.record("click", 0, 10 * MIN, at_end=True)
    progress.backlog("click", 0, catching_up=True)
    assert progress.ahead_by("wms", 0) == 0
    progress.record("click", 0, 20 * MIN, at_end=False)
    assert progress.ahead_by("wms", 0) == 80 * MIN
    progress.forget("click", 0)
    assert progress.ahead_by("wms", 0) == 0
