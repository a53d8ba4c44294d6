"""Event-time order across partitions: the release bound, the flow's low watermark, and a
stock shard that applies movements in event-time order however its inputs arrive."""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from base.config import Config
from connectors.reference_files import load_reference
from domain.events import Origin
from domain.pool import Bundle, FulfilmentPolicy, apply_bundle
from domain.progress import (
    END_OF_INPUT,
    EventTimeBuffer,
    InputProgress,
    PartitionReport,
)
from domain.reference import ReferenceData
from domain.stock import HOUR_MS, StockMovement, StockPolicy, apply_movement

T0 = 1_795_000_000_000
A = ("pos.sales", 0)
B = ("wms.movements", 0)


def report(key: tuple[str, int], latest: int | None, at_end: bool = False) -> PartitionReport:
    return PartitionReport(key[0], key[1], latest, at_end)


def test_nothing_is_released_before_every_partition_reported() -> None:
    progress = InputProgress(frozenset({A, B}))
    progress.report([report(A, T0 + 100)])
    assert progress.release_bound() is None
    assert progress.progress_ms is None
    progress.report([report(B, T0 + 10)])
    assert progress.release_bound() == T0 + 10  # the slowest partition decides
    assert progress.progress_ms == T0 + 10


def test_a_partition_at_its_end_holds_nothing_back() -> None:
    progress = InputProgress(frozenset({A, B}))
    progress.report([report(A, T0 + 100), report(B, T0 + 10, at_end=True)])
    assert progress.release_bound() == T0 + 100
    progress.report([report(A, T0 + 200, at_end=True)])
    assert progress.release_bound() == END_OF_INPUT
    assert progress.progress_ms == T0 + 200  # all at their end: the latest read anywhere


def test_an_empty_partition_at_its_end_counts_as_read() -> None:
    progress = InputProgress(frozenset({A, B}))
    progress.report([report(A, T0), report(B, None, at_end=True)])
    assert progress.release_bound() == T0


def test_the_watermark_never_goes_back() -> None:
    progress = InputProgress(frozenset({A, B}))
    progress.report([report(A, T0 + 100, at_end=True), report(B, T0 + 50, at_end=True)])
    assert progress.progress_ms == T0 + 100
    progress.report([report(B, T0 + 60)])  # B gets new data after its end
    assert progress.release_bound() == T0 + 60
    assert progress.progress_ms == T0 + 100


def test_a_snapshot_forgets_which_partitions_were_at_their_end() -> None:
    """After a restart a partition may hold new data: its source must say again that it is at
    its end before it stops holding the others back."""
    progress = InputProgress(frozenset({A, B}))
    progress.report([report(A, T0 + 100, at_end=True), report(B, T0 + 50)])
    restored = copy.deepcopy(progress)
    assert progress.release_bound() == T0 + 50
    assert restored.release_bound() == T0 + 50
    progress.report([report(B, T0 + 60, at_end=True)])
    restored.report([report(B, T0 + 60, at_end=True)])
    assert progress.release_bound() == END_OF_INPUT
    assert restored.release_bound() == T0 + 100  # A has not said it is at its end again


def test_buffer_releases_below_the_bound_in_event_time_then_id_order() -> None:
    buffer: EventTimeBuffer[str] = EventTimeBuffer()
    for ts, tie in [(5, "b"), (3, "z"), (5, "a"), (9, "c"), (5, "a")]:
        buffer.add(ts, tie, f"{ts}{tie}")
    assert buffer.release(None) == []
    assert buffer.release(5) == ["3z"]
    assert buffer.release(6) == ["5a", "5a", "5b"]
    assert buffer.release(END_OF_INPUT) == ["9c"]
    assert len(buffer) == 0


REFERENCE: ReferenceData = load_reference(Config())
SKU = sorted(REFERENCE.products)[0]
STORE = sorted(REFERENCE.locations)[0]
POLICY = StockPolicy(late_window_ms=48 * HOUR_MS, dedup_ms=24 * HOUR_MS)
ORIGIN = Origin("t", 0, 0, None)


def movement(n: int, kind: str, qty: int, ts: int) -> StockMovement:
    return StockMovement(f"e{n}#0", f"e{n}", ts, SKU, STORE, kind, qty, ORIGIN)


@st.composite
def two_topics(draw: st.DrawFn) -> tuple[list[StockMovement], list[StockMovement], int]:
    """Receipts on one partition and sales on another, each in event-time order, with a
    random batch size for reading them."""
    n_receipts = draw(st.integers(1, 15))
    n_sales = draw(st.integers(1, 30))
    times = draw(
        st.lists(
            st.integers(0, 40 * 24),
            min_size=n_receipts + n_sales,
            max_size=n_receipts + n_sales,
            unique=True,
        )
    )
    receipts = sorted(times[:n_receipts])
    sales = sorted(times[n_receipts:])
    r = [
        movement(i, "receipt", draw(st.integers(1, 9)), T0 + h * HOUR_MS)
        for i, h in enumerate(receipts)
    ]
    s = [
        movement(100 + i, "sale", draw(st.integers(1, 3)), T0 + h * HOUR_MS)
        for i, h in enumerate(sales)
    ]
    return r, s, draw(st.integers(1, 8))


def batches(key: tuple[str, int], items: list[StockMovement], size: int) -> list[Bundle]:
    """A partition read in batches: each bundle carries its report; the last says the end."""
    out = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        at_end = start + size >= len(items)
        out.append(Bundle(chunk, [], (report(key, chunk[-1].ts_ms, at_end),)))
    return out


@settings(max_examples=150, deadline=None)
@given(two_topics(), st.randoms(use_true_random=False))
def test_pool_publishes_the_positions_of_event_time_order(
    case: tuple[list[StockMovement], list[StockMovement], int], rng: random.Random
) -> None:
    """Whatever the interleaving of the two partitions' batches (one read entirely before the
    other, or anything between), the pool publishes exactly the positions of applying every
    movement in event-time order: same sequence of on-hand figures, nothing refused."""
    receipts, sales, size = case
    reference_state = None
    expected = []
    for m in sorted(receipts + sales, key=lambda m: m.ts_ms):
        reference_state, position = apply_movement(reference_state, m, POLICY)
        expected.append((position.movement_id, position.on_hand))  # type: ignore[union-attr]

    a, b = batches(A, receipts, size), batches(B, sales, size)
    arrival: list[Bundle] = []
    while a or b:  # a random merge that keeps each partition's own order
        source = a if (a and (not b or rng.random() < 0.5)) else b
        arrival.append(source.pop(0))
    if rng.random() < 0.3:  # or one topic read entirely before the other
        arrival = batches(B, sales, size) + batches(A, receipts, size)

    state = None
    published = []
    refused = []
    for bundle in arrival:
        state, outcome = apply_bundle(
            state, bundle, POLICY, FulfilmentPolicy(), REFERENCE, frozenset({A, B})
        )
        published += [(p.movement_id, p.on_hand) for p in outcome.positions]
        refused += outcome.refused
    assert not refused
    assert published == expected
