"""The pool's fold (``domain.pool``): available-to-sell, in transit, sourcing decisions in
event-time order whatever the arrival order, racing orders, pickup tasks and their ends."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.events import ClickEvent, Fulfillment, MovementEvent, OrderLine, Origin, PosEvent
from domain.pool import Bundle, FulfilmentPolicy, PoolOutcome, PoolState, apply_bundle
from domain.progress import PartitionReport
from domain.reference import Location, Product, ReferenceData
from domain.stock import StockMovement, StockPolicy, movements_of_pos, movements_of_wms

T0 = 1_795_000_000_000
MIN = 60_000
REFERENCE = ReferenceData(
    locations={
        # Shanghai: a near warehouse, a far one, two stores
        "WH-NEAR": Location("WH-NEAR", "warehouse", "SH", "", 31.23, 121.47),
        "WH-FAR": Location("WH-FAR", "warehouse", "HZ", "", 30.27, 120.15),
        "ST-1": Location("ST-1", "store", "SH", "", 31.22, 121.45),
        "ST-2": Location("ST-2", "store", "SH", "", 31.24, 121.50),
    },
    products={
        "MILK": Product("MILK", "dairy", 9.9, 4, 2, None, safety_stock=2),
        "TEA": Product("TEA", "drinks", 5.0, 4, 2, None),
    },
)
POLICY = StockPolicy()
FULFILMENT = FulfilmentPolicy.of(REFERENCE, 120 * MIN, 12 * 60 * MIN, b"secret")
ORIGIN = Origin("wms.movements", 0, 0, None)
CLICK = ("clickstream", 0)
STOCK = ("wms.movements", 0)


def receipt(event_id: str, location: str, sku: str, qty: int, ts: int) -> list[StockMovement]:
    return movements_of_wms(MovementEvent(event_id, "receipt", ts, location, sku, qty, ORIGIN))


def transfer(
    event_id: str, kind: str, location: str, qty: int, ts: int, to: str | None = None
) -> list[StockMovement]:
    return movements_of_wms(
        MovementEvent(
            event_id, kind, ts, location, "TEA", qty, ORIGIN, transfer_id="TR1", to_location_id=to
        )
    )


def order(
    event_id: str,
    order_id: str,
    ts: int,
    lines: list[tuple[str, int]],
    kind: str = "delivery",
    location: str | None = None,
    at: tuple[float, float] | None = (31.23, 121.47),
    event_type: str = "order_placed",
) -> ClickEvent:
    lat, lon = at if at else (None, None)
    return ClickEvent(
        event_id,
        event_type,
        ts,
        "dev",
        "app",
        Origin("clickstream", 0, 0, b"dev"),
        order_id=order_id,
        lines=tuple(OrderLine(sku, qty, 1.0) for sku, qty in lines),
        total=1.0,
        fulfillment=Fulfillment(kind, location, lat, lon, "SH")
        if event_type == "order_placed"
        else None,
    )


def till(event_id: str, store: str, order_id: str, sku: str, qty: int, ts: int) -> list:
    return movements_of_pos(
        PosEvent(
            event_id,
            "sale",
            ts,
            store,
            "R1",
            (OrderLine(sku, qty, 1.0),),
            1.0,
            ORIGIN,
            order_id=order_id,
        )
    )


def fold(
    items: list[StockMovement | ClickEvent], state: PoolState | None = None
) -> tuple[PoolState, PoolOutcome]:
    """Everything in one bundle, both partitions read to their end (all is released)."""
    movements = [i for i in items if isinstance(i, StockMovement)]
    orders = [i for i in items if isinstance(i, ClickEvent)]
    end = max(i.ts_ms for i in items)
    reports = (PartitionReport(*CLICK, end, True), PartitionReport(*STOCK, end, True))
    return apply_bundle(state, Bundle(movements, orders, reports), POLICY, FULFILMENT, REFERENCE)


def test_available_to_sell_holds_back_the_safety_stock_and_never_goes_negative() -> None:
    state, out = fold(receipt("r1", "ST-1", "MILK", 5, T0))
    (p,) = out.positions
    assert (p.available, p.safety_stock, p.available_to_sell) == (5, 2, 3)
    state, out = fold([order("o1", "A", T0 + 1, [("MILK", 4)], "store_pickup", "ST-1")], state)
    (p,) = out.positions
    assert (p.available, p.available_to_sell) == (1, 0)
    assert state.available_to_sell("MILK", "ST-1") == 0
    assert out.totals[0].total.available_to_sell == 0


def test_in_transit_lasts_from_the_transfer_out_to_its_transfer_in() -> None:
    sent = transfer("t1", "transfer_out", "WH-NEAR", 4, T0 + 1, "ST-1")
    state, out = fold(receipt("r1", "WH-NEAR", "TEA", 10, T0) + sent)
    at_store = [p for p in out.positions if p.location_id == "ST-1"]
    assert [(p.on_hand, p.in_transit) for p in at_store] == [(0, 4)]
    assert state.positions["TEA:WH-NEAR"].on_hand == 6
    # a short delivery closes the transfer: nothing stays in transit
    state, out = fold(transfer("t2", "transfer_in", "ST-1", 3, T0 + 2), state)
    (p,) = out.positions
    assert (p.on_hand, p.in_transit) == (3, 0)
    # the same events again change nothing
    _, again = fold(transfer("t1", "transfer_out", "WH-NEAR", 4, T0 + 1, "ST-1"), state)
    assert again.positions == []


def test_in_transit_is_the_same_when_the_transfer_in_is_applied_first() -> None:
    """A clock skew between warehouse and store: the receipt at the store is stamped before
    the dispatch. Kept per transfer, the figure ends the same."""
    state, _ = fold(transfer("t2", "transfer_in", "ST-1", 4, T0))
    _, out = fold(transfer("t1", "transfer_out", "WH-NEAR", 4, T0 + 1, "ST-1"), state)
    assert {p.location_id: p.in_transit for p in out.positions} == {"WH-NEAR": 0, "ST-1": 0}


def stocked() -> list[StockMovement]:
    return receipt("r1", "WH-NEAR", "TEA", 3, T0) + receipt("r2", "WH-FAR", "TEA", 10, T0)


def test_the_nearest_location_covering_every_line_gets_the_order_and_reserves() -> None:
    state, out = fold([*stocked(), order("o1", "A", T0 + MIN, [("TEA", 2)])])
    (decision,) = out.sourced
    assert (decision.status, decision.location_id) == ("sourced", "WH-NEAR")
    assert decision.distance_km is not None and decision.distance_km < 1
    assert state.positions["TEA:WH-NEAR"].reserved == 2


def test_two_orders_racing_for_the_last_units_are_served_in_event_time_order() -> None:
    """The earlier order (by ts) takes the near warehouse's last units; the later one sees
    them reserved and goes to the far one — even when it arrived first."""
    first = order("o-early", "EARLY", T0 + 2 * MIN, [("TEA", 3)])
    second = order("o-late", "LATE", T0 + 3 * MIN, [("TEA", 3)])
    for items in ([*stocked(), first, second], [*stocked(), second, first]):
        _, out = fold(items)
        where = {d.order_id: d.location_id for d in out.sourced}
        assert where == {"EARLY": "WH-NEAR", "LATE": "WH-FAR"}


def test_an_order_no_single_location_can_ship_is_unfulfillable_and_reserves_nothing() -> None:
    state, out = fold([*stocked(), order("o1", "A", T0 + MIN, [("TEA", 11)])])
    (decision,) = out.sourced
    assert (decision.status, decision.location_id, decision.distance_km) == (
        "unfulfillable",
        None,
        None,
    )
    assert all(s.reserved == 0 for s in state.positions.values())
    # its cancellation releases nothing and breaks nothing
    _, out = fold(
        [order("c1", "A", T0 + 2 * MIN, [("TEA", 11)], event_type="order_cancelled")], state
    )
    assert out.positions == []


def test_stores_do_not_ship_online_by_default() -> None:
    _, out = fold([*receipt("r1", "ST-1", "TEA", 9, T0), order("o1", "A", T0 + 1, [("TEA", 1)])])
    assert out.sourced[0].status == "unfulfillable"


def test_a_covered_pickup_is_a_prep_task_closed_by_its_till_sale() -> None:
    state, out = fold(
        [
            *receipt("r1", "ST-1", "TEA", 5, T0),
            order("o1", "P1", T0 + MIN, [("TEA", 2)], "store_pickup", "ST-1"),
        ]
    )
    (task,) = out.tasks
    assert (task.kind, task.store_id, task.status) == ("pickup_prep", "ST-1", "open")
    assert len(task.pickup_code) == 6 and task.pickup_code.isdigit()
    assert task.due_ms == T0 + MIN + 120 * MIN
    assert out.open_tasks == {"pickup_prep": 1, "pickup_exception": 0}
    state, out = fold(till("s1", "ST-1", "P1", "TEA", 2, T0 + 30 * MIN), state)
    (done,) = out.tasks
    assert (done.status, done.done_ms, done.pickup_code) == (
        "done",
        T0 + 30 * MIN,
        task.pickup_code,
    )
    assert state.positions["TEA:ST-1"].on_hand == 3 and state.positions["TEA:ST-1"].reserved == 0
    assert out.open_tasks["pickup_prep"] == 0


def test_an_uncovered_pickup_is_an_exception_naming_the_store_that_has_it_and_a_transfer() -> None:
    state, out = fold(
        [
            *receipt("r1", "ST-1", "TEA", 1, T0),
            *receipt("r2", "ST-2", "TEA", 6, T0),
            order("o1", "P1", T0 + MIN, [("TEA", 3)], "store_pickup", "ST-1"),
        ]
    )
    (task,) = out.tasks
    assert (task.kind, task.alternative_location_id) == ("pickup_exception", "ST-2")
    (move,) = out.transfers
    assert (move.sku, move.store_id, move.suggested_qty, move.source_location_id) == (
        "TEA",
        "ST-1",
        2,
        "ST-2",
    )
    assert state.positions["TEA:ST-1"].reserved == 3  # the order stays with its store
    _, out = fold(
        [order("c1", "P1", T0 + 2 * MIN, [("TEA", 3)], event_type="order_cancelled")], state
    )
    assert [t.status for t in out.tasks] == ["cancelled"]


def test_an_overdue_pickup_is_counted_and_closed_tasks_leave_after_their_retention() -> None:
    state, out = fold(
        [
            *receipt("r1", "ST-1", "TEA", 5, T0),
            order("o1", "P1", T0, [("TEA", 1)], "store_pickup", "ST-1"),
        ]
    )
    state, out = fold(receipt("r2", "WH-NEAR", "TEA", 1, T0 + 3 * 60 * MIN), state)
    assert out.overdue_pickups == 1
    state, out = fold(till("s1", "ST-1", "P1", "TEA", 1, T0 + 4 * 60 * MIN), state)
    assert out.overdue_pickups == 0
    state, out = fold(receipt("r3", "WH-NEAR", "TEA", 1, T0 + 17 * 60 * MIN), state)
    assert [(r.store_id, r.task_id) for r in out.removed_tasks] == [("ST-1", "pickup:P1")]
    assert state.tasks == {}


def test_a_second_placement_of_an_order_is_a_conflict_and_a_replayed_one_nothing() -> None:
    placed = order("o1", "A", T0 + MIN, [("TEA", 1)])
    state, _ = fold([*stocked(), placed])
    _, again = fold([placed], state)
    assert again.sourced == [] and again.conflicts == [] and again.positions == []
    _, other = fold([order("o2", "A", T0 + 2 * MIN, [("TEA", 1)])], state)
    assert [c.event.event_id for c in other.conflicts] == ["o2"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6))
def test_decisions_do_not_depend_on_arrival_order_or_batching(seed: int, size: int) -> None:
    """Orders and movements read from two partitions in any interleaving and batch sizes:
    the decisions are those of the event-time fold."""
    rng = random.Random(seed)
    movements: list[StockMovement] = []
    orders: list[ClickEvent] = []
    for n in range(12):
        location = rng.choice(sorted(REFERENCE.locations))
        movements += receipt(f"r{n}", location, rng.choice(["TEA", "MILK"]), rng.randint(1, 5),
                             T0 + rng.randint(0, 60) * MIN)  # fmt: skip
    for n in range(10):
        lines = [(rng.choice(["TEA", "MILK"]), rng.randint(1, 3)) for _ in range(rng.randint(1, 2))]
        at = rng.choice([None, (31.2, 121.4), (30.3, 120.2)])
        orders.append(order(f"o{n}", f"O{n}", T0 + rng.randint(0, 60) * MIN, lines, at=at))
    _, reference = fold([*movements, *orders])
    expected = {d.order_id: (d.status, d.location_id) for d in reference.sourced}

    stock_items = sorted(movements, key=lambda m: m.ts_ms)  # each partition in its own order
    click_items = sorted(orders, key=lambda o: o.ts_ms)
    state: PoolState | None = None
    decided: dict[str, tuple[str, str | None]] = {}
    while stock_items or click_items:
        take_stock = bool(stock_items) and (not click_items or rng.random() < 0.5)
        part, key = (stock_items, STOCK) if take_stock else (click_items, CLICK)
        chunk, part[:] = part[:size], part[size:]
        report = PartitionReport(*key, chunk[-1].ts_ms, not part)
        bundle = (
            Bundle(chunk, [], (report,))  # type: ignore[arg-type]
            if take_stock
            else Bundle([], chunk, (report,))  # type: ignore[arg-type]
        )
        state, out = apply_bundle(
            state, bundle, POLICY, FULFILMENT, REFERENCE, frozenset({CLICK, STOCK})
        )
        decided.update((d.order_id, (d.status, d.location_id)) for d in out.sourced)
    assert decided == expected
