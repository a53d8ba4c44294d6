"""stock_pool: one central pool of stock per sku × location (CONTRACT §2).

Wiring only; the arithmetic is in ``flows.logic.stock``, ``flows.logic.orders`` and
``flows.logic.stock_totals``.

    inputs (clickstream orders, pos.sales, wms.movements)
      → decode (rejections → deadletter)
      → order events: key by order shard → order_book → reserve/release movements
      → till receipts and warehouse movements → movements
      → key by sku:location → stock_position (dedup, counts, windows)
      → Redis ``stock:<sku>:<location>`` + ``stock.changes``
      → key by sku → sku_totals → Redis totals
      → key by region|location type → segment_totals → stock gauges

Step ids are part of the recovery snapshots: keep them stable.
"""

from __future__ import annotations

import time
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow

from connectors import topics
from connectors.envelopes import cloud_event, cloud_event_id
from connectors.metrics import PROCESSING_LAG, STOCK_LOW, STOCK_STOCKOUTS, STOCK_UNITS
from connectors.streams import (
    BatchSink,
    deadletter_output,
    event_rejection,
    kafka_events,
    kafka_output,
)
from flows.logic.events import ClickEvent, InputEvent, MovementEvent, PosEvent, Rejection
from flows.logic.orders import OrderBook, OrderConflict, order_shard, route_order_event
from flows.logic.reference import ReferenceData
from flows.logic.stock import (
    HOUR_MS,
    StockMovement,
    StockPolicy,
    StockPosition,
    StockState,
    TooLate,
    apply_movement,
    movement_of_wms,
    movements_of_pos,
)
from flows.logic.stock_totals import (
    SegmentShare,
    SegmentState,
    SegmentTotals,
    SkuTotals,
    SkuTotalsState,
    update_segment,
    update_sku_totals,
)
from omnistream.config import Config, load_config
from omnistream.reference import load_reference
from state.stock_store import StockStore

FLOW = "stock_pool"
DAY_MS = 24 * HOUR_MS


def policy_of(config: Config) -> StockPolicy:
    return StockPolicy(
        late_window_ms=int(config.stock.late_window_hours * HOUR_MS),
        dedup_ms=int(config.stock.dedup_hours * HOUR_MS),
        reservation_ttl_ms=int(config.stock.order_ttl_days * DAY_MS),
    )


def is_order_event(event: InputEvent) -> bool:
    return isinstance(event, ClickEvent) and event.event_type in {"order_placed", "order_cancelled"}


def is_stock_event(event: InputEvent) -> bool:
    return isinstance(event, PosEvent | MovementEvent)


def movements_of(event: InputEvent) -> list[StockMovement]:
    if isinstance(event, PosEvent):
        return movements_of_pos(event)
    assert isinstance(event, MovementEvent)
    return [movement_of_wms(event)]


def conflict_rejection(conflict: OrderConflict) -> Rejection:
    e = conflict.event
    return event_rejection(
        "duplicate_order",
        conflict.error,
        e.origin,
        event_id=e.event_id,
        event_type=e.event_type,
        order_id=e.order_id,
        ts=e.ts_ms,
    )


def outcome_of(
    keyed: tuple[str, StockPosition | TooLate | None],
) -> StockPosition | TooLate | None:
    """None (a duplicate) is dropped by the ``filter_map`` that calls this."""
    return keyed[1]


def is_position(outcome: object) -> TypeGuard[StockPosition]:
    return isinstance(outcome, StockPosition)


def too_late_rejection(late: object) -> Rejection:
    assert isinstance(late, TooLate), "only refused movements reach the dead-letter branch"
    m = late.movement
    return event_rejection(
        "too_late",
        late.error,
        m.origin,
        event_id=m.event_id,
        kind=m.kind,
        sku=m.sku,
        location_id=m.location_id,
        qty=m.qty,
        ts=m.ts_ms,
    )


def stock_changed_message(
    position: StockPosition, reference: ReferenceData
) -> KafkaSinkMessage[bytes, bytes]:
    key = f"{position.sku}:{position.location_id}"
    data = {
        "sku": position.sku,
        "location_id": position.location_id,
        "region": reference.locations[position.location_id].region,
        "on_hand": position.on_hand,
        "reserved": position.reserved,
        "available": position.available,
        "sold_1h": position.sold_1h,
        "sold_24h": position.sold_24h,
        "days_of_cover": position.days_of_cover,
        "cause": position.cause,
    }
    value = cloud_event(
        event_type="omnistream.stock.changed",
        source=FLOW,
        subject=key,
        event_id=cloud_event_id("stock.changed", key, position.movement_id),
        time_ms=position.as_of_ms,
        data=data,
    )
    return KafkaSinkMessage(key=key.encode(), value=value)


def publish_segments(batch: list[SegmentTotals]) -> None:
    """Set the stock gauges of each region × location type to its latest absolute totals."""
    latest = {(t.region, t.location_type): t for t in batch}
    for labels, totals in latest.items():
        STOCK_UNITS.labels(*labels, "on_hand").set(totals.on_hand)
        STOCK_UNITS.labels(*labels, "reserved").set(totals.reserved)
        STOCK_UNITS.labels(*labels, "available").set(totals.available)
        STOCK_STOCKOUTS.labels(*labels).set(totals.stockouts)
        STOCK_LOW.labels(*labels).set(totals.low_stock)


def _noop() -> None:
    """Nothing to release when the gauge sink closes."""


def build(
    config: Config, *, until_idle: bool = False, reference: ReferenceData | None = None
) -> Dataflow:
    """The stock_pool dataflow for ``config``; ``until_idle`` stops it once inputs drain."""
    reference = reference if reference is not None else load_reference(config)
    policy = policy_of(config)
    order_ttl_ms = policy.reservation_ttl_ms
    shards = config.stock.order_shards

    flow = Dataflow(FLOW)
    events = kafka_events(
        "inputs", flow, config, FLOW, topics.INPUT_TOPICS, reference, until_idle=until_idle
    )

    # Online orders reserve and release; the order book remembers where.
    orders = op.filter("order_events", events.oks, is_order_event)
    keyed_orders = op.key_on(
        "key_by_order_shard", orders, lambda e: order_shard(getattr(e, "order_id", ""), shards)
    )

    def route(book: OrderBook | None, event: Any) -> tuple[OrderBook, Any]:
        return route_order_event(book, event, order_ttl_ms)

    routed = op.stateful_map("order_book", keyed_orders, route)
    routed_items = op.flat_map(
        "order_movements",
        routed,
        lambda kv: [conflict_rejection(kv[1])] if isinstance(kv[1], OrderConflict) else kv[1],
    )
    order_split = op.branch("order_ok", routed_items, lambda x: isinstance(x, StockMovement))

    stock_events = op.filter("stock_events", events.oks, is_stock_event)
    movements = op.merge(
        "all_movements", order_split.trues, op.flat_map("to_movements", stock_events, movements_of)
    )

    keyed = op.key_on("key_by_sku_location", movements, lambda m: m.key)

    def apply(
        state: StockState | None, movement: StockMovement
    ) -> tuple[StockState, StockPosition | TooLate | None]:
        return apply_movement(state, movement, policy)

    outcomes = op.filter_map(
        "drop_duplicates", op.stateful_map("stock_position", keyed, apply), outcome_of
    )
    outcome_split = op.branch("position_ok", outcomes, is_position)
    positions = outcome_split.trues

    def open_position_writer() -> tuple[Any, Any]:
        store = StockStore.from_config(config, reference)

        def write(batch: list[StockPosition]) -> None:
            store.write_positions(batch)
            now_ms = time.time() * 1000
            lag = PROCESSING_LAG.labels(FLOW)
            for position in batch:
                lag.observe(max(0.0, (now_ms - position.as_of_ms) / 1000))

        return write, store.close

    op.output("stock_store", positions, BatchSink(open_position_writer))
    kafka_output(
        "stock_changes",
        config,
        topics.STOCK_CHANGES,
        op.map("encode_stock_changed", positions, lambda p: stock_changed_message(p, reference)),
    )

    # Totals per sku (Redis) and per region × location type (gauges).
    def totals(
        state: SkuTotalsState | None, position: StockPosition
    ) -> tuple[SkuTotalsState, SkuTotals]:
        return update_sku_totals(state, position, reference)

    sku_totals = op.map(
        "sku_totals_value",
        op.stateful_map("sku_totals", op.key_on("key_by_sku", positions, lambda p: p.sku), totals),
        lambda kv: kv[1],
    )

    def open_totals_writer() -> tuple[Any, Any]:
        store = StockStore.from_config(config, reference)
        return store.write_totals, store.close

    op.output("stock_totals_store", sku_totals, BatchSink(open_totals_writer))

    shares = op.map("segment_shares", sku_totals, lambda t: (t.segment, t.sku, t.share))

    def segment(
        state: SegmentState | None, item: tuple[tuple[str, str], str, SegmentShare]
    ) -> tuple[SegmentState, SegmentTotals]:
        seg, sku, share = item
        return update_segment(state, seg, sku, share)

    segment_totals = op.map(
        "segment_totals_value",
        op.stateful_map(
            "segment_totals",
            op.key_on("key_by_segment", shares, lambda s: f"{s[0][0]}|{s[0][1]}"),
            segment,
        ),
        lambda kv: kv[1],
    )
    op.output("publish_stock_gauges", segment_totals, BatchSink(lambda: (publish_segments, _noop)))

    rejections = op.merge(
        "rejections",
        events.errs,
        order_split.falses,
        op.map("too_late", outcome_split.falses, too_late_rejection),
    )
    deadletter_output("deadletter", config, FLOW, rejections)
    return flow


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.stock_pool:flow`` builds from ``OMNI_CONFIG``/environment.

    Lazy, so importing this module (tests, the CLI) has no side effect.
    """
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
