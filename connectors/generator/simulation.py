"""The simulated retail chain: reference data in, good events out (CONTRACT §1).

Pure, seeded and deterministic: no Kafka, no clock reads, every draw from a random stream
named after the seed, so the same arguments give a byte-identical stream. ``traffic``
mixes these good events with duplicates and malformations; this module knows nothing of
either.

How the simulation works: an agenda (a heap ordered by event time) holds *activities*, which
are generators in the retail domain's own terms (``_online_visit``, ``_walk_in_sale``,
``_ship_order`` …). An activity yields either an event to publish at the current event time
or a wait in milliseconds, after which it is resumed. New visits and store traffic arrive as
a Poisson process; order follow-ups (cancellation, shipment, store pickup) and replenishment
(supplier receipts, warehouse-to-store transfers) are scheduled by the activities that cause
them, always minutes later, so an effect never precedes its cause. A few events arrive late
(their ``ts`` a few seconds before the one published before them), because real ones do.

Fulfilment (CONTRACT §8–10): most delivery orders name no location but the delivery address;
the simulation sources them itself with ``domain.fulfilment.source_order`` on its own model
of available-to-sell (on hand − reserved − safety stock), which changes exactly when the
event saying so is published, so its shipments leave from where the stock flow, reading the
same events, most likely reserved them. An order no location covers is never shipped and is
cancelled later. A few pickups land at a store that lacks the goods (pickup exceptions); the
missing units come in by transfer (``transfer_out`` names its ``to_location_id``).

The customer base (devices, accounts, loyalty cards, phone numbers, e-mails) depends on
``customers`` only, not on the seed: streams of different seeds are different days of the
same shoppers, so identities stitch across runs. Everything with an id that must be unique
(``event_id``, order, receipt and transfer ids) carries the seed.

Lead times and transit times are compressed so that an hour of traffic shows whole
replenishment cycles: one day of ``lead_time_days`` takes ``LEAD_DAY_MS`` of event time.

Customers (CONTRACT §8, §11): signed-in members check in at a store of their region with the
app, most often a little while after looking at products online (so a store associate's
``customer_visit`` task has recent views to show), and many then buy at the till with their
loyalty card. Some signed-in shoppers turn marketing off in their settings (a ``consent``
event), and a few turn it back on later. Customer life cycles take weeks, a generated stream
hours (about one event per 400 ms of event time): so the stream opens with a little history,
backdated weeks before ``start_ms`` and published first, in event-time order, before the
opening stock. *Lapsing* members bought once, ``inactive_days`` (and up to an hour on either
side) before the stream starts, and never come back, so a ``lapsed`` rule's timer comes due
in the stream's first hour or so; other members bought a repurchase item (a product with
``repurchase_days``) that many days before, so its reminder comes due then too. The store
stock those old sales took was there: the opening-stock receipt of that sku at that store is
published before the first of them instead of at ``start_ms``. Only non-perishable skus are
sold in that history, so no batch received weeks ago expires inside the stream.
"""

from __future__ import annotations

import heapq
import math
import random
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from base import topics
from base.units import DAY_MS, MINUTE_MS, SECOND_MS
from connectors.generator.wire import (
    CHANNELS,
    GeneratedEvent,
    event_ts,
    format_email,
    format_phone,
    local_date,
    money,
)
from domain.fulfilment import source_order, transfer_source
from domain.reference import Location, Product, ReferenceData

# --- tunables -----------------------------------------------------------------------------------

#: Mean gap between two new activities (a visit, a till sale, a warehouse task …). With the
#: follow-ups they cause, the stream averages roughly one event per 400 ms of event time.
MEAN_ARRIVAL_GAP_MS = 1_000
#: Share of events published a little late (ts 0.2–5 s before the previous event).
LATE_SHARE = 0.03
#: One day of supplier lead time takes this long in event time (see the module docstring).
LEAD_DAY_MS = 5 * MINUTE_MS
#: How often each of ``CHANNELS`` is used.
CHANNEL_WEIGHTS: tuple[float, ...] = (40, 25, 20, 8, 7)
#: Channels are open (CONTRACT §1 lists them with "…"): a rare in-store kiosk shows that.
RARE_CHANNEL = "kiosk"
RARE_CHANNEL_SHARE = 0.004
#: Share of visits that arrive from marketing, per channel.
CAMPAIGN_SHARE = {
    "app": 0.15,
    "mini_program": 0.25,
    "web": 0.35,
    "live_stream": 1.0,
    "social": 0.8,
    RARE_CHANNEL: 0.0,
}
#: (source, medium, campaign, possible contents) per channel; None content is left out.
CAMPAIGNS: dict[str, tuple[tuple[str, str, str, tuple[str | None, ...]], ...]] = {
    "app": (
        ("app_push", "push", "member_day", (None,)),
        ("sms", "sms", "cart_reminder", (None,)),
    ),
    "mini_program": (
        ("wechat", "social", "double11_warmup", ("share_card", "group_chat")),
        ("wechat", "cpc", "moments_ads", ("video_15s",)),
    ),
    "web": (
        ("baidu", "cpc", "brand_search", (None,)),
        ("newsletter", "email", "weekly_deals", ("hero", "footer")),
        ("smzdm", "affiliate", "cashback_portal", (None,)),
    ),
    "live_stream": (
        ("douyin", "live", "double11_live", ("host_lina", "host_chen")),
        ("taobao_live", "live", "fresh_friday", (None,)),
    ),
    "social": (
        ("xiaohongshu", "social", "autumn_skincare", ("note_a", "note_b")),
        ("wechat", "social", "double11_warmup", ("article",)),
        ("weibo", "social", "brand_day", (None,)),
    ),
}
PAID_MEDIA = frozenset({"cpc", "social", "live", "affiliate"})
SEARCH_TERMS: dict[str, tuple[str, ...]] = {
    "fresh_food": ("strawberries", "salmon", "草莓", "chicken breast", "蔬菜"),
    "dairy": ("yogurt", "fresh milk", "牛奶", "cheese", "酸奶"),
    "beverages": ("sparkling water", "beer", "矿泉水", "cold brew", "juice"),
    "snacks": ("chips", "mixed nuts", "零食", "chocolate", "jerky"),
    "personal_care": ("shampoo", "sunscreen", "牙膏", "face cream"),
    "household": ("toilet paper", "detergent", "纸巾", "garbage bags"),
    "baby_care": ("diapers", "formula", "尿不湿", "baby wipes"),
    "small_appliances": ("air fryer", "rice cooker", "电水壶", "vacuum"),
}
ADJUSTMENT_REASONS = ("damaged", "shrinkage", "found", "system_correction")
COUPON_CAMPAIGNS = ("CARTBACK", "WELCOME", "MEMBERDAY", "FRESH10", "RESTOCK")
#: Share of delivery orders placed without a location (CONTRACT §8): they carry the address
#: and Omnistream sources them (§10). The others name the location, as before sourcing.
DEFAULT_UNSOURCED_SHARE = 0.7
#: Of those, the share whose address was not geocoded (region only) and the share that carry
#: neither coordinates nor region (still valid: sourcing then ranks by stock alone).
ADDRESS_REGION_ONLY_SHARE = 0.08
ADDRESS_BARE_SHARE = 0.02
#: Delivery addresses lie within this many km of the shopper's home store.
ADDRESS_RADIUS_KM = 5.0
KM_PER_DEGREE = 111.195
#: Share of pickups the shop accepts although the store cannot cover them (pickup exceptions).
PICKUP_EXCEPTION_SHARE = 0.06
#: An order nobody can fulfil (or a pickup nobody can restock) is cancelled this many minutes
#: after it was placed.
UNFULFILLABLE_CANCEL_MINUTES = (10.0, 40.0)
#: Share of online sessions of a signed-in shopper who looked at products that lead to a
#: check-in at a store of their region minutes later (the visit task then has recent views).
CHECKIN_AFTER_VIEWS_SHARE = 0.3
#: Minutes from the last product view to the check-in at the store.
CHECKIN_AFTER_VIEWS_MINUTES = (5.0, 60.0)
#: Share of check-ins at the shopper's home store (the others: another store of the region).
CHECKIN_HOME_STORE_SHARE = 0.7
#: Share of check-ins of a card-holding member that end with a till sale on the card.
CHECKIN_PURCHASE_SHARE = 0.6
#: Share of sessions of a signed-in shopper (marketing on) that turn marketing off.
DEFAULT_CONSENT_WITHDRAWAL_SHARE = 0.06
#: Share of withdrawals turned back on later in the stream, after this many minutes.
CONSENT_REGRANT_SHARE = 0.3
CONSENT_REGRANT_MINUTES = (20.0, 90.0)
#: Days without a purchase after which the sample ``lapsed`` rule fires (its
#: ``inactive_days``); the history's lapsing members bought once that long ago.
DEFAULT_INACTIVE_DAYS = 30
#: Share of the customer base that lapses: card-holding members with one purchase in the
#: history and no activity in the stream.
DEFAULT_LAPSING_SHARE = 0.01
#: Share of the customer base with a repurchase item bought ``repurchase_days`` ago.
REPURCHASE_HISTORY_SHARE = 0.02
#: A history purchase is dated so that its lapse or reminder comes due this many minutes
#: around ``start_ms`` (the stream opens at 09:00: due times stay out of quiet hours).
HISTORY_DUE_MINUTES = (-60.0, 90.0)
#: Share of shoppers who gave the chain a mobile number (a loyalty card needs one in most
#: programmes; an e-receipt or delivery asks for it too).
PHONE_SHARE = 0.92
#: Share of walk-in till sales by a regular of the store's region (the others: passers-by
#: nobody knows, whose purchases no touch can be credited for).
REGULAR_SHARE = 0.95
#: Share of a regular's till sales on which the loyalty card is scanned.
CARD_SHARE = 0.9
#: Share of a regular's till sales on which the till records the shopper's phone (the card's
#: registered number, an e-receipt, points): what joins the shop floor to the shopper's
#: online identity (the phone they gave online too).
TILL_PHONE_SHARE = 0.95
#: Share of a known shopper's walk-in store visits that follow a campaign message opened on their
#: phone (a push or an SMS, whose link carries the number it was sent to) minutes before,
#: ``NUDGE_MINUTES``: attribution credits a purchase with the touches since the customer's
#: previous purchase, so a regular who buys twice in the stream needs a touch before each,
#: and most purchases follow a touch, as they do where marketing works.
NUDGE_SHARE = 0.85
NUDGE_MINUTES = (2.0, 20.0)

# --- the simulated world ------------------------------------------------------------------------


@dataclass(slots=True)
class Customer:
    number: int
    region: str
    home_store: str
    #: Anonymous ids of the shopper's phones, tablets and browsers (a few are shared).
    devices: list[str]
    user_id: str | None
    member_code: str | None
    phone: str | None
    email: str | None
    favourite_channel: str


@dataclass(slots=True)
class Line:
    sku: str
    qty: int
    unit_cents: int

    def as_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "qty": self.qty, "unit_price": money(self.unit_cents)}


@dataclass(slots=True)
class _Visit:
    """One online session of one device."""

    device: str
    channel: str
    customer: Customer | None
    region: str | None
    campaign: dict[str, str] | None
    focus_category: str
    user_id: str | None = None
    #: sku → qty, in the order the shopper added them.
    cart: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Fulfilment:
    """Where an order's stock is reserved, and its ``fulfillment`` object as published."""

    #: None: no location can fulfil it (it is not shipped and the shop cancels it).
    location_id: str | None
    fields: dict[str, Any]
    #: (sku, units) a pickup store lacked when the order was placed (a pickup exception).
    shortfall: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class _Order:
    order_id: str
    visit: _Visit
    lines: list[Line]
    fulfillment: str
    location_id: str | None
    shortfall: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class _HistorySale:
    """A till sale of the backdated history (see the module docstring)."""

    ts_ms: int
    customer: Customer
    store_id: str
    lines: list[Line]
    #: ``lapsing``: the member's only purchase; ``repurchase``: a repurchase item.
    why: str


@dataclass(slots=True)
class _TillReceipt:
    receipt_id: str
    lines: list[Line]
    member_code: str | None


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """An event an activity publishes; ``event_id`` and ``ts`` are added on publication."""

    topic: str
    key: str
    event_type: str
    fields: dict[str, Any]
    may_arrive_late: bool = True


#: An activity yields events to publish now, or waits (ms) before it continues.
Activity = Iterator[_Outgoing | int]


def priced_lines(lines: Sequence[Line]) -> dict[str, Any]:
    """The ``lines`` and ``total`` fields of a sale, return or order; the total is summed in
    cents, so it equals the sum of the lines to the cent."""
    return {
        "lines": [line.as_json() for line in lines],
        "total": money(sum(line.qty * line.unit_cents for line in lines)),
    }


class _Choice:
    """A weighted choice among fixed items (cumulative weights computed once)."""

    def __init__(self, items: Sequence[Any], weights: Sequence[float]) -> None:
        self.items = list(items)
        self.cumulative = list(accumulate(weights))

    def __call__(self, rng: random.Random) -> Any:
        return rng.choices(self.items, cum_weights=self.cumulative)[0]

    def many(self, rng: random.Random, k: int) -> list[Any]:
        return rng.choices(self.items, cum_weights=self.cumulative, k=k)


BASKET_SIZES = _Choice((1, 2, 3, 4, 5, 7), (28, 25, 18, 12, 9, 8))
TILL_QTY = _Choice((1, 2, 3, 4, 6), (60, 22, 9, 5, 4))
CART_QTY = _Choice((1, 2, 3), (75, 20, 5))
VISIT_INTENTS = _Choice(("bounce", "browse", "cart", "buy"), (20, 36, 24, 20))
CHANNEL_MIX = _Choice(CHANNELS, CHANNEL_WEIGHTS)


_GIVEN_NAMES = (
    "wei",
    "fang",
    "na",
    "min",
    "jing",
    "lei",
    "yang",
    "jie",
    "tao",
    "li",
    "xiu",
    "hui",
    "qiang",
    "yan",
    "ming",
    "ling",
    "hao",
    "yu",
    "chen",
    "lan",
)
_FAMILY_NAMES = (
    "wang",
    "li",
    "zhang",
    "liu",
    "chen",
    "yang",
    "huang",
    "zhao",
    "wu",
    "zhou",
    "xu",
    "sun",
    "ma",
    "zhu",
    "hu",
    "guo",
    "he",
    "lin",
    "gao",
    "luo",
)
_MAIL_DOMAINS = ("example.com", "example.cn", "example.net")
_MOBILE_PREFIXES = (
    "133",
    "135",
    "136",
    "137",
    "138",
    "139",
    "150",
    "151",
    "158",
    "176",
    "177",
    "180",
    "185",
    "186",
    "187",
    "188",
    "189",
    "199",
)


def _by_location_id(reference: ReferenceData) -> list[Location]:
    return sorted(reference.locations.values(), key=lambda loc: loc.location_id)


def _stores_by_region(locations: Iterable[Location]) -> dict[str, list[str]]:
    """region → ids of its stores, in the order given."""
    by_region: dict[str, list[str]] = {}
    for location in locations:
        if location.type == "store":
            by_region.setdefault(location.region, []).append(location.location_id)
    return by_region


def customer_base(reference: ReferenceData, count: int) -> list[Customer]:
    """The shoppers of the chain; depends on ``count`` (and the stores) only, not on the seed.

    Every shopper lives in a region with stores and has a home store there; regions with
    more stores have more shoppers.
    """
    stores_by_region = _stores_by_region(_by_location_id(reference))
    rng = random.Random(f"omnistream-customers-{count}")
    regions = sorted(stores_by_region)
    region_weights = [len(stores_by_region[r]) for r in regions]
    phones: set[str] = set()
    customers: list[Customer] = []
    for number in range(1, count + 1):
        region = rng.choices(regions, weights=region_weights)[0]
        phone = None
        if rng.random() < PHONE_SHARE:
            while True:
                candidate = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
                if candidate not in phones:
                    phones.add(candidate)
                    phone = candidate
                    break
        email = None
        if rng.random() < 0.45:
            email = (
                f"{rng.choice(_GIVEN_NAMES)}.{rng.choice(_FAMILY_NAMES)}{number}"
                f"@{rng.choice(_MAIL_DOMAINS)}"
            )
        devices = [f"anon-{rng.getrandbits(64):016x}" for _ in range(rng.choice((1, 1, 2, 3)))]
        customers.append(
            Customer(
                number=number,
                region=region,
                home_store=rng.choice(stores_by_region[region]),
                devices=devices,
                user_id=f"u-{100000 + number}" if rng.random() < 0.7 else None,
                member_code=f"M{80000000 + number * 7:08d}" if rng.random() < 0.55 else None,
                phone=phone,
                email=email,
                favourite_channel=CHANNEL_MIX(rng),
            )
        )
    # A family tablet: about 2% of shoppers use a device of another shopper of their region,
    # so two different accounts log in on one device (identity must refuse to fuse them).
    for customer in customers:
        if rng.random() < 0.02:
            other = rng.choice(customers)
            if other is not customer and other.region == customer.region:
                customer.devices.append(other.devices[0])
    return customers


class Simulation:
    """The state of the chain while one stream is generated (see the module docstring)."""

    def __init__(
        self,
        reference: ReferenceData,
        seed: int,
        customers: list[Customer],
        start_ms: int,
        unsourced_share: float = DEFAULT_UNSOURCED_SHARE,
        consent_withdrawal_share: float = DEFAULT_CONSENT_WITHDRAWAL_SHARE,
        lapsing_share: float = DEFAULT_LAPSING_SHARE,
        inactive_days: int = DEFAULT_INACTIVE_DAYS,
    ) -> None:
        for name, share in (
            ("unsourced_share", unsourced_share),
            ("consent_withdrawal_share", consent_withdrawal_share),
            ("lapsing_share", lapsing_share),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {share}")
        if inactive_days < 1:
            raise ValueError(f"inactive_days must be ≥ 1, got {inactive_days}")
        self.reference = reference
        self.seed = seed
        self.unsourced_share = unsourced_share
        self.consent_withdrawal_share = consent_withdrawal_share
        self.inactive_days = inactive_days
        self.start_ms = start_ms
        self.rng = random.Random(f"omnistream-traffic-{seed}")
        self.now = start_ms
        self.customers = customers
        self._agenda: list[tuple[int, int, Activity]] = []
        self._scheduled = 0
        self._published = 0
        self._serials: Counter[str] = Counter()

        rng = self.rng
        locations = _by_location_id(reference)
        self.locations = locations
        self.stores = [loc for loc in locations if loc.type == "store"]
        self.warehouses = [loc for loc in locations if loc.type == "warehouse"]
        self.forward_warehouses = [loc for loc in locations if loc.type == "forward_warehouse"]
        self.stores_by_region = _stores_by_region(self.stores)
        self.regions = sorted(self.stores_by_region)

        # Bestsellers differ from seed to seed: popularity follows a Zipf-like curve over a
        # seeded ranking of the catalogue.
        self.products = sorted(reference.products.values(), key=lambda p: p.sku)
        ranking = list(self.products)
        rng.shuffle(ranking)
        self.popularity = {p.sku: 1 / (rank + 1) ** 0.9 for rank, p in enumerate(ranking)}
        self.skus = [p.sku for p in self.products]
        self.popular_sku = self._by_popularity(self.skus)
        by_category: dict[str, list[str]] = {}
        for product in self.products:
            by_category.setdefault(product.category, []).append(product.sku)
        self.in_category = {c: self._by_popularity(skus) for c, skus in by_category.items()}
        categories = sorted(by_category)
        self.popular_category = _Choice(
            categories, [sum(self.popularity[s] for s in by_category[c]) for c in categories]
        )
        self.perishables = [p.sku for p in self.products if p.shelf_life_days is not None]
        # Today's prices: about one sku in ten is on promotion, online and in store alike.
        self.unit_cents: dict[str, int] = {}
        for product in self.products:
            cents = round(product.price * 100)
            if rng.random() < 0.1:
                cents = max(1, round(cents * rng.uniform(0.7, 0.95) / 10) * 10)
            self.unit_cents[product.sku] = cents
        # A few skus have a supplier in trouble: deliveries take much longer and the chain
        # starts low on them, so they run out.
        self.supply_problems = {s for s in self.skus if rng.random() < 0.03}

        self.assortment = {loc.location_id: self._assortment(loc) for loc in locations}
        self.shelf = {
            s.location_id: self._by_popularity(self.assortment[s.location_id]) for s in self.stores
        }
        self.on_hand: dict[tuple[str, str], int] = {}
        self.reserved: dict[tuple[str, str], int] = {}
        self.replenishing: set[tuple[str, str]] = set()
        self.recent_sales: dict[str, list[_TillReceipt]] = {s.location_id: [] for s in self.stores}

        # The history (module docstring) has its own dice, so its size moves no other draw.
        self._history_rng = random.Random(f"omnistream-history-{seed}")
        self.lapsing = self._lapsing_members(lapsing_share)
        active = [c for c in customers if c.number not in self.lapsing]
        activity = [c.number % 10 + 1 for c in active]  # some shoppers come back often
        self.frequent_customer = _Choice(active, activity)
        self.customers_by_region: dict[str, list[Customer]] = {}
        for customer in active:
            self.customers_by_region.setdefault(customer.region, []).append(customer)
        #: Numbers of the customers whose marketing is off right now.
        self.marketing_off: set[int] = set()
        self._stocked_early: set[tuple[str, str]] = set()
        self.busy_store = _Choice(self.stores, [rng.uniform(0.6, 1.4) for _ in self.stores])
        self.next_activity = _Choice(
            [
                self._online_visit,
                self._walk_in_sale,
                self._customer_return,
                self._supplier_delivery,
                self._stock_adjustment,
                self._cycle_count,
                self._store_rebalancing,
                self._passing_checkin,
            ],
            [30, 55, 2.0, 4.0, 4.0, 7.0, 1.5, 1.0],
        )

    def _by_popularity(self, skus: Sequence[str]) -> _Choice:
        return _Choice(skus, [self.popularity[s] for s in skus])

    # --- scheduling --------------------------------------------------------------------------

    def _after(self, wait_ms: int, activity: Activity) -> None:
        self._scheduled += 1
        heapq.heappush(self._agenda, (self.now + max(0, wait_ms), self._scheduled, activity))

    def _at(self, ts_ms: int, activity: Activity) -> None:
        """Schedule an activity at an absolute event time (the history lies before now)."""
        self._scheduled += 1
        heapq.heappush(self._agenda, (ts_ms, self._scheduled, activity))

    def run(self) -> Iterator[GeneratedEvent]:
        """The good events, in publication order, forever."""
        self._schedule_history()
        self._after(0, self._opening_stock())
        agenda = self._agenda
        while agenda:
            due, _, activity = heapq.heappop(agenda)
            self.now = due
            for step in activity:
                if isinstance(step, int):
                    self._after(max(1, step), activity)
                    break
                yield self._publish(step)

    def _publish(self, outgoing: _Outgoing) -> GeneratedEvent:
        self._published += 1
        event_id = f"evt-{self.seed}-{self._published}"
        ts_ms = self.now
        if outgoing.may_arrive_late and self.rng.random() < LATE_SHARE:
            ts_ms -= self.rng.randint(200, 5_000)
        payload = {
            "event_id": event_id,
            "event_type": outgoing.event_type,
            "ts": event_ts(self.rng, ts_ms),
        }
        payload.update(outgoing.fields)
        return GeneratedEvent(
            outgoing.topic, outgoing.key.encode(), orjson.dumps(payload), event_id, None
        )

    def _serial(self, kind: str) -> int:
        self._serials[kind] += 1
        return self._serials[kind]

    def _seconds(self, low: float, high: float) -> int:
        return round(self.rng.uniform(low, high) * SECOND_MS)

    def _minutes(self, low: float, high: float) -> int:
        return round(self.rng.uniform(low, high) * MINUTE_MS)

    # --- stock bookkeeping -------------------------------------------------------------------

    def _assortment(self, location: Location) -> list[str]:
        """What a location carries: the warehouse everything, others a popular selection."""
        if location.type == "warehouse":
            return list(self.skus)
        size = 60 if location.type == "forward_warehouse" else 30
        chosen = list(self.perishables)
        perishable = set(chosen)
        candidates = [s for s in self.skus if s not in perishable]
        weights = [self.popularity[s] for s in candidates]
        while len(chosen) < len(self.perishables) + size and candidates:
            index = self.rng.choices(range(len(candidates)), weights=weights)[0]
            chosen.append(candidates.pop(index))
            weights.pop(index)
        return sorted(chosen)

    def _available(self, sku: str, location_id: str) -> int:
        key = (sku, location_id)
        return self.on_hand.get(key, 0) - self.reserved.get(key, 0)

    def _available_to_sell(self, sku: str, location_id: str) -> int:
        """What an order may take (CONTRACT §9): available less the sku's safety stock."""
        safety_stock = self.reference.products[sku].safety_stock
        return max(0, self._available(sku, location_id) - safety_stock)

    def _change_stock(self, sku: str, location_id: str, delta: int) -> None:
        key = (sku, location_id)
        self.on_hand[key] = self.on_hand.get(key, 0) + delta

    def _change_reserved(self, sku: str, location_id: str, delta: int) -> None:
        key = (sku, location_id)
        self.reserved[key] = self.reserved.get(key, 0) + delta

    def _watch_stock(self, sku: str, location_id: str) -> None:
        """Start a replenishment when available stock falls below the reorder point."""
        key = (sku, location_id)
        if key in self.replenishing:
            return
        if self._available(sku, location_id) >= self.reference.products[sku].reorder_point:
            return
        self.replenishing.add(key)
        self._after(0, self._replenish(sku, self.reference.locations[location_id]))

    def central_warehouse(self, region: str | None) -> Location:
        """The warehouse of ``region``, else the first warehouse (or forward warehouse)."""
        for warehouse in self.warehouses:
            if warehouse.region == region:
                return warehouse
        return (self.warehouses or self.forward_warehouses)[0]

    # --- event builders ----------------------------------------------------------------------

    def _movement(
        self, event_type: str, location_id: str, sku: str, qty: int, **extra: Any
    ) -> _Outgoing:
        fields = {"location_id": location_id, "sku": sku, "qty": qty, **extra}
        return _Outgoing(
            topics.WMS_MOVEMENTS, location_id, event_type, fields, event_type != "stock_count"
        )

    def _receipt(self, location_id: str, sku: str, qty: int, **extra: Any) -> _Outgoing:
        """Goods arrive from a supplier; perishable batches carry their expiry date."""
        shelf_life = self.reference.products[sku].shelf_life_days
        if shelf_life is not None:
            extra["expiry_date"] = local_date(self.now, shelf_life)
        self._change_stock(sku, location_id, qty)
        return self._movement("receipt", location_id, sku, qty, **extra)

    def _till(
        self, event_type: str, store_id: str, receipt_id: str, lines: list[Line], **extra: Any
    ) -> _Outgoing:
        fields = {
            "store_id": store_id,
            "receipt_id": receipt_id,
            **priced_lines(lines),
        }
        fields.update({k: v for k, v in extra.items() if v is not None})
        return _Outgoing(topics.POS_SALES, store_id, event_type, fields)

    def _click(self, visit: _Visit, event_type: str, **extra: Any) -> _Outgoing:
        fields: dict[str, Any] = {"anonymous_id": visit.device}
        if visit.user_id is not None:
            fields["user_id"] = visit.user_id
        fields["channel"] = visit.channel
        if visit.region is not None:
            fields["region"] = visit.region
        fields.update({k: v for k, v in extra.items() if v is not None})
        return _Outgoing(topics.CLICKSTREAM, visit.device, event_type, fields)

    def _new_receipt_id(self, store_id: str) -> str:
        return f"{store_id}-{self.seed}-{self._serial('receipt:' + store_id):06d}"

    # --- activities: the warehouse side ------------------------------------------------------

    def _opening_stock(self) -> Activity:
        """Morning deliveries fill every location before the first shopper arrives."""
        for location in [*self.warehouses, *self.forward_warehouses, *self.stores]:
            for sku in self.assortment[location.location_id]:
                if (sku, location.location_id) in self._stocked_early:
                    continue  # on the shelf since the history (module docstring)
                qty = self._opening_qty(location, sku, self.rng)
                yield self._receipt(location.location_id, sku, qty, reason="opening stock")
                yield self.rng.randint(5, 60)
        self._after(0, self._arrivals())

    def _opening_qty(self, location: Location, sku: str, rng: random.Random) -> int:
        """A few weeks of cover at a warehouse, a few days' at a store; little of a sku whose
        supplier is in trouble."""
        low, high = {"warehouse": (10, 20), "forward_warehouse": (3, 6), "store": (2, 4)}[
            location.type
        ]
        qty = round(max(self.reference.products[sku].reorder_point, 3) * rng.uniform(low, high))
        return max(1, qty // 4) if sku in self.supply_problems else qty

    def _arrivals(self) -> Activity:
        """Shoppers and warehouse tasks arrive one after another, for ever."""
        while True:
            yield max(1, round(self.rng.expovariate(1 / MEAN_ARRIVAL_GAP_MS)))
            begin = self.next_activity(self.rng)
            self._after(0, begin())

    def _supplier_lead_time(self, product: Product) -> int:
        days = max(product.lead_time_days, 1)
        wait = round(days * LEAD_DAY_MS * self.rng.uniform(0.8, 1.3))
        return wait * 8 if product.sku in self.supply_problems else wait

    def _replenish(self, sku: str, location: Location) -> Activity:
        """Order from the supplier (warehouses, and fresh goods everywhere) or the warehouse."""
        product = self.reference.products[sku]
        key = (sku, location.location_id)
        order_up_to = product.reorder_point * (12 if location.type == "warehouse" else 3)
        source = self.central_warehouse(location.region)
        from_supplier = location.type == "warehouse" or product.shelf_life_days is not None
        if from_supplier or source.location_id == location.location_id:
            yield self._supplier_lead_time(product)
            qty = max(1, order_up_to - self._available(sku, location.location_id))
            yield self._receipt(location.location_id, sku, qty)
        else:
            qty = max(1, order_up_to - self._available(sku, location.location_id))
            for _ in range(6):
                if self._available(sku, source.location_id) >= qty:
                    break
                yield self._minutes(8, 15)  # wait for the warehouse's own delivery
            else:
                self.replenishing.discard(key)
                return
            yield self._minutes(2, 8)  # picking
            yield from self._transfer(source.location_id, location.location_id, sku, qty)
        self.replenishing.discard(key)
        self._watch_stock(sku, location.location_id)

    def _transfer(self, source_id: str, destination_id: str, sku: str, qty: int) -> Activity:
        """Goods leave one location and, after transit, arrive at another."""
        yield from self._transfers(destination_id, [(source_id, sku, qty)])

    def _transfers(self, destination_id: str, moves: Sequence[tuple[str, str, int]]) -> Activity:
        """Several (source, sku, qty) leave for one destination on the same truck run; each
        ``transfer_out`` names the destination, and they all arrive after one transit."""
        sent = []
        for source_id, sku, qty in moves:
            transfer_id = f"TR-{self.seed}-{self._serial('transfer'):06d}"
            self._change_stock(sku, source_id, -qty)
            yield self._movement(
                "transfer_out",
                source_id,
                sku,
                qty,
                transfer_id=transfer_id,
                to_location_id=destination_id,
            )
            self._watch_stock(sku, source_id)
            sent.append((transfer_id, sku, qty))
        yield self._minutes(10, 40)  # on the truck
        for transfer_id, sku, qty in sent:
            self._change_stock(sku, destination_id, qty)
            yield self._movement("transfer_in", destination_id, sku, qty, transfer_id=transfer_id)

    def _supplier_delivery(self) -> Activity:
        """A scheduled delivery: dry goods to the warehouse, fresh goods straight to a store."""
        if self.perishables and self.rng.random() < 0.35:
            store = self.busy_store(self.rng)
            sku = self.rng.choice(self.perishables)
            qty = self.reference.products[sku].reorder_point * self.rng.randint(1, 2)
            yield self._receipt(store.location_id, sku, qty)
            return
        warehouse = self.central_warehouse(self.rng.choice(self.regions))
        sku = self.popular_sku(self.rng)
        if sku in self.supply_problems:
            return
        qty = self.reference.products[sku].reorder_point * self.rng.randint(3, 8)
        yield self._receipt(warehouse.location_id, sku, qty)

    def _stock_adjustment(self) -> Activity:
        """Damaged, lost, expired or found goods, booked as a signed correction."""
        location = self.busy_store(self.rng) if self.rng.random() < 0.7 else self._any_warehouse()
        sku = self.rng.choice(self.assortment[location.location_id])
        on_hand = self.on_hand.get((sku, location.location_id), 0)
        reason = self.rng.choice(ADJUSTMENT_REASONS)
        if self.reference.products[sku].shelf_life_days is not None and self.rng.random() < 0.6:
            reason = "expired"
        if on_hand <= 0 or reason == "found":
            reason, qty = "found", self.rng.randint(1, 3)
        elif reason == "system_correction" and self.rng.random() < 0.5:
            qty = self.rng.randint(1, 4)
        else:
            qty = -self.rng.randint(1, min(on_hand, 4))
        self._change_stock(sku, location.location_id, qty)
        yield self._movement("adjustment", location.location_id, sku, qty, reason=reason)
        self._watch_stock(sku, location.location_id)

    def _cycle_count(self) -> Activity:
        """A shelf is counted; the count is the new truth (usually a little shrinkage)."""
        location = self.busy_store(self.rng) if self.rng.random() < 0.75 else self._any_warehouse()
        sku = self.rng.choice(self.assortment[location.location_id])
        key = (sku, location.location_id)
        roll = self.rng.random()
        drift = 0 if roll < 0.75 else -self.rng.randint(1, 3) if roll < 0.95 else 1
        counted = max(0, self.on_hand.get(key, 0) + drift)
        self.on_hand[key] = counted
        yield self._movement("stock_count", location.location_id, sku, counted)
        self._watch_stock(sku, location.location_id)

    def _store_rebalancing(self) -> Activity:
        """A store with plenty sends some to a store of its region that runs low."""
        donor = self.busy_store(self.rng)
        neighbours = [s for s in self.stores_by_region[donor.region] if s != donor.location_id]
        if not neighbours:
            return
        receiver = self.rng.choice(neighbours)
        carried = set(self.assortment[receiver])
        shared = [s for s in self.assortment[donor.location_id] if s in carried]
        for sku in self.rng.sample(shared, min(len(shared), 8)):
            point = self.reference.products[sku].reorder_point
            surplus = self._available(sku, donor.location_id) - 2 * point
            if surplus > 0 and self._available(sku, receiver) < point:
                yield from self._transfer(donor.location_id, receiver, sku, min(surplus, point))
                return

    def _any_warehouse(self) -> Location:
        return self.rng.choice(self.warehouses + self.forward_warehouses)

    # --- activities: the stores --------------------------------------------------------------

    def _store_shopper(self, store: Location) -> Customer | None:
        """A regular of the store's region (60%) or a passer-by nobody knows."""
        regulars = self.customers_by_region.get(store.region)
        if regulars and self.rng.random() < REGULAR_SHARE:
            return self.rng.choice(regulars)
        return None

    def _fill_basket(self, store_id: str, size: int) -> list[Line]:
        """Take what is on the shelf: popular skus of the store's assortment that are in stock."""
        lines: dict[str, Line] = {}
        for sku in self.shelf[store_id].many(self.rng, size * 2):
            if len(lines) == size or sku in lines:
                continue
            shelf = self._available(sku, store_id)
            if shelf < 1:
                continue  # an empty shelf: the shopper takes something else or nothing
            qty = min(shelf, TILL_QTY(self.rng))
            lines[sku] = Line(sku, qty, self.unit_cents[sku])
        return list(lines.values())

    def _till_phone(self, customer: Customer | None) -> str | None:
        """The phone a till records for a known shopper (``TILL_PHONE_SHARE``), as typed."""
        if customer is None or customer.phone is None or self.rng.random() >= TILL_PHONE_SHARE:
            return None
        return format_phone(self.rng, customer.phone)

    def _walk_in_sale(self) -> Activity:
        """A shopper pays at the till: sometimes with a loyalty card, a phone, a coupon."""
        store = self.busy_store(self.rng)
        shopper = self._store_shopper(store)
        if shopper is not None and self.rng.random() < NUDGE_SHARE:
            yield from self._nudge(shopper)
        lines = self._fill_basket(store.location_id, BASKET_SIZES(self.rng))
        if not lines:
            return
        member_code = phone = coupons = None
        if shopper is not None:
            if shopper.member_code is not None and self.rng.random() < CARD_SHARE:
                member_code = shopper.member_code
            phone = self._till_phone(shopper)
        if self.rng.random() < 0.06:
            code = "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=6))
            coupons = [f"C-{self.rng.choice(COUPON_CAMPAIGNS)}-{code}"]
        yield from self._ring_up(store.location_id, lines, member_code, phone, coupons)

    def _ring_up(
        self,
        store_id: str,
        lines: list[Line],
        member_code: str | None,
        phone: str | None = None,
        coupons: list[str] | None = None,
    ) -> Activity:
        """The till sale of a basket taken from the shelf (a walk-in or a checked-in member)."""
        receipt_id = self._new_receipt_id(store_id)
        for line in lines:
            self._change_stock(line.sku, store_id, -line.qty)
        sales = self.recent_sales[store_id]
        sales.append(_TillReceipt(receipt_id, lines, member_code))
        if len(sales) > 200:
            del sales[:100]
        yield self._till(
            "sale",
            store_id,
            receipt_id,
            lines,
            member_code=member_code,
            phone=phone,
            coupon_codes=coupons,
        )
        for line in lines:
            self._watch_stock(line.sku, store_id)

    def _customer_return(self) -> Activity:
        """A shopper brings back part of an earlier purchase to the same store."""
        store = self.busy_store(self.rng)
        sales = self.recent_sales[store.location_id]
        if not sales:
            return
        sale = sales.pop(self.rng.randrange(len(sales)))
        line = self.rng.choice(sale.lines)
        returned = Line(line.sku, self.rng.randint(1, line.qty), line.unit_cents)
        self._change_stock(returned.sku, store.location_id, returned.qty)
        yield self._till(
            "return",
            store.location_id,
            self._new_receipt_id(store.location_id),
            [returned],
            member_code=sale.member_code,
            original_receipt_id=sale.receipt_id,
        )

    # --- activities: customers (CONTRACT §8, §11) --------------------------------------------

    def _app_session(self, customer: Customer, region: str | None = None) -> _Visit:
        """The member's phone app, signed in: where check-ins and consent settings happen."""
        visit = _Visit(customer.devices[0], "app", customer, region or customer.region, None, "")
        visit.user_id = customer.user_id
        return visit

    def _check_in(self, customer: Customer, viewed: Sequence[str] = ()) -> Activity:
        """A signed-in member arrives at a store of their region (mostly the home store) and
        checks in with the app; a card holder often buys then, now and then one of the
        products just looked at online when the shelf has it."""
        assert customer.user_id is not None
        rng = self.rng
        store_id = customer.home_store
        others = [s for s in self.stores_by_region[customer.region] if s != store_id]
        if others and rng.random() >= CHECKIN_HOME_STORE_SHARE:
            store_id = rng.choice(others)
        visit = self._app_session(customer, self.reference.locations[store_id].region)
        yield self._click(visit, "store_checkin", store_id=store_id)
        if customer.member_code is None or rng.random() >= CHECKIN_PURCHASE_SHARE:
            return
        yield self._minutes(3, 25)
        lines = self._fill_basket(store_id, BASKET_SIZES(rng))
        basket = {line.sku for line in lines}
        for sku in dict.fromkeys(viewed):
            if sku not in basket and self._available(sku, store_id) >= 1 and rng.random() < 0.5:
                lines.append(Line(sku, 1, self.unit_cents[sku]))
                basket.add(sku)
        if lines:
            yield from self._ring_up(
                store_id, lines, customer.member_code, self._till_phone(customer)
            )

    def _passing_checkin(self) -> Activity:
        """A member walks into a store without having shopped online first."""
        customer = self.frequent_customer(self.rng)
        if customer.user_id is not None:
            yield from self._check_in(customer)

    def _consent_settings(self, visit: _Visit) -> Activity:
        """Now and then a signed-in shopper turns marketing off in the settings; a few turn
        it back on hours later."""
        customer = visit.customer
        if customer is None or visit.user_id is None or customer.number in self.marketing_off:
            return
        if self.rng.random() >= self.consent_withdrawal_share:
            return
        yield self._think()
        self.marketing_off.add(customer.number)
        yield self._click(visit, "consent", marketing=False)
        if self.rng.random() < CONSENT_REGRANT_SHARE:
            wait = self._minutes(*CONSENT_REGRANT_MINUTES)
            self._after(wait, self._regrant_consent(customer))

    def _regrant_consent(self, customer: Customer) -> Activity:
        self.marketing_off.discard(customer.number)
        yield self._click(self._app_session(customer), "consent", marketing=True)

    # --- the history before the stream (module docstring) ------------------------------------

    def _lasting_skus(self, store_id: str) -> list[str]:
        """What the store carries that does not perish: the only goods the history sells."""
        products = self.reference.products
        return [s for s in self.assortment[store_id] if products[s].shelf_life_days is None]

    def _lapsing_members(self, share: float) -> frozenset[int]:
        """Card-holding members who bought once in the history and stay away: about
        ``share`` of the customer base, never all of it (someone must shop in the stream)."""
        members = [c.number for c in self.customers if c.member_code is not None]
        count = min(round(share * len(self.customers)), len(members), len(self.customers) - 1)
        if count <= 0:
            return frozenset()
        return frozenset(self._history_rng.sample(members, count))

    def _history_sales(self) -> list[_HistorySale]:
        """Each lapsing member's one purchase, ``inactive_days`` before the stream; other
        members' repurchase item, its ``repurchase_days`` before (module docstring)."""
        rng = self._history_rng
        low, high = HISTORY_DUE_MINUTES

        def dated(days: int) -> int:
            return self.start_ms - days * DAY_MS + round(rng.uniform(low, high) * MINUTE_MS)

        sales = []
        for customer in self.customers:
            if customer.number not in self.lapsing:
                continue
            shelf = self._lasting_skus(customer.home_store)
            picks = sorted(rng.sample(shelf, min(len(shelf), rng.randint(1, 3))))
            lines = [Line(sku, TILL_QTY(rng), self.unit_cents[sku]) for sku in picks]
            if lines:
                ts_ms = dated(self.inactive_days)
                sales.append(_HistorySale(ts_ms, customer, customer.home_store, lines, "lapsing"))
        members = [
            c for c in self.customers if c.member_code is not None and c.number not in self.lapsing
        ]
        count = min(round(REPURCHASE_HISTORY_SHARE * len(self.customers)), len(members))
        for customer in sorted(rng.sample(members, count), key=lambda c: c.number):
            items = [
                s
                for s in self._lasting_skus(customer.home_store)
                if self.reference.products[s].repurchase_days is not None
            ]
            if not items:
                continue
            sku = rng.choice(items)
            days = self.reference.products[sku].repurchase_days
            assert days is not None
            line = Line(sku, TILL_QTY(rng), self.unit_cents[sku])
            sales.append(
                _HistorySale(dated(days), customer, customer.home_store, [line], "repurchase")
            )
        return sales

    def _schedule_history(self) -> None:
        """Put the history on the agenda before the opening stock: each sku × store it sells
        is received there (its opening stock, early) a while before its first sale, and no
        sale takes more than that receipt brought."""
        rng = self._history_rng
        sales = sorted(self._history_sales(), key=lambda sale: (sale.ts_ms, sale.customer.number))
        first_sold: dict[tuple[str, str], int] = {}
        for sale in sales:
            for line in sale.lines:
                first_sold.setdefault((line.sku, sale.store_id), sale.ts_ms)
        left: dict[tuple[str, str], int] = {}
        for (sku, store_id), ts_ms in sorted(first_sold.items()):
            qty = self._opening_qty(self.reference.locations[store_id], sku, rng)
            left[(sku, store_id)] = qty
            self._stocked_early.add((sku, store_id))
            received_at = ts_ms - round(rng.uniform(20, 120) * MINUTE_MS)
            self._at(received_at, self._early_opening_stock(store_id, sku, qty))
        for sale in sales:
            lines = []
            for line in sale.lines:
                qty = min(line.qty, left[(line.sku, sale.store_id)])
                if qty >= 1:
                    left[(line.sku, sale.store_id)] -= qty
                    lines.append(Line(line.sku, qty, line.unit_cents))
            if lines:
                self._at(sale.ts_ms, self._history_sale(sale, lines))

    def _nudge(self, customer: Customer) -> Activity:
        """A campaign message opened on the shopper's phone, and the way to the store."""
        source, medium, name, _ = self.rng.choice(CAMPAIGNS["app"])
        campaign = {"source": source, "medium": medium, "campaign": name}
        visit = _Visit(customer.devices[0], "app", customer, customer.region, campaign, "")
        visit.user_id = customer.user_id
        phone = format_phone(self.rng, customer.phone) if customer.phone is not None else None
        page = f"/promo/{name}"
        yield self._click(visit, "page_view", page=page, campaign=campaign, phone=phone)
        yield self._minutes(*NUDGE_MINUTES)

    def _early_opening_stock(self, store_id: str, sku: str, qty: int) -> Activity:
        yield self._receipt(store_id, sku, qty, reason="opening stock")

    def _history_sale(self, sale: _HistorySale, lines: list[Line]) -> Activity:
        """Rung up with the member's card. Nobody restocks before the stream and nobody
        returns what was bought weeks ago, so it is neither watched nor remembered."""
        for line in lines:
            self._change_stock(line.sku, sale.store_id, -line.qty)
        receipt_id = self._new_receipt_id(sale.store_id)
        yield self._till(
            "sale", sale.store_id, receipt_id, lines, member_code=sale.customer.member_code
        )

    # --- activities: online ------------------------------------------------------------------

    def _start_visit(self) -> _Visit:
        rng = self.rng
        customer: Customer | None = None
        if rng.random() < 0.2:
            device = f"anon-{rng.getrandbits(64):016x}"  # a first-time visitor
        else:
            customer = self.frequent_customer(self.rng)
            device = rng.choice(customer.devices)
        if rng.random() < RARE_CHANNEL_SHARE:
            channel = RARE_CHANNEL
        elif customer is not None and rng.random() < 0.6:
            channel = customer.favourite_channel
        else:
            channel = CHANNEL_MIX(rng)
        campaign = None
        if rng.random() < CAMPAIGN_SHARE[channel]:
            source, medium, name, contents = rng.choice(CAMPAIGNS[channel])
            campaign = {"source": source, "medium": medium, "campaign": name}
            content = rng.choice(contents)
            if content is not None:
                campaign["content"] = content
        if customer is not None:
            region = customer.region if rng.random() < 0.85 else None
        else:
            region = rng.choice(self.regions) if rng.random() < 0.5 else None
        return _Visit(device, channel, customer, region, campaign, self.popular_category(self.rng))

    def _think(self) -> int:
        return self._seconds(3, 40)

    def _browse_pick(self, visit: _Visit) -> str:
        """Mostly the category the shopper came for; now and then what the home store has."""
        roll = self.rng.random()
        if roll < 0.6:
            return self.in_category[visit.focus_category](self.rng)
        if roll < 0.85 and visit.customer is not None:
            return self.rng.choice(self.assortment[visit.customer.home_store])
        return self.popular_sku(self.rng)

    def _login(self, visit: _Visit) -> _Outgoing:
        """Sign in; SMS login sends the phone number, some forms the e-mail."""
        customer = visit.customer
        assert customer is not None and customer.user_id is not None
        visit.user_id = customer.user_id
        phone = email = None
        if customer.phone is not None and self.rng.random() < 0.3:
            phone = format_phone(self.rng, customer.phone)
        if customer.email is not None and self.rng.random() < 0.15:
            email = format_email(self.rng, customer.email)
        return self._click(visit, "login", phone=phone, email=email)

    def _online_visit(self) -> Activity:
        """A session: land, maybe sign in, search and look at products, fill a cart, buy."""
        rng = self.rng
        visit = self._start_visit()
        customer = visit.customer
        intent = VISIT_INTENTS(rng)
        if visit.campaign is not None and visit.campaign["medium"] in PAID_MEDIA:
            if rng.random() < 0.6:
                yield self._click(visit, "ad_click", campaign=visit.campaign)
                yield self._seconds(1, 4)
        landing = (
            f"/promo/{visit.campaign['campaign']}"
            if visit.campaign is not None
            else rng.choice(("/", "/", f"/category/{visit.focus_category}"))
        )
        yield self._click(visit, "page_view", page=landing, campaign=visit.campaign)
        if intent == "bounce":
            return
        can_sign_in = customer is not None and customer.user_id is not None
        if can_sign_in and rng.random() < (0.6 if intent == "buy" else 0.3):
            yield self._think()
            yield self._login(visit)
            yield from self._consent_settings(visit)
        viewed: list[str] = []
        for _ in range(rng.randint(1, 5)):
            yield self._think()
            if rng.random() < 0.3:
                query = rng.choice(SEARCH_TERMS.get(visit.focus_category, (visit.focus_category,)))
                yield self._click(visit, "search", query=query)
                yield self._think()
            sku = self._browse_pick(visit)
            price = money(self.unit_cents[sku])
            yield self._click(visit, "product_view", sku=sku, price=price)
            viewed.append(sku)
            if intent in ("cart", "buy") and (rng.random() < 0.45 or not visit.cart):
                yield self._think()
                qty = CART_QTY(rng)
                visit.cart[sku] = visit.cart.get(sku, 0) + qty
                yield self._click(visit, "add_to_cart", sku=sku, qty=qty, price=price)
        if customer is not None and visit.user_id is not None:
            if rng.random() < CHECKIN_AFTER_VIEWS_SHARE:
                wait = self._minutes(*CHECKIN_AFTER_VIEWS_MINUTES)
                self._after(wait, self._check_in(customer, viewed))
        if len(visit.cart) > 1 and rng.random() < 0.25:
            sku = rng.choice(list(visit.cart))
            yield self._think()
            yield self._click(
                visit,
                "remove_from_cart",
                sku=sku,
                qty=visit.cart.pop(sku),
                price=money(self.unit_cents[sku]),
            )
        if not visit.cart:
            return
        if intent == "cart":  # abandoned, sometimes right at the checkout page
            if rng.random() < 0.3:
                yield self._think()
                yield self._click(visit, "checkout_started")
            return
        if visit.user_id is None:
            if can_sign_in:
                yield self._think()
                yield self._login(visit)
            elif rng.random() < 0.5:
                return  # no account and no wish to make one
        yield self._think()
        yield self._click(visit, "checkout_started")
        yield self._seconds(20, 120)
        yield self._place_order(visit)

    def _choose_fulfillment(self, visit: _Visit, lines: list[Line]) -> _Fulfilment:
        """How the shopper wants the order and where its stock is reserved.

        Pickup at the home store (40% of known shoppers) when the store's available-to-sell
        covers every line; now and then the shop offers the pickup anyway (its availability
        was stale) and the store cannot cover it: a pickup exception, which the store solves
        with a transfer in. Otherwise delivery: most deliveries name no location but the
        address, and the shop sources them as Omnistream does (``_source_delivery``); the
        others are sent from the region's forward warehouse when it carries everything, else
        from the warehouse, as before sourcing existed.
        """
        customer = visit.customer
        rng = self.rng
        if customer is not None and rng.random() < 0.4:
            store = customer.home_store
            shortfall = [
                (line.sku, line.qty - ats)
                for line in lines
                if (ats := self._available_to_sell(line.sku, store)) < line.qty
            ]
            if not shortfall or rng.random() < PICKUP_EXCEPTION_SHARE:
                fields = {"type": "store_pickup", "location_id": store}
                return _Fulfilment(store, fields, shortfall)
        region = customer.region if customer else visit.region or rng.choice(self.regions)
        if rng.random() < self.unsourced_share:
            return self._source_delivery(customer, region, lines)
        skus = [line.sku for line in lines]
        location_id = self.central_warehouse(region).location_id
        for forward in self.forward_warehouses:
            if forward.region == region:
                carried = set(self.assortment[forward.location_id])
                if all(sku in carried for sku in skus):
                    location_id = forward.location_id
                    break
        return _Fulfilment(location_id, {"type": "delivery", "location_id": location_id})

    def _delivery_address(
        self, customer: Customer | None, region: str
    ) -> tuple[float | None, float | None]:
        """A point a few km from the shopper's home store (a guest's: a store of the region)."""
        rng = self.rng
        store_id = customer.home_store if customer else rng.choice(self.stores_by_region[region])
        store = self.reference.locations[store_id]
        if store.lat is None or store.lon is None:
            return None, None
        distance_km = ADDRESS_RADIUS_KM * math.sqrt(rng.random())  # uniform over the disc
        bearing = rng.uniform(0.0, 2 * math.pi)
        lat = store.lat + distance_km * math.cos(bearing) / KM_PER_DEGREE
        lon = store.lon + distance_km * math.sin(bearing) / (
            KM_PER_DEGREE * max(math.cos(math.radians(store.lat)), 0.01)
        )
        return round(min(max(lat, -90.0), 90.0), 5), round(((lon + 180.0) % 360.0) - 180.0, 5)

    def _source_delivery(
        self, customer: Customer | None, region: str, lines: list[Line]
    ) -> _Fulfilment:
        """A delivery without a location: the address goes with the order, and the shop
        decides where it ships by the rule Omnistream's stock flow applies (CONTRACT §10) on
        its own model of available-to-sell, so its shipments leave from the location the
        flow most likely chose. A few addresses were not geocoded (region only), a very few
        carry neither coordinates nor region; both are valid orders."""
        roll = self.rng.random()
        geocoded = roll >= ADDRESS_BARE_SHARE + ADDRESS_REGION_ONLY_SHARE
        order_region = None if roll < ADDRESS_BARE_SHARE else region
        lat, lon = self._delivery_address(customer, region) if geocoded else (None, None)
        fields: dict[str, Any] = {"type": "delivery"}
        if lat is not None and lon is not None:
            fields["lat"], fields["lon"] = lat, lon
        if order_region is not None:
            fields["region"] = order_region
        decision = source_order(
            [(line.sku, line.qty) for line in lines],
            self._available_to_sell,
            self.locations,
            lat,
            lon,
            order_region,
        )
        return _Fulfilment(decision.location_id, fields)

    def _place_order(self, visit: _Visit) -> _Outgoing:
        """The order reserves stock where it will be fulfilled; its follow-up is scheduled."""
        lines = [Line(sku, qty, self.unit_cents[sku]) for sku, qty in visit.cart.items()]
        chosen = self._choose_fulfillment(visit, lines)
        order = _Order(
            f"ORD-{self.seed}-{self._serial('order'):07d}",
            visit,
            lines,
            chosen.fields["type"],
            chosen.location_id,
            chosen.shortfall,
        )
        if order.location_id is not None:
            for line in lines:
                self._change_reserved(line.sku, order.location_id, line.qty)
                self._watch_stock(line.sku, order.location_id)
        if order.location_id is None:  # unfulfillable: nothing ships, the shop cancels it
            self._after(0, self._cancel_order(order, UNFULFILLABLE_CANCEL_MINUTES))
        elif self.rng.random() < 0.08:
            self._after(0, self._cancel_order(order))
        elif order.fulfillment == "delivery":
            self._after(0, self._ship_order(order))
        else:
            self._after(0, self._store_pickup(order))
        return self._click(
            visit,
            "order_placed",
            order_id=order.order_id,
            **priced_lines(lines),
            fulfillment=chosen.fields,
        )

    def _cancel_order(
        self, order: _Order, after_minutes: tuple[float, float] = (1, 25)
    ) -> Activity:
        """The shopper (or, for an order nobody can fulfil, the shop) cancels it."""
        yield self._minutes(*after_minutes)
        if order.location_id is not None:
            for line in order.lines:
                self._change_reserved(line.sku, order.location_id, -line.qty)
        yield self._click(
            order.visit,
            "order_cancelled",
            order_id=order.order_id,
            **priced_lines(order.lines),
        )

    def _ship_order(self, order: _Order) -> Activity:
        """Picked and packed: one shipment per line, from the fulfilling location."""
        assert order.location_id is not None
        yield self._minutes(8, 45)
        for line in order.lines:
            self._change_stock(line.sku, order.location_id, -line.qty)
            self._change_reserved(line.sku, order.location_id, -line.qty)
            yield self._movement(
                "shipment", order.location_id, line.sku, line.qty, order_id=order.order_id
            )
            self._watch_stock(line.sku, order.location_id)
            yield self.rng.randint(300, 4_000)

    def _store_pickup(self, order: _Order) -> Activity:
        """The shopper collects the order at the till of the store.

        A pickup the store could not cover when it was placed (a pickup exception) waits for
        the missing units: a transfer from the nearest location that has them to spare. When
        none has, the shop cancels the order after a while."""
        store_id = order.location_id
        assert store_id is not None
        if order.shortfall:
            yield self._minutes(2, 8)  # the store asks for the missing units, a source picks
            store = self.reference.locations[store_id]
            moves = []
            for sku, missing in order.shortfall:
                source = transfer_source(
                    sku, missing, self._available_to_sell, self.locations, store
                )
                if source is None:  # nobody has them to spare: the shop gives up
                    yield from self._cancel_order(order, UNFULFILLABLE_CANCEL_MINUTES)
                    return
                moves.append((source, sku, missing))
            yield from self._transfers(store_id, moves)
            yield self._minutes(10, 60)  # the shopper is told and comes by
        else:
            yield self._minutes(20, 150)
        customer = order.visit.customer
        for line in order.lines:
            self._change_stock(line.sku, store_id, -line.qty)
            self._change_reserved(line.sku, store_id, -line.qty)
        yield self._till(
            "sale",
            store_id,
            self._new_receipt_id(store_id),
            order.lines,
            member_code=customer.member_code if customer else None,
            phone=self._till_phone(customer),
            order_id=order.order_id,
        )
        for line in order.lines:
            self._watch_stock(line.sku, store_id)
