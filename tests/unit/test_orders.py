"""The order book routes reservations and their releases, whatever the arrival order."""

from __future__ import annotations

from domain.events import ClickEvent, Fulfillment, OrderLine, Origin
from domain.orders import OrderConflict, route_order_event

ORIGIN = Origin("clickstream", 0, 0, b"a")
TTL = 30 * 24 * 3_600_000


def order_event(event_id: str, kind: str, ts: int, fulfillment: bool = True) -> ClickEvent:
    return ClickEvent(
        event_id,
        kind,
        ts,
        "a",
        "app",
        ORIGIN,
        order_id="o1",
        lines=(OrderLine("SKU1", 2, 1.0), OrderLine("SKU2", 1, 1.0), OrderLine("SKU1", 1, 1.0)),
        total=4.0,
        fulfillment=Fulfillment("store_pickup", "S1") if fulfillment else None,
    )


def test_placement_reserves_each_line_and_cancellation_releases_each_sku() -> None:
    book, placed = route_order_event(None, order_event("p", "order_placed", 1), TTL)
    assert isinstance(placed, list)
    assert [(m.sku, m.location_id, m.kind, m.qty) for m in placed] == [
        ("SKU1", "S1", "reserve", 2),
        ("SKU2", "S1", "reserve", 1),
        ("SKU1", "S1", "reserve", 1),
    ]
    book, cancelled = route_order_event(book, order_event("c", "order_cancelled", 2, False), TTL)
    assert isinstance(cancelled, list)
    assert [(m.sku, m.location_id, m.kind) for m in cancelled] == [
        ("SKU1", "S1", "release"),
        ("SKU2", "S1", "release"),
    ]


def test_cancellation_before_placement_nets_to_zero_when_the_placement_comes() -> None:
    book, early = route_order_event(None, order_event("c", "order_cancelled", 2, False), TTL)
    assert early == []
    _, late = route_order_event(book, order_event("p", "order_placed", 1), TTL)
    assert isinstance(late, list)
    assert [m.kind for m in late] == ["reserve", "reserve", "reserve", "release", "release"]


def test_replayed_placement_is_ignored_and_a_second_placement_is_a_conflict() -> None:
    book, _ = route_order_event(None, order_event("p", "order_placed", 1), TTL)
    book, replay = route_order_event(book, order_event("p", "order_placed", 1), TTL)
    assert replay == []
    _, conflict = route_order_event(book, order_event("p2", "order_placed", 3), TTL)
    assert isinstance(conflict, OrderConflict)


def test_old_orders_expire_by_event_time() -> None:
    book, _ = route_order_event(None, order_event("p", "order_placed", 1), TTL)
    other = ClickEvent(
        "x",
        "order_placed",
        TTL + 10**9,
        "a",
        "app",
        ORIGIN,
        order_id="o2",
        lines=(OrderLine("SKU1", 1, 1.0),),
        total=1.0,
        fulfillment=Fulfillment("delivery", "WH1"),
    )
    book, _ = route_order_event(book, other, TTL)
    assert set(book.orders) == {"o2"}
