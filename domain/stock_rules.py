"""Stock-driven rules of rule_triggers: ``low_stock``, ``stockout`` and ``campaign_prep``,
pure.

State is kept per sku × location, the key of ``stock.changes``, so a location's changes are
judged in the order stock_pool made them. A rule that compares locations (the source of a
transfer) asks the stock pool for the region's positions when it fires
(``domain.stock_view.StockView``): the decision then does not depend on the order in which
the other locations' changes arrived.

- ``low_stock`` fires when available falls *below* the reorder point (a crossing), and
  re-arms only once available is back at or above it: stock hovering around the threshold
  does not storm. It suggests a ``transfer`` from the location of the same region with the
  largest surplus above its own reorder point, else a ``replenish``. The suggested quantity
  brings the location back to its target cover: ``max(reorder_point, ⌈target_cover_days ×
  sold_24h⌉) − available`` (a transfer never takes more than the surplus).
- ``stockout`` fires when available reaches 0 (from above) and re-arms above 0.
- ``campaign_prep`` fires a ``prepare`` trigger to a store when more than M coupon triggers
  name it for one sku within a window (marketing drives stock).
- All respect their rule's cooldown per sku × location, in event time.
- An experiment on ``low_stock`` or ``stockout`` draws its arm per sku × location
  (``draw_stock_variant``) and runs that arm's params (``Rule.params_of``: two target
  covers, say). Unlike a coupon's control, a stock rule's control is not held back — a
  shelf is not left empty to measure anything — it runs the rule's own params, the policy
  in force; every decision names its arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from base.units import DAY_MS
from domain.resumable import resumable
from domain.rules import Rule
from domain.trigger_policy import Ledger, draw_stock_variant, may_fire

if TYPE_CHECKING:
    from domain.stock_view import StockView

#: How far back (event time) a location of a perishable sku remembers its positions beyond
#: the sku's shelf life: a perishable receipt read after later stock changes of its location
#: (``wms.movements`` and ``stock.changes`` are read side by side, at their own pace) is
#: judged with the stock it would have met in time, however late, until it has expired.
POSITION_HISTORY_MARGIN_MS = DAY_MS


@dataclass(frozen=True, slots=True)
class StockChange:
    """One ``stock.changes`` event, as rule_triggers reads it."""

    sku: str
    location_id: str
    region: str
    #: ``available_to_sell`` (CONTRACT §9): the rules judge what may be sold.
    available: int
    sold_24h: int
    ts_ms: int
    cause: str
    on_hand: int = 0
    location_type: str = "store"
    source_partition: int = 0  # of stock.changes
    #: Units on their way here by transfer (CONTRACT §9): low stock counts them as coming.
    in_transit: int = 0
    #: Units the change's own movement sold (optional ``sold``; 0 in older records).
    sold: int = 0


@dataclass(frozen=True, slots=True)
class StockDecision:
    rule_id: str
    kind: str  # replenish | transfer | stockout
    sku: str
    location_id: str
    region: str
    available: int
    reorder_point: int
    suggested_qty: int
    source_location_id: str | None
    reason: str
    evidence: tuple[str, ...]
    event_time_ms: int
    #: the arm of the rule's experiment this sku × location runs (``default`` without one)
    variant: str = "default"


@dataclass(frozen=True, slots=True)
class StockTriggerSuppressed:
    """A stock-side trigger (replenishment or clearance signal) its cooldown held back."""

    rule_id: str
    reason: str  # cooldown


@resumable
@dataclass(slots=True)
class SkuRuleState:
    """What the stock and clearance rules remember of one sku × location."""

    #: the latest change seen here (None before the first)
    position: StockChange | None = None
    #: the changes of the last ``history_ms`` before it (``record_position``) and the one
    #: before them, oldest first (the last is ``position``)
    history: list[StockChange] = field(default_factory=list)
    #: rules whose condition fired here and has not re-armed (low_stock, stockout, overstock)
    fired: set[str] = field(default_factory=set)
    #: (rule id, batch event id) of the perishable batches ``expiring_stock`` signalled
    batches_fired: set[tuple[str, str]] = field(default_factory=set)
    #: firing history, for cooldowns
    ledger: Ledger = field(default_factory=Ledger)
    #: perishable batches received here, by expiry (``expiring_stock``)
    batches: list[ExpiryBatch] = field(default_factory=list)
    #: event time the location was first seen, and last seen selling (``overstock``)
    first_seen_ms: int | None = None
    last_selling_ms: int | None = None
    #: event time the clearance timer last looked (its deadlines up to here are done)
    timer_checked_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> SkuRuleState:
        """Snapshots copy every epoch: copy the containers, share the immutable records."""
        return SkuRuleState(
            self.position,
            list(self.history),
            set(self.fired),
            set(self.batches_fired),
            Ledger(dict(self.ledger.last_fired), dict(self.ledger.coupons_per_day)),
            list(self.batches),
            self.first_seen_ms,
            self.last_selling_ms,
            self.timer_checked_ms,
        )


@dataclass(frozen=True, slots=True)
class ExpiryBatch:
    """A receipt of perishable goods: ``qty`` units that expire at the end of a date."""

    sku: str
    location_id: str
    region: str
    qty: int
    expires_ms: int
    event_id: str
    ts_ms: int
    source_partition: int = 0  # of wms.movements


def history_ms(shelf_life_days: int | None) -> int:
    """How long a location of a sku keeps its positions: none but the latest for goods that
    do not perish; for perishables, as long as a receipt of them can still matter."""
    if shelf_life_days is None:
        return 0
    return shelf_life_days * DAY_MS + POSITION_HISTORY_MARGIN_MS


def record_position(state: SkuRuleState, change: StockChange, keep_ms: int = 0) -> None:
    """The location's new position (its changes come in stock_pool's order, in event time),
    keeping those of the last ``keep_ms`` before it."""
    state.position = change
    history = state.history
    if keep_ms <= 0:  # goods that do not perish: the latest is all that is asked for
        history[:] = (change,)
        return
    history.append(change)
    cutoff = change.ts_ms - keep_ms
    if len(history) > 2 and history[1].ts_ms < cutoff:
        keep = next((i for i, c in enumerate(history) if c.ts_ms >= cutoff), len(history) - 1)
        del history[: keep - 1]


def position_at(state: SkuRuleState, ts_ms: int) -> StockChange | None:
    """The location's position as of ``ts_ms``: its latest change at or before it."""
    position = state.position
    if position is None or ts_ms >= position.ts_ms:
        return position
    for change in reversed(state.history):
        if change.ts_ms <= ts_ms:
            return change
    return None


def claim(ledger: Ledger, rule: Rule, ts_ms: int) -> StockTriggerSuppressed | None:
    """Record a firing of a stock rule, or say why its cooldown forbids it."""
    cooldown_ms = int(rule.cooldown_s * 1000)
    reason = may_fire(ledger, rule.rule_id, cooldown_ms, ts_ms, False, 0)
    if reason is not None:
        return StockTriggerSuppressed(rule.rule_id, reason)
    ledger.record(rule.rule_id, ts_ms, coupon=False)
    return None


def target_level(reorder_point: int, sold_24h: int, target_cover_days: float) -> int:
    return max(reorder_point, math.ceil(target_cover_days * sold_24h))


def region_positions(
    stock: StockView, sku: str, region: str, as_of_ms: int
) -> dict[str, StockChange]:
    """The sku's positions in ``region`` by location, asked of the stock pool."""
    return {p.location_id: p for p in stock.region_positions(sku, region, as_of_ms)}


def _largest_surplus(
    others: dict[str, StockChange], change: StockChange, reorder_point: int
) -> StockChange | None:
    best: StockChange | None = None
    for location, other in sorted(others.items()):
        if location == change.location_id or other.region != change.region:
            continue
        surplus = other.available - reorder_point
        if surplus > 0 and (best is None or surplus > best.available - reorder_point):
            best = other
    return best


StockOutcome = StockDecision | StockTriggerSuppressed


def evaluate_stock_rules(
    state: SkuRuleState | None,
    change: StockChange,
    rules: list[Rule],
    reorder_point: int,
    stock: StockView,
    keep_ms: int = 0,
) -> tuple[SkuRuleState, list[StockOutcome]]:
    """Apply one stock change to the low_stock / stockout rules of its sku × location; the
    source of a transfer is looked up in ``stock`` (as of the change) only when one fires.
    The positions of the last ``keep_ms`` are kept (``history_ms``)."""
    if state is None:
        state = SkuRuleState()
    record_position(state, change, keep_ms)
    out: list[StockOutcome] = []
    for rule in rules:
        if rule.kind == "low_stock":
            # what is already on its way by transfer needs no second order
            condition = change.available + change.in_transit < reorder_point
        elif rule.kind == "stockout":
            condition = change.available <= 0
        else:
            continue
        if not condition:
            state.fired.discard(rule.rule_id)  # re-armed
            continue
        if rule.rule_id in state.fired:
            continue  # still below: already fired on the crossing
        state.fired.add(rule.rule_id)
        suppressed = claim(state.ledger, rule, change.ts_ms)
        if suppressed is not None:
            out.append(suppressed)
            continue
        out.append(_decision(rule, change, reorder_point, stock))
    return state, out


def _decision(
    rule: Rule, change: StockChange, reorder_point: int, stock: StockView
) -> StockDecision:
    variant = draw_stock_variant(rule.experiment, change.sku, change.location_id, rule.rule_id)
    params = rule.params_of(variant)
    target = target_level(reorder_point, change.sold_24h, params.get("target_cover_days", 7.0))
    needed = max(1, target - change.available - change.in_transit)
    if rule.kind == "stockout":
        return StockDecision(
            rule.rule_id,
            "stockout",
            change.sku,
            change.location_id,
            change.region,
            change.available,
            reorder_point,
            needed,
            None,
            "available reached 0",
            (change.cause,),
            change.ts_ms,
            variant,
        )
    others = region_positions(stock, change.sku, change.region, change.ts_ms)
    source = _largest_surplus(others, change, reorder_point)
    if source is not None:
        location, surplus = source.location_id, source.available - reorder_point
        return StockDecision(
            rule.rule_id,
            "transfer",
            change.sku,
            change.location_id,
            change.region,
            change.available,
            reorder_point,
            min(needed, surplus),
            location,
            f"available {change.available} below reorder point {reorder_point}; "
            f"{location} holds {surplus} above its own",
            (change.cause, source.cause),
            change.ts_ms,
            variant,
        )
    return StockDecision(
        rule.rule_id,
        "replenish",
        change.sku,
        change.location_id,
        change.region,
        change.available,
        reorder_point,
        needed,
        None,
        f"available {change.available} below reorder point {reorder_point}; "
        "no surplus in the region",
        (change.cause,),
        change.ts_ms,
        variant,
    )


@resumable
@dataclass(slots=True)
class CampaignState:
    """Coupon triggers naming one store for one sku (``campaign_prep``)."""

    #: event times and trigger ids within the longest window
    triggers: list[tuple[int, str]] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)


def evaluate_campaign_prep(
    state: CampaignState | None,
    store_id: str,
    region: str,
    sku: str,
    trigger_id: str,
    ts_ms: int,
    rules: list[Rule],
    available: int,
    reorder_point: int,
) -> tuple[CampaignState, list[StockOutcome]]:
    """Marketing drives stock: more than M coupons naming store S for sku K within a window
    → a ``prepare`` trigger to S, sized to the coupons not yet covered by available stock."""
    if state is None:
        state = CampaignState()
    state.triggers.append((ts_ms, trigger_id))
    longest = max((int(r.params["window"] * 1000) for r in rules), default=0)
    state.triggers = [(t, i) for t, i in state.triggers if t > ts_ms - longest]
    out: list[StockOutcome] = []
    for rule in rules:
        window_ms = int(rule.params["window"] * 1000)
        recent = [(t, i) for t, i in state.triggers if t > ts_ms - window_ms]
        if len(recent) <= rule.params["triggers"]:
            continue
        suppressed = claim(state.ledger, rule, ts_ms)
        if suppressed is not None:
            out.append(suppressed)
            continue
        needed = max(1, reorder_point + len(recent) - available)
        out.append(
            StockDecision(
                rule.rule_id,
                "prepare",
                sku,
                store_id,
                region,
                available,
                reorder_point,
                needed,
                None,
                f"{len(recent)} coupons name {store_id} for {sku} within the window",
                tuple(i for _, i in recent[-20:]),
                ts_ms,
            )
        )
    return state, out
