"""Customer-driven rules of rule_triggers, pure: ``cart_abandonment``,
``browse_nearby_stock``, ``win_back``, the lifecycle rules ``lapsed`` and ``repurchase``,
plus the coupons the region audience offers (``overstock``, ``expiring_stock``), quiet hours
and conversions; and ``store_visit``, which gives the store a ``VisitTask``, not a coupon.

State is kept per customer. Time is event time: ``on_event`` folds a resolved event in and
returns what fires now; ``on_time`` fires deadlines (cart abandonment, a lapse, a sku due
for repurchase) that have passed by a given event time, so the flow can call it from a
timer during live traffic and a replay of yesterday fires exactly the same coupons. The
lifecycle deadlines are armed in the state when the purchase is seen, with the rules then in
force, so ``next_deadline`` needs no rules to tell the flow when to wake up.

Every candidate coupon then passes the guards, the shared policy and the experiment draw:

1. ``no_consent``: the customer's latest ``consent`` event (by event time) withdrew
   marketing. Nothing is drawn, so a withdrawn customer is in neither arm of an experiment.
2. ``no_stock``: the coupon names a sku with fewer than the rule's ``min_available`` units
   available to sell where it sends the customer (the store it names, else the locations
   that ship online orders). Only asked when a ``StockView`` is given.
3. cooldown per rule and customer, frequency cap across coupon rules per day; control-group
   draws are returned as ``holdout`` so they can be counted but never sent.

Each hold-back is a ``CouponSuppressed`` with its reason, counted like the others.

A customer's state can merge (``absorb``: identity stitching found two ids are one person)
and travel (``state_to_json`` / ``state_from_json``: handed to the survivor through Redis).

A coupon whose rule has quiet hours and that falls inside them is *held* and released (with
``held_until``) by ``on_time`` once they end; holdouts are held alike, so both arms see the
same timing. Every coupon or holdout released opens a conversion window. **A purchase
converts at most one trigger** (CONTRACT §12): the one whose code it redeems, else the latest
coupon or holdout sent to the customer within the window, across rules and, after a merge,
across both ids (their windows are absorbed together). That trigger converts once
(``CouponConversion`` of its rule × variant, control included, which is what uplift is
measured from); a later purchase whose latest trigger already converted converts nothing,
and an older trigger a newer one superseded does not convert at all. Without this one
purchase counted for every rule that had written to the customer that week.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from domain.resumable import lists_as_tuples, resumable
from domain.rules import Rule, RuleSet
from domain.stock_view import StockView
from domain.trigger_policy import (
    CONTROL,
    DAY_MS,
    Ledger,
    draw_variant,
    may_fire,
    quiet_until,
)

#: One sku's recent product views as (ts, event id, ts, event id, …), in the order they came:
#: a flat tuple, not a list of pairs (a view cost a tuple of its own, 72 B, and the list 56 B).
Views = tuple[int | str, ...]


def view_pairs(flat: Views) -> list[tuple[int, str]]:
    """The (ts, event id) of each view of ``flat``, in order."""
    return cast(list[tuple[int, str]], list(zip(flat[::2], flat[1::2], strict=True)))


def flat_views(pairs: Iterable[tuple[int, str]]) -> Views:
    return tuple(x for pair in pairs for x in pair)


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
    is_purchase: bool = False  # order_placed, or a POS sale that is not an order's pickup
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
    #: (sku, repurchase_days) of the purchased skus that are repurchase items (products file)
    repurchase_days: tuple[tuple[str, int], ...] = ()


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
    """A coupon held back: by its rule's cooldown, the customer's frequency cap, missing
    marketing consent (variant ``default``: nobody withdrawn is drawn), too little stock
    where it would send the customer, or a clearance offer to an id that is no customer any
    more (``GONE_CUSTOMER``, variant ``default``)."""

    rule_id: str
    reason: str  # cooldown | cap | no_consent | no_stock | gone_customer
    variant: str = "default"


#: A clearance offer reached an id merged away (through a chain the region's audience could
#: not follow) or erased: its key is gone, or goes, and nothing is sent to it.
GONE_CUSTOMER = "gone_customer"


@dataclass(frozen=True, slots=True)
class VisitTask:
    """A known customer walked into a store (a check-in, or a till sale scanning their
    loyalty card): a task for the store's associates with what the customer looked at
    lately, so they can be served before they ask. Not a coupon: no consent, no cap."""

    rule_id: str
    customer_id: str
    store_id: str
    #: (sku, view event time) of the latest view of each sku, most recent first
    recent_views: tuple[tuple[str, int], ...]
    reason: str
    #: the visit's event, then the views'
    evidence: tuple[str, ...]
    event_time_ms: int


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
    #: the purchase's total (what the experiment report's revenue per customer sums)
    revenue: float = 0.0


@dataclass(frozen=True, slots=True)
class CouponRedeemed:
    """A till scanned the code of a coupon the customer had been sent (while its
    conversion window was open), whether or not the purchase converted it: what
    ``redemption_review`` measures."""

    rule_id: str
    variant: str
    code: str
    sent_ms: int
    ts_ms: int


@resumable
@dataclass(slots=True)
class OpenTrigger:
    rule_id: str
    variant: str
    code: str
    sent_ms: int
    #: a purchase has converted it (kept until its window ends: it is still the latest)
    converted: bool = False


@dataclass(frozen=True, slots=True)
class LifecycleTimer:
    """A ``lapsed`` or ``repurchase`` deadline armed by a purchase."""

    due_ms: int
    #: event time and id of the purchase that armed it (a later purchase re-arms it)
    purchase_ms: int
    cause: str
    #: ``inactive_days`` of a lapse, the sku's ``repurchase_days`` of a repurchase
    days: float


@resumable
@dataclass(slots=True)
class CustomerState:
    #: sku → event times and ids of recent product views (``Views``)
    views: dict[str, Views] = field(default_factory=dict)
    #: sku → (deadline, add_to_cart event id) of carts not yet ordered
    carts: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: skus carted or ordered recently (they no longer count as "only browsed")
    carted_at: dict[str, int] = field(default_factory=dict)
    last_purchase_ms: int | None = None
    ledger: Ledger = field(default_factory=Ledger)
    #: coupons waiting for their quiet hours to end (tuples, not lists: mostly empty, and the
    #: empty tuple is shared by every customer)
    held: tuple[CouponDecision, ...] = ()
    #: coupons and holdouts sent within the conversion window, not yet converted
    open_triggers: tuple[OpenTrigger, ...] = ()
    #: event time of the latest ``consent`` event (None: never asked, which is consent)
    consent_ms: int | None = None
    marketing: bool = True
    #: rule_id → the lapse a ``lapsed`` rule waits for (gone once fired, until a purchase)
    lapses: dict[str, LifecycleTimer] = field(default_factory=dict)
    #: (rule_id, sku) → the repurchase a ``repurchase`` rule waits for
    repurchases: dict[tuple[str, str], LifecycleTimer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.held, self.open_triggers = tuple(self.held), tuple(self.open_triggers)

    @staticmethod
    def _resume_upgrade(held: dict[str, Any]) -> dict[str, Any]:
        """A snapshot of when ``held`` and ``open_triggers`` were lists."""
        lists_as_tuples(held, "held", "open_triggers")
        views = held.get("views")
        if views and isinstance(next(iter(views.values())), list):  # of (ts, event id) pairs
            held["views"] = {sku: flat_views(v) for sku, v in views.items()}
        return held

    def __deepcopy__(self, memo: dict[int, object]) -> CustomerState:
        """Snapshots copy every epoch: copy the containers, share the immutable records."""
        return CustomerState(
            dict(self.views),
            dict(self.carts),
            dict(self.carted_at),
            self.last_purchase_ms,
            Ledger(dict(self.ledger.last_fired), dict(self.ledger.coupons_per_day)),
            self.held,  # frozen decisions: shared
            tuple(dataclasses.replace(t) for t in self.open_triggers),
            self.consent_ms,
            self.marketing,
            dict(self.lapses),
            dict(self.repurchases),
        )


Outcome = CouponDecision | CouponSuppressed | CouponConversion | CouponRedeemed | VisitTask


def _admit(
    state: CustomerState,
    rules: RuleSet,
    rule: Rule,
    customer_id: str,
    ts_ms: int,
    stock: StockView | None = None,
    **fields: Any,
) -> Outcome:
    """Consent and stock, then cooldown and cap, then the experiment draw; records the
    firing (holdouts too, so a control customer is not drawn again and again during the
    cooldown). A holdout also counts toward the day's frequency cap, as the coupon it
    stands for would: otherwise a held-out customer could be sent one more of the other
    rules' coupons that day than a customer sent this one, and the latest of those would
    take the purchases the control is there to measure (a purchase converts the latest
    trigger), biasing every variant's uplift upwards. A coupon held back for consent or
    stock records nothing: once the customer consents again or the shelf is refilled, the
    next occasion may fire."""
    if not state.marketing:
        return CouponSuppressed(rule.rule_id, "no_consent")
    sku, store = fields.get("sku"), fields.get("store_id")
    minimum = int(rule.params.get("min_available", 0))
    if stock is not None and sku is not None and minimum > 0:
        available = (
            stock.available(sku, store, ts_ms)
            if store is not None
            else stock.available_online(sku, ts_ms)
        )
        if available < minimum:
            variant = draw_variant(rule.experiment, customer_id, rule.rule_id)
            return CouponSuppressed(rule.rule_id, "no_stock", variant)
    cooldown_ms = int(rule.cooldown_s * 1000)
    reason = may_fire(
        state.ledger, rule.rule_id, cooldown_ms, ts_ms, True, rules.frequency_cap_per_day
    )
    variant = draw_variant(rule.experiment, customer_id, rule.rule_id)
    if reason is not None:
        return CouponSuppressed(rule.rule_id, reason, variant)
    state.ledger.record(rule.rule_id, ts_ms, coupon=True)
    return CouponDecision(rule.rule_id, customer_id, variant, event_time_ms=ts_ms, **fields)


def on_event(
    state: CustomerState | None,
    event: CustomerEvent,
    rules: RuleSet,
    nearby: NearbyStock,
    stock: StockView | None = None,
) -> tuple[CustomerState, list[Outcome]]:
    """Fold one of the customer's events in; what fires at it (timers due before it are
    ``on_time``'s, which the caller runs first)."""
    if state is None:
        state = CustomerState()
    out: list[Outcome] = []
    ts = event.ts_ms
    if event.consent is not None:
        _note_consent(state, ts, event.consent)
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
                    stock,
                    sku=None,
                    store_id=None,
                    reason=f"last purchase {days} days ago",
                    evidence=(event.event_id,),
                )
            )
    # A code scanned at the till counts as redeemed also when the sale collects an online
    # order (not a purchase of its own: the order was).
    out += _redemptions(state, event, rules)
    if event.is_purchase:
        out += _conversions(state, event, rules)
        _arm_lifecycle(state, event, rules)
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
        out += _browse(state, event, rules, nearby, stock)
    visits = _visits(state, event, rules)
    _forget_old(state, ts, rules)
    return state, [*_send_or_hold(state, rules, out), *visits]


def on_offer(
    state: CustomerState | None, offer: Offer, rules: RuleSet, stock: StockView | None = None
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
        stock,
        sku=offer.sku,
        store_id=offer.store_id,
        reason=offer.reason,
        evidence=offer.evidence,
    )
    return state, _send_or_hold(state, rules, [outcome])


def _note_consent(state: CustomerState, ts_ms: int, marketing: bool) -> None:
    """The latest consent by event time wins; of two at the same time, the withdrawal (a
    customer who said no at that moment is not written to on a tie)."""
    if state.consent_ms is None or (ts_ms, not marketing) > (state.consent_ms, not state.marketing):
        state.consent_ms, state.marketing = ts_ms, marketing


def _arm_lifecycle(state: CustomerState, event: CustomerEvent, rules: RuleSet) -> None:
    """A purchase re-arms every ``lapsed`` rule and, for each repurchase sku bought, every
    ``repurchase`` rule; a sku bought again that is no longer a repurchase item disarms."""
    ts = event.ts_ms
    if state.last_purchase_ms is None or ts >= state.last_purchase_ms:
        for rule in rules.of_kind("lapsed"):
            days = rule.params["inactive_days"]
            state.lapses[rule.rule_id] = LifecycleTimer(
                ts + int(days * DAY_MS), ts, event.event_id, days
            )
    every = dict(event.repurchase_days)
    for sku in sorted({*event.skus, *every}):
        for rule in rules.of_kind("repurchase"):
            key = (rule.rule_id, sku)
            armed = state.repurchases.get(key)
            if armed is not None and armed.purchase_ms > ts:
                continue  # a later purchase of the sku is already counted from
            if sku not in every:
                state.repurchases.pop(key, None)
                continue
            days = every[sku]
            early = max(0.0, days - rule.params["lead_days"])
            state.repurchases[key] = LifecycleTimer(
                ts + int(early * DAY_MS), ts, event.event_id, days
            )
    # Timers of rules no longer in the file have nothing to fire.
    state.repurchases = {key: t for key, t in state.repurchases.items() if key[0] in rules.by_id}


def _view_horizon_s(rules: RuleSet) -> float:
    """How long views are kept: for browsing and for the store visits' recent views."""
    windows = [r.params["within"] for r in rules.of_kind("browse_nearby_stock")]
    windows += [r.params["views_within"] for r in rules.of_kind("store_visit")]
    return max(windows, default=0.0)


def _send_or_hold(state: CustomerState, rules: RuleSet, outcomes: list[Outcome]) -> list[Outcome]:
    """Hold coupons that fall in their rule's quiet hours; open conversion windows for the
    ones sent now."""
    out: list[Outcome] = []
    for outcome in outcomes:
        if isinstance(outcome, CouponDecision):
            rule = rules.by_id.get(outcome.rule_id)
            release = quiet_until(rule.quiet_hours, outcome.event_time_ms) if rule else None
            if release is not None:
                state.held = (*state.held, dataclasses.replace(outcome, held_until_ms=release))
                continue
            _open(state, outcome)
        out.append(outcome)
    return out


def _open(state: CustomerState, decision: CouponDecision) -> None:
    state.open_triggers = (
        *state.open_triggers,
        OpenTrigger(decision.rule_id, decision.variant, decision.code, decision.sent_at_ms),
    )


def _redemptions(
    state: CustomerState, event: CustomerEvent, rules: RuleSet
) -> list[CouponRedeemed]:
    """Each coupon the till scanned whose conversion window is open (a holdout has no code
    to scan: nothing was sent)."""
    if not event.coupon_codes:
        return []
    window_ms = int(rules.conversion_window_s * 1000)
    return [
        CouponRedeemed(t.rule_id, t.variant, t.code, t.sent_ms, event.ts_ms)
        for t in state.open_triggers
        if t.code in event.coupon_codes
        and t.variant != CONTROL
        and t.sent_ms <= event.ts_ms <= t.sent_ms + window_ms
    ]


def _conversions(
    state: CustomerState, event: CustomerEvent, rules: RuleSet
) -> list[CouponConversion]:
    """The one trigger the purchase converts (module doc): the redeemed one, else the
    latest sent within the window; none when that one has converted already."""
    window_ms = int(rules.conversion_window_s * 1000)
    live = [t for t in state.open_triggers if t.sent_ms <= event.ts_ms <= t.sent_ms + window_ms]
    redeemed = [t for t in live if t.code in event.coupon_codes]
    candidates = redeemed or live
    if not candidates:
        return []
    trigger = max(candidates, key=lambda t: (t.sent_ms, t.code))
    if trigger.converted:
        return []
    trigger.converted = True
    via = "redeemed" if redeemed else "purchase"
    return [
        CouponConversion(
            trigger.rule_id,
            trigger.variant,
            event.customer_id,
            trigger.code,
            via,
            event.event_id,
            event.ts_ms,
            event.revenue,
        )
    ]


def _forget_old(state: CustomerState, ts: int, rules: RuleSet) -> None:
    """Keep per-customer state bounded in event time."""
    window_ms = int(rules.conversion_window_s * 1000)
    if state.open_triggers:
        state.open_triggers = tuple(t for t in state.open_triggers if t.sent_ms + window_ms >= ts)
    views_from = ts - int(_view_horizon_s(rules) * 1000)
    views: dict[str, Views] = {}
    for sku, v in state.views.items():
        times = cast(tuple[int, ...], v[::2])
        if times and min(times) > views_from:
            views[sku] = v  # all still inside: the same tuple
        elif kept := [x for x in view_pairs(v) if x[0] > views_from]:
            views[sku] = flat_views(kept)
    state.views = views
    longest = max((r.params["within"] for r in rules.of_kind("browse_nearby_stock")), default=0.0)
    horizon = ts - int(longest * 1000)
    state.carted_at = {sku: t for sku, t in state.carted_at.items() if t > horizon}


def _browse(
    state: CustomerState,
    event: CustomerEvent,
    rules: RuleSet,
    nearby: NearbyStock,
    stock: StockView | None,
) -> list[Outcome]:
    assert event.sku is not None
    out: list[Outcome] = []
    sku, ts = event.sku, event.ts_ms
    views = [*view_pairs(state.views.get(sku, ())), (ts, event.event_id)]
    horizon_ms = _view_horizon_s(rules) * 1000
    views = [(t, e) for t, e in views if t > ts - horizon_ms]
    state.views[sku] = flat_views(views)
    for rule in rules.of_kind("browse_nearby_stock"):
        window_ms = int(rule.params["within"] * 1000)
        recent = [(t, e) for t, e in views if t > ts - window_ms]
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
                stock,
                sku=sku,
                store_id=store,
                reason=f"viewed {len(recent)} times; {store} has {available}",
                evidence=tuple(e for _, e in recent),
            )
        )
    return out


def _visits(state: CustomerState, event: CustomerEvent, rules: RuleSet) -> list[Outcome]:
    """A check-in, or a till sale that scanned the customer's card: one task per store per
    cooldown (walking in twice in ten minutes is one visit), with the latest view of each
    sku the customer looked at within ``views_within``, most recent first."""
    store = event.store_id
    walked_in = event.event_type == "store_checkin" or event.member_scan
    if store is None or not walked_in:
        return []
    out: list[Outcome] = []
    ts = event.ts_ms
    for rule in rules.of_kind("store_visit"):
        key = f"{rule.rule_id}@{store}"
        if state.ledger.in_cooldown(key, int(rule.cooldown_s * 1000), ts):
            continue
        state.ledger.record(key, ts, coupon=False)
        since = ts - rule.params["views_within"] * 1000
        latest: list[tuple[int, str, str]] = []  # (view time, view event, sku)
        for sku, seen in state.views.items():
            inside = [(t, e) for t, e in view_pairs(seen) if since < t <= ts]
            if inside:
                t, e = max(inside)
                latest.append((t, e, sku))
        latest.sort(key=lambda v: (-v[0], v[2]))
        shown = latest[: int(rule.params["max_views"])]
        how = "checked in" if event.event_type == "store_checkin" else "scanned a member card"
        out.append(
            VisitTask(
                rule.rule_id,
                event.customer_id,
                store,
                tuple((sku, t) for t, _, sku in shown),
                f"{how} at {store}; {len(shown)} recent views",
                (event.event_id, *(e for _, e, _ in shown)),
                ts,
            )
        )
    return out


def on_time(
    state: CustomerState,
    customer_id: str,
    now_ms: int,
    rules: RuleSet,
    stock: StockView | None = None,
) -> list[Outcome]:
    """Fire every deadline passed by ``now_ms`` — carts not ordered, lapses, skus due for
    repurchase — each at its own deadline and all in deadline order (so cooldowns and the
    cap judge them alike whichever clock drives them), and release held coupons whose quiet
    hours have ended."""
    due: list[tuple[int, int, str, str, str]] = [
        (deadline, 0, sku, cause, "")
        for sku, (deadline, cause) in state.carts.items()
        if deadline <= now_ms
    ]
    due += [
        (t.due_ms, 1, rule_id, t.cause, "")
        for rule_id, t in state.lapses.items()
        if t.due_ms <= now_ms
    ]
    due += [
        (t.due_ms, 2, rule_id, t.cause, sku)
        for (rule_id, sku), t in state.repurchases.items()
        if t.due_ms <= now_ms
    ]
    out: list[Outcome] = []
    for deadline, kind, name, cause, sku in sorted(due):
        if kind == 0:
            del state.carts[name]
            for rule in rules.of_kind("cart_abandonment"):
                out.append(
                    _admit(
                        state,
                        rules,
                        rule,
                        customer_id,
                        deadline,
                        stock,
                        sku=name,
                        store_id=None,
                        reason="added to cart, no order in time",
                        evidence=(cause,),
                    )
                )
            continue
        if kind == 1:
            timer = state.lapses.pop(name)
            rule_kind, coupon_sku = "lapsed", None
            reason = f"no purchase for {timer.days:g} days"
        else:
            timer = state.repurchases.pop((name, sku))
            days = (deadline - timer.purchase_ms) / DAY_MS
            rule_kind, coupon_sku = "repurchase", sku
            reason = f"bought {days:g} days ago; rebought every {timer.days:g} days"
        timed = rules.by_id.get(name)
        if timed is None or not timed.enabled or timed.kind != rule_kind:
            continue  # the rule was removed or disabled since the purchase armed it
        out.append(
            _admit(
                state,
                rules,
                timed,
                customer_id,
                deadline,
                stock,
                sku=coupon_sku,
                store_id=None,
                reason=reason,
                evidence=(cause,),
            )
        )
    out = _send_or_hold(state, rules, out)
    released = [d for d in state.held if d.sent_at_ms <= now_ms]
    if released:
        state.held = tuple(d for d in state.held if d.sent_at_ms > now_ms)
        for decision in sorted(released, key=lambda d: (d.sent_at_ms, d.rule_id, d.code)):
            if not state.marketing:
                # Withdrawn while held: both arms alike, nothing goes out.
                out.append(CouponSuppressed(decision.rule_id, "no_consent", decision.variant))
                continue
            _open(state, decision)
            out.append(decision)
    return out


def next_deadline(state: CustomerState) -> int | None:
    """Event time at which ``on_time`` has something to fire (for the flow's timer)."""
    deadlines = [deadline for deadline, _ in state.carts.values()]
    deadlines += [d.sent_at_ms for d in state.held]
    deadlines += [t.due_ms for t in state.lapses.values()]
    deadlines += [t.due_ms for t in state.repurchases.values()]
    return min(deadlines, default=None)


# --- merging two ids' state -------------------------------------------------------------------


def _later_timer(a: LifecycleTimer | None, b: LifecycleTimer | None) -> LifecycleTimer:
    """The timer of the later purchase (ties broken on every field, so either order agrees)."""
    found = [t for t in (a, b) if t is not None]
    return max(found, key=lambda t: (t.purchase_ms, t.due_ms, t.cause, t.days))


def _union_timers(
    ours: dict[Any, LifecycleTimer], theirs: dict[Any, LifecycleTimer]
) -> dict[Any, LifecycleTimer]:
    return {key: _later_timer(ours.get(key), theirs.get(key)) for key in {*ours, *theirs}}


def _by_code(
    items: Iterable[Any], code: Callable[[Any], str], order: Callable[[Any], Any]
) -> list[Any]:
    """One item per coupon code (the first by ``order``), sorted by ``order``."""
    kept: dict[str, Any] = {}
    for item in sorted(items, key=order):
        kept.setdefault(code(item), item)
    return sorted(kept.values(), key=order)


def absorb(survivor: CustomerState, merged: CustomerState) -> CustomerState:
    """The rule state of one customer known under two ids (``merged`` folded into
    ``survivor``): the survivor decides from now on with both histories.

    Cooldowns keep each rule's latest firing and the daily cap adds both ids' coupons, so
    the person is not sent twice what one id would have been sent once. Carts, held
    coupons, open conversion windows, views and lifecycle timers are the union (one of each
    cart sku: the later add; one of each coupon code; one of each view event; the timer of
    the later purchase); the latest purchase and the latest consent win. A lapse armed by a
    purchase older than the other id's last purchase is gone: the customer bought since.

    The result does not depend on which id is which (``absorb(a, b) == absorb(b, a)``):
    the flow may meet the two states in either order. Held coupons keep the customer id
    (and so the code) they were decided for. Neither input is changed.
    """
    a, b = survivor, merged
    last = max((t for t in (a.last_purchase_ms, b.last_purchase_ms) if t is not None), default=None)
    views: dict[str, Views] = {}
    for sku in {*a.views, *b.views}:
        both = [*view_pairs(a.views.get(sku, ())), *view_pairs(b.views.get(sku, ()))]
        seen = {e: t for t, e in both}
        views[sku] = flat_views(sorted((t, e) for e, t in seen.items()))
    carts = {
        sku: max(c for c in (a.carts.get(sku), b.carts.get(sku)) if c is not None)
        for sku in {*a.carts, *b.carts}
    }
    carted_at = {
        sku: max(t for t in (a.carted_at.get(sku), b.carted_at.get(sku)) if t is not None)
        for sku in {*a.carted_at, *b.carted_at}
    }
    last_fired = {
        rule: max(
            t
            for t in (a.ledger.last_fired.get(rule), b.ledger.last_fired.get(rule))
            if t is not None
        )
        for rule in {*a.ledger.last_fired, *b.ledger.last_fired}
    }
    per_day = {
        day: a.ledger.coupons_per_day.get(day, 0) + b.ledger.coupons_per_day.get(day, 0)
        for day in {*a.ledger.coupons_per_day, *b.ledger.coupons_per_day}
    }
    held = _by_code(
        [*a.held, *b.held],
        lambda d: d.code,
        lambda d: (d.sent_at_ms, d.rule_id, d.code, d.event_time_ms, d.variant),
    )
    open_triggers = _by_code(
        [dataclasses.replace(t) for t in [*a.open_triggers, *b.open_triggers]],
        lambda t: t.code,
        lambda t: (t.sent_ms, t.code, t.rule_id, t.variant, not t.converted),
    )
    consent = max(
        (
            (ms, not m)
            for ms, m in ((a.consent_ms, a.marketing), (b.consent_ms, b.marketing))
            if ms is not None
        ),
        default=None,
    )
    lapses = {
        rule: t
        for rule, t in _union_timers(a.lapses, b.lapses).items()
        if last is None or t.purchase_ms >= last
    }
    return CustomerState(
        views,
        carts,
        carted_at,
        last,
        Ledger(last_fired, per_day),
        tuple(held),
        tuple(open_triggers),
        consent[0] if consent else None,
        not consent[1] if consent else True,
        lapses,
        _union_timers(a.repurchases, b.repurchases),
    )


# --- state as JSON (handed over through Redis: no pickle) -------------------------------------

_STATE_VERSION = 1


def _decision_json(d: CouponDecision) -> dict[str, Any]:
    return {
        "rule_id": d.rule_id,
        "customer_id": d.customer_id,
        "variant": d.variant,
        "sku": d.sku,
        "store_id": d.store_id,
        "reason": d.reason,
        "evidence": list(d.evidence),
        "event_time_ms": d.event_time_ms,
        "held_until_ms": d.held_until_ms,
    }


def _decision_of(doc: dict[str, Any]) -> CouponDecision:
    return CouponDecision(
        doc["rule_id"],
        doc["customer_id"],
        doc["variant"],
        doc["sku"],
        doc["store_id"],
        doc["reason"],
        tuple(doc["evidence"]),
        doc["event_time_ms"],
        doc["held_until_ms"],
    )


def _timer_json(t: LifecycleTimer) -> list[Any]:
    return [t.due_ms, t.purchase_ms, t.cause, t.days]


def _timer_of(row: list[Any]) -> LifecycleTimer:
    return LifecycleTimer(int(row[0]), int(row[1]), str(row[2]), row[3])


def state_to_json(state: CustomerState) -> bytes:
    """The state as JSON bytes: what a merged customer's key leaves for its survivor.

    >>> s = CustomerState(last_purchase_ms=5, carts={"SKU1": (9, "e1")})
    >>> state_from_json(state_to_json(s)) == s
    True
    """
    document = {
        "v": _STATE_VERSION,
        "views": {sku: [[t, e] for t, e in view_pairs(v)] for sku, v in state.views.items()},
        "carts": {sku: [d, e] for sku, (d, e) in state.carts.items()},
        "carted_at": state.carted_at,
        "last_purchase_ms": state.last_purchase_ms,
        "last_fired": state.ledger.last_fired,
        "coupons_per_day": [[day, n] for day, n in state.ledger.coupons_per_day.items()],
        "held": [_decision_json(d) for d in state.held],
        "open_triggers": [
            [t.rule_id, t.variant, t.code, t.sent_ms, t.converted] for t in state.open_triggers
        ],
        "consent_ms": state.consent_ms,
        "marketing": state.marketing,
        "lapses": {rule: _timer_json(t) for rule, t in state.lapses.items()},
        "repurchases": [
            [rule, sku, *_timer_json(t)] for (rule, sku), t in state.repurchases.items()
        ],
    }
    # Plain JSON from the standard library (the domain imports nothing else): whoever
    # stores it may embed it as is, e.g. as an ``orjson.Fragment``.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def state_from_json(raw: bytes) -> CustomerState:
    """The state ``state_to_json`` wrote (fields it lacks take their defaults)."""
    doc = json.loads(raw)
    if doc.get("v", _STATE_VERSION) != _STATE_VERSION:
        raise ValueError(f"customer state version {doc.get('v')!r}, expected {_STATE_VERSION}")
    return CustomerState(
        {
            sku: flat_views((int(t), str(e)) for t, e in v)
            for sku, v in doc.get("views", {}).items()
        },
        {sku: (int(d), str(e)) for sku, (d, e) in doc.get("carts", {}).items()},
        {sku: int(t) for sku, t in doc.get("carted_at", {}).items()},
        doc.get("last_purchase_ms"),
        Ledger(
            {rule: int(t) for rule, t in doc.get("last_fired", {}).items()},
            {int(day): int(n) for day, n in doc.get("coupons_per_day", [])},
        ),
        tuple(_decision_of(d) for d in doc.get("held", [])),
        tuple(
            OpenTrigger(row[0], row[1], row[2], int(row[3]), len(row) > 4 and bool(row[4]))
            for row in doc.get("open_triggers", [])
        ),
        doc.get("consent_ms"),
        bool(doc.get("marketing", True)),
        {rule: _timer_of(row) for rule, row in doc.get("lapses", {}).items()},
        {(row[0], row[1]): _timer_of(row[2:]) for row in doc.get("repurchases", [])},
    )
