"""The one trigger engine of rule_triggers: a class per key the rules keep state for, fed in
the order that key's records arrive, with event time passed in. No Bytewax, no Redis, no
clock.

- ``CustomerTriggers`` (a customer): browsing, carts, win-back, clearance offers, quiet
  hours, conversions (``domain.customer_rules``);
- ``LocationTriggers`` (a sku × location, the key of ``stock.changes``): low stock,
  stockout, overstock, expiring batches (``domain.stock_rules``, ``domain.clearance_rules``);
- ``AudienceTriggers`` (a region): product views, and the clearance signals of its
  locations turned into offers for the customers who viewed;
- ``CampaignTriggers`` (a store × sku): coupons naming the store (``campaign_prep``).

What goes from one key to another is decided here too (``view_of``, ``campaign_key``,
``claim_redemption``): product views and clearance signals go to their region's audience,
its offers to their customers, coupons naming a store to that store × sku. The live flow
(``flows.rule_triggers``, through Bytewax) and ``rules backtest`` (``domain.trigger_replay``,
through dictionaries) route with these.

Lookups of the stock pool go through a ``domain.stock_view.StockView``, asked as of the
event time of the record that needs them.

Timers: each class says when it next has something to do (``next_deadline``) and fires what
is due by an event time it is given (``fire_due``); *when* that is asked is the caller's
clock policy. Live, a key's timers follow the input's clock; in a replay (``run
rule_triggers --until-idle``, ``rules backtest``) they fire on the key's next record and at
the end of the input (``finish``). The end of a replay is also when what crosses keys and
needs every record is done, in this order: locations fire their last timers (clearance
signals go to the audience), the audience releases every signal with the views of the
whole input, customers take their offers in event-time order, each after the timers due
before it, and campaigns count their coupons in event-time order.

A sku × location hears from two topics, ``stock.changes`` and the perishable receipts of
``wms.movements``, which a replay may read days of event time apart. Its expiry checks need
every receipt received by the time they look at, and once one has fired it cannot be taken
back; so in a replay the flow hands a perishable sku's stock changes to ``hold``, which keeps
them until the location's receipts have been read up to them (``receipts_read``, told by a
``ReceiptsRead`` mark that follows the receipts), and the location takes its two inputs in
event-time order whatever the read order. ``rules backtest`` reads them in that order
already (``domain.trigger_replay.replay_order``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from domain.clearance_rules import (
    AudienceState,
    ClearanceOutcome,
    ClearanceSignal,
    View,
    add_signal,
    add_view,
    clearance_deadline,
    clearance_deadlines,
    evaluate_clearance,
    follow_merge,
    forget_viewer,
    note_change,
    receive_batch,
    release_signals,
)
from domain.customer_rules import (
    CouponDecision,
    CustomerEvent,
    CustomerState,
    Offer,
    Outcome,
    next_deadline,
    on_event,
    on_offer,
    on_time,
)
from domain.reference import ReferenceData
from domain.resumable import lists_as_tuples, resumable
from domain.rules import RuleSet
from domain.stock_arms import ShelfFigures, ShelfTally, arms_of, note_shelf
from domain.stock_arms import figures as shelf_figures
from domain.stock_rules import (
    CampaignState,
    ExpiryBatch,
    SkuRuleState,
    StockChange,
    StockOutcome,
    evaluate_campaign_prep,
    evaluate_stock_rules,
    history_ms,
)
from domain.stock_view import StockView
from domain.trigger_policy import Ledger

#: "Every pending signal is due": the audience at the end of a replay, when every view is known.
EVERY_SIGNAL = 2**62


def _offer_order(offer: Offer) -> tuple[int, str, str, str, str, tuple[str, ...]]:
    store = offer.store_id or ""
    return (offer.ts_ms, offer.rule_id, offer.sku, store, offer.reason, offer.evidence)


#: what a location's rules give: triggers and clearance signals, and shelf figures
LocationOutcome = ClearanceOutcome | ShelfFigures


@resumable
@dataclass(slots=True)
class CustomerTriggers:
    """One customer's rules, fed the customer's events in their order.

    ``stock`` answers the coupons' ``no_stock`` guard (a coupon naming a sku needs units
    where it sends the customer) as of each coupon's event time; without one (None) that
    guard is not applied, so every caller that can should pass the same view it passes to
    ``on_event``, or timers and events would be judged differently.
    """

    customer_id: str = ""
    state: CustomerState = field(default_factory=CustomerState)
    #: clearance offers a replay holds for the end of the input (a tuple: nearly always
    #: empty, and the empty tuple is shared)
    held_offers: tuple[Offer, ...] = ()

    def __post_init__(self) -> None:
        self.held_offers = tuple(self.held_offers)

    @staticmethod
    def _resume_upgrade(held: dict[str, Any]) -> dict[str, Any]:
        """A snapshot of when ``held_offers`` was a list."""
        return lists_as_tuples(held, "held_offers")

    def __deepcopy__(self, memo: dict[int, object]) -> CustomerTriggers:
        return CustomerTriggers(self.customer_id, self.state.__deepcopy__(memo), self.held_offers)

    def on_event(self, event: CustomerEvent, rules: RuleSet, stock: StockView) -> list[Outcome]:
        """Deadlines before the event have passed (a customer's events come in order), then
        the event itself; stores near a browsing customer are asked of ``stock`` as of it."""
        self.customer_id = event.customer_id
        out = on_time(self.state, self.customer_id, event.ts_ms - 1, rules, stock)

        def nearby(region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
            return stock.stores_with_stock(region, sku, minimum, event.ts_ms)

        self.state, fired = on_event(self.state, event, rules, nearby, stock)
        return [*out, *fired] if out else fired

    def on_offer(
        self, offer: Offer, rules: RuleSet, stock: StockView | None = None
    ) -> list[Outcome]:
        """A clearance coupon from the region's audience, under the same policy as any."""
        self.customer_id = offer.customer_id
        self.state, out = on_offer(self.state, offer, rules, stock)
        return out

    def hold_offer(self, offer: Offer) -> None:
        """Keep an offer for ``finish`` (a replay). The key's customer id is not taken from
        it: an offer may reach the key before the customer's own events do (it comes on
        another path), and a key that only ever had offers is no customer's any more."""
        self.held_offers = (*self.held_offers, offer)

    def fire_due(
        self, mark_ms: int | None, rules: RuleSet, stock: StockView | None = None
    ) -> list[Outcome]:
        """Carts, lapses, repurchases and quiet hours due by ``mark_ms`` (nothing before
        the clock has a mark)."""
        if mark_ms is None:
            return []
        return on_time(self.state, self.customer_id, mark_ms, rules, stock)

    def finish(
        self, end_ms: int | None, rules: RuleSet, stock: StockView | None = None
    ) -> list[Outcome]:
        """The end of a replay: the held offers in event-time order, each after the timers
        due before it, then the timers due by ``end_ms`` (the end of the input)."""
        out: list[Outcome] = []
        offers, self.held_offers = sorted(self.held_offers, key=_offer_order), ()
        for offer in offers:
            if end_ms is not None:
                out += self.fire_due(min(offer.ts_ms - 1, end_ms), rules, stock)
            out += self.on_offer(offer, rules, stock)
        return out + self.fire_due(end_ms, rules, stock)

    def next_deadline(self) -> int | None:
        """Carts, held coupons, lapses and repurchases: the earliest (all kept in the state,
        armed with the rules in force when they were set)."""
        return next_deadline(self.state)


@dataclass(frozen=True, slots=True)
class ReceiptsRead:
    """The receipts of a location have been read up to ``read_ms`` (event time): every
    perishable receipt of it received by then has reached its sku × locations."""

    sku: str
    location_id: str
    read_ms: int


@resumable
@dataclass(slots=True)
class LocationTriggers:
    """The stock and clearance rules of one sku × location, fed its ``stock.changes`` in
    stock_pool's order and its perishable receipts."""

    sku: str = ""
    location_id: str = ""
    #: of the sku, from the reference data (``refresh``)
    category: str = ""
    reorder_point: int = 0
    #: how long the location keeps its positions (``domain.stock_rules.history_ms``)
    history_ms: int = 0
    state: SkuRuleState = field(default_factory=SkuRuleState)
    #: a replay's stock changes waiting for the location's receipts (``hold``), in order
    held: list[StockChange] = field(default_factory=list)
    #: event time up to which the location's receipts are known to have been read
    receipts_read_ms: int | None = None
    #: what stock experiments measure of this shelf (``domain.stock_arms``)
    shelf: ShelfTally = field(default_factory=ShelfTally)

    def __deepcopy__(self, memo: dict[int, object]) -> LocationTriggers:
        return LocationTriggers(
            self.sku,
            self.location_id,
            self.category,
            self.reorder_point,
            self.history_ms,
            self.state.__deepcopy__(memo),
            list(self.held),  # changes are frozen: shared
            self.receipts_read_ms,
            dataclasses.replace(self.shelf),
        )

    @classmethod
    def of(cls, sku: str, location_id: str, reference: ReferenceData) -> LocationTriggers:
        return cls(sku, location_id).refresh(reference)

    def refresh(self, reference: ReferenceData) -> LocationTriggers:
        """Take the sku's category and reorder point from (possibly newer) reference data."""
        product = reference.products.get(self.sku)
        self.category = product.category if product else ""
        self.reorder_point = product.reorder_point if product else 0
        self.history_ms = history_ms(product.shelf_life_days if product else None)
        return self

    def on_change(
        self, change: StockChange, rules: RuleSet, stock: StockView
    ) -> list[LocationOutcome]:
        """Timers due before the change (the location's changes come in order), then the
        stock rules and the clearance checks at the change."""
        out = self.fire_due(change.ts_ms - 1, rules, stock)
        stock_rules = rules.of_kind("low_stock") + rules.of_kind("stockout")
        self.state, fired = evaluate_stock_rules(
            self.state, change, stock_rules, self.reorder_point, stock, self.history_ms
        )
        note_change(self.state, change)
        out += fired
        out += evaluate_clearance(self.state, rules, self.category, change.ts_ms, stock)
        arms = arms_of(rules, change.sku, change.location_id)
        if arms:
            note_shelf(self.shelf, change)
            out.append(shelf_figures(self.shelf, change, arms))
        return out

    def on_batch(
        self, batch: ExpiryBatch, rules: RuleSet, stock: StockView
    ) -> list[LocationOutcome]:
        """A perishable receipt: judged as if it had come with the stock change that put it
        on hand, whichever of the two topics is read first (``receive_batch``)."""
        return list(receive_batch(self.state, batch, rules, self.category, stock))

    def hold(self, change: StockChange, rules: RuleSet, stock: StockView) -> list[LocationOutcome]:
        """A replay's stock change: taken now if the location's receipts have been read up
        to it, else kept, in order, until they have (``receipts_read``, ``finish``).

        Why: an expiry check looks at every batch received by its time (first-expiring-
        first-out shares the units among them, and of the batches entering their window
        together the rule's cooldown lets one fire), and what it fired stays fired. A
        receipt read after a later change of its location (a replay reads the two topics at
        their own pace: one batch of a partition near its end can span months) would come
        after the checks it should have taken part in. Goods that do not perish have no
        receipts to wait for.
        """
        read = self.receipts_read_ms
        if not self.held and (self.history_ms <= 0 or (read is not None and change.ts_ms <= read)):
            return self.on_change(change, rules, stock)
        self.held.append(change)
        return []

    def receipts_read(
        self, read_ms: int, rules: RuleSet, stock: StockView
    ) -> list[LocationOutcome]:
        """The location's receipts have been read up to ``read_ms``: the changes held up to
        then are taken, in order."""
        if self.receipts_read_ms is None or read_ms > self.receipts_read_ms:
            self.receipts_read_ms = read_ms
        return self._release(self.receipts_read_ms, rules, stock)

    def waiting_since(self) -> int | None:
        """Event time of the earliest change held for the receipts (None: none is)."""
        return self.held[0].ts_ms if self.held else None

    def _release(
        self, up_to_ms: int | None, rules: RuleSet, stock: StockView
    ) -> list[LocationOutcome]:
        count = 0
        for change in self.held:
            if up_to_ms is not None and change.ts_ms > up_to_ms:
                break
            count += 1
        if not count:
            return []
        released, self.held = self.held[:count], self.held[count:]
        out: list[LocationOutcome] = []
        for change in released:
            out += self.on_change(change, rules, stock)
        return out

    def fire_due(
        self, mark_ms: int | None, rules: RuleSet, stock: StockView
    ) -> list[LocationOutcome]:
        """Idleness and expiry checks due by ``mark_ms``, each at its own deadline."""
        out: list[LocationOutcome] = []
        if mark_ms is None:
            return out
        for deadline in clearance_deadlines(self.state, rules):
            if deadline > mark_ms:
                break
            out += evaluate_clearance(self.state, rules, self.category, deadline, stock, timer=True)
        return out

    def finish(self, end_ms: int | None, rules: RuleSet, stock: StockView) -> list[LocationOutcome]:
        """The end of a replay: every receipt has been read, so the changes still held are
        taken; then the timers due by the end of the input."""
        out = self._release(None, rules, stock)
        return out + self.fire_due(end_ms, rules, stock)

    def next_deadline(self, rules: RuleSet) -> int | None:
        return clearance_deadline(self.state, rules)


@resumable
@dataclass(slots=True)
class AudienceTriggers:
    """One region's recent product views; turns clearance signals into offers once the
    views have caught up with the signal's event time."""

    state: AudienceState = field(default_factory=AudienceState)

    def __deepcopy__(self, memo: dict[int, object]) -> AudienceTriggers:
        return AudienceTriggers(self.state.__deepcopy__(memo))

    def add_view(self, view: View, rules: RuleSet) -> None:
        self.state = add_view(self.state, view, rules)

    def add_signal(self, signal: ClearanceSignal) -> None:
        self.state = add_signal(self.state, signal)

    def follow_merge(self, merged: str, survivor: str, ts_ms: int, rules: RuleSet) -> None:
        self.state = follow_merge(self.state, merged, survivor, ts_ms, rules)

    def forget(self, customer_id: str) -> None:
        """An erasure: nothing of the customer stays in the region's audience."""
        self.state = forget_viewer(self.state, customer_id)

    def release(self, mark_ms: int | None, rules: RuleSet) -> list[Offer]:
        """Offers for every signal the views have caught up with by ``mark_ms``."""
        if mark_ms is None or not self.state.pending:
            return []
        return release_signals(self.state, mark_ms, rules, rules.max_audience)

    def finish(self, rules: RuleSet) -> list[Offer]:
        """The end of a replay: every view is known, every signal is released."""
        return self.release(EVERY_SIGNAL, rules)

    def next_release(self) -> int | None:
        return min((s.ts_ms for s in self.state.pending), default=None)


def _coupon_order(decision: CouponDecision) -> tuple[int, str]:
    return (decision.sent_at_ms, decision.code)


@resumable
@dataclass(slots=True)
class CampaignTriggers:
    """Coupons naming one store for one sku (``campaign_prep``)."""

    state: CampaignState | None = None
    #: coupons a replay counts at the end (those of different customers come in no order)
    held: list[CouponDecision] = field(default_factory=list)

    def __deepcopy__(self, memo: dict[int, object]) -> CampaignTriggers:
        state = self.state
        copied = None
        if state is not None:
            ledger = Ledger(dict(state.ledger.last_fired), dict(state.ledger.coupons_per_day))
            copied = CampaignState(list(state.triggers), ledger)
        return CampaignTriggers(copied, list(self.held))  # decisions are frozen: shared

    def count(
        self,
        decision: CouponDecision,
        rules: RuleSet,
        reference: ReferenceData,
        stock: StockView,
    ) -> list[StockOutcome]:
        """Count one coupon; the store's available units are asked of ``stock`` (as of the
        coupon) only when a ``campaign_prep`` rule is in force."""
        assert decision.store_id is not None and decision.sku is not None
        prep = rules.of_kind("campaign_prep")
        sent_ms = decision.sent_at_ms
        available = stock.available(decision.sku, decision.store_id, sent_ms) if prep else 0
        self.state, out = evaluate_campaign_prep(
            self.state,
            decision.store_id,
            reference.locations[decision.store_id].region,
            decision.sku,
            decision.code,
            sent_ms,
            prep,
            available,
            reference.products[decision.sku].reorder_point,
        )
        return out

    def hold(self, decision: CouponDecision) -> None:
        self.held.append(decision)

    def finish(
        self, rules: RuleSet, reference: ReferenceData, stock: StockView
    ) -> list[StockOutcome]:
        """The end of a replay: the held coupons counted in event-time order."""
        out: list[StockOutcome] = []
        held, self.held = sorted(self.held, key=_coupon_order), []
        for decision in held:
            out += self.count(decision, rules, reference, stock)
        return out


# --- routing ------------------------------------------------------------------------------------


class _OfLocation(Protocol):
    @property
    def sku(self) -> str: ...

    @property
    def location_id(self) -> str: ...


def location_key(record: _OfLocation) -> str:
    """The sku × location a stock record (a change, a receipt, a ``ReceiptsRead``) belongs
    to: the key of ``stock.changes``."""
    return f"{record.sku}:{record.location_id}"


def view_of(
    event: CustomerEvent, regions: Collection[str] | None = None
) -> tuple[str, View] | None:
    """The region and view a product view adds to the region's audience. With ``regions``
    (``audience_regions``), a view of a region no location is in is not kept: no clearance
    signal comes there, and an audience every identity notice reaches is one of those."""
    if event.event_type != "product_view" or not (event.region and event.sku and event.category):
        return None
    if regions is not None and event.region not in regions:
        return None
    return event.region, View(
        event.customer_id, event.sku, event.category, event.ts_ms, event.source_partition
    )


def audience_regions(reference: ReferenceData) -> frozenset[str]:
    """The regions with an audience: those of the reference's locations (a clearance signal
    comes from a location, in its region)."""
    return frozenset(location.region for location in reference.locations.values())


def campaign_key(decision: CouponDecision, reference: ReferenceData) -> str | None:
    """The store × sku whose ``campaign_prep`` counts a coupon (holdouts are not sent, so
    they prepare nothing), or None."""
    if (
        decision.holdout
        or decision.store_id not in reference.locations
        or decision.sku not in reference.products
    ):
        return None
    return f"{decision.store_id}:{decision.sku}"


def redeemed_codes(events: list[CustomerEvent]) -> list[str]:
    """The coupon codes of receipts that redeemed a coupon without a loyalty card: whose
    they are is looked up (one lookup per batch)."""
    return sorted({code for e in events if not e.customer_id for code in e.coupon_codes})


def claim_redemption(event: CustomerEvent, owners: dict[str, str]) -> CustomerEvent | None:
    """A receipt without a customer belongs to the customer of the first code it redeemed
    that is known (None: none is, and the rules have no customer for it)."""
    if event.customer_id:
        return event
    owner = next((owners[c] for c in event.coupon_codes if c in owners), None)
    return None if owner is None else dataclasses.replace(event, customer_id=owner)


def remembered_codes(decisions: list[CouponDecision], rules: RuleSet) -> list[tuple[str, str, int]]:
    """(code, customer, seconds to keep) of coupons sent: a till may redeem the code without
    a loyalty card until the coupon and its conversion window have passed."""
    keep_s = int(rules.conversion_window_s)
    rows = []
    for decision in decisions:
        rule = rules.by_id.get(decision.rule_id)
        offer = rule.coupon_of(decision.variant) if rule else None
        expires_s = int(offer.expires_in_s) if offer else 0
        rows.append((decision.code, decision.customer_id, expires_s + keep_s))
    return rows
