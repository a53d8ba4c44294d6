"""The order book: where each online order reserved its stock.

An ``order_cancelled`` event need not say where the order was to be fulfilled, so the flow
remembers, per order, the location and lines of its ``order_placed``. The book is one state
(Bytewax state per order id could never be dropped without a later event for that same
order), fed a batch of order events at a time with the reports of the clickstream partitions
they came from; it expires old orders against the low watermark of those partitions, and
passes the reports on with the reservations it makes, so that the stock shards know how far
the order path has come (``domain.progress``).

Out-of-order arrival is handled: a cancellation seen before its placement is remembered, and
the placement that follows reserves nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from domain.events import ClickEvent
from domain.progress import InputProgress, Partition, PartitionReport
from domain.stock import (
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
    #: How far the clickstream partitions have been read (expiry counts back from it).
    progress: InputProgress = field(default_factory=InputProgress)

    def __deepcopy__(self, memo: dict[int, object]) -> OrderBook:
        """Records are the only mutable parts (events are frozen): a cheap full copy for
        Bytewax's per-epoch snapshots."""
        return OrderBook(
            {oid: dataclasses.replace(rec) for oid, rec in self.orders.items()},
            self.as_of_ms,
            self.next_prune_ms,
            self.progress.__deepcopy__(memo),
        )


@dataclass(frozen=True, slots=True)
class OrderBatch:
    """The order events of one Kafka batch and the reports of its clickstream partitions."""

    events: list[ClickEvent]
    reports: tuple[PartitionReport, ...]


@dataclass(frozen=True, slots=True)
class OrderConflict:
    """A second, different ``order_placed`` for an order already placed."""

    event: ClickEvent
    error: str


def route_order_batch(
    book: OrderBook | None,
    batch: OrderBatch,
    ttl_ms: int,
    expected: frozenset[Partition] = frozenset(),
) -> tuple[OrderBook, list[StockMovement], list[OrderConflict]]:
    """Reserve/release movements and refused placements of a batch of order events."""
    if book is None:
        book = OrderBook(progress=InputProgress(expected))
    if batch.reports:
        book.progress.report(batch.reports)
    movements: list[StockMovement] = []
    conflicts: list[OrderConflict] = []
    for event in batch.events:
        book, routed = route_order_event(book, event, ttl_ms)
        if isinstance(routed, OrderConflict):
            conflicts.append(routed)
        else:
            movements.extend(routed)
    return book, movements, conflicts


def route_order_event(
    book: OrderBook | None, event: ClickEvent, ttl_ms: int
) -> tuple[OrderBook, list[StockMovement] | OrderConflict]:
    """Turn an ``order_placed``/``order_cancelled`` into reserve/release movements.

    Old orders are forgotten ``ttl_ms`` behind the low watermark of the clickstream
    partitions (``book.progress``), or behind the latest order when no report has come."""
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
        tracked = book.progress.expected or book.progress.reported
        progress_ms = book.progress.progress_ms if tracked else book.as_of_ms
        if progress_ms is None:
            return book, movements
        horizon = progress_ms - ttl_ms
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
