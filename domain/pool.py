"""The central stock pool: every position, the online orders and the store tasks, in one
event-time-ordered fold.

Why one state, not shards of skus: an order is a decision over the stock of several skus at
many locations (CONTRACT §10: the nearest location whose available-to-sell covers *every*
line; a store covers a pickup only if it holds every line). The decision must see every
movement and every earlier decision before it, and its reservation must be in place before
the next order is decided, whatever order the partitions are read in. A dataflow has no
cycles, so the state that decides must be the state that holds the stock: the pool is one
keyed state, fed one ``Bundle`` per Kafka batch (see the README's benchmark section for what
a bundle costs).

Order: the pool buffers what is ahead of the release bound (``domain.progress``) and folds the
rest oldest first — movements by ``(ts, movement id)``, orders by ``(ts, event id)``. So a
decision sees exactly the movements and orders of the input with an earlier ``(ts, id)``; two
orders racing for the last units are served in event-time order, and the later one goes
elsewhere or is unfulfillable. A replay of the same input with fresh state decides the same,
with any number of workers.

What an order does when it is folded:

- ``order_placed`` for delivery with a location: reserves there (the connector chose).
- ``order_placed`` for delivery without one: sourced (``domain.fulfilment.source_order``),
  reserved at the chosen location, or nothing when unfulfillable; the decision is published.
- ``order_placed`` for store pickup: reserves at the store; a ``pickup_prep`` task when the
  store's available-to-sell covered every line before the reservation, else a
  ``pickup_exception`` naming the nearest other pickup store that covers it and a transfer
  to the store per short sku.
- ``order_cancelled``: releases what the placement reserved; its task is cancelled.
- a till sale naming the order: consumes the reservation (``domain.stock``); its task is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from domain.events import ClickEvent
from domain.fulfilment import (
    SourcingDecision,
    pickup_alternative,
    pickup_code,
    source_order,
    transfer_source,
)
from domain.progress import EventTimeBuffer, InputProgress, Partition, PartitionReport
from domain.reference import Location, ReferenceData
from domain.resumable import resumable
from domain.stock import (
    PRUNE_EVERY_MS,
    StockMovement,
    StockPolicy,
    StockPosition,
    StockState,
    TooLate,
    lateness,
    line_movements,
    stock_key,
)
from domain.stock import apply_movement as apply_to_position
from domain.stock_totals import SegmentShare, SkuTotals, SkuTotalsState, update_sku_totals

PICKUP_KINDS = ("pickup_prep", "pickup_exception")
#: Rule id of the transfer a pickup exception asks for on ``triggers.replenishment``.
PICKUP_TRANSFER_RULE = "pickup_exception"


@dataclass(frozen=True, slots=True)
class FulfilmentPolicy:
    """How orders become decisions and tasks; see ``base.config.FulfilmentConfig``."""

    #: Every location of the reference data, in a fixed order (the candidates of sourcing).
    locations: tuple[Location, ...] = ()
    pickup_prep_ms: int = 2 * 60 * 60_000
    task_retention_ms: int = 12 * 60 * 60_000
    #: Secret of the pickup codes (a code must not be computable from the order id alone).
    pickup_secret: bytes = b""

    @staticmethod
    def of(
        reference: ReferenceData, pickup_prep_ms: int, task_retention_ms: int, secret: bytes
    ) -> FulfilmentPolicy:
        locations = tuple(reference.locations[k] for k in sorted(reference.locations))
        return FulfilmentPolicy(locations, pickup_prep_ms, task_retention_ms, secret)


@dataclass(frozen=True, slots=True)
class Bundle:
    """The stock movements and order events of one Kafka batch, with the reports of the
    partitions it read: a bundle without either still tells the pool how far they are."""

    movements: list[StockMovement]
    orders: list[ClickEvent] = dataclasses.field(default_factory=list)
    reports: tuple[PartitionReport, ...] = ()


@resumable
@dataclass(slots=True)
class OrderRecord:
    ts_ms: int
    location_id: str | None = None
    #: Skus the placement reserved; a cancellation releases exactly these.
    skus: tuple[str, ...] = ()
    placed_event_id: str | None = None
    #: The cancellation, kept so a placement that comes after it still nets to zero.
    cancellation: ClickEvent | None = None


@dataclass(frozen=True, slots=True)
class OrderConflict:
    """A second, different ``order_placed`` for an order already placed."""

    event: ClickEvent
    error: str


@dataclass(frozen=True, slots=True)
class SourcedOrder:
    """A sourcing decision (``orders.sourced``)."""

    order_id: str
    status: str  # sourced | unfulfillable
    location_id: str | None
    distance_km: float | None
    lines: tuple[tuple[str, int], ...]
    reason: str
    event_id: str
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class StoreTask:
    """One state of a store task (``store.tasks``); a new one replaces it on each change."""

    task_id: str
    kind: str
    store_id: str
    order_id: str
    lines: tuple[tuple[str, int], ...]
    pickup_code: str
    due_ms: int
    alternative_location_id: str | None
    reason: str
    evidence: tuple[str, ...]
    event_time_ms: int
    status: str = "open"  # open | done | cancelled
    done_ms: int | None = None
    #: Event time of this state (the placement, the collection or the cancellation).
    updated_ms: int = 0


@dataclass(frozen=True, slots=True)
class PickupTransfer:
    """Stock a pickup store lacks for an order (``triggers.replenishment``, kind transfer)."""

    order_id: str
    sku: str
    store_id: str
    region: str
    available_to_sell: int
    reorder_point: int
    suggested_qty: int
    source_location_id: str | None
    reason: str
    event_id: str
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class RemovedTask:
    store_id: str
    task_id: str


@dataclass(slots=True)
class PoolOutcome:
    """What one bundle changed."""

    #: Every new position in order: each is one ``stock.changed`` event.
    positions: list[StockPosition] = field(default_factory=list)
    refused: list[TooLate] = field(default_factory=list)
    #: Latest totals of every sku the bundle touched (absolute figures, for Redis).
    totals: list[SkuTotals] = field(default_factory=list)
    #: Latest share of every (segment, sku) the bundle touched, for the segment gauges.
    shares: list[tuple[tuple[str, str], str, SegmentShare]] = field(default_factory=list)
    conflicts: list[OrderConflict] = field(default_factory=list)
    sourced: list[SourcedOrder] = field(default_factory=list)
    tasks: list[StoreTask] = field(default_factory=list)
    removed_tasks: list[RemovedTask] = field(default_factory=list)
    transfers: list[PickupTransfer] = field(default_factory=list)
    #: Open tasks by kind and open pickups past their due time, as of the pool's progress.
    open_tasks: dict[str, int] = field(default_factory=dict)
    overdue_pickups: int = 0


@resumable
@dataclass(slots=True)
class PoolState:
    positions: dict[str, StockState] = field(default_factory=dict)
    skus: dict[str, SkuTotalsState] = field(default_factory=dict)
    progress: InputProgress = field(default_factory=InputProgress)
    #: Movements and order events that arrived ahead of the release bound.
    pending: EventTimeBuffer[StockMovement | ClickEvent] = field(default_factory=EventTimeBuffer)
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    #: order_id → the latest state of its task.
    tasks: dict[str, StoreTask] = field(default_factory=dict)
    as_of_ms: int = 0
    next_prune_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> PoolState:
        """Bytewax snapshots state every epoch: each part knows how to copy itself cheaply
        (tasks and events are immutable values; order records are copied)."""
        return PoolState(
            {key: state.__deepcopy__(memo) for key, state in self.positions.items()},
            {sku: state.__deepcopy__(memo) for sku, state in self.skus.items()},
            self.progress.__deepcopy__(memo),
            self.pending.__deepcopy__(memo),
            {oid: dataclasses.replace(rec) for oid, rec in self.orders.items()},
            dict(self.tasks),
            self.as_of_ms,
            self.next_prune_ms,
        )

    def available_to_sell(self, sku: str, location_id: str) -> int:
        position = self.positions.get(stock_key(sku, location_id))
        return position.available_to_sell if position is not None else 0


def apply_bundle(
    state: PoolState | None,
    bundle: Bundle,
    policy: StockPolicy,
    fulfilment: FulfilmentPolicy,
    reference: ReferenceData,
    expected: frozenset[Partition] = frozenset(),
) -> tuple[PoolState, PoolOutcome]:
    """Take in a bundle and fold, in event-time order, everything the release bound now
    allows. ``expected`` are the input partitions that must report before anything is
    applied (a pool built before any report knows them)."""
    if state is None:
        state = PoolState(progress=InputProgress(expected))
    pending = state.pending
    outcome = PoolOutcome()
    # Lateness is judged on arrival, against the flow's progress before this batch: what
    # waits in the buffer was on time and is applied, however far the watermark has moved
    # on by its release (one topic may be read to its end long before another).
    progress_ms = state.progress.progress_ms
    for movement in bundle.movements:
        position = state.positions.get(movement.key)
        late = None
        if position is None or movement.movement_id not in position.seen:
            late = lateness(movement, policy, progress_ms)
        if late is None:
            pending.add(movement.ts_ms, movement.movement_id, movement)
        else:
            outcome.refused.append(late)
    for order in bundle.orders:
        pending.add(order.ts_ms, order.event_id, order)
    if bundle.reports:
        state.progress.report(bundle.reports)
    released = pending.release(state.progress.release_bound())
    fold(state, released, policy, fulfilment, reference, outcome)
    return state, outcome


def fold(
    state: PoolState,
    items: Sequence[StockMovement | ClickEvent],
    policy: StockPolicy,
    fulfilment: FulfilmentPolicy,
    reference: ReferenceData,
    outcome: PoolOutcome | None = None,
) -> PoolOutcome:
    """Fold movements and order events, in the order given, into the pool.

    The horizon passed down is the flow's low watermark, but never past the oldest item
    folded here: these were judged on arrival, and forgetting counts back from it."""
    outcome = outcome if outcome is not None else PoolOutcome()
    progress_ms = state.progress.progress_ms
    if progress_ms is not None and items:
        progress_ms = min(progress_ms, items[0].ts_ms)
    #: sku → location → its latest position in this bundle.
    latest: dict[str, dict[str, StockPosition]] = {}
    products = reference.products

    def apply(movement: StockMovement) -> None:
        key = movement.key
        position_state, result = apply_to_position(
            state.positions.get(key),
            movement,
            policy,
            progress_ms,
            products[movement.sku].safety_stock,
        )
        state.positions[key] = position_state
        if result is None:
            return  # a duplicate: nothing changed
        if isinstance(result, TooLate):
            outcome.refused.append(result)
            return
        outcome.positions.append(result)
        latest.setdefault(result.sku, {})[result.location_id] = result

    for item in items:
        if isinstance(item, StockMovement):
            apply(item)
            if item.kind == "sale" and item.order_id is not None:
                _collected(state, item, outcome)
        else:
            for movement in _order(state, item, fulfilment, reference, outcome):
                apply(movement)
        state.as_of_ms = max(state.as_of_ms, item.ts_ms)
    for sku, by_location in latest.items():
        sku_state, sku_totals, sku_shares = update_sku_totals(
            state.skus.get(sku), sku, by_location.values(), reference
        )
        state.skus[sku] = sku_state
        outcome.totals.append(sku_totals)
        outcome.shares.extend((segment, sku, share) for segment, share in sku_shares)
    _prune(state, policy, fulfilment, outcome)
    _count_tasks(state, outcome)
    return outcome


def order_lines(event: ClickEvent) -> tuple[tuple[str, int], ...]:
    """An order's units per sku (lines of the same sku add up), in first-seen order."""
    units: dict[str, int] = {}
    for line in event.lines:
        units[line.sku] = units.get(line.sku, 0) + line.qty
    return tuple(units.items())


def _order(
    state: PoolState,
    event: ClickEvent,
    fulfilment: FulfilmentPolicy,
    reference: ReferenceData,
    outcome: PoolOutcome,
) -> list[StockMovement]:
    """The reserve/release movements of an order event, and its decision and task."""
    order_id = event.order_id
    assert order_id is not None, "order events always carry an order_id"
    record = state.orders.get(order_id)
    if event.event_type != "order_placed":
        if record is None:
            record = state.orders[order_id] = OrderRecord(event.ts_ms)
        if record.cancellation is not None:
            return []
        record.cancellation = event
        task = state.tasks.get(order_id)
        if task is not None and task.status == "open":
            _set_task(state, outcome, task, "cancelled", event.ts_ms)
        return _releases(record, event)
    fulfillment = event.fulfillment
    assert fulfillment is not None, "the decoder requires fulfillment on order_placed"
    if record is not None and record.placed_event_id is not None:
        if record.placed_event_id != event.event_id:
            outcome.conflicts.append(
                OrderConflict(
                    event,
                    f"order {order_id!r} was already placed by event {record.placed_event_id!r}",
                )
            )
        return []
    if record is None:
        record = state.orders[order_id] = OrderRecord(event.ts_ms)
    record.placed_event_id = event.event_id
    lines = order_lines(event)
    location_id = fulfillment.location_id
    if fulfillment.type == "store_pickup":
        assert location_id is not None, "the decoder requires the pickup store"
        if record.cancellation is None:
            _pickup_task(state, event, lines, location_id, fulfilment, reference, outcome)
    elif location_id is None:
        decision = source_order(
            lines,
            state.available_to_sell,
            fulfilment.locations,
            fulfillment.lat,
            fulfillment.lon,
            fulfillment.region,
        )
        outcome.sourced.append(_sourced(event, order_id, lines, decision))
        location_id = decision.location_id
    record.location_id = location_id
    if location_id is None:
        return []  # unfulfillable: reserves nothing
    record.skus = tuple(sku for sku, _ in lines)
    movements = line_movements(
        event.event_id,
        event.ts_ms,
        location_id,
        "reserve",
        [(line.sku, line.qty) for line in event.lines],
        event.origin,
        order_id,
    )
    if record.cancellation is not None:  # the cancellation came first in event time
        movements += _releases(record, record.cancellation)
    return movements


def _sourced(
    event: ClickEvent, order_id: str, lines: tuple[tuple[str, int], ...], d: SourcingDecision
) -> SourcedOrder:
    return SourcedOrder(
        order_id,
        "sourced" if d.location_id is not None else "unfulfillable",
        d.location_id,
        d.distance_km,
        lines,
        d.reason,
        event.event_id,
        event.ts_ms,
    )


def _pickup_task(
    state: PoolState,
    event: ClickEvent,
    lines: tuple[tuple[str, int], ...],
    store_id: str,
    fulfilment: FulfilmentPolicy,
    reference: ReferenceData,
    outcome: PoolOutcome,
) -> None:
    """The store's task for a pickup order, judged on its stock before the reservation."""
    order_id = event.order_id
    assert order_id is not None
    store = reference.locations[store_id]
    short = [
        (sku, qty, state.available_to_sell(sku, store_id))
        for sku, qty in lines
        if state.available_to_sell(sku, store_id) < qty
    ]
    code = pickup_code(fulfilment.pickup_secret, order_id)
    due_ms = event.ts_ms + fulfilment.pickup_prep_ms
    if not short:
        task = StoreTask(
            f"pickup:{order_id}",
            "pickup_prep",
            store_id,
            order_id,
            lines,
            code,
            due_ms,
            None,
            "the store holds every line",
            (event.event_id,),
            event.ts_ms,
            updated_ms=event.ts_ms,
        )
    else:
        alternative = pickup_alternative(
            lines, state.available_to_sell, fulfilment.locations, store
        )
        missing = ", ".join(f"{sku} ({ats} of {qty})" for sku, qty, ats in short)
        reason = f"the store lacks {missing}"
        if alternative.location_id is not None:
            reason += f"; {alternative.location_id} holds every line"
        task = StoreTask(
            f"pickup:{order_id}",
            "pickup_exception",
            store_id,
            order_id,
            lines,
            code,
            due_ms,
            alternative.location_id,
            reason,
            (event.event_id,),
            event.ts_ms,
            updated_ms=event.ts_ms,
        )
        for sku, qty, ats in short:
            needed = qty - ats
            source = transfer_source(
                sku, needed, state.available_to_sell, fulfilment.locations, store
            )
            outcome.transfers.append(
                PickupTransfer(
                    order_id,
                    sku,
                    store_id,
                    store.region,
                    ats,
                    reference.products[sku].reorder_point,
                    needed,
                    source,
                    f"pickup order {order_id} needs {qty}, the store has {ats} to sell; "
                    + (f"{source} can spare {needed}" if source else "no location can spare it"),
                    event.event_id,
                    event.ts_ms,
                )
            )
    state.tasks[order_id] = task
    outcome.tasks.append(task)


def _collected(state: PoolState, movement: StockMovement, outcome: PoolOutcome) -> None:
    """A till sale naming a pickup order closes its task (at whichever store it happens)."""
    order_id = movement.order_id
    assert order_id is not None
    task = state.tasks.get(order_id)
    if task is not None and task.status == "open":
        _set_task(state, outcome, task, "done", movement.ts_ms, evidence=movement.event_id)


def _set_task(
    state: PoolState,
    outcome: PoolOutcome,
    task: StoreTask,
    status: str,
    ts_ms: int,
    evidence: str | None = None,
) -> None:
    changed = dataclasses.replace(
        task,
        status=status,
        done_ms=ts_ms,
        updated_ms=ts_ms,
        evidence=task.evidence + ((evidence,) if evidence else ()),
    )
    state.tasks[task.order_id] = changed
    outcome.tasks.append(changed)


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


def _prune(
    state: PoolState, policy: StockPolicy, fulfilment: FulfilmentPolicy, outcome: PoolOutcome
) -> None:
    """Forget orders past their TTL and tasks past their retention, at most once per
    ``PRUNE_EVERY_MS``, counting back from the flow's low watermark (a replay reads some
    partitions days ahead of others)."""
    if state.as_of_ms < state.next_prune_ms:
        return
    state.next_prune_ms = state.as_of_ms + PRUNE_EVERY_MS
    progress_ms = state.progress.progress_ms
    if progress_ms is None:
        return
    order_horizon = progress_ms - policy.reservation_ttl_ms
    state.orders = {oid: r for oid, r in state.orders.items() if r.ts_ms >= order_horizon}
    task_horizon = progress_ms - fulfilment.task_retention_ms
    kept: dict[str, StoreTask] = {}
    for order_id, task in state.tasks.items():
        expired = (
            task.event_time_ms < order_horizon
            if task.status == "open"
            else task.updated_ms < task_horizon
        )
        if expired:
            outcome.removed_tasks.append(RemovedTask(task.store_id, task.task_id))
        else:
            kept[order_id] = task
    state.tasks = kept


def _count_tasks(state: PoolState, outcome: PoolOutcome) -> None:
    now = state.progress.progress_ms
    counts = dict.fromkeys(PICKUP_KINDS, 0)
    overdue = 0
    for task in state.tasks.values():
        if task.status != "open":
            continue
        counts[task.kind] = counts.get(task.kind, 0) + 1
        if now is not None and task.due_ms < now:
            overdue += 1
    outcome.open_tasks = counts
    outcome.overdue_pickups = overdue
