"""Customer-driven coupon rules of rule_triggers, pure: ``cart_abandonment``,
``browse_nearby_stock`` and ``win_back``, plus the coupons the region audience offers
(``overstock``, ``expiring_stock``), quiet hours and conversions.

State is kept per customer. Time is event time: ``on_event`` folds a resolved event in and
returns what fires now; ``on_time`` fires deadlines (cart abandonment) that have passed by a
given event time, so the flow can call it from a timer during live traffic and a replay of
yesterday fires exactly the same coupons.

Every candidate then passes the shared policy (cooldown per rule and customer, frequency cap
across coupon rules per day) and the experiment draw; control-group draws are returned as
``holdout`` so they can be counted but never sent.

A coupon whose rule has quiet hours and that falls inside them is *held* and released (with
``held_until``) by ``on_time`` once they end; holdouts are held alike, so both arms see the
same timing. Every coupon or holdout released opens a conversion window: the customer's next
purchase (an order, a till sale, or a redemption of the coupon's code) within the window
counts once as a ``CouponConversion`` of that rule × variant, control included, which is what
uplift is measured from.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from domain.rules import Rule, RuleSet
from domain.trigger_policy import (
    CONTROL,
    DAY_MS,
    Ledger,
    draw_variant,
    may_fire,
    quiet_until,
)

#: (region, sku, minimum available) → stores of the region holding that much, best first.
NearbyStock = Callable[[str, str, int], list[tuple[str, int]]]


@dataclass(frozen=True, slots=True)
class CustomerEvent:
    """The parts of an ``events.resolved`` record the customer rules read."""

    event_id: str
    event_type: str
    ts_ms: int
    customer_id: str
    region: str | None = None
    sku: str | None = None
    skus: tuple[str, ...] = ()  # of an order or a till receipt
    is_purchase: bool = False  # order_placed or POS sale
    coupon_codes: tuple[str, ...] = ()  # redeemed at a till
    category: str | None = None  # of ``sku``
    source_partition: int = 0  # of events.resolved: the clock its timers follow
    #: clickstream channel (``app``, ``web``, …); ``store`` for a till receipt
    channel: str | None = None
    #: the store of a till receipt or of a ``store_checkin``
    store_id: str | None = None
    #: ``delivery`` | ``store_pickup`` of an ``order_placed``
    fulfillment: str | None = None
    #: total of a purchase (an order or a till sale), else 0
    revenue: float = 0.0
    #: product categories of ``skus`` (same order; unknown skus left out)
    categories: tuple[str, ...] = ()
    #: ``marketing`` of a ``consent`` event (None for every other event)
    consent: bool | None = None
    #: a till sale that scanned a loyalty card (a known member walked into the store)
    member_scan: bool = False


@dataclass(frozen=True, slots=True)
class Offer:
    """A clearance coupon the region audience step proposes to one customer."""

    rule_id: str
    customer_id: str
    sku: str
    store_id: str | None
    reason: str
    evidence: tuple[str, ...]
    ts_ms: int


@dataclass(frozen=True, slots=True)
class CouponDecision:
    rule_id: str
    customer_id: str
    variant: str  # `control` goes to triggers.holdout
    sku: str | None
    store_id: str | None
    reason: str
    evidence: tuple[str, ...]
    event_time_ms: int
    #: end of the quiet hours the coupon was held through (None: sent at once)
    held_until_ms: int | None = None

    @property
    def holdout(self) -> bool:
        return self.variant == CONTROL

    @property
    def sent_at_ms(self) -> int:
        """Event time at which the coupon is due: after the quiet hours when held."""
        return self.held_until_ms if self.held_until_ms is not None else self.event_time_ms

    @property
    def code(self) -> str:
        """The coupon code a till scans; derived from the cause, so replays give the same."""
        return coupon_code(self.rule_id, self.customer_id, self.sku or "", self.evidence)


def coupon_code(rule_id: str, customer_id: str, sku: str, evidence: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\x1f".join((rule_id, customer_id, sku, *evidence)).encode())
    return "OS" + digest.hexdigest()[:12].upper()


@dataclass(frozen=True, slots=True)
class CouponSuppressed:
    """A coupon its rule's cooldown or the customer's frequency cap held back."""

    rule_id: str
    reason: str  # cooldown | cap
    variant: str = "default"


@dataclass(frozen=True, slots=True)
class CouponConversion:
    """A purchase by a triggered (or held-out) customer inside the conversion window."""

    rule_id: str
    variant: str
    customer_id: str
    code: str
    via: str  # redeemed (the coupon's code at a till) | purchase
    event_id: str
    ts_ms: int


@dataclass(slots=True)
class OpenTrigger:
    rule_id: str
    variant: str
    code: str
    sent_ms: int


@dataclass(slots=True)
class CustomerState:
    #: sku → event times and ids of recent product views
    views: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: sku → (deadline, add_to_cart event id) of carts not yet ordered
    carts: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: skus carted or ordered recently (they no longer count as "only browsed")
    carted_at: dict[str, int] = field(default_factory=dict)
    last_purchase_ms: int | None = None
    ledger: Ledger = field(default_factory=Ledger)
    #: coupons waiting for their quiet hours to end
    held: list[CouponDecision] = field(default_factory=list)
    #: coupons and holdouts sent within the conversion window, not yet converted
    open_triggers: list[OpenTrigger] = field(default_factory=list)

    def __deepcopy__(self, memo: dict[int, object]) -> CustomerState:
        """Snapshots copy every epoch: copy the containers, share the immutable records."""
        return CustomerState(
            {sku: list(v) for sku, v in self.views.items()},
            dict(self.carts),
            dict(self.carted_at),
            self.last_purchase_ms,
            Ledger(dict(self.ledger.last_fired), dict(self.ledger.coupons_per_day)),
            list(self.held),
            [dataclasses.replace(t) for t in self.open_triggers],
        )


Outcome = CouponDecision | CouponSuppressed | CouponConversion


def _admit(
    state: CustomerState, rules: RuleSet, rule: Rule, customer_id: str, ts_ms: int, **fields: object
) -> Outcome:
    """Cooldown and cap, then the experiment draw; records the firing (holdouts too, so a
    control customer is not drawn again and again during the cooldown)."""
    cooldown_ms = int(rule.cooldown_s * 1000)
    reason = may_fire(
        state.ledger, rule.rule_id, cooldown_ms, ts_ms, True, rules.frequency_cap_per_day
    )
    variant = draw_variant(rule.experiment, customer_id, rule.rule_id)
    if reason is not None:
        return CouponSuppressed(rule.rule_id, reason, variant)
    state.ledger.record(rule.rule_id, ts_ms, coupon=variant != CONTROL)
    return CouponDecision(rule.rule_id, customer_id, variant, event_time_ms=ts_ms, **fields)  # type: ignore[arg-type]


def on_event(
    state: CustomerState | None, event: CustomerEvent, rules: RuleSet, nearby: NearbyStock
) -> tuple[CustomerState, list[Outcome]]:
    if state is None:
        state = CustomerState()
    out: list[Outcome] = []
    ts = event.ts_ms
    # win_back looks at the purchase history *before* this event.
    for rule in rules.of_kind("win_back"):
        inactive_ms = rule.params["inactive_days"] * DAY_MS
        if state.last_purchase_ms is not None and ts - state.last_purchase_ms >= inactive_ms:
            days = (ts - state.last_purchase_ms) // DAY_MS
            out.append(
                _admit(
                    state,
                    rules,
                    rule,
                    event.customer_id,
                    ts,
                    sku=None,
                    store_id=None,
                    reason=f"last purchase {days} days ago",
                    evidence=(event.event_id,),
                )
            )
    if event.is_purchase:
        out += _conversions(state, event, rules)
        state.last_purchase_ms = max(ts, state.last_purchase_ms or ts)
        for sku in event.skus:
            state.carts.pop(sku, None)
            state.carted_at[sku] = ts
    if event.event_type == "add_to_cart" and event.sku:
        state.carted_at[event.sku] = ts
        for rule in rules.of_kind("cart_abandonment"):
            deadline = ts + int(rule.params["within"] * 1000)
            state.carts[event.sku] = (deadline, event.event_id)
    if event.event_type == "remove_from_cart" and event.sku:
        state.carts.pop(event.sku, None)
    if event.event_type == "product_view" and event.sku:
        out += _browse(state, event, rules, nearby)
    _forget_old(state, ts, rules)
    return state, _send_or_hold(state, rules, out)


def on_offer(
    state: CustomerState | None, offer: Offer, rules: RuleSet
) -> tuple[CustomerState, list[Outcome]]:
    """A clearance coupon proposed by the region audience: same policy as every coupon."""
    if state is None:
        state = CustomerState()
    rule = rules.by_id.get(offer.rule_id)
    if rule is None or not rule.enabled:
        return state, []  # the rule was removed or disabled since the offer was made
    outcome = _admit(
        state,
        rules,
        rule,
        offer.customer_id,
        offer.ts_ms,
        sku=offer.sku,
        store_id=offer.store_id,
        reason=offer.reason,
        evidence=offer.evidence,
    )
    return state, _send_or_hold(state, rules, [outcome])


def _send_or_hold(state: CustomerState, rules: RuleSet, outcomes: list[Outcome]) -> list[Outcome]:
    """Hold coupons that fall in their rule's quiet hours; open conversion windows for the
    ones sent now."""
    out: list[Outcome] = []
    for outcome in outcomes:
        if isinstance(outcome, CouponDecision):
            rule = rules.by_id.get(outcome.rule_id)
            release = quiet_until(rule.quiet_hours, outcome.event_time_ms) if rule else None
            if release is not None:
                state.held.append(dataclasses.replace(outcome, held_until_ms=release))
                continue
            _open(state, outcome)
        out.append(outcome)
    return out


def _open(state: CustomerState, decision: CouponDecision) -> None:
    state.open_triggers.append(
        OpenTrigger(decision.rule_id, decision.variant, decision.code, decision.sent_at_ms)
    )


def _conversions(
    state: CustomerState, event: CustomerEvent, rules: RuleSet
) -> list[CouponConversion]:
    """Each open trigger converts at most once: by a redemption of its code, or by any
    purchase inside the window (an order or a till sale)."""
    window_ms = int(rules.conversion_window_s * 1000)
    out: list[CouponConversion] = []
    still_open: list[OpenTrigger] = []
    for trigger in state.open_triggers:
        if trigger.sent_ms <= event.ts_ms <= trigger.sent_ms + window_ms:
            via = "redeemed" if trigger.code in event.coupon_codes else "purchase"
            out.append(
                CouponConversion(
                    trigger.rule_id,
                    trigger.variant,
                    event.customer_id,
                    trigger.code,
                    via,
                    event.event_id,
                    event.ts_ms,
                )
            )
        elif event.ts_ms < trigger.sent_ms:
            still_open.append(trigger)  # a purchase from before the coupon does not count
    state.open_triggers = still_open
    return out


def _forget_old(state: CustomerState, ts: int, rules: RuleSet) -> None:
    """Keep per-customer state bounded in event time."""
    window_ms = int(rules.conversion_window_s * 1000)
    state.open_triggers = [t for t in state.open_triggers if t.sent_ms + window_ms >= ts]
    longest = max((r.params["within"] for r in rules.of_kind("browse_nearby_stock")), default=0.0)
    horizon = ts - int(longest * 1000)
    state.views = {
        sku: kept for sku, v in state.views.items() if (kept := [x for x in v if x[0] > horizon])
    }
    state.carted_at = {sku: t for sku, t in state.carted_at.items() if t > horizon}


def _browse(
    state: CustomerState, event: CustomerEvent, rules: RuleSet, nearby: NearbyStock
) -> list[Outcome]:
    assert event.sku is not None
    out: list[Outcome] = []
    sku, ts = event.sku, event.ts_ms
    views = state.views.setdefault(sku, [])
    views.append((ts, event.event_id))
    longest = max((r.params["within"] for r in rules.of_kind("browse_nearby_stock")), default=0)
    state.views[sku] = [(t, e) for t, e in views if t > ts - longest * 1000]
    for rule in rules.of_kind("browse_nearby_stock"):
        window_ms = int(rule.params["within"] * 1000)
        recent = [(t, e) for t, e in state.views[sku] if t > ts - window_ms]
        carted = state.carted_at.get(sku)
        if carted is not None and carted > ts - window_ms:
            continue  # carted or ordered: not just browsing
        if len(recent) < rule.params["views"] or event.region is None:
            continue
        stores = nearby(event.region, sku, int(rule.params["min_available"]))
        if not stores:
            continue
        store, available = stores[0]
        out.append(
            _admit(
                state,
                rules,
                rule,
                event.customer_id,
                ts,
                sku=sku,
                store_id=store,
                reason=f"viewed {len(recent)} times; {store} has {available}",
                evidence=tuple(e for _, e in recent),
            )
        )
    return out


def on_time(state: CustomerState, customer_id: str, now_ms: int, rules: RuleSet) -> list[Outcome]:
    """Fire every cart whose deadline has passed by ``now_ms`` without an order, and release
    held coupons whose quiet hours have ended."""
    out: list[Outcome] = []
    due = sorted(
        (deadline, sku, cause)
        for sku, (deadline, cause) in state.carts.items()
        if deadline <= now_ms
    )
    for deadline, sku, cause in due:
        del state.carts[sku]
        for rule in rules.of_kind("cart_abandonment"):
            out.append(
                _admit(
                    state,
                    rules,
                    rule,
                    customer_id,
                    deadline,
                    sku=sku,
                    store_id=None,
                    reason="added to cart, no order in time",
                    evidence=(cause,),
                )
            )
    out = _send_or_hold(state, rules, out)
    released = [d for d in state.held if d.sent_at_ms <= now_ms]
    if released:
        state.held = [d for d in state.held if d.sent_at_ms > now_ms]
        for decision in sorted(released, key=lambda d: (d.sent_at_ms, d.rule_id, d.code)):
            _open(state, decision)
            out.append(decision)
    return out


def next_deadline(state: CustomerState) -> int | None:
    """Event time at which ``on_time`` has something to fire (for the flow's timer)."""
    deadlines = [deadline for deadline, _ in state.carts.values()]
    deadlines += [d.sent_at_ms for d in state.held]
    return min(deadlines, default=None)
