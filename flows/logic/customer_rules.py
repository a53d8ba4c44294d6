"""Customer-driven coupon rules of rule_triggers, pure: ``cart_abandonment``,
``browse_nearby_stock`` and ``win_back``.

State is kept per customer. Time is event time: ``on_event`` folds a resolved event in and
returns what fires now; ``on_time`` fires deadlines (cart abandonment) that have passed by a
given event time, so the flow can call it from a timer during live traffic and a replay of
yesterday fires exactly the same coupons.

Every candidate then passes the shared policy (cooldown per rule and customer, frequency cap
across coupon rules per day) and the experiment draw; control-group draws are returned as
``holdout`` so they can be counted but never sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flows.logic.rules import Rule, RuleSet
from flows.logic.trigger_policy import CONTROL, DAY_MS, Ledger, draw_variant, may_fire

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

    @property
    def holdout(self) -> bool:
        return self.variant == CONTROL


@dataclass(frozen=True, slots=True)
class Suppressed:
    rule_id: str
    reason: str  # cooldown | cap


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


Outcome = CouponDecision | Suppressed


def _admit(
    state: CustomerState, rules: RuleSet, rule: Rule, customer_id: str, ts_ms: int, **fields: object
) -> Outcome:
    """Cooldown and cap, then the experiment draw; records the firing (holdouts too, so a
    control customer is not drawn again and again during the cooldown)."""
    cooldown_ms = int(rule.cooldown_s * 1000)
    reason = may_fire(
        state.ledger, rule.rule_id, cooldown_ms, ts_ms, True, rules.frequency_cap_per_day
    )
    if reason is not None:
        return Suppressed(rule.rule_id, reason)
    variant = draw_variant(rule.experiment, customer_id, rule.rule_id)
    state.ledger.record(
        rule.rule_id, ts_ms, coupon=variant != CONTROL, keep_ms=max(cooldown_ms, DAY_MS)
    )
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
    return state, out


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
    """Fire every cart whose deadline has passed by ``now_ms`` without an order."""
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
    return out


def next_deadline(state: CustomerState) -> int | None:
    """Event time at which ``on_time`` has something to fire (for the flow's timer)."""
    return min((deadline for deadline, _ in state.carts.values()), default=None)
