"""stock_pool: one central pool of stock per sku × location (CONTRACT §2, §9) and the
fulfilment of online orders on it (CONTRACT §10).

Wiring only; the arithmetic and the decisions are in ``domain.pool`` (the fold),
``domain.stock`` (one position), ``domain.fulfilment`` (sourcing), ``domain.stock_totals``.

    read (clickstream orders, pos.sales, wms.movements) → decode a Kafka batch
      → bundle: the batch's movements and order events in one ``Bundle`` with the batch's
        partition reports (how far each partition is read)
      → stock_pool (one state): buffers what is ahead of the slowest partition still being
        read and folds the rest in event-time order: positions (dedup, counts, windows,
        in transit, available-to-sell), sku totals, orders (reserve, source, release) and
        store tasks (pickup_prep, pickup_exception, done, cancelled)
      → stock_store (Redis ``stock:<sku>:<location>``, totals and ``tasks:<store>``, one
        pipeline per batch) + ``stock.changes``, ``orders.sourced``, ``store.tasks``, and the
        transfers pickup exceptions ask for on ``triggers.replenishment``
      → segment_totals → stock gauges; task gauges
      → dead letters: the decoder's rejections, order conflicts, movements too late

Every batch reports to the pool, even with nothing for it: the pool applies a movement or an
order once every input partition has been read past it (or to its end), whatever order the
topics are read in (``domain.progress``), so sourcing decisions are a function of the input.

Why one state and not shards of skus: see ``domain.pool`` (an order's decision needs the
stock of all its skus at every location). Step ids of the stateful steps (``inputs``,
``stock_pool``, ``segment_totals``) are part of the recovery snapshots: keep them stable
(snapshots of the sharded layout before fulfilment do not restore into this one).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from base import topics
from base.config import Config, load_config
from base.flow_names import STOCK_POOL
from base.metrics import (
    PICKUPS_OVERDUE,
    PROCESSING_LAG,
    STOCK_LOW,
    STOCK_STOCKOUTS,
    STOCK_UNITS,
    STORE_TASKS_OPEN,
)
from base.units import DAY_MS, MINUTE_MS
from connectors.decode import input_decoder
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from connectors.fulfilment_io import sourced_message, task_message, task_record, transfer_message
from connectors.operators import (
    FlowIO,
    dead_letters,
    decode,
    keyed_map,
    output,
    per_batch,
    read,
    rejections,
)
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
from domain.pool import (
    Bundle,
    FulfilmentPolicy,
    OrderConflict,
    PoolOutcome,
    PoolState,
    apply_bundle,
)
from domain.progress import PartitionReport, partitions_of
from domain.reference import ReferenceData
from domain.stock import (
    HOUR_MS,
    StockMovement,
    StockPolicy,
    StockPosition,
    TooLate,
    movements_of_pos,
    movements_of_wms,
)
from domain.stock_totals import SegmentTotals, apply_shares
from state.interfaces import StockWriter, StoreFactory, TaskWrite
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


def fulfilment_policy_of(config: Config, reference: ReferenceData) -> FulfilmentPolicy:
    return FulfilmentPolicy.of(
        reference,
        int(config.fulfilment.pickup_prep_minutes * MINUTE_MS),
        int(config.fulfilment.task_retention_hours * HOUR_MS),
        config.pii.key.encode("utf-8"),
    )


def movements_of(event: InputEvent) -> list[StockMovement]:
    if isinstance(event, PosEvent):
        return movements_of_pos(event)
    assert isinstance(event, MovementEvent)
    return movements_of_wms(event)


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
        "safety_stock": position.safety_stock,
        "in_transit": position.in_transit,
        "available_to_sell": position.available_to_sell,
        "sold_1h": position.sold_1h,
        "sold_24h": position.sold_24h,
        "days_of_cover": position.days_of_cover,
        "cause": position.cause,
        "sold": position.sold,
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
        STOCK_UNITS.labels(*labels, "available_to_sell").set(totals.available_to_sell)
        STOCK_UNITS.labels(*labels, "in_transit").set(totals.in_transit)
        STOCK_STOCKOUTS.labels(*labels).set(totals.stockouts)
        STOCK_LOW.labels(*labels).set(totals.low_stock)


def _noop() -> None:
    """Nothing to release when the gauge sink closes."""


def publish_tasks(batch: list[PoolOutcome]) -> None:
    """Open tasks by kind and overdue pickups, as of the latest outcome (absolute)."""
    if not batch:
        return
    last = batch[-1]
    for kind, count in last.open_tasks.items():
        STORE_TASKS_OPEN.labels(kind).set(count)
    PICKUPS_OVERDUE.set(last.overdue_pickups)


def pool_bundle(records: list[InputEvent], reports: list[PartitionReport]) -> list[Bundle]:
    """One Kafka batch's valid events as one bundle: the order events, and the movements of
    till receipts and warehouse events. Clickstream events other than orders do not touch
    stock: the decoder already skipped them (``DECODED_TYPES``), and any that still come are
    dropped here."""
    orders: list[ClickEvent] = []
    movements: list[StockMovement] = []
    for item in records:
        if is_order_event(item):
            orders.append(item)  # type: ignore[arg-type]
        elif is_stock_event(item):
            movements.extend(movements_of(item))
    if not orders and not movements and not reports:
        return []
    return [Bundle(movements, orders, tuple(reports))]


def fulfilment_messages(outcome: PoolOutcome, topic_of: Callable[[str], str]) -> list[OutMessage]:
    """The outcome's decisions, tasks and transfers, each addressed to its topic."""
    now_ms = int(time.time() * 1000)
    out: list[OutMessage] = []
    for order in outcome.sourced:
        out.append(sourced_message(order, now_ms)._replace(topic=topic_of(topics.ORDERS_SOURCED)))
    for task in outcome.tasks:
        out.append(task_message(task, now_ms)._replace(topic=topic_of(topics.STORE_TASKS)))
    for transfer in outcome.transfers:
        out.append(
            transfer_message(transfer, now_ms)._replace(
                topic=topic_of(topics.TRIGGERS_REPLENISHMENT)
            )
        )
    return out


def task_writes(outcome: PoolOutcome) -> list[TaskWrite]:
    writes = [TaskWrite(task.store_id, task.task_id, task_record(task)) for task in outcome.tasks]
    writes.extend(TaskWrite(r.store_id, r.task_id, None) for r in outcome.removed_tasks)
    return writes


def build(
    config: Config,
    *,
    until_idle: bool = False,
    reference: ReferenceData | None = None,
    io: FlowIO | None = None,
    stock_store: StoreFactory[StockWriter] | None = None,
    snapshots: bool = True,
) -> Dataflow:
    """The stock_pool dataflow for ``config``.

    ``io`` is where it reads and writes: Kafka by default (``until_idle`` stops it once its
    inputs drain), ``tests.inprocess.MemoryIO`` in the tests. Its input partitions
    (``io.partitions``, read from the broker on Kafka) are what the pool waits for before
    it applies anything. ``stock_store`` opens the pool's store once per worker: Redis by
    default (``state.stock_store.StockStore``). ``snapshots=False``: a run without recovery,
    whose pool is never snapshotted (``connectors.operators.keyed_map``)."""
    reference = reference if reference is not None else load_reference(config)
    io = io if io is not None else KafkaIO(config, until_idle=until_idle)
    open_store: StoreFactory[StockWriter] = (
        stock_store
        if stock_store is not None
        else functools.partial(StockStore.from_config, config, reference)
    )
    policy = policy_of(config)
    fulfilment = fulfilment_policy_of(config, reference)
    expected = partitions_of(io.partitions(INPUTS))

    flow = Dataflow(STOCK_POOL)
    batches = decode(
        "decode",
        read("inputs", flow, io, INPUTS),
        config,
        STOCK_POOL,
        INPUTS,
        input_decoder(reference, only_types=DECODED_TYPES),
    )
    bundles = per_batch("bundle", batches, lambda batch: pool_bundle(batch.records, batch.reports))

    def apply(state: PoolState | None, bundle: Bundle) -> tuple[PoolState, PoolOutcome]:
        return apply_bundle(state, bundle, policy, fulfilment, reference, expected)

    outcomes = op.map(
        "pool_outcome",
        keyed_map(
            "stock_pool",
            op.key_on("key_pool", bundles, lambda _: "pool"),
            apply,
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )

    def open_store_writer() -> tuple[Callable[[list[PoolOutcome]], None], Callable[[], None]]:
        store = open_store()
        lag = PROCESSING_LAG.labels(STOCK_POOL)

        def write(batch: list[PoolOutcome]) -> None:
            now_ms = time.time() * 1000
            positions = [p for outcome in batch for p in outcome.positions]
            tasks = [t for outcome in batch for t in task_writes(outcome)]
            store.write(positions, [t for outcome in batch for t in outcome.totals], tasks)
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
    output(
        "fulfilment",
        io,
        None,
        op.flat_map("encode_fulfilment", outcomes, lambda o: fulfilment_messages(o, config.topic)),
    )

    # Totals per region × location type (gauges): one state for the process-wide gauges.
    segment_totals = op.map(
        "segment_totals_value",
        keyed_map(
            "segment_totals",
            op.key_on("key_segments", outcomes, lambda _: "segments"),
            lambda state, outcome: apply_shares(state, outcome.shares),
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )
    op.output(
        "publish_stock_gauges",
        segment_totals,
        BatchSink(lambda: (lambda batch: publish_segments([t for ts in batch for t in ts]), _noop)),
    )
    op.output("publish_task_gauges", outcomes, BatchSink(lambda: (publish_tasks, _noop)))

    refused = op.merge(
        "rejections",
        rejections("decode_rejections", batches),
        op.flat_map(
            "order_conflicts", outcomes, lambda o: [conflict_rejection(c) for c in o.conflicts]
        ),
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
