"""stock_pool: one central pool of stock per sku × location (CONTRACT §2).

Wiring only; the arithmetic is in ``domain.stock``, ``domain.orders``,
``domain.stock_totals`` and ``domain.stock_shard``.

    read (clickstream orders, pos.sales, wms.movements) → decode a Kafka batch
      → bundle_movements: the batch's order events in one ``OrderBatch``, its movements
        grouped by stock shard, each group with the batch's partition reports (how far
        each partition is read)
      → order_book (one state) → reserve/release movements, grouped by stock shard, with
        the clickstream partitions' reports
      → key by stock shard (a crc32 of the sku) → stock_shard: buffers what is ahead of the
        slowest partition still being read and folds the rest in event-time order into
        positions (dedup, counts, windows) and sku totals of every location of its skus
      → stock_store (Redis ``stock:<sku>:<location>`` and totals, one pipeline per batch)
        + ``stock.changes``
      → segment_totals → stock gauges
      → dead letters: the decoder's rejections, order conflicts, movements too late

Every batch reports to every shard, even with nothing for it, and the order book passes the
clickstream's reports on: a shard applies a movement once every input partition has been
read past it (or to its end), whatever order the topics are read in (``domain.progress``).

Movements travel in bundles, not one by one: Bytewax's cost per item and step was most of
the flow's time (see the README's benchmark section). Step ids of the stateful steps
(``inputs``, ``order_book``, ``stock_shard``, ``segment_totals``) are part of the recovery
snapshots: keep them stable (snapshots of the per-item layout before bundles do not restore
into this one).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from base import topics
from base.config import Config, load_config
from base.flow_names import STOCK_POOL
from base.metrics import PROCESSING_LAG, STOCK_LOW, STOCK_STOCKOUTS, STOCK_UNITS
from base.units import DAY_MS
from connectors.decode import input_decoder
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from connectors.operators import FlowIO, dead_letters, decode, output, per_batch, read, rejections
from connectors.reference_files import load_reference
from connectors.streams import BatchSink, KafkaIO, event_rejection
from domain.events import (
    MOVEMENT_EVENT_TYPES,
    ORDER_EVENT_TYPES,
    POS_EVENT_TYPES,
    ClickEvent,
    InputEvent,
    MovementEvent,
    PosEvent,
    Rejection,
)
from domain.orders import OrderBatch, OrderBook, OrderConflict, route_order_batch
from domain.progress import Partition, PartitionReport, partitions_of
from domain.reference import ReferenceData
from domain.stock import (
    HOUR_MS,
    StockMovement,
    StockPolicy,
    StockPosition,
    TooLate,
    movement_of_wms,
    movements_of_pos,
)
from domain.stock_shard import (
    Bundle,
    ShardOutcome,
    ShardState,
    apply_bundle,
    apply_shares,
    stock_shard,
)
from domain.stock_totals import SegmentTotals
from state.interfaces import StockWriter, StoreFactory
from state.stock_store import StockStore

INPUTS = topics.INPUT_TOPICS
#: What stock_pool decodes in full: orders from the clickstream, every till and warehouse
#: event. Other clickstream events are checked up to their type and skipped (their bodies
#: are identity_stitch's to validate and dead-letter).
DECODED_TYPES = ORDER_EVENT_TYPES | POS_EVENT_TYPES | MOVEMENT_EVENT_TYPES


def policy_of(config: Config) -> StockPolicy:
    return StockPolicy(
        late_window_ms=int(config.stock.late_window_hours * HOUR_MS),
        dedup_ms=int(config.stock.dedup_hours * HOUR_MS),
        reservation_ttl_ms=int(config.stock.order_ttl_days * DAY_MS),
    )


def is_order_event(event: InputEvent) -> bool:
    return isinstance(event, ClickEvent) and event.event_type in ORDER_EVENT_TYPES


def is_stock_event(event: InputEvent) -> bool:
    return isinstance(event, PosEvent | MovementEvent)


def movements_of(event: InputEvent) -> list[StockMovement]:
    if isinstance(event, PosEvent):
        return movements_of_pos(event)
    assert isinstance(event, MovementEvent)
    return [movement_of_wms(event)]


def is_bundle(item: object) -> TypeGuard[Bundle]:
    return isinstance(item, Bundle)


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


def stock_changed_message(position: StockPosition, reference: ReferenceData) -> OutMessage:
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
        source=STOCK_POOL,
        subject=key,
        event_id=cloud_event_id("stock.changed", key, position.movement_id),
        time_ms=position.as_of_ms,
        data=data,
    )
    return OutMessage(key=key.encode(), value=value)


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


def bundle_movements(
    records: list[InputEvent],
    reports: list[PartitionReport],
    shard_of: Callable[[str], str],
    shard_keys: list[str],
) -> list[OrderBatch | Bundle]:
    """Sort one Kafka batch's valid events: the order events go to the order book in one
    ``OrderBatch`` with the reports of the batch's clickstream partitions; the movements of
    till receipts and warehouse events are grouped by stock shard, and every shard gets a
    ``Bundle`` with the reports of the batch's other partitions, movements or not.

    Clickstream events other than orders do not touch stock: the decoder already skipped
    them (``DECODED_TYPES``), and any that still come are dropped here.
    """
    click_reports = tuple(r for r in reports if r.topic == topics.CLICKSTREAM)
    stock_reports = tuple(r for r in reports if r.topic != topics.CLICKSTREAM)
    orders: list[ClickEvent] = []
    bundles: dict[str, list[StockMovement]] = {}
    for item in records:
        if is_order_event(item):
            orders.append(item)  # type: ignore[arg-type]
        elif is_stock_event(item):
            for movement in movements_of(item):
                shard = shard_of(movement.sku)
                group = bundles.get(shard)
                if group is None:
                    group = bundles[shard] = []
                group.append(movement)
    out: list[OrderBatch | Bundle] = []
    if orders or click_reports:
        out.append(OrderBatch(orders, click_reports))
    out.extend(shard_bundles(bundles, stock_reports, shard_keys))
    return out


def shard_bundles(
    movements: dict[str, list[StockMovement]],
    reports: tuple[PartitionReport, ...],
    shard_keys: list[str],
) -> list[Bundle]:
    """A bundle for every shard when there are reports to pass on, else for those with
    movements."""
    if not reports:
        return [Bundle(shard, group, ()) for shard, group in movements.items()]
    return [Bundle(shard, movements.get(shard, []), reports) for shard in shard_keys]


def route_orders(
    book: OrderBook | None,
    batch: OrderBatch,
    order_ttl_ms: int,
    expected_orders: frozenset[Partition],
    shard_of: Callable[[str], str],
    shard_keys: list[str],
) -> tuple[OrderBook, list[Bundle | Rejection]]:
    """Online orders reserve and release; the order book remembers where. Its movements go
    to their shards with the clickstream's reports (every shard hears of them), an order
    id placed twice to the dead letters."""
    book, movements, conflicts = route_order_batch(book, batch, order_ttl_ms, expected_orders)
    by_shard: dict[str, list[StockMovement]] = {}
    for movement in movements:
        by_shard.setdefault(shard_of(movement.sku), []).append(movement)
    out: list[Bundle | Rejection] = [conflict_rejection(c) for c in conflicts]
    out.extend(shard_bundles(by_shard, batch.reports, shard_keys))
    return book, out


def build(
    config: Config,
    *,
    until_idle: bool = False,
    reference: ReferenceData | None = None,
    io: FlowIO | None = None,
    stock_store: StoreFactory[StockWriter] | None = None,
) -> Dataflow:
    """The stock_pool dataflow for ``config``.

    ``io`` is where it reads and writes: Kafka by default (``until_idle`` stops it once its
    inputs drain), ``tests.inprocess.MemoryIO`` in the tests. Its input partitions
    (``io.partitions``, read from the broker on Kafka) are what every shard waits for before
    it applies anything. ``stock_store`` opens the pool's store once per worker: Redis by
    default (``state.stock_store.StockStore``)."""
    reference = reference if reference is not None else load_reference(config)
    io = io if io is not None else KafkaIO(config, until_idle=until_idle)
    open_store: StoreFactory[StockWriter] = (
        stock_store
        if stock_store is not None
        else functools.partial(StockStore.from_config, config, reference)
    )
    policy = policy_of(config)
    order_ttl_ms = policy.reservation_ttl_ms
    stock_shards = config.stock.stock_shards
    shard_keys = [f"stock-{i}" for i in range(stock_shards)]
    expected = partitions_of(io.partitions(INPUTS))
    expected_orders: frozenset[Partition] = frozenset(
        p for p in expected if p[0] == topics.CLICKSTREAM
    )
    shard_of = functools.lru_cache(maxsize=65_536)(lambda sku: stock_shard(sku, stock_shards))

    flow = Dataflow(STOCK_POOL)
    batches = decode(
        "decode",
        read("inputs", flow, io, INPUTS),
        config,
        STOCK_POOL,
        INPUTS,
        input_decoder(reference, only_types=DECODED_TYPES),
    )
    work = per_batch(
        "bundle_movements",
        batches,
        lambda batch: bundle_movements(batch.records, batch.reports, shard_of, shard_keys),
    )
    work_split = op.branch("bundles", work, is_bundle)

    # One state for the order book: it sees every clickstream partition's reports and passes
    # them on to every shard.
    routed = op.stateful_map(
        "order_book",
        op.key_on("key_order_book", work_split.falses, lambda _: "orders"),
        lambda book, batch: route_orders(
            book, cast(OrderBatch, batch), order_ttl_ms, expected_orders, shard_of, shard_keys
        ),
    )
    routed_items = op.flat_map("order_movements", routed, lambda kv: kv[1])
    order_split = op.branch("order_ok", routed_items, is_bundle)
    bundles = op.merge("all_bundles", work_split.trues, order_split.trues)

    def apply(state: ShardState | None, bundle: Bundle) -> tuple[ShardState, ShardOutcome]:
        return apply_bundle(state, bundle, policy, reference, expected)

    outcomes = op.map(
        "shard_outcome",
        op.stateful_map(
            "stock_shard", op.key_on("key_by_shard", bundles, lambda b: b.shard), apply
        ),
        lambda kv: kv[1],
    )

    def open_store_writer() -> tuple[Callable[[list[ShardOutcome]], None], Callable[[], None]]:
        store = open_store()
        lag = PROCESSING_LAG.labels(STOCK_POOL)

        def write(batch: list[ShardOutcome]) -> None:
            positions = [p for outcome in batch for p in outcome.positions]
            store.write(positions, [t for outcome in batch for t in outcome.totals])
            now_ms = time.time() * 1000
            for position in positions:
                lag.observe(max(0.0, (now_ms - position.as_of_ms) / 1000))

        return write, store.close

    op.output("stock_store", outcomes, BatchSink(open_store_writer))
    output(
        "stock_changes",
        io,
        topics.STOCK_CHANGES,
        op.flat_map(
            "encode_stock_changed",
            outcomes,
            lambda o: [stock_changed_message(p, reference) for p in o.positions],
        ),
    )

    # Totals per region × location type (gauges): one state for the process-wide gauges.
    segment_totals = op.map(
        "segment_totals_value",
        op.stateful_map(
            "segment_totals",
            op.key_on("key_segments", outcomes, lambda _: "segments"),
            lambda state, outcome: apply_shares(state, outcome.shares),
        ),
        lambda kv: kv[1],
    )
    op.output(
        "publish_stock_gauges",
        segment_totals,
        BatchSink(lambda: (lambda batch: publish_segments([t for ts in batch for t in ts]), _noop)),
    )

    refused = op.merge(
        "rejections",
        rejections("decode_rejections", batches),
        cast("Stream[Rejection]", order_split.falses),  # what is not a bundle is a conflict
        op.flat_map(
            "too_late", outcomes, lambda o: [too_late_rejection(late) for late in o.refused]
        ),
    )
    dead_letters("deadletter", io, STOCK_POOL, refused)
    return flow


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.stock_pool:flow`` builds from ``OMNI_CONFIG``/environment.

    Lazy, so importing this module (tests, the CLI) has no side effect.
    """
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
