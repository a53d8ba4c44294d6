"""The order book: where each online order reserved its stock.

An ``order_cancelled`` event need not say where the order was to be fulfilled, so the flow
remembers, per order, the location and lines of its ``order_placed``. Orders are spread over
a fixed number of shards (``order_shard``) so that each shard can expire its old orders by
event time on its own: Bytewax state per order id could never be dropped without a later
event for that same order.

Out-of-order arrival is handled: a cancellation seen before its placement is remembered, and
the placement that follows reserves nothing.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

from flows.logic.events import ClickEvent
from flows.logic.stock import (
    PRUNE_EVERY_MS,
    StockMovement,
    line_movements,
    reservation_movements,
)


@dataclass(slots=True)
class OrderRecord:
    ts_ms: int
    location_id: str | None = None
    #: Skus the placement reserved; a cancellation releases exactly these.
    skus: tuple[str, ...] = ()
    placed_event_id: str | None = None
    #: The cancellation, kept so a placement that arrives after it still nets to zero.
    cancellation: ClickEvent | None = None


@dataclass(slots=True)
class OrderBook:
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    as_of_ms: int = 0
    next_prune_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> OrderBook:
        """Records are the only mutable parts (events are frozen): a cheap full copy for
        Bytewax's per-epoch snapshots."""
        return OrderBook(
            {oid: dataclasses.replace(rec) for oid, rec in self.orders.items()},
            self.as_of_ms,
            self.next_prune_ms,
        )


@dataclass(frozen=True, slots=True)
class OrderConflict:
    """A second, different ``order_placed`` for an order already placed."""

    event: ClickEvent
    error: str


def order_shard(order_id: str, shards: int) -> str:
    """Stable shard of an order id (crc32: the same in every process and Python version)."""
    return f"orders-{zlib.crc32(order_id.encode('utf-8')) % shards}"


def route_order_event(
    book: OrderBook | None, event: ClickEvent, ttl_ms: int
) -> tuple[OrderBook, list[StockMovement] | OrderConflict]:
    """Turn an ``order_placed``/``order_cancelled`` into reserve/release movements."""
    if book is None:
        book = OrderBook()
    order_id = event.order_id
    assert order_id is not None, "order events always carry an order_id"
    record = book.orders.get(order_id)
    movements: list[StockMovement] | OrderConflict = []
    if event.event_type == "order_placed":
        assert event.fulfillment is not None, "the decoder requires fulfillment on order_placed"
        if record is None:
            record = book.orders[order_id] = OrderRecord(event.ts_ms)
        if record.placed_event_id is None:
            record.placed_event_id = event.event_id
            record.location_id = event.fulfillment.location_id
            record.skus = tuple(dict.fromkeys(line.sku for line in event.lines))
            movements = reservation_movements(event, record.location_id, "reserve")
            if record.cancellation is not None:  # the cancellation came first
                movements += _releases(record, record.cancellation)
        elif record.placed_event_id != event.event_id:
            movements = OrderConflict(
                event,
                f"order {order_id!r} was already placed by event {record.placed_event_id!r}",
            )
    else:
        if record is None:
            record = book.orders[order_id] = OrderRecord(event.ts_ms)
        if record.cancellation is None:
            record.cancellation = event
            movements = _releases(record, event)
    book.as_of_ms = max(book.as_of_ms, event.ts_ms)
    if book.as_of_ms >= book.next_prune_ms:
        book.next_prune_ms = book.as_of_ms + PRUNE_EVERY_MS
        horizon = book.as_of_ms - ttl_ms
        book.orders = {oid: rec for oid, rec in book.orders.items() if rec.ts_ms >= horizon}
    return book, movements


def _releases(record: OrderRecord, cancellation: ClickEvent) -> list[StockMovement]:
    """Release every sku the placement reserved; nothing while the placement is unknown."""
    if record.location_id is None:
        return []
    return line_movements(
        cancellation.event_id,
        cancellation.ts_ms,
        record.location_id,
        "release",
        [(sku, 0) for sku in record.skus],
        cancellation.origin,
        cancellation.order_id,
    )
