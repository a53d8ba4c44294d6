"""Stock-driven rules of rule_triggers: ``low_stock``, ``stockout`` and ``campaign_prep``,
pure.

State is kept per sku (every location of the sku in one place), so a low-stock crossing at a
store can look for a surplus elsewhere in its region without another lookup.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from domain.rules import Rule
from domain.trigger_policy import Ledger, may_fire


@dataclass(frozen=True, slots=True)
class StockChange:
    """One ``stock.changes`` event, as rule_triggers reads it."""

    sku: str
    location_id: str
    region: str
    available: int
    sold_24h: int
    ts_ms: int
    cause: str
    on_hand: int = 0
    location_type: str = "store"
    source_partition: int = 0  # of stock.changes


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


@dataclass(frozen=True, slots=True)
class Suppressed:
    rule_id: str
    reason: str  # cooldown


@dataclass(slots=True)
class SkuRuleState:
    #: location → latest change seen there
    positions: dict[str, StockChange] = field(default_factory=dict)
    #: (rule_id, location) pairs whose condition already fired and has not re-armed
    fired: set[tuple[str, str]] = field(default_factory=set)
    #: location → firing history, for cooldowns
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    #: location → perishable batches received there (``expiring_stock``)
    batches: dict[str, list[ExpiryBatch]] = field(default_factory=dict)
    #: location → event time it was first seen, and last seen selling (``overstock``)
    first_seen: dict[str, int] = field(default_factory=dict)
    last_selling: dict[str, int] = field(default_factory=dict)
    #: the latest event time seen for this sku
    seen_ms: int = 0
    #: event time the clearance timer last looked (its deadlines up to here are done)
    timer_checked_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> SkuRuleState:
        """Snapshots copy every epoch: copy the containers, share the immutable records."""
        return SkuRuleState(
            dict(self.positions),
            set(self.fired),
            {
                loc: Ledger(dict(led.last_fired), dict(led.coupons_per_day))
                for loc, led in self.ledgers.items()
            },
            {loc: list(b) for loc, b in self.batches.items()},
            dict(self.first_seen),
            dict(self.last_selling),
            self.seen_ms,
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


def _claim(ledger: Ledger, rule: Rule, ts_ms: int) -> Suppressed | None:
    """Record a firing of a stock rule, or say why its cooldown forbids it."""
    cooldown_ms = int(rule.cooldown_s * 1000)
    reason = may_fire(ledger, rule.rule_id, cooldown_ms, ts_ms, False, 0)
    if reason is not None:
        return Suppressed(rule.rule_id, reason)
    ledger.record(rule.rule_id, ts_ms, coupon=False, keep_ms=max(cooldown_ms, 1))
    return None


def target_level(reorder_point: int, sold_24h: int, target_cover_days: float) -> int:
    return max(reorder_point, math.ceil(target_cover_days * sold_24h))


#: (sku, region) → the sku's current position at every location of the region. The flow
#: reads it from the stock pool in Redis, and only when a rule fires: a decision that
#: compares locations then does not depend on the order in which their changes arrived.
RegionStock = Callable[[str, str], list[StockChange]]


def region_positions(
    state: SkuRuleState, sku: str, region: str, region_stock: RegionStock | None
) -> dict[str, StockChange]:
    if region_stock is not None:
        return {p.location_id: p for p in region_stock(sku, region)}
    return {loc: p for loc, p in state.positions.items() if p.region == region}


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


def evaluate_stock_rules(
    state: SkuRuleState | None,
    change: StockChange,
    rules: list[Rule],
    reorder_point: int,
    region_stock: RegionStock | None = None,
) -> tuple[SkuRuleState, list[StockDecision | Suppressed]]:
    """Apply one stock change to the low_stock / stockout rules of a sku × location.

    Without ``region_stock`` the other locations are those this state has seen."""
    if state is None:
        state = SkuRuleState()
    state.positions[change.location_id] = change
    ledger = state.ledgers.setdefault(change.location_id, Ledger())
    out: list[StockDecision | Suppressed] = []
    for rule in rules:
        if rule.kind == "low_stock":
            condition = change.available < reorder_point
        elif rule.kind == "stockout":
            condition = change.available <= 0
        else:
            continue
        key = (rule.rule_id, change.location_id)
        if not condition:
            state.fired.discard(key)  # re-armed
            continue
        if key in state.fired:
            continue  # still below: already fired on the crossing
        state.fired.add(key)
        suppressed = _claim(ledger, rule, change.ts_ms)
        if suppressed is not None:
            out.append(suppressed)
            continue
        out.append(_decision(state, rule, change, reorder_point, region_stock))
    return state, out


def _decision(
    state: SkuRuleState,
    rule: Rule,
    change: StockChange,
    reorder_point: int,
    region_stock: RegionStock | None,
) -> StockDecision:
    target = target_level(reorder_point, change.sold_24h, rule.params.get("target_cover_days", 7.0))
    needed = max(1, target - change.available)
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
        )
    others = region_positions(state, change.sku, change.region, region_stock)
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
    )


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
) -> tuple[CampaignState, list[StockDecision | Suppressed]]:
    """Marketing drives stock: more than M coupons naming store S for sku K within a window
    → a ``prepare`` trigger to S, sized to the coupons not yet covered by available stock."""
    if state is None:
        state = CampaignState()
    state.triggers.append((ts_ms, trigger_id))
    longest = max((int(r.params["window"] * 1000) for r in rules), default=0)
    state.triggers = [(t, i) for t, i in state.triggers if t > ts_ms - longest]
    out: list[StockDecision | Suppressed] = []
    for rule in rules:
        window_ms = int(rule.params["window"] * 1000)
        recent = [(t, i) for t, i in state.triggers if t > ts_ms - window_ms]
        if len(recent) <= rule.params["triggers"]:
            continue
        suppressed = _claim(state.ledger, rule, ts_ms)
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
