"""rule_triggers' replay of a recording, in one process: what ``rules backtest`` runs.

``run rule_triggers --until-idle`` reads each key's records in their order on the topics,
fires a key's timers on its next record and at the end of the input, and does at the end
what crosses keys and needs the whole input (``domain.trigger_engine``). ``TriggerReplay``
drives the same engine the same way, with dictionaries where the flow has Bytewax steps:
the same keys, the same routing, the same end of the input — the latest event time read
of ``events.resolved`` (less the timer grace) for customers, of ``stock.changes`` for
locations. The flow holds a perishable sku × location's stock changes until its receipts
have been read up to them (``LocationTriggers.hold``), so that the location takes its two
topics in event-time order; ``replay_order`` gives them in that order already (a receipt
before the later changes of its location), so here every change is taken as it comes.

Two things the flow asks of the outside world come from the caller:

- the stock pool (``StockView``): the flow asks Redis as it stands when it asks (behind a
  stock_pool that has caught up, that is the pool at the end of the input); a backtest
  picks the recorded stock as of each question, or at the end of the recording
  (``domain.stock_view.RecordedStock``);
- the owners of coupon codes (``CouponBook``), for a till receipt that redeemed a coupon
  without a loyalty card: the flow finds the codes it has sent (in any earlier run too);
  a backtest knows those it sent itself before the receipt, in ``replay_order``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol

from domain.clearance_rules import ClearanceSignal
from domain.customer_key import (
    CustomerErased,
    CustomerKey,
    HandOver,
    IdentityNotice,
    ProfilePending,
    ProfileRetired,
    ProfileWrite,
    audience_notice,
)
from domain.customer_rules import CouponDecision, CustomerEvent, Offer
from domain.profile import ProfileSettings
from domain.redemption_review import RedemptionReviews, review_key, reviewed
from domain.reference import ReferenceData
from domain.rules import RuleSet
from domain.stock_rules import ExpiryBatch, StockChange
from domain.stock_view import StockView
from domain.trigger_engine import (
    AudienceTriggers,
    CampaignTriggers,
    LocationTriggers,
    audience_regions,
    campaign_key,
    claim_redemption,
    location_key,
    remembered_codes,
    view_of,
)

Record = CustomerEvent | IdentityNotice | StockChange | ExpiryBatch

#: The input groups whose latest event time ends a replay's timers.
RESOLVED, STOCK = "resolved", "stock"


class CouponBook(Protocol):
    """Which customer a coupon code was sent to (``state.coupon_store`` implements it)."""

    def remember(self, codes: list[tuple[str, str, int]]) -> None:
        """(code, customer id, seconds to keep) of each coupon sent."""
        ...

    def owners(self, codes: list[str]) -> dict[str, str]:
        """The customer of each code that is known."""
        ...


def _stream_of(record: Record, index: int) -> Hashable:
    if isinstance(record, IdentityNotice):
        return ("customer", record.customer_id)
    if isinstance(record, CustomerEvent):
        return ("customer", record.customer_id) if record.customer_id else ("anonymous", index)
    if isinstance(record, StockChange):
        return ("stock", location_key(record))
    return ("receipt", location_key(record))


def replay_order(records: Iterable[Record]) -> list[Record]:
    """Each key's records in the order given — their order on the topics, which is the
    order the flow reads them in — and the keys interleaved by event time (first come first
    on a tie): what a replay's lookups of what was sent before see.

    >>> from domain.stock_rules import StockChange
    >>> a1, a2 = (StockChange("K", "A", "SH", 1, 0, ts, f"a{ts}") for ts in (30, 10))
    >>> b = StockChange("K", "B", "SH", 1, 0, 20, "b")
    >>> [r.cause for r in replay_order([a1, a2, b])]  # A's own order is kept
    ['b', 'a30', 'a10']
    """
    streams: dict[Hashable, list[Record]] = {}
    for index, record in enumerate(records):
        streams.setdefault(_stream_of(record, index), []).append(record)
    lists = list(streams.values())
    heads = [(items[0].ts_ms, n, 0) for n, items in enumerate(lists)]
    heapq.heapify(heads)
    ordered: list[Record] = []
    while heads:
        _, n, position = heapq.heappop(heads)
        items = lists[n]
        ordered.append(items[position])
        if position + 1 < len(items):
            heapq.heappush(heads, (items[position + 1].ts_ms, n, position + 1))
    return ordered


class TriggerReplay:
    """The keys of rule_triggers' four stateful steps, fed records one at a time."""

    def __init__(
        self,
        rules: RuleSet,
        reference: ReferenceData,
        stock: StockView,
        coupons: CouponBook,
        grace_ms: int,
        profile_settings: ProfileSettings | None = None,
    ) -> None:
        self.rules = rules
        self.profile_settings = profile_settings or ProfileSettings()
        self.reference = reference
        self.stock = stock
        self.coupons = coupons
        self.grace_ms = grace_ms
        self.customers: dict[str, CustomerKey] = {}
        #: merged customers' states waiting for their survivors, as the handover store
        self.handovers: dict[tuple[str, str], bytes] = {}
        self.locations: dict[str, LocationTriggers] = {}
        self.audiences: dict[str, AudienceTriggers] = {}
        self.regions = audience_regions(reference)
        self.campaigns: dict[str, CampaignTriggers] = {}
        self.reviews: dict[str, RedemptionReviews] = {}
        #: customers waiting for a merged id's state (``_collect`` looks at these only)
        self.waiting: set[str] = set()
        #: the latest event time read per input group (the end of the input, at the end)
        self.read_ms: dict[str, int] = {}

    def _read(self, group: str, ts_ms: int) -> None:
        if ts_ms > self.read_ms.get(group, ts_ms - 1):
            self.read_ms[group] = ts_ms

    def feed(self, record: Record) -> list[object] | None:
        """What the record makes the rules do now; None for a receipt that redeemed a
        coupon nobody is known to own (the flow skips it: ``no_customer``)."""
        rules = self.rules
        if isinstance(record, CustomerEvent):
            if not record.customer_id:
                claimed = claim_redemption(record, self.coupons.owners(list(record.coupon_codes)))
                if claimed is None:
                    return None
                record = claimed
            self._read(RESOLVED, record.ts_ms)
            viewed = view_of(record, self.regions)
            if viewed is not None:
                region, view = viewed
                self.audiences.setdefault(region, AudienceTriggers()).add_view(view, rules)
            return self._take(record.customer_id, record)
        if isinstance(record, IdentityNotice):
            self._read(RESOLVED, record.ts_ms)
            for audience in self.audiences.values():  # the flow sends it to every region
                audience_notice(audience, record, rules)
            return self._take(record.customer_id, record)
        key = location_key(record)
        location = self.locations.get(key)
        if location is None:
            location = self.locations[key] = LocationTriggers.of(
                record.sku, record.location_id, self.reference
            )
        if isinstance(record, ExpiryBatch):
            return self._from_location(location.on_batch(record, rules, self.stock))
        self._read(STOCK, record.ts_ms)
        return self._from_location(location.on_change(record, rules, self.stock))

    def _take(self, customer_id: str, item: CustomerEvent | IdentityNotice | Offer) -> list[object]:
        """The customer's key takes the item, as the flow's customers step; a key merged
        away leaves its state for its survivor, who takes it as soon as it waits for it."""
        key = self.customers.setdefault(customer_id, CustomerKey())
        out = key.take(item, self.rules, self.stock, self.profile_settings, replay=True)
        handed_over = False
        for handed in [o for o in out if isinstance(o, HandOver)]:
            self.handovers[(handed.survivor, handed.merged)] = handed.payload
            handed_over = True
        if key.waiting:
            self.waiting.add(customer_id)
        if key.gone:
            del self.customers[customer_id]
        out = [o for o in out if not isinstance(o, HandOver)]
        # Only a handover lets a waiting survivor go on; without one there is nothing to
        # collect (looking at every customer on every record made a replay quadratic).
        collected = self._collect() if handed_over or customer_id in self.waiting else []
        return self._from_customer(out + collected)

    def _collect(self) -> list[object]:
        """Survivors take the states they wait for that have been handed over."""
        out: list[object] = []
        progress = True
        while progress:
            progress = False
            for customer_id in sorted(self.waiting):
                key = self.customers.get(customer_id)
                if key is None or not key.waiting:
                    self.waiting.discard(customer_id)
                    continue
                while key.waiting and (customer_id, key.waiting[0]) in self.handovers:
                    payload = self.handovers[(customer_id, key.waiting[0])]
                    taken = key.absorb(
                        key.waiting[0],
                        payload,
                        self.rules,
                        self.stock,
                        self.profile_settings,
                        replay=True,
                    )
                    for handed in [o for o in taken if isinstance(o, HandOver)]:
                        self.handovers[(handed.survivor, handed.merged)] = handed.payload
                    out += [o for o in taken if not isinstance(o, HandOver)]
                    progress = True
                if key.gone:
                    del self.customers[customer_id]
        return out

    def finish(self) -> list[object]:
        """The end of the input, as the flow's stateful steps reach it one after another."""
        rules, out = self.rules, []
        stock_end = self.read_ms.get(STOCK)
        for location in self.locations.values():
            out += self._from_location(location.finish(stock_end, rules, self.stock))
        for audience in self.audiences.values():
            for offer in audience.finish(rules):
                self._take(offer.customer_id, offer)
        resolved_end = self.read_ms.get(RESOLVED)
        customer_end = None if resolved_end is None else resolved_end - self.grace_ms
        for customer in self.customers.values():
            out += self._from_customer(
                customer.finish(customer_end, rules, self.stock, self.profile_settings)
            )
        for campaign in self.campaigns.values():
            out += campaign.finish(rules, self.reference, self.stock)
        for review in self.reviews.values():
            out += review.finish(rules)
        return out

    def _from_location(self, outcomes: Sequence[object]) -> list[object]:
        out = []
        for item in outcomes:
            if isinstance(item, ClearanceSignal):
                self.audiences.setdefault(item.region, AudienceTriggers()).add_signal(item)
            else:
                out.append(item)
        return out

    def _from_customer(self, outcomes: Sequence[object]) -> list[object]:
        """The rules' outcomes (profiles and erasures are the flow's Redis writes)."""
        outcomes = [
            o
            for o in outcomes
            if not isinstance(o, ProfilePending | ProfileWrite | ProfileRetired | CustomerErased)
        ]
        sent = [o for o in outcomes if isinstance(o, CouponDecision) and not o.holdout]
        if sent:
            self.coupons.remember(remembered_codes(sent, self.rules))
        for decision in sent:
            key = campaign_key(decision, self.reference)
            if key is not None:
                self.campaigns.setdefault(key, CampaignTriggers()).hold(decision)
        if self.rules.of_kind("redemption_review"):
            for item in outcomes:
                if reviewed(item):
                    self.reviews.setdefault(review_key(item), RedemptionReviews()).hold(item)  # type: ignore[arg-type]
        return list(outcomes)
