"""Clearance rules of rule_triggers, pure: ``overstock`` and ``expiring_stock``, and the
region audience that turns a clearance signal into coupons for the customers who showed
interest.

Stock side (state per sku, shared with ``low_stock``/``stockout`` in ``SkuRuleState``):

- ``overstock``: at a store, days of cover above ``cover_days``, or nothing sold for
  ``idle_days`` while more than ``min_on_hand`` units are on hand. Fires on the crossing and
  re-arms when the condition no longer holds, like ``low_stock``; idleness is also checked by
  the timer, since a shelf nobody buys from sends no stock changes.
- ``expiring_stock``: a perishable batch whose expiry is within ``within_days`` and which
  still has units on hand. Units per batch are estimated first-expiring-first-out: what is
  on hand belongs to the latest-expiring batches. It signals a clearance in the region and
  suggests either a ``transfer`` of the batch to the store of the region that sells the sku
  fastest (when that is faster than here) or a ``prepare`` of a clearance display here.

Audience side (state per region): product views by customer, sku and category. A clearance
signal waits until the region's views have caught up with its event time (so a replay
selects the same audience whatever the interleaving of the two input topics), then offers a
coupon to every customer who viewed the sku or its category within ``viewed_within`` — most
recent viewers first, at most ``max_audience`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from domain.customer_rules import Offer
from domain.rules import Rule, RuleSet
from domain.stock_rules import (
    ExpiryBatch,
    RegionStock,
    SkuRuleState,
    StockChange,
    StockDecision,
    Suppressed,
    _claim,
    region_positions,
)
from domain.trigger_policy import DAY_MS, Ledger

#: View times kept per customer and sku (or category): enough to find the last view before
#: a signal even when the customer has come back since.
VIEWS_KEPT = 8
#: Views older than the audience horizon are dropped when the region's clock crosses a
#: multiple of this (event time): often enough to bound memory, rarely enough that the pass
#: over every view stays cheap (hourly, it was 7 % of rule_triggers at 60,000 customers).
AUDIENCE_PRUNE_MS = 6 * 3_600_000
#: How long after its expiry a batch is still kept (then it is written off, not cleared).
EXPIRED_KEEP_MS = DAY_MS


@dataclass(frozen=True, slots=True)
class ClearanceSignal:
    rule_id: str
    kind: str  # overstock | expiring_stock
    sku: str
    category: str
    location_id: str
    region: str
    reason: str
    evidence: tuple[str, ...]
    ts_ms: int


ClearanceOutcome = ClearanceSignal | StockDecision | Suppressed


def add_batch(state: SkuRuleState | None, batch: ExpiryBatch) -> SkuRuleState:
    if state is None:
        state = SkuRuleState()
    batches = state.batches.setdefault(batch.location_id, [])
    if all(b.event_id != batch.event_id for b in batches):
        batches.append(batch)
        batches.sort(key=lambda b: (b.expires_ms, b.event_id))
    state.seen_ms = max(state.seen_ms, batch.ts_ms)
    return state


def batch_units(state: SkuRuleState, location_id: str) -> list[tuple[ExpiryBatch, int]]:
    """Units of each batch still on hand, first-expiring-first-out."""
    position = state.positions.get(location_id)
    left = max(0, position.on_hand) if position is not None else 0
    out: list[tuple[ExpiryBatch, int]] = []
    for batch in reversed(state.batches.get(location_id, [])):  # latest expiry keeps stock
        units = min(batch.qty, left)
        left -= units
        out.append((batch, units))
    out.reverse()
    return out


def note_change(state: SkuRuleState, change: StockChange) -> None:
    """Remember when a location was first seen and last seen selling (for idleness)."""
    state.first_seen.setdefault(change.location_id, change.ts_ms)
    if change.sold_24h > 0:
        last = state.last_selling.get(change.location_id, change.ts_ms)
        state.last_selling[change.location_id] = max(last, change.ts_ms)
    state.seen_ms = max(state.seen_ms, change.ts_ms)


def _overstocked(state: SkuRuleState, change: StockChange, rule: Rule, now_ms: int) -> str | None:
    """Why the location is overstocked under ``rule``, or None."""
    if change.location_type != "store" or change.on_hand <= rule.params["min_on_hand"]:
        return None
    # ``sold_24h`` is as of the change; a timer looking a day or more later knows that
    # nothing has been sold since (a sale would have sent a change).
    sold_24h = change.sold_24h if now_ms - change.ts_ms < DAY_MS else 0
    if sold_24h > 0:
        cover = change.available / change.sold_24h
        if cover > rule.params["cover_days"]:
            return f"{cover:.0f} days of cover, above {rule.params['cover_days']:g}"
        return None
    idle_since = state.last_selling.get(change.location_id, state.first_seen[change.location_id])
    idle_days = (now_ms - idle_since) / DAY_MS
    if idle_days >= rule.params["idle_days"]:
        return f"nothing sold for {idle_days:.0f} days with {change.on_hand} on hand"
    return None


def evaluate_clearance(
    state: SkuRuleState,
    rules: RuleSet,
    category: str,
    now_ms: int,
    location_id: str | None = None,
    region_stock: RegionStock | None = None,
) -> list[ClearanceOutcome]:
    """Overstock and expiring-stock checks at ``now_ms`` (event time), for one location after
    a change there, or for every location when the timer fires (which then marks its
    deadlines up to ``now_ms`` as looked at)."""
    out: list[ClearanceOutcome] = []
    if location_id is None:
        state.timer_checked_ms = max(state.timer_checked_ms, now_ms)
    locations = [location_id] if location_id is not None else sorted(state.positions)
    for rule in rules.of_kind("overstock"):
        for loc in locations:
            change = state.positions.get(loc)
            if change is None:
                continue
            key = (rule.rule_id, loc)
            why = _overstocked(state, change, rule, now_ms)
            if why is None:
                state.fired.discard(key)
                continue
            if key in state.fired:
                continue
            state.fired.add(key)
            suppressed = _claim(_ledger(state, loc), rule, now_ms)
            if suppressed is not None:
                out.append(suppressed)
                continue
            out.append(
                ClearanceSignal(
                    rule.rule_id,
                    "overstock",
                    change.sku,
                    category,
                    loc,
                    change.region,
                    f"{loc}: {why}",
                    (change.cause,),
                    now_ms,
                )
            )
    for rule in rules.of_kind("expiring_stock"):
        for loc in locations:
            out += _expiring(state, rule, category, loc, now_ms, region_stock)
    _prune_batches(state, now_ms)
    return out


def _ledger(state: SkuRuleState, location_id: str) -> Ledger:
    return state.ledgers.setdefault(location_id, Ledger())


def _expiring(
    state: SkuRuleState,
    rule: Rule,
    category: str,
    location_id: str,
    now_ms: int,
    region_stock: RegionStock | None,
) -> list[ClearanceOutcome]:
    out: list[ClearanceOutcome] = []
    within_ms = int(rule.params["within_days"] * DAY_MS)
    for batch, units in batch_units(state, location_id):
        key = (rule.rule_id, batch.event_id)
        if units <= 0 or key in state.fired:
            continue
        if not batch.expires_ms - within_ms <= now_ms < batch.expires_ms:
            continue
        state.fired.add(key)  # once per batch; pruned with the batch
        suppressed = _claim(_ledger(state, location_id), rule, now_ms)
        if suppressed is not None:
            out.append(suppressed)
            continue
        days_left = (batch.expires_ms - now_ms) / DAY_MS
        reason = f"{units} units at {location_id} expire in {days_left:.1f} days"
        evidence = (batch.event_id,)
        out.append(
            ClearanceSignal(
                rule.rule_id,
                "expiring_stock",
                batch.sku,
                category,
                location_id,
                batch.region,
                reason,
                evidence,
                now_ms,
            )
        )
        others = region_positions(state, batch.sku, batch.region, region_stock)
        out.append(_expiry_move(state, others, rule, batch, units, days_left, reason, now_ms))
    return out


def _expiry_move(
    state: SkuRuleState,
    others: dict[str, StockChange],
    rule: Rule,
    batch: ExpiryBatch,
    units: int,
    days_left: float,
    reason: str,
    now_ms: int,
) -> StockDecision:
    here = state.positions.get(batch.location_id)
    here_rate = here.sold_24h if here is not None else 0
    best: StockChange | None = None
    for loc, other in sorted(others.items()):
        if loc == batch.location_id or other.region != batch.region:
            continue
        if other.location_type == "store" and other.sold_24h > here_rate:
            if best is None or other.sold_24h > best.sold_24h:
                best = other
    if best is not None:
        qty = max(1, min(units, math.ceil(best.sold_24h * days_left)))
        return StockDecision(
            rule.rule_id,
            "transfer",
            batch.sku,
            best.location_id,
            batch.region,
            best.available,
            0,
            qty,
            batch.location_id,
            f"{reason}; {best.location_id} sells {best.sold_24h}/day",
            (batch.event_id,),
            now_ms,
        )
    return StockDecision(
        rule.rule_id,
        "prepare",
        batch.sku,
        batch.location_id,
        batch.region,
        here.available if here is not None else 0,
        0,
        units,
        None,
        f"{reason}; prepare a clearance display",
        (batch.event_id,),
        now_ms,
    )


def _prune_batches(state: SkuRuleState, now_ms: int) -> None:
    for loc, batches in list(state.batches.items()):
        kept = [b for b in batches if b.expires_ms + EXPIRED_KEEP_MS > now_ms]
        gone = {b.event_id for b in batches} - {b.event_id for b in kept}
        if gone:
            state.fired = {k for k in state.fired if k[1] not in gone}
        if kept:
            state.batches[loc] = kept
        else:
            del state.batches[loc]


def clearance_deadlines(state: SkuRuleState, rules: RuleSet) -> list[int]:
    """Event times, in order, at which the timer may find something: a batch entering its
    expiry window with units left, a store shelf turning idle with stock on it."""
    deadlines: set[int] = set()
    for rule in rules.of_kind("expiring_stock"):
        within_ms = int(rule.params["within_days"] * DAY_MS)
        for loc in state.batches:
            for batch, units in batch_units(state, loc):
                if units > 0 and (rule.rule_id, batch.event_id) not in state.fired:
                    deadlines.add(max(batch.expires_ms - within_ms, batch.ts_ms))
    for rule in rules.of_kind("overstock"):
        idle_ms = int(rule.params["idle_days"] * DAY_MS)
        for loc, change in state.positions.items():
            if (
                change.location_type == "store"
                and change.on_hand > rule.params["min_on_hand"]
                and (rule.rule_id, loc) not in state.fired
            ):
                since = state.last_selling.get(loc, state.first_seen.get(loc, change.ts_ms))
                deadlines.add(since + idle_ms)
    return sorted(d for d in deadlines if d > state.timer_checked_ms)


def clearance_deadline(state: SkuRuleState, rules: RuleSet) -> int | None:
    """The next event time at which the timer may find something (expiry or idleness)."""
    deadlines = clearance_deadlines(state, rules)
    return deadlines[0] if deadlines else None


# --- region audience ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    customer_id: str
    sku: str
    category: str
    ts_ms: int
    source_partition: int = 0  # of events.resolved


@dataclass(slots=True)
class AudienceState:
    #: sku → customer → recent view times (sorted, the last VIEWS_KEPT); same by category.
    #: Tuples, replaced on change: a snapshot copies the dicts, not every list in them.
    by_sku: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    by_category: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    #: signals waiting for the region's views to catch up with their event time
    pending: list[ClearanceSignal] = field(default_factory=list)
    views_seen_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> AudienceState:
        return AudienceState(
            {k: dict(v) for k, v in self.by_sku.items()},
            {k: dict(v) for k, v in self.by_category.items()},
            list(self.pending),
            self.views_seen_ms,
        )


def audience_horizon_ms(rules: RuleSet) -> int:
    windows = [r.params["viewed_within"] for r in rules.of_kind("overstock")]
    windows += [r.params.get("viewed_within", 0.0) for r in rules.of_kind("expiring_stock")]
    return int(max(windows, default=0.0) * 1000)


def add_view(state: AudienceState | None, view: View, rules: RuleSet) -> AudienceState:
    if state is None:
        state = AudienceState()
    for index, key in ((state.by_sku, view.sku), (state.by_category, view.category)):
        customers = index.setdefault(key, {})
        times = customers.get(view.customer_id, ())
        if view.ts_ms not in times:
            customers[view.customer_id] = tuple(sorted((*times, view.ts_ms)))[-VIEWS_KEPT:]
    if view.ts_ms > state.views_seen_ms:
        # Views are kept a day longer than the longest window, for signals that arrive late.
        horizon = view.ts_ms - audience_horizon_ms(rules) - DAY_MS
        # Pruning is amortised: only when the clock crosses a multiple of the period.
        if view.ts_ms // AUDIENCE_PRUNE_MS != state.views_seen_ms // AUDIENCE_PRUNE_MS:
            for index in (state.by_sku, state.by_category):
                for key in list(index):
                    kept = {c: t for c, t in index[key].items() if t[-1] > horizon}
                    if kept:
                        index[key] = kept
                    else:
                        del index[key]
        state.views_seen_ms = view.ts_ms
    return state


def add_signal(state: AudienceState | None, signal: ClearanceSignal) -> AudienceState:
    if state is None:
        state = AudienceState()
    state.pending.append(signal)
    return state


def release_signals(
    state: AudienceState, watermark_ms: int, rules: RuleSet, max_audience: int
) -> list[Offer]:
    """Offers for every pending signal whose event time the views have caught up with."""
    ready = [s for s in state.pending if s.ts_ms <= watermark_ms]
    if not ready:
        return []
    state.pending = [s for s in state.pending if s.ts_ms > watermark_ms]
    offers: list[Offer] = []
    for signal in sorted(ready, key=lambda s: (s.ts_ms, s.rule_id, s.sku, s.location_id)):
        rule = rules.by_id.get(signal.rule_id)
        if rule is None:
            continue
        window_ms = int(rule.params.get("viewed_within", 7 * 86_400) * 1000)
        low, high = signal.ts_ms - window_ms, signal.ts_ms
        latest: dict[str, int] = {}
        for index, key in ((state.by_sku, signal.sku), (state.by_category, signal.category)):
            for customer, times in index.get(key, {}).items():
                for ts in times:
                    if low < ts <= high and ts > latest.get(customer, low):
                        latest[customer] = ts
        chosen = sorted(latest.items(), key=lambda item: (-item[1], item[0]))[:max_audience]
        for customer, _ in sorted(chosen):
            offers.append(
                Offer(
                    signal.rule_id,
                    customer,
                    signal.sku,
                    signal.location_id,
                    signal.reason,
                    signal.evidence,
                    signal.ts_ms,
                )
            )
    return offers
