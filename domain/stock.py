"""Stock arithmetic of one sku × location (CONTRACT §2), pure and replay-safe.

Every input event that touches stock becomes one ``StockMovement`` per sku × location line.
``apply_movement`` folds a movement into the ``StockState`` of its sku × location and returns
the new absolute ``StockPosition`` — never a delta — so writing it again after a replay is
harmless.

Rules that must hold (each has a test):

- A movement id seen before (within ``dedup_ms`` of event time) has no effect.
- ``available = on_hand − reserved``; it may go negative (oversold).
- ``stock_count`` sets on_hand as of its ``ts``: movements with an earlier ``ts`` are already
  inside the count and leave on_hand alone, wherever they arrive; movements after it that
  arrived *before* it are re-applied on top of the count (kept for ``late_window_ms``).
- Windows are event time: ``sold_1h``/``sold_24h`` count units sold in the hour / day before
  the latest event time seen at this sku × location (``as_of_ms``). Sold units are POS sales
  (walk-in and store pickups) and shipments of online orders.
- ``days_of_cover = available / sold_24h``, None when nothing sold in 24 h.
- ``available_to_sell = max(0, available − safety_stock)`` (CONTRACT §9): what sourcing,
  the rules and the availability service may promise.
- ``in_transit`` at a destination: units of each ``transfer_out`` naming it as
  ``to_location_id`` (a ``transit`` movement at the destination) until the ``transfer_in``
  with the same ``transfer_id`` arrives there. Kept per transfer, like reservations, so the
  figure is the same whichever of the two arrives first; a short delivery closes the
  transfer all the same (the rest is shrinkage, counted by the next stock count).
- A movement older than the dedup horizon cannot be told from a replayed duplicate and is
  refused (``too_late``) instead of being applied twice; so is a stock count older than the
  late window, whose effect could no longer be computed exactly. Both horizons count back
  from the flow's low watermark over all its input partitions, never from this position's
  latest event (a replay reads some partitions days ahead of others).
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

from base.units import DAY_MS, HOUR_MS
from domain.events import ClickEvent, MovementEvent, Origin, PosEvent
from domain.resumable import resumable

#: Pruning of remembered ids and history runs at most this often (event time).
PRUNE_EVERY_MS = 60 * 60_000

#: Sign of each movement kind on on_hand; ``stock_count`` is absolute, reserve/release touch
#: only ``reserved``.
ON_HAND_SIGN = {
    "receipt": 1,
    "transfer_in": 1,
    "return": 1,
    "adjustment": 1,  # qty is signed
    "shipment": -1,
    "transfer_out": -1,
    "sale": -1,
}
RESERVATION_KINDS = frozenset({"reserve", "release"})
#: The destination's side of a ``transfer_out`` with ``to_location_id``: in transit there.
TRANSIT = "transit"


@dataclass(frozen=True, slots=True)
class StockPolicy:
    """Event-time horizons; see ``base.config.StockConfig`` for their meaning."""

    late_window_ms: int = 48 * HOUR_MS
    dedup_ms: int = 7 * DAY_MS
    reservation_ttl_ms: int = 30 * DAY_MS


@dataclass(slots=True)  # not frozen: built per movement (see domain.events)
class StockMovement:
    """One line of one event, at one sku × location.

    ``movement_id`` (``<event_id>#<line>``) is the identity used to drop duplicates. ``qty``
    is positive except for adjustments (signed) and counts (absolute, ≥ 0).
    """

    movement_id: str
    event_id: str
    ts_ms: int
    sku: str
    location_id: str
    kind: str
    qty: int
    origin: Origin
    order_id: str | None = None
    #: ``transfer_out``/``transfer_in``/``transit``: the transfer it belongs to.
    transfer_id: str | None = None

    @property
    def key(self) -> str:
        return stock_key(self.sku, self.location_id)


def stock_key(sku: str, location_id: str) -> str:
    return f"{sku}:{location_id}"


@dataclass(slots=True)  # not frozen: built per movement (see domain.events)
class StockPosition:
    """Absolute figures of one sku × location after a change."""

    sku: str
    location_id: str
    on_hand: int
    reserved: int
    available: int
    sold_1h: int
    sold_24h: int
    days_of_cover: float | None
    as_of_ms: int
    #: Event id of the movement that caused this position (CONTRACT ``cause``).
    cause: str
    #: Movement id (``<event_id>#<line>``): the output event id is derived from it.
    movement_id: str
    safety_stock: int = 0
    in_transit: int = 0
    #: Units this movement sold (a till sale, an order shipped): what ``sold_24h`` gained.
    sold: int = 0

    @property
    def available_to_sell(self) -> int:
        return max(0, self.available - self.safety_stock)


@dataclass(frozen=True, slots=True)
class TooLate:
    movement: StockMovement
    error: str


@resumable
@dataclass(slots=True)
class OrderReservation:
    ts_ms: int
    reserved: int = 0
    consumed: int = 0
    released: bool = False

    @property
    def settled(self) -> bool:
        """Cancelled or fully handed over: nothing later can change what it holds."""
        return self.released or 0 < self.reserved <= self.consumed

    @property
    def outstanding(self) -> int:
        """Units still promised to the order: nothing once cancelled, never below zero."""
        return 0 if self.released else max(0, self.reserved - self.consumed)


@resumable
@dataclass(slots=True)
class Transit:
    """One transfer on its way to this location."""

    ts_ms: int
    sent: int = 0
    arrived: bool = False

    @property
    def outstanding(self) -> int:
        return 0 if self.arrived else self.sent


@resumable
@dataclass(slots=True)
class SalesLog:
    """Sales of one sku × location, sorted by event time, with running sums of units.

    Why not a plain list of (ts, units): the hour and day windows are asked after every
    movement, and summing a day of sales each time was the flow's largest cost. With running
    sums a window is two bisections; sales arrive almost always in time order (an append), and
    a late one is inserted in place.
    """

    ts: list[int] = field(default_factory=list)
    #: ``cum[i]`` = units of sales ``0..i``.
    cum: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def add(self, ts_ms: int, units: int) -> None:
        if not self.ts or ts_ms >= self.ts[-1]:
            self.ts.append(ts_ms)
            self.cum.append((self.cum[-1] if self.cum else 0) + units)
            return
        at = bisect.bisect_right(self.ts, ts_ms)
        self.ts.insert(at, ts_ms)
        self.cum.insert(at, (self.cum[at - 1] if at else 0) + units)
        for later in range(at + 1, len(self.cum)):
            self.cum[later] += units

    def units(self, after_ms: int, until_ms: int) -> int:
        """Units sold with ``after_ms < ts <= until_ms``."""
        end = bisect.bisect_right(self.ts, until_ms)
        start = bisect.bisect_right(self.ts, after_ms, 0, end)
        if end <= start:
            return 0
        return self.cum[end - 1] - (self.cum[start - 1] if start else 0)

    def drop_until(self, ts_ms: int) -> None:
        """Forget sales with ``ts <= ts_ms`` (outside every window from now on)."""
        cut = bisect.bisect_right(self.ts, ts_ms)
        if cut:
            base = self.cum[cut - 1]
            self.ts = self.ts[cut:]
            self.cum = [c - base for c in self.cum[cut:]]

    def copy(self) -> SalesLog:
        return SalesLog(list(self.ts), list(self.cum))


@resumable
@dataclass(slots=True)
class StockState:
    """What the flow remembers per sku × location (kept in Bytewax state, snapshotted)."""

    on_hand: int = 0
    #: order_id → its reservation here. Kept as (reserved, consumed, released) rather than a
    #: running remainder so the result does not depend on the order in which a reservation,
    #: its pickups/shipments and its cancellation arrive from different topics.
    reservations: dict[str, OrderReservation] = field(default_factory=dict)
    count_ts_ms: int | None = None
    #: Event id of the applied count: breaks ties between counts with the same ts.
    count_event_id: str = ""
    as_of_ms: int = 0
    #: (ts, on_hand delta) of applied movements, to rebase a late stock count.
    history: list[tuple[int, int]] = field(default_factory=list)
    #: Sales, for the event-time windows.
    sales: SalesLog = field(default_factory=SalesLog)
    #: movement_id → ts, to drop duplicates.
    seen: dict[str, int] = field(default_factory=dict)
    next_prune_ms: int = 0
    #: transfer_id → the transfer on its way here (``in_transit``).
    transits: dict[str, Transit] = field(default_factory=dict)
    #: ``available_to_sell`` after the latest movement (sourcing asks it for many
    #: locations per order: cheaper kept than summed over open reservations each time).
    available_to_sell: int = 0

    @property
    def reserved(self) -> int:
        return sum(r.outstanding for r in self.reservations.values())

    @property
    def in_transit(self) -> int:
        return sum(t.outstanding for t in self.transits.values())

    def __deepcopy__(self, memo: dict[int, object]) -> StockState:
        """Bytewax snapshots state with ``deepcopy`` every epoch; the containers hold
        immutable tuples and strings, so copying the containers (and the few mutable
        reservations) is a full copy at a fraction of the generic cost."""
        return StockState(
            on_hand=self.on_hand,
            reservations={
                order: dataclasses.replace(held) for order, held in self.reservations.items()
            },
            count_ts_ms=self.count_ts_ms,
            count_event_id=self.count_event_id,
            as_of_ms=self.as_of_ms,
            history=list(self.history),
            sales=self.sales.copy(),
            seen=dict(self.seen),
            next_prune_ms=self.next_prune_ms,
            transits={tid: dataclasses.replace(t) for tid, t in self.transits.items()},
            available_to_sell=self.available_to_sell,
        )


def line_movements(
    event_id: str,
    ts_ms: int,
    location_id: str,
    kind: str,
    lines: list[tuple[str, int]],
    origin: Origin,
    order_id: str | None,
) -> list[StockMovement]:
    """One movement per ``(sku, qty)`` line of an event, numbered ``<event_id>#<line>``."""
    return [
        StockMovement(
            f"{event_id}#{index}", event_id, ts_ms, sku, location_id, kind, qty, origin, order_id
        )
        for index, (sku, qty) in enumerate(lines)
    ]


def movements_of_pos(event: PosEvent) -> list[StockMovement]:
    """A till receipt: each line sells (or takes back) units at the store.

    A sale with ``order_id`` is the pickup of an online order and consumes its reservation.
    """
    kind = "sale" if event.event_type == "sale" else "return"
    lines = [(line.sku, line.qty) for line in event.lines]
    return line_movements(
        event.event_id, event.ts_ms, event.store_id, kind, lines, event.origin, event.order_id
    )


def movements_of_wms(event: MovementEvent) -> list[StockMovement]:
    """A warehouse event at its location; a ``transfer_out`` naming its destination also
    puts the units in transit there (movement ``<event_id>#transit``)."""
    (movement,) = line_movements(
        event.event_id,
        event.ts_ms,
        event.location_id,
        event.event_type,
        [(event.sku, event.qty)],
        event.origin,
        event.order_id,
    )
    movement.transfer_id = event.transfer_id
    if event.event_type != "transfer_out" or event.to_location_id is None:
        return [movement]
    transit = StockMovement(
        f"{event.event_id}#transit",
        event.event_id,
        event.ts_ms,
        event.sku,
        event.to_location_id,
        TRANSIT,
        event.qty,
        event.origin,
        None,
        event.transfer_id,
    )
    return [movement, transit]


def reservation_movements(event: ClickEvent, location_id: str, kind: str) -> list[StockMovement]:
    """Reserve (order placed) or release (order cancelled) each line of an order."""
    lines = [(line.sku, line.qty) for line in event.lines]
    return line_movements(
        event.event_id, event.ts_ms, location_id, kind, lines, event.origin, event.order_id
    )


def _consumes_reservation(movement: StockMovement) -> bool:
    return movement.order_id is not None and movement.kind in {"sale", "shipment"}


def _is_sold(movement: StockMovement) -> bool:
    return movement.kind == "sale" or (
        movement.kind == "shipment" and movement.order_id is not None
    )


def _prune(state: StockState, policy: StockPolicy, progress_ms: int | None) -> None:
    """Forget what no later movement can need, at most once per ``PRUNE_EVERY_MS``.

    Horizons count back from the flow's low watermark (``progress_ms``), not from this
    position's latest event: during a replay another partition may still be days behind, and
    what it will deliver must still find the ids and history it needs. Without a watermark
    yet, nothing but the sales windows is pruned.

    A container is rebuilt only when its first entry (almost always its oldest: entries are
    appended in arrival order) has expired. An older entry left further in is harmless: the
    history is only summed from a count's time on, and a remembered id only drops a
    duplicate that would otherwise be refused as too late; so the cost per movement stays
    O(1) instead of a pass over a week of ids.
    """
    now = state.as_of_ms
    if now < state.next_prune_ms:
        return
    state.next_prune_ms = now + PRUNE_EVERY_MS
    state.sales.drop_until(now - DAY_MS)
    if progress_ms is None:
        return
    seen_after = progress_ms - policy.dedup_ms
    if state.seen and next(iter(state.seen.values())) < seen_after:
        state.seen = {mid: ts for mid, ts in state.seen.items() if ts >= seen_after}
    history_after = progress_ms - policy.late_window_ms
    if state.history and state.history[0][0] < history_after:
        state.history = [(ts, d) for ts, d in state.history if ts >= history_after]
    if state.reservations:
        state.reservations = {
            order: held
            for order, held in state.reservations.items()
            if held.ts_ms >= progress_ms - policy.reservation_ttl_ms
            and not (held.settled and held.ts_ms < seen_after)
        }
    if state.transits:  # like reservations: arrived ones after the dedup horizon, others at TTL
        state.transits = {
            tid: t
            for tid, t in state.transits.items()
            if t.ts_ms >= progress_ms - policy.reservation_ttl_ms
            and not (t.arrived and t.ts_ms < seen_after)
        }


def position_of(state: StockState, movement: StockMovement, safety_stock: int = 0) -> StockPosition:
    now = state.as_of_ms
    sold_1h = state.sales.units(now - HOUR_MS, now)
    sold_24h = state.sales.units(now - DAY_MS, now)
    reserved = state.reserved
    available = state.on_hand - reserved
    cover = round(available / sold_24h, 3) if sold_24h > 0 else None
    state.available_to_sell = max(0, available - safety_stock)
    return StockPosition(
        movement.sku,
        movement.location_id,
        state.on_hand,
        reserved,
        available,
        sold_1h,
        sold_24h,
        cover,
        now,
        movement.event_id,
        movement.movement_id,
        safety_stock,
        state.in_transit,
        movement.qty if _is_sold(movement) else 0,
    )


def lateness(
    movement: StockMovement, policy: StockPolicy, progress_ms: int | None
) -> TooLate | None:
    """Why a movement (not a duplicate) must be refused, judged against the flow's low
    watermark ``progress_ms``; None when it can be applied."""
    if progress_ms is None:
        return None
    if movement.ts_ms < progress_ms - policy.dedup_ms:
        return TooLate(
            movement,
            "older than the duplicate-detection horizon "
            f"({policy.dedup_ms // HOUR_MS} h behind the flow's low watermark)",
        )
    if movement.kind == "stock_count" and movement.ts_ms < progress_ms - policy.late_window_ms:
        return TooLate(
            movement,
            f"stock count older than the late window ({policy.late_window_ms // HOUR_MS} h "
            "behind the flow's low watermark)",
        )
    return None


def apply_movement(
    state: StockState | None,
    movement: StockMovement,
    policy: StockPolicy,
    progress_ms: int | None = None,
    safety_stock: int = 0,
) -> tuple[StockState, StockPosition | TooLate | None]:
    """Fold one movement into the state of its sku × location (``safety_stock``: the
    product's, CONTRACT §8).

    ``progress_ms`` is the flow's low watermark over all its input partitions
    (``domain.progress``): a movement is too late only when it is older than a horizon
    relative to the whole flow, never because another partition was read faster.

    Returns the new position, ``TooLate`` when the movement must be refused, or None for a
    duplicate (nothing changed, nothing to emit).
    """
    if state is None:
        state = StockState()
    if movement.movement_id in state.seen:
        return state, None
    late = lateness(movement, policy, progress_ms)
    if late is not None:
        return state, late
    if movement.kind == "stock_count":
        _apply_count(state, movement)
    elif movement.kind in RESERVATION_KINDS:
        _apply_reservation(state, movement)
    elif movement.kind == TRANSIT:
        _transit(state, movement).sent += movement.qty
    else:
        _apply_flow(state, movement)
    state.seen[movement.movement_id] = movement.ts_ms
    state.as_of_ms = max(state.as_of_ms, movement.ts_ms)
    _prune(state, policy, progress_ms)
    return state, position_of(state, movement, safety_stock)


def _apply_count(state: StockState, movement: StockMovement) -> None:
    if state.count_ts_ms is not None and (movement.ts_ms, movement.event_id) <= (
        state.count_ts_ms,
        state.count_event_id,
    ):
        return  # an older count is superseded by the one already applied
    after = sum(delta for ts, delta in state.history if ts >= movement.ts_ms)
    state.on_hand = movement.qty + after
    state.count_ts_ms = movement.ts_ms
    state.count_event_id = movement.event_id


def _apply_reservation(state: StockState, movement: StockMovement) -> None:
    order_id = movement.order_id
    assert order_id is not None, "reservations always name their order"
    if movement.kind == "reserve":
        _reservation(state, order_id, movement.ts_ms).reserved += movement.qty
    else:
        _reservation(state, order_id, movement.ts_ms).released = True


def _reservation(state: StockState, order_id: str, ts_ms: int) -> OrderReservation:
    held = state.reservations.get(order_id)
    if held is None:
        held = state.reservations[order_id] = OrderReservation(ts_ms)
    held.ts_ms = max(held.ts_ms, ts_ms)
    return held


def _apply_flow(state: StockState, movement: StockMovement) -> None:
    delta = ON_HAND_SIGN[movement.kind] * movement.qty
    inside_count = state.count_ts_ms is not None and movement.ts_ms < state.count_ts_ms
    if not inside_count:
        state.on_hand += delta
        state.history.append((movement.ts_ms, delta))
    if _consumes_reservation(movement):
        _reservation(state, movement.order_id or "", movement.ts_ms).consumed += movement.qty
    if _is_sold(movement):
        state.sales.add(movement.ts_ms, movement.qty)
    if movement.kind == "transfer_in" and movement.transfer_id is not None:
        _transit(state, movement).arrived = True


def _transit(state: StockState, movement: StockMovement) -> Transit:
    transfer_id = movement.transfer_id
    assert transfer_id is not None, "transit and transfer_in movements name their transfer"
    held = state.transits.get(transfer_id)
    if held is None:
        held = state.transits[transfer_id] = Transit(movement.ts_ms)
    held.ts_ms = max(held.ts_ms, movement.ts_ms)
    return held
