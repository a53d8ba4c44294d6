"""Clearance rules of rule_triggers, pure: ``overstock`` and ``expiring_stock``, and the
region audience that turns a clearance signal into coupons for the customers who showed
interest.

Stock side (state per sku × location, shared with ``low_stock``/``stockout`` in
``SkuRuleState``):

- ``overstock``: at a store, days of cover above ``cover_days``, or nothing sold for
  ``idle_days`` while more than ``min_on_hand`` units are on hand. Fires on the crossing and
  re-arms when the condition no longer holds, like ``low_stock``; idleness is also checked by
  the timer, since a shelf nobody buys from sends no stock changes.
- ``expiring_stock``: a perishable batch whose expiry is within ``within_days`` and which
  still has units on hand. Units per batch are estimated first-expiring-first-out: what is
  on hand belongs to the latest-expiring batches. It signals a clearance in the region and
  suggests either a ``transfer`` of the batch to the store of the region that sells the sku
  fastest (when that is faster than here) or a ``prepare`` of a clearance display here.
  A batch is judged at its window's start (by the timer) and at every stock change of its
  location in the window, with the position of that moment, until it fires: its units are
  on hand only from the stock change its receipt caused, which comes on another topic,
  before or after the receipt. A receipt read early waits for its time; one read after
  later changes of its location is judged at once at each of those moments
  (``receive_batch``, from the location's recent positions): either way, the same signal.

Audience side (state per region): product views by customer, sku and category. A clearance
signal waits until the region's views have caught up with its event time (so a replay
selects the same audience whatever the interleaving of the two input topics), then offers a
coupon to every customer who viewed the sku or its category within ``viewed_within`` — most
recent viewers first, at most ``max_audience`` of them.

The audience follows identity: a viewer merged into another customer (an anonymous device
that logged in) is offered the coupon under the survivor, who is counted once with the
latest view of either; an erased customer's views, and those of every id merged into them,
are dropped at once. A merge is kept for a customer with views here: their own (the notice
comes after them, on the same partition) or those of a customer merged into them. A chain
runs through customers who never browsed in the region (A into B into C, B never browsing:
A's views count for C), whichever of the two notices comes first, as they come on different
partitions: a merge of a customer with no views here waits (``passing``) for a merge into
them, and is dropped once the region's views are ``PASSING_MS`` past it. Only a notice later
than that by the partitions' skew would end the chain at B, whose key is gone: the customers
step then suppresses the offer (``gone_customer``) rather than send it to a merged-away id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from domain.customer_rules import Offer
from domain.resumable import resumable
from domain.rules import Rule, RuleSet
from domain.stock_rules import (
    ExpiryBatch,
    SkuRuleState,
    StockChange,
    StockDecision,
    StockTriggerSuppressed,
    claim,
    position_at,
    region_positions,
)
from domain.stock_view import StockView
from domain.trigger_policy import DAY_MS

#: View times kept per customer and sku (or category): enough to find the last view before
#: a signal even when the customer has come back since.
VIEWS_KEPT = 8
#: Views older than the audience horizon are dropped when the region's clock crosses a
#: multiple of this (event time): often enough to bound memory, rarely enough that the pass
#: over every view stays cheap (hourly, it was 7 % of rule_triggers at 60,000 customers).
AUDIENCE_PRUNE_MS = 6 * 3_600_000
#: How long (event time, behind the region's latest view) a merge of a customer with no views
#: in the region waits for the merge into them that would carry views to it; from one to two
#: prune periods, as it is dropped with the views (identity notices of one chain come within
#: seconds of each other, on partitions the source keeps aligned within minutes).
PASSING_MS = AUDIENCE_PRUNE_MS
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


ClearanceOutcome = ClearanceSignal | StockDecision | StockTriggerSuppressed


def add_batch(state: SkuRuleState | None, batch: ExpiryBatch) -> SkuRuleState:
    """Remember a perishable receipt (once per event id, however often it is replayed)."""
    if state is None:
        state = SkuRuleState()
    if all(b.event_id != batch.event_id for b in state.batches):
        state.batches.append(batch)
        state.batches.sort(key=lambda b: (b.expires_ms, b.event_id))
    return state


def batch_units(state: SkuRuleState, at_ms: int | None = None) -> list[tuple[ExpiryBatch, int]]:
    """Units of each batch still on hand, first-expiring-first-out: now, or as of ``at_ms``
    (the position then, the batches received by then)."""
    position, batches = state.position, state.batches
    if at_ms is not None:
        if position is not None and at_ms < position.ts_ms:
            position = position_at(state, at_ms)
        if any(b.ts_ms > at_ms for b in batches):
            batches = [b for b in batches if b.ts_ms <= at_ms]
    left = max(0, position.on_hand) if position is not None else 0
    out: list[tuple[ExpiryBatch, int]] = []
    for batch in reversed(batches):  # latest expiry keeps stock
        units = min(batch.qty, left)
        left -= units
        out.append((batch, units))
    out.reverse()
    return out


def note_change(state: SkuRuleState, change: StockChange) -> None:
    """Remember when the location was first seen and last seen selling (for idleness)."""
    if state.first_seen_ms is None:
        state.first_seen_ms = change.ts_ms
    if change.sold_24h > 0:
        last = state.last_selling_ms if state.last_selling_ms is not None else change.ts_ms
        state.last_selling_ms = max(last, change.ts_ms)


def _idle_since(state: SkuRuleState, change: StockChange) -> int:
    if state.last_selling_ms is not None:
        return state.last_selling_ms
    return state.first_seen_ms if state.first_seen_ms is not None else change.ts_ms


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
    idle_days = (now_ms - _idle_since(state, change)) / DAY_MS
    if idle_days >= rule.params["idle_days"]:
        return f"nothing sold for {idle_days:.0f} days with {change.on_hand} on hand"
    return None


def evaluate_clearance(
    state: SkuRuleState,
    rules: RuleSet,
    category: str,
    now_ms: int,
    stock: StockView,
    *,
    timer: bool = False,
) -> list[ClearanceOutcome]:
    """Overstock and expiring-stock checks of the location at ``now_ms`` (event time), after
    a change there or when the timer fires (which then marks its deadlines up to ``now_ms``
    as looked at)."""
    out: list[ClearanceOutcome] = []
    if timer:
        state.timer_checked_ms = max(state.timer_checked_ms, now_ms)
    change = state.position
    if change is None:
        _prune_batches(state, now_ms)
        return out
    for rule in rules.of_kind("overstock"):
        why = _overstocked(state, change, rule, now_ms)
        if why is None:
            state.fired.discard(rule.rule_id)
            continue
        if rule.rule_id in state.fired:
            continue
        state.fired.add(rule.rule_id)
        suppressed = claim(state.ledger, rule, now_ms)
        if suppressed is not None:
            out.append(suppressed)
            continue
        out.append(
            ClearanceSignal(
                rule.rule_id,
                "overstock",
                change.sku,
                category,
                change.location_id,
                change.region,
                f"{change.location_id}: {why}",
                (change.cause,),
                now_ms,
            )
        )
    for rule in rules.of_kind("expiring_stock"):
        out += _expiring(state, rule, category, now_ms, stock)
    _prune_batches(state, now_ms)
    return out


def _expiring(
    state: SkuRuleState,
    rule: Rule,
    category: str,
    now_ms: int,
    stock: StockView,
    only: str | None = None,
) -> list[ClearanceOutcome]:
    """The batches (or the one batch ``only``) of the location in their window at
    ``now_ms`` with units on hand then."""
    out: list[ClearanceOutcome] = []
    within_ms = int(rule.params["within_days"] * DAY_MS)
    for batch, units in batch_units(state, now_ms):
        key = (rule.rule_id, batch.event_id)
        if units <= 0 or key in state.batches_fired or (only and batch.event_id != only):
            continue
        if not batch.expires_ms - within_ms <= now_ms < batch.expires_ms:
            continue
        state.batches_fired.add(key)  # once per batch; pruned with the batch
        suppressed = claim(state.ledger, rule, now_ms)
        if suppressed is not None:
            out.append(suppressed)
            continue
        days_left = (batch.expires_ms - now_ms) / DAY_MS
        reason = f"{units} units at {batch.location_id} expire in {days_left:.1f} days"
        evidence = (batch.event_id,)
        out.append(
            ClearanceSignal(
                rule.rule_id,
                "expiring_stock",
                batch.sku,
                category,
                batch.location_id,
                batch.region,
                reason,
                evidence,
                now_ms,
            )
        )
        others = region_positions(stock, batch.sku, batch.region, now_ms)
        here = position_at(state, now_ms)
        out.append(_expiry_move(here, others, rule, batch, units, days_left, reason, now_ms))
    return out


def receive_batch(
    state: SkuRuleState, batch: ExpiryBatch, rules: RuleSet, category: str, stock: StockView
) -> list[ClearanceOutcome]:
    """Remember a perishable receipt, and judge it now if the location has already been
    checked past the start of its window without it (the receipt was read after its
    location's stock changes): at that start, then at each later change in the window, as
    the timer and those changes would have, until it fires."""
    add_batch(state, batch)
    checked = max(state.timer_checked_ms, state.position.ts_ms if state.position else 0)
    out: list[ClearanceOutcome] = []
    for rule in rules.of_kind("expiring_stock"):
        within_ms = int(rule.params["within_days"] * DAY_MS)
        start = max(batch.expires_ms - within_ms, batch.ts_ms)
        if start > checked:
            continue  # in time: the timer or a change will judge it
        times = [start] + [c.ts_ms for c in state.history if start < c.ts_ms <= checked]
        for ts_ms in times:
            if ts_ms >= batch.expires_ms or (rule.rule_id, batch.event_id) in state.batches_fired:
                break
            out += _expiring(state, rule, category, ts_ms, stock, only=batch.event_id)
    return out


def _expiry_move(
    here: StockChange | None,
    others: dict[str, StockChange],
    rule: Rule,
    batch: ExpiryBatch,
    units: int,
    days_left: float,
    reason: str,
    now_ms: int,
) -> StockDecision:
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
    kept = [b for b in state.batches if b.expires_ms + EXPIRED_KEEP_MS > now_ms]
    if len(kept) == len(state.batches):
        return
    gone = {b.event_id for b in state.batches} - {b.event_id for b in kept}
    state.batches_fired = {k for k in state.batches_fired if k[1] not in gone}
    state.batches = kept


def clearance_deadlines(state: SkuRuleState, rules: RuleSet) -> list[int]:
    """Event times, in order, at which the timer may find something: a batch entering its
    expiry window with units left, a store shelf turning idle with stock on it."""
    deadlines: set[int] = set()
    expiring = rules.of_kind("expiring_stock")
    if expiring and state.batches:
        # Units as each batch's window opens: a receipt read ahead of its time does not count
        # before it (first-expiring-first-out would give it the older stock). Usually that is
        # the stock of now, with every batch received.
        position_ms = state.position.ts_ms if state.position is not None else 0
        received_ms = max(b.ts_ms for b in state.batches)
        units_now: dict[str, int] | None = None
        for rule in expiring:
            within_ms = int(rule.params["within_days"] * DAY_MS)
            for batch in state.batches:
                start = max(batch.expires_ms - within_ms, batch.ts_ms)
                if (
                    start <= state.timer_checked_ms
                    or (rule.rule_id, batch.event_id) in state.batches_fired
                ):
                    continue
                if start >= position_ms and start >= received_ms:
                    if units_now is None:
                        units_now = {b.event_id: n for b, n in batch_units(state)}
                    units = units_now
                else:
                    units = {b.event_id: n for b, n in batch_units(state, start)}
                if units.get(batch.event_id, 0) > 0:
                    deadlines.add(start)
    change = state.position
    for rule in rules.of_kind("overstock"):
        idle_ms = int(rule.params["idle_days"] * DAY_MS)
        if (
            change is not None
            and change.location_type == "store"
            and change.on_hand > rule.params["min_on_hand"]
            and rule.rule_id not in state.fired
        ):
            deadlines.add(_idle_since(state, change) + idle_ms)
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


@resumable
@dataclass(slots=True)
class AudienceState:
    #: sku → customer → recent view times (sorted, the last VIEWS_KEPT); same by category.
    #: Tuples, replaced on change: a snapshot copies the dicts, not every list in them.
    by_sku: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    by_category: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    #: signals waiting for the region's views to catch up with their event time
    pending: list[ClearanceSignal] = field(default_factory=list)
    views_seen_ms: int = 0
    #: customer → event time of the latest view kept here of theirs or of a customer merged
    #: into them (a merge of a customer without one waits in ``passing``)
    viewers: dict[str, int] = field(default_factory=dict)
    #: merged customer with views here → (survivor, event time of the merge)
    merged_into: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: merged customer with no views here (yet) → (survivor, event time of the merge), kept
    #: ``PASSING_MS`` for a merge into them whose notice comes later from another partition
    passing: dict[str, tuple[str, int]] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, object]) -> AudienceState:
        return AudienceState(
            {k: dict(v) for k, v in self.by_sku.items()},
            {k: dict(v) for k, v in self.by_category.items()},
            list(self.pending),
            self.views_seen_ms,
            dict(self.viewers),
            dict(self.merged_into),
            dict(self.passing),
        )


def audience_horizon_ms(rules: RuleSet) -> int:
    windows = [r.params["viewed_within"] for r in rules.of_kind("overstock")]
    windows += [r.params.get("viewed_within", 0.0) for r in rules.of_kind("expiring_stock")]
    return int(max(windows, default=0.0) * 1000)


def view_horizon_ms(views_seen_ms: int, rules: RuleSet) -> int:
    """Views at or before this event time are no longer kept: a day beyond the longest
    window before the latest view, counted from the start of its ``AUDIENCE_PRUNE_MS``
    period (so the horizon moves, and views are pruned, once per period)."""
    return _period_start(views_seen_ms) - audience_horizon_ms(rules) - DAY_MS


def _period_start(ts_ms: int) -> int:
    """The start of the ``AUDIENCE_PRUNE_MS`` period of ``ts_ms``: what is pruned moves
    with it, once per period."""
    return ts_ms - ts_ms % AUDIENCE_PRUNE_MS


def add_view(state: AudienceState | None, view: View, rules: RuleSet) -> AudienceState:
    """Add a product view to the region's audience.

    What is kept depends only on the views, not on the order they arrive in (partitions
    interleave differently in every run): every view after the horizon of the latest view,
    the last ``VIEWS_KEPT`` per customer and sku (or category). A view already behind the
    horizon is not kept, as it would be pruned had it come in time.
    """
    if state is None:
        state = AudienceState()
    horizon = view_horizon_ms(state.views_seen_ms, rules)
    if view.ts_ms <= horizon:
        return state
    for index, key in ((state.by_sku, view.sku), (state.by_category, view.category)):
        customers = index.setdefault(key, {})
        times = customers.get(view.customer_id, ())
        if view.ts_ms not in times:
            customers[view.customer_id] = tuple(sorted((*times, view.ts_ms)))[-VIEWS_KEPT:]
    if view.ts_ms > state.viewers.get(view.customer_id, horizon):
        state.viewers[view.customer_id] = view.ts_ms
    if view.ts_ms > state.views_seen_ms:
        state.views_seen_ms = view.ts_ms
        moved = view_horizon_ms(view.ts_ms, rules)
        if moved > horizon:
            _prune_views(state, moved)
            _prune_passing(state, _period_start(view.ts_ms) - PASSING_MS)
    return state


def _prune_views(state: AudienceState, horizon: int) -> None:
    for index in (state.by_sku, state.by_category):
        for key in list(index):
            kept: dict[str, tuple[int, ...]] = {}
            for customer, times in index[key].items():
                if times[0] > horizon:
                    kept[customer] = times
                elif times[-1] > horizon:
                    kept[customer] = tuple(t for t in times if t > horizon)
            if kept:
                index[key] = kept
            else:
                del index[key]
    state.viewers = {c: ts for c, ts in state.viewers.items() if ts > horizon}
    # The merged customer's views came before their merge: none is left past the horizon.
    state.merged_into = {m: v for m, v in state.merged_into.items() if v[1] > horizon}


def _prune_passing(state: AudienceState, cut_ms: int) -> None:
    if state.passing:
        state.passing = {m: v for m, v in state.passing.items() if v[1] > cut_ms}


def follow_merge(
    state: AudienceState | None, merged: str, survivor: str, ts_ms: int, rules: RuleSet
) -> AudienceState:
    """``merged`` now belongs to ``survivor``: their views here count for the survivor."""
    if state is None:
        state = AudienceState()
    if merged == survivor or ts_ms <= view_horizon_ms(state.views_seen_ms, rules):
        return state
    if merged in state.viewers:
        _keep_merge(state, merged, survivor, ts_ms)
    else:
        state.passing[merged] = (survivor, ts_ms)
    return state


def _keep_merge(state: AudienceState, merged: str, survivor: str, ts_ms: int) -> None:
    """Keep the merge of a customer with views here, and along the survivor's own merges
    (kept, or waiting for views to reach them) carry the latest view time on. A chain from
    identity_stitch has no cycle; one from a damaged snapshot stops where it would close."""
    seen = {merged}
    while True:
        state.merged_into[merged] = (survivor, ts_ms)
        latest = state.viewers[merged]
        if latest > state.viewers.get(survivor, latest - 1):
            state.viewers[survivor] = latest
        seen.add(survivor)
        onward = state.merged_into.get(survivor) or state.passing.pop(survivor, None)
        if onward is None or onward[0] in seen:
            return
        merged, (survivor, ts_ms) = survivor, onward


def forget_viewer(state: AudienceState | None, customer_id: str) -> AudienceState:
    """An erasure: drop the views of ``customer_id`` and of every id merged into them."""
    if state is None:
        return AudienceState()
    gone = {m for m in state.merged_into if survivor_of(state, m) == customer_id}
    gone.add(customer_id)
    state.passing = {m: v for m, v in state.passing.items() if m not in gone and v[0] not in gone}
    for index in (state.by_sku, state.by_category):
        for key in list(index):
            customers = index[key]
            if any(c in customers for c in gone):
                kept = {c: t for c, t in customers.items() if c not in gone}
                if kept:
                    index[key] = kept
                else:
                    del index[key]
    for customer in gone:
        state.viewers.pop(customer, None)
        state.merged_into.pop(customer, None)
    return state


def survivor_of(state: AudienceState, customer_id: str) -> str:
    """The customer a viewer's id belongs to now, through every merge kept (A into B, B into
    C: C). A cycle cannot come from identity_stitch; one read from a damaged snapshot ends
    the walk rather than loop."""
    seen = {customer_id}
    merge = state.merged_into.get(customer_id)
    while merge is not None and merge[0] not in seen:
        customer_id = merge[0]
        seen.add(customer_id)
        merge = state.merged_into.get(customer_id)
    return customer_id


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
                if state.merged_into:
                    customer = survivor_of(state, customer)
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
