"""Stock arithmetic of one sku × location (CONTRACT §2)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.events import Origin
from domain.stock import (
    DAY_MS,
    HOUR_MS,
    SalesLog,
    StockMovement,
    StockPolicy,
    StockPosition,
    StockState,
    TooLate,
    apply_movement,
    position_of,
)

ORIGIN = Origin("wms.movements", 0, 0, None)
T0 = 1_795_000_000_000
POLICY = StockPolicy()


def mv(n: int, kind: str, qty: int, ts: int = T0, order: str | None = None) -> StockMovement:
    return StockMovement(f"e{n}#0", f"e{n}", ts, "SKU1", "S1", kind, qty, ORIGIN, order)


def fold(movements: list[StockMovement], policy: StockPolicy = POLICY) -> tuple[StockState, list]:
    state: StockState | None = None
    outcomes = []
    for m in movements:
        state, outcome = apply_movement(state, m, policy)
        outcomes.append(outcome)
    assert state is not None
    return state, outcomes


def last_position(outcomes: list) -> StockPosition:
    return [o for o in outcomes if isinstance(o, StockPosition)][-1]


def test_receipt_sale_return_adjustment_and_transfers_move_on_hand() -> None:
    _, out = fold(
        [
            mv(1, "receipt", 10),
            mv(2, "sale", 3, T0 + 1),
            mv(3, "return", 1, T0 + 2),
            mv(4, "adjustment", -2, T0 + 3),
            mv(5, "transfer_out", 4, T0 + 4),
            mv(6, "transfer_in", 5, T0 + 5),
            mv(7, "shipment", 1, T0 + 6),
        ]
    )
    p = last_position(out)
    assert (p.on_hand, p.reserved, p.available) == (6, 0, 6)


def test_reservation_then_pickup_consumes_it_and_cancel_releases_the_rest() -> None:
    _, out = fold(
        [
            mv(1, "receipt", 10),
            mv(2, "reserve", 4, T0 + 1, order="o1"),
            mv(3, "reserve", 2, T0 + 2, order="o2"),
        ]
    )
    p = last_position(out)
    assert (p.on_hand, p.reserved, p.available) == (10, 6, 4)
    state, out = fold(
        [
            mv(1, "receipt", 10),
            mv(2, "reserve", 4, T0 + 1, order="o1"),
            mv(3, "reserve", 2, T0 + 2, order="o2"),
            mv(4, "sale", 3, T0 + 3, order="o1"),  # partial pickup of o1
            mv(5, "release", 0, T0 + 4, order="o1"),  # cancel the rest of o1
            mv(6, "shipment", 2, T0 + 5, order="o2"),  # o2 shipped
        ]
    )
    p = last_position(out)
    assert (p.on_hand, p.reserved, p.available) == (5, 0, 5)
    assert state.reserved == 0
    assert p.sold_24h == 5  # pickup and order shipment are sales


def test_available_may_go_negative_when_oversold() -> None:
    _, out = fold([mv(1, "receipt", 1), mv(2, "reserve", 3, T0 + 1, order="o")])
    assert last_position(out).available == -2


def test_movement_earlier_than_count_is_inside_it() -> None:
    _, out = fold(
        [mv(1, "receipt", 10, T0), mv(2, "stock_count", 7, T0 + 100), mv(3, "sale", 2, T0 + 50)]
    )  # arrives late, ts before the count
    assert last_position(out).on_hand == 7
    assert last_position(out).sold_24h == 2  # the sale still happened


def test_late_count_is_rebased_on_later_movements() -> None:
    _, out = fold(
        [mv(1, "receipt", 10, T0), mv(2, "sale", 2, T0 + 200), mv(3, "stock_count", 20, T0 + 100)]
    )  # count arrives after a later sale
    assert last_position(out).on_hand == 18


def test_older_count_is_superseded() -> None:
    _, out = fold([mv(1, "stock_count", 5, T0 + 100), mv(2, "stock_count", 9, T0)])
    assert last_position(out).on_hand == 5


def test_duplicate_has_no_effect_and_emits_nothing() -> None:
    _, out = fold([mv(1, "receipt", 10), mv(1, "receipt", 10)])
    assert out[1] is None


def test_event_time_windows_and_days_of_cover() -> None:
    _, out = fold(
        [
            mv(1, "receipt", 100, T0),
            mv(2, "sale", 4, T0 + 1000),
            mv(3, "sale", 6, T0 + 2 * HOUR_MS),
            mv(4, "receipt", 1, T0 + 2 * HOUR_MS + 10),
        ]
    )
    p = last_position(out)
    assert (p.sold_1h, p.sold_24h) == (6, 10)
    assert p.days_of_cover == 9.1  # 91 available / 10 sold in 24 h
    _, out = fold([mv(1, "receipt", 5)])
    assert last_position(out).days_of_cover is None
    _, out = fold([mv(1, "sale", 5, T0), mv(2, "receipt", 5, T0 + 25 * HOUR_MS)])
    assert last_position(out).sold_24h == 0  # the sale fell out of the window


def test_too_old_movement_is_refused_not_applied_twice() -> None:
    """Older than the dedup horizon behind the flow's low watermark: refused."""
    policy = StockPolicy(dedup_ms=HOUR_MS, late_window_ms=HOUR_MS)
    progress = T0 + 10 * HOUR_MS
    state, first = apply_movement(None, mv(1, "receipt", 5, progress), policy, progress)
    state, second = apply_movement(state, mv(2, "receipt", 5, T0), policy, progress)
    assert isinstance(first, StockPosition) and isinstance(second, TooLate)
    assert state.on_hand == 5


def test_lateness_counts_from_the_flow_not_from_the_position() -> None:
    """A position whose own latest event is days ahead still takes an older movement while the
    flow's low watermark (the slowest partition) has not passed it: during a replay another
    topic may simply be read faster."""
    policy = StockPolicy(dedup_ms=HOUR_MS, late_window_ms=HOUR_MS)
    ahead = T0 + 10 * HOUR_MS
    state, _ = apply_movement(None, mv(1, "receipt", 5, ahead), policy, T0)
    state, out = apply_movement(state, mv(2, "receipt", 5, T0), policy, T0)
    assert isinstance(out, StockPosition) and state.on_hand == 10
    state, out = apply_movement(state, mv(3, "stock_count", 4, T0 + HOUR_MS), policy, T0)
    assert isinstance(out, StockPosition)
    assert state.on_hand == 9  # the count as of T0+1h, plus the receipt after it


def test_ids_are_remembered_until_the_flow_passes_the_horizon() -> None:
    """Pruning counts back from the flow's low watermark too: a duplicate arriving from a
    slow partition is still recognised even though the position moved far ahead."""
    policy = StockPolicy(dedup_ms=HOUR_MS, late_window_ms=HOUR_MS)
    state, _ = apply_movement(None, mv(1, "receipt", 5, T0), policy, T0)
    for hour in range(2, 30):
        state, _ = apply_movement(state, mv(hour, "receipt", 1, T0 + hour * HOUR_MS), policy, T0)
    state, out = apply_movement(state, mv(1, "receipt", 5, T0), policy, T0)
    assert out is None  # a duplicate, not too late and not applied twice
    later = T0 + 40 * HOUR_MS
    state, _ = apply_movement(state, mv(99, "receipt", 1, later), policy, later)
    assert "e1#0" not in state.seen  # forgotten once the whole flow passed the horizon


KINDS = [
    "receipt",
    "sale",
    "return",
    "adjustment",
    "shipment",
    "transfer_out",
    "transfer_in",
    "stock_count",
    "reserve",
    "release",
]


@st.composite
def movement_lists(draw: st.DrawFn) -> list[StockMovement]:
    n = draw(st.integers(min_value=1, max_value=60))
    movements = []
    for i in range(n):
        kind = draw(st.sampled_from(KINDS))
        qty = draw(st.integers(min_value=1, max_value=20))
        if kind == "adjustment":
            qty *= draw(st.sampled_from([-1, 1]))
        if kind == "stock_count":
            qty = draw(st.integers(min_value=0, max_value=50))
        order = (
            draw(st.sampled_from(["o1", "o2", "o3"]))
            if kind in {"reserve", "release"}
            else (
                draw(st.sampled_from([None, "o1", "o2"])) if kind in {"sale", "shipment"} else None
            )
        )
        ts = T0 + draw(st.integers(min_value=0, max_value=30 * HOUR_MS))
        movements.append(
            StockMovement(f"e{i}#0", f"e{i}", ts, "SKU1", "S1", kind, qty, ORIGIN, order)
        )
    return movements


def figures(state: StockState) -> tuple:
    p = position_of(state, mv(0, "receipt", 1))
    return (
        p.on_hand,
        p.reserved,
        p.available,
        p.sold_1h,
        p.sold_24h,
        p.days_of_cover,
        p.as_of_ms,
        state.count_ts_ms,
    )


@settings(max_examples=300, deadline=None)
@given(movement_lists(), st.randoms(use_true_random=False))
def test_duplicates_injected_anywhere_change_nothing(
    movements: list[StockMovement], rnd: random.Random
) -> None:
    """The same list with duplicates injected anywhere ends in the same state."""
    clean, _ = fold(movements)
    noisy: list[StockMovement] = []
    for index, movement in enumerate(movements):
        noisy.append(movement)
        for _ in range(rnd.choice([0, 0, 1, 2])):
            noisy.append(movements[rnd.randint(0, index)])  # a replay of anything already seen
    dirty, _ = fold(noisy)
    assert len(noisy) >= len(movements)
    assert figures(dirty) == figures(clean)


def in_flow_order(movements: list[StockMovement]) -> list[StockMovement]:
    """Within one order, the order book always emits the reserve before the release."""
    result = list(movements)
    for order in {m.order_id for m in movements if m.kind in {"reserve", "release"}}:
        slots = [
            i
            for i, m in enumerate(result)
            if m.order_id == order and m.kind in {"reserve", "release"}
        ]
        ordered = sorted((result[i] for i in slots), key=lambda m: m.kind != "reserve")
        for i, m in zip(slots, ordered, strict=True):
            result[i] = m
    return result


@settings(max_examples=300, deadline=None)
@given(movement_lists(), st.randoms(use_true_random=False))
def test_arrival_order_does_not_change_the_result(
    movements: list[StockMovement], rnd: random.Random
) -> None:
    """Topics and partitions interleave arbitrarily: any arrival order ends the same."""
    first, _ = fold(in_flow_order(movements))
    shuffled = list(movements)
    rnd.shuffle(shuffled)
    second, _ = fold(in_flow_order(shuffled))
    assert figures(second) == figures(first)


def test_snapshot_copy_is_independent_of_the_live_state() -> None:
    import copy

    state, _ = fold(
        [mv(1, "receipt", 10), mv(2, "reserve", 3, T0 + 1, order="o1"), mv(3, "sale", 1, T0 + 2)]
    )
    snapshot = copy.deepcopy(state)
    apply_movement(state, mv(4, "sale", 1, T0 + 3, order="o1"), POLICY)
    apply_movement(state, mv(5, "reserve", 2, T0 + 4, order="o1"), POLICY)
    assert figures(snapshot) != figures(state)
    assert snapshot.reservations["o1"].reserved == 3 and snapshot.reservations["o1"].consumed == 0
    assert "e4#0" not in snapshot.seen and len(snapshot.sales) == 1


@settings(max_examples=300, deadline=None)
@given(
    sales=st.lists(
        st.tuples(st.integers(0, 3 * DAY_MS), st.integers(1, 50)), min_size=0, max_size=60
    ),
    cut=st.integers(0, 3 * DAY_MS),
    bounds=st.tuples(st.integers(-1, 3 * DAY_MS), st.integers(-1, 3 * DAY_MS)),
)
def test_sales_log_windows_equal_plain_sums(
    sales: list[tuple[int, int]], cut: int, bounds: tuple[int, int]
) -> None:
    """Running sums give what summing the raw sales gives, whatever the arrival order,
    including late sales inserted in place and after dropping the old ones."""
    log = SalesLog()
    for ts, units in sales:
        log.add(ts, units)
    after, until = bounds
    assert log.units(after, until) == sum(q for ts, q in sales if after < ts <= until)
    log.drop_until(cut)
    kept = [(ts, q) for ts, q in sales if ts > cut]
    assert len(log) == len(kept)
    assert log.units(after, until) == sum(q for ts, q in kept if after < ts <= until)
