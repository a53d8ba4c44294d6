"""Synthetic, reproducible retail traffic for the three input topics (CONTRACT §1).

Two halves:

- ``TrafficModel`` — pure, no Kafka. A seeded discrete-event simulation of a retail chain
  over the reference data: shoppers browse online and place orders, stores ring up sales and
  returns, warehouses receive, ship, transfer, adjust and count stock. Every event is
  encoded exactly as the contract says; the same arguments give a byte-identical stream.
- ``produce`` / ``run_generate`` — send such a stream to the (prefixed) input topics, paced
  or as fast as possible, with a progress line; ``omnistream generate`` calls these.

How the simulation works: an agenda (a heap ordered by event time) holds *activities*, which
are generators in the retail domain's own terms (``_online_visit``, ``_walk_in_sale``,
``_ship_order`` …). An activity yields either an event to publish at the current event time
or a wait in milliseconds, after which it is resumed. New visits and store traffic arrive as
a Poisson process; order follow-ups (cancellation, shipment, store pickup) and replenishment
(supplier receipts, warehouse-to-store transfers) are scheduled by the activities that cause
them, always minutes later, so an effect never precedes its cause.

Things the stream deliberately contains because real traffic does:

- ``ts`` as RFC 3339 with ``+08:00`` and milliseconds, or as epoch milliseconds;
- a few events that arrive late (their ``ts`` a few seconds before the one published
  before them);
- exact duplicates of recently published events (same bytes, same ``event_id``);
- with ``bad_ratio > 0``, malformed events, each tagged with the dead-letter reason code the
  decoder must give; some carry raw phone numbers and e-mails, to exercise masking.

Malformed events and duplicates are drawn from their own random streams, so the good events
of a seed are the same whatever ``bad_ratio`` is: only their interleaving differs.

The customer base (devices, accounts, loyalty cards, phone numbers, e-mails) depends on
``customers`` only, not on the seed: streams of different seeds are different days of the
same shoppers, so identities stitch across runs. Everything with an id that must be unique
(``event_id``, order, receipt and transfer ids) carries the seed.

Lead times and transit times are compressed so that an hour of traffic shows whole
replenishment cycles: one day of ``lead_time_days`` takes ``LEAD_DAY_MS`` of event time.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import string
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import accumulate
from typing import Any, TextIO

import orjson
from confluent_kafka import KafkaException

from base import topics
from base.config import Config
from base.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS
from connectors.kafka_clients import ensure_topics, make_producer
from connectors.reference_files import load_reference
from domain.reference import Location, Product, ReferenceData, ReferenceDataError

# --- public constants ---------------------------------------------------------------------------

#: 2026-11-01T09:00:00+08:00, a Sunday morning as the stores open.
DEFAULT_START_MS = 1_793_494_800_000
DEFAULT_SEED = 7
DEFAULT_COUNT = 10_000
DEFAULT_CUSTOMERS = 2_000

#: Dead-letter reason codes the model can produce, one per kind of malformation.
BAD_REASONS: tuple[str, ...] = (
    "malformed_json",
    "missing_field",
    "bad_type",
    "bad_value",
    "bad_timestamp",
    "unknown_event_type",
    "unknown_sku",
    "unknown_location",
)

# --- tunables of the simulation -----------------------------------------------------------------

#: Local time of the chain (China Standard Time), used for RFC 3339 times and expiry dates.
LOCAL_OFFSET_MS = 8 * HOUR_MS
LOCAL_OFFSET = "+08:00"

#: Mean gap between two new activities (a visit, a till sale, a warehouse task …). With the
#: follow-ups they cause, the stream averages roughly one event per 400 ms of event time.
MEAN_ARRIVAL_GAP_MS = 1_000
#: Share of events published a little late (ts 0.2–5 s before the previous event).
LATE_SHARE = 0.03
#: Share of events whose ``ts`` is epoch milliseconds rather than an RFC 3339 string.
EPOCH_MS_SHARE = 0.3
#: Share of good events followed by an exact duplicate of a recent one.
DUPLICATE_SHARE = 0.005
#: Duplicates repeat one of the last this many good events (a redelivery, not a replay).
DUPLICATE_WINDOW = 500
#: One day of supplier lead time takes this long in event time (see the module docstring).
LEAD_DAY_MS = 5 * MINUTE_MS

CHANNELS: tuple[str, ...] = ("app", "mini_program", "web", "live_stream", "social")
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

# --- public records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One Kafka message of the generated stream.

    ``topic`` is the contract name without prefix; ``value`` the exact bytes to send.
    ``event_id`` is the id inside the message (of the original, for a duplicate; None when a
    malformed message has no usable id). ``bad_reason`` is the dead-letter reason code the
    decoder must give for a deliberately malformed message, None for a good one.
    ``duplicate`` marks an exact repeat of an earlier good event.
    """

    topic: str
    key: bytes
    value: bytes
    event_id: str | None
    bad_reason: str | None
    duplicate: bool = False


@dataclass(slots=True)
class GenerateStats:
    """What ``produce`` sent: messages per (unprefixed) topic, malformed ones per reason."""

    produced: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    elapsed_s: float = 0.0
    #: Messages the broker finally refused (after librdkafka's own retries).
    delivery_failures: int = 0
    #: True when Ctrl-C stopped production early (what was handed over was still flushed).
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.produced.values())

    @property
    def rate(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count(self, event: GeneratedEvent) -> None:
        self.produced[event.topic] = self.produced.get(event.topic, 0) + 1
        if event.bad_reason is not None:
            self.bad[event.bad_reason] = self.bad.get(event.bad_reason, 0) + 1
        if event.duplicate:
            self.duplicates += 1


# --- the simulated world ------------------------------------------------------------------------


@dataclass(slots=True)
class _Customer:
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
class _Line:
    sku: str
    qty: int
    unit_cents: int

    def as_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "qty": self.qty, "unit_price": self.unit_cents / 100}


@dataclass(slots=True)
class _Visit:
    """One online session of one device."""

    device: str
    channel: str
    customer: _Customer | None
    region: str | None
    campaign: dict[str, str] | None
    focus_category: str
    user_id: str | None = None
    #: sku → qty, in the order the shopper added them.
    cart: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Order:
    order_id: str
    visit: _Visit
    lines: list[_Line]
    fulfillment: str
    location_id: str


@dataclass(slots=True)
class _TillReceipt:
    receipt_id: str
    lines: list[_Line]
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


def _money(cents: int) -> float:
    return cents / 100


def _total_cents(lines: Iterable[_Line]) -> int:
    return sum(line.qty * line.unit_cents for line in lines)


def _rfc3339_local(ts_ms: int) -> str:
    """``2026-11-01T09:00:00.123+08:00``."""
    seconds, millis = divmod(ts_ms + LOCAL_OFFSET_MS, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}{LOCAL_OFFSET}"


def _local_date(ts_ms: int, plus_days: int = 0) -> str:
    days = (ts_ms + LOCAL_OFFSET_MS) // DAY_MS + plus_days
    return (date(1970, 1, 1) + timedelta(days=days)).isoformat()


def _format_phone(rng: random.Random, phone: str) -> str:
    """A mobile number as people type it; all forms normalise to the same number."""
    roll = rng.random()
    if roll < 0.6:
        return phone
    if roll < 0.8:
        return f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}"
    if roll < 0.9:
        return f"{phone[:3]}-{phone[3:7]}-{phone[7:]}"
    return f"0086{phone}"


def _format_email(rng: random.Random, email: str) -> str:
    """An e-mail as typed: sometimes capitalised or with stray spaces (same after trimming)."""
    roll = rng.random()
    if roll < 0.7:
        return email
    if roll < 0.9:
        name, domain = email.split("@")
        return ".".join(part.capitalize() for part in name.split(".")) + "@" + domain.upper()
    return f" {email} "


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


def _customer_base(count: int, stores_by_region: dict[str, list[str]]) -> list[_Customer]:
    """The shoppers of the chain; depends on ``count`` (and the stores) only, not on the seed."""
    rng = random.Random(f"omnistream-customers-{count}")
    regions = sorted(stores_by_region)
    region_weights = [len(stores_by_region[r]) for r in regions]
    phones: set[str] = set()
    customers: list[_Customer] = []
    for number in range(1, count + 1):
        region = rng.choices(regions, weights=region_weights)[0]
        phone = None
        if rng.random() < 0.75:
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
            _Customer(
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


class _Simulation:
    """The state of the chain while one stream is generated (see the module docstring)."""

    def __init__(
        self, reference: ReferenceData, seed: int, customers: list[_Customer], start_ms: int
    ) -> None:
        self.reference = reference
        self.seed = seed
        self.rng = random.Random(f"omnistream-traffic-{seed}")
        self.now = start_ms
        self.customers = customers
        self._agenda: list[tuple[int, int, Activity]] = []
        self._scheduled = 0
        self._published = 0
        self._serials: Counter[str] = Counter()

        rng = self.rng
        locations = sorted(reference.locations.values(), key=lambda loc: loc.location_id)
        self.stores = [loc for loc in locations if loc.type == "store"]
        self.warehouses = [loc for loc in locations if loc.type == "warehouse"]
        self.forward_warehouses = [loc for loc in locations if loc.type == "forward_warehouse"]
        self.stores_by_region: dict[str, list[str]] = {}
        for store in self.stores:
            self.stores_by_region.setdefault(store.region, []).append(store.location_id)
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

        activity = [c.number % 10 + 1 for c in customers]  # some shoppers come back often
        self.frequent_customer = _Choice(customers, activity)
        self.customers_by_region: dict[str, list[_Customer]] = {}
        for customer in customers:
            self.customers_by_region.setdefault(customer.region, []).append(customer)
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
            ],
            [30, 55, 2.0, 4.0, 4.0, 7.0, 1.5],
        )

    def _by_popularity(self, skus: Sequence[str]) -> _Choice:
        return _Choice(skus, [self.popularity[s] for s in skus])

    # --- scheduling --------------------------------------------------------------------------

    def _after(self, wait_ms: int, activity: Activity) -> None:
        self._scheduled += 1
        heapq.heappush(self._agenda, (self.now + max(0, wait_ms), self._scheduled, activity))

    def run(self) -> Iterator[GeneratedEvent]:
        """The good events, in publication order, forever."""
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
        ts: int | str = ts_ms if self.rng.random() < EPOCH_MS_SHARE else _rfc3339_local(ts_ms)
        payload = {"event_id": event_id, "event_type": outgoing.event_type, "ts": ts}
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

    def _central_warehouse(self, region: str | None) -> Location:
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
            extra["expiry_date"] = _local_date(self.now, shelf_life)
        self._change_stock(sku, location_id, qty)
        return self._movement("receipt", location_id, sku, qty, **extra)

    def _till(
        self, event_type: str, store_id: str, receipt_id: str, lines: list[_Line], **extra: Any
    ) -> _Outgoing:
        fields = {
            "store_id": store_id,
            "receipt_id": receipt_id,
            "lines": [line.as_json() for line in lines],
            "total": _money(_total_cents(lines)),
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
        cover = {"warehouse": (10, 20), "forward_warehouse": (3, 6), "store": (2, 4)}
        for location in [*self.warehouses, *self.forward_warehouses, *self.stores]:
            low, high = cover[location.type]
            for sku in self.assortment[location.location_id]:
                product = self.reference.products[sku]
                qty = round(max(product.reorder_point, 3) * self.rng.uniform(low, high))
                if sku in self.supply_problems:
                    qty = max(1, qty // 4)
                yield self._receipt(location.location_id, sku, qty, reason="opening stock")
                yield self.rng.randint(5, 60)
        self._after(0, self._arrivals())

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
        source = self._central_warehouse(location.region)
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
        transfer_id = f"TR-{self.seed}-{self._serial('transfer'):06d}"
        self._change_stock(sku, source_id, -qty)
        yield self._movement("transfer_out", source_id, sku, qty, transfer_id=transfer_id)
        self._watch_stock(sku, source_id)
        yield self._minutes(10, 40)  # on the truck
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
        warehouse = self._central_warehouse(self.rng.choice(self.regions))
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

    def _store_shopper(self, store: Location) -> _Customer | None:
        """A regular of the store's region (60%) or a passer-by nobody knows."""
        regulars = self.customers_by_region.get(store.region)
        if regulars and self.rng.random() < 0.6:
            return self.rng.choice(regulars)
        return None

    def _fill_basket(self, store_id: str, size: int) -> list[_Line]:
        """Take what is on the shelf: popular skus of the store's assortment that are in stock."""
        lines: dict[str, _Line] = {}
        for sku in self.shelf[store_id].many(self.rng, size * 2):
            if len(lines) == size or sku in lines:
                continue
            shelf = self._available(sku, store_id)
            if shelf < 1:
                continue  # an empty shelf: the shopper takes something else or nothing
            qty = min(shelf, TILL_QTY(self.rng))
            lines[sku] = _Line(sku, qty, self.unit_cents[sku])
        return list(lines.values())

    def _walk_in_sale(self) -> Activity:
        """A shopper pays at the till: sometimes with a loyalty card, a phone, a coupon."""
        store = self.busy_store(self.rng)
        shopper = self._store_shopper(store)
        lines = self._fill_basket(store.location_id, BASKET_SIZES(self.rng))
        if not lines:
            return
        member_code = phone = coupons = None
        if shopper is not None:
            if shopper.member_code is not None and self.rng.random() < 0.8:
                member_code = shopper.member_code
            if shopper.phone is not None and self.rng.random() < 0.12:
                phone = _format_phone(self.rng, shopper.phone)
        if self.rng.random() < 0.06:
            code = "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=6))
            coupons = [f"C-{self.rng.choice(COUPON_CAMPAIGNS)}-{code}"]
        receipt_id = self._new_receipt_id(store.location_id)
        for line in lines:
            self._change_stock(line.sku, store.location_id, -line.qty)
        sales = self.recent_sales[store.location_id]
        sales.append(_TillReceipt(receipt_id, lines, member_code))
        if len(sales) > 200:
            del sales[:100]
        yield self._till(
            "sale",
            store.location_id,
            receipt_id,
            lines,
            member_code=member_code,
            phone=phone,
            coupon_codes=coupons,
        )
        for line in lines:
            self._watch_stock(line.sku, store.location_id)

    def _customer_return(self) -> Activity:
        """A shopper brings back part of an earlier purchase to the same store."""
        store = self.busy_store(self.rng)
        sales = self.recent_sales[store.location_id]
        if not sales:
            return
        sale = sales.pop(self.rng.randrange(len(sales)))
        line = self.rng.choice(sale.lines)
        returned = _Line(line.sku, self.rng.randint(1, line.qty), line.unit_cents)
        self._change_stock(returned.sku, store.location_id, returned.qty)
        yield self._till(
            "return",
            store.location_id,
            self._new_receipt_id(store.location_id),
            [returned],
            member_code=sale.member_code,
            original_receipt_id=sale.receipt_id,
        )

    # --- activities: online ------------------------------------------------------------------

    def _start_visit(self) -> _Visit:
        rng = self.rng
        customer: _Customer | None = None
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
            phone = _format_phone(self.rng, customer.phone)
        if customer.email is not None and self.rng.random() < 0.15:
            email = _format_email(self.rng, customer.email)
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
        for _ in range(rng.randint(1, 5)):
            yield self._think()
            if rng.random() < 0.3:
                query = rng.choice(SEARCH_TERMS.get(visit.focus_category, (visit.focus_category,)))
                yield self._click(visit, "search", query=query)
                yield self._think()
            sku = self._browse_pick(visit)
            price = _money(self.unit_cents[sku])
            yield self._click(visit, "product_view", sku=sku, price=price)
            if intent in ("cart", "buy") and (rng.random() < 0.45 or not visit.cart):
                yield self._think()
                qty = CART_QTY(rng)
                visit.cart[sku] = visit.cart.get(sku, 0) + qty
                yield self._click(visit, "add_to_cart", sku=sku, qty=qty, price=price)
        if len(visit.cart) > 1 and rng.random() < 0.25:
            sku = rng.choice(list(visit.cart))
            yield self._think()
            yield self._click(
                visit,
                "remove_from_cart",
                sku=sku,
                qty=visit.cart.pop(sku),
                price=_money(self.unit_cents[sku]),
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

    def _choose_fulfillment(self, visit: _Visit, skus: list[str]) -> tuple[str, str]:
        """Pickup at the home store when it carries everything, else delivery from the
        forward warehouse of the region when it carries everything, else the warehouse."""
        customer = visit.customer
        region = customer.region if customer else visit.region or self.rng.choice(self.regions)
        if customer is not None and self.rng.random() < 0.4:
            carried = set(self.assortment[customer.home_store])
            if all(sku in carried for sku in skus):
                return "store_pickup", customer.home_store
        for forward in self.forward_warehouses:
            if forward.region == region:
                carried = set(self.assortment[forward.location_id])
                if all(sku in carried for sku in skus):
                    return "delivery", forward.location_id
        return "delivery", self._central_warehouse(region).location_id

    def _place_order(self, visit: _Visit) -> _Outgoing:
        """The order reserves stock where it will be fulfilled; its follow-up is scheduled."""
        lines = [_Line(sku, qty, self.unit_cents[sku]) for sku, qty in visit.cart.items()]
        fulfillment, location_id = self._choose_fulfillment(visit, list(visit.cart))
        order = _Order(
            f"ORD-{self.seed}-{self._serial('order'):07d}", visit, lines, fulfillment, location_id
        )
        for line in lines:
            self._change_reserved(line.sku, location_id, line.qty)
            self._watch_stock(line.sku, location_id)
        if self.rng.random() < 0.08:
            self._after(0, self._cancel_order(order))
        elif fulfillment == "delivery":
            self._after(0, self._ship_order(order))
        else:
            self._after(0, self._store_pickup(order))
        return self._click(
            visit,
            "order_placed",
            order_id=order.order_id,
            lines=[line.as_json() for line in lines],
            total=_money(_total_cents(lines)),
            fulfillment={"type": fulfillment, "location_id": location_id},
        )

    def _cancel_order(self, order: _Order) -> Activity:
        yield self._minutes(1, 25)
        for line in order.lines:
            self._change_reserved(line.sku, order.location_id, -line.qty)
        yield self._click(
            order.visit,
            "order_cancelled",
            order_id=order.order_id,
            lines=[line.as_json() for line in order.lines],
            total=_money(_total_cents(order.lines)),
        )

    def _ship_order(self, order: _Order) -> Activity:
        """Picked and packed: one shipment per line, from the fulfilling location."""
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
        """The shopper collects the order at the till of the store."""
        yield self._minutes(20, 150)
        customer = order.visit.customer
        for line in order.lines:
            self._change_stock(line.sku, order.location_id, -line.qty)
            self._change_reserved(line.sku, order.location_id, -line.qty)
        yield self._till(
            "sale",
            order.location_id,
            self._new_receipt_id(order.location_id),
            order.lines,
            member_code=customer.member_code if customer else None,
            order_id=order.order_id,
        )
        for line in order.lines:
            self._watch_stock(line.sku, order.location_id)


# --- malformed traffic --------------------------------------------------------------------------


class _Malformations:
    """Malformed events, each built to get exactly one dead-letter reason from the decoder.

    Reads the simulation (customers, locations, clock) but never changes it, and draws from
    its own random stream.
    """

    def __init__(self, simulation: _Simulation, seed: int) -> None:
        self.sim = simulation
        self.seed = seed
        self.rng = random.Random(f"omnistream-malformed-{seed}")
        self._made = 0
        self._variants: dict[str, list[Callable[[], tuple[str, dict[str, Any] | bytes]]]] = {
            "malformed_json": [
                self._truncated,
                self._not_utf8,
                self._not_an_object,
                self._python_repr,
                self._csv_line,
                self._empty,
            ],
            "missing_field": [self._missing_field],
            "bad_type": [self._bad_type],
            "bad_value": [self._bad_value],
            "bad_timestamp": [self._bad_timestamp],
            "unknown_event_type": [self._unknown_event_type],
            "unknown_sku": [self._unknown_sku],
            "unknown_location": [self._unknown_location],
        }

    def make(self) -> GeneratedEvent:
        reason = self.rng.choice(BAD_REASONS)
        topic, payload = self.rng.choice(self._variants[reason])()
        if isinstance(payload, bytes):
            return GeneratedEvent(topic, self._key_of(topic, None), payload, None, reason)
        event_id = payload.get("event_id")
        return GeneratedEvent(
            topic,
            self._key_of(topic, payload),
            orjson.dumps(payload),
            event_id if isinstance(event_id, str) and event_id.strip() else None,
            reason,
        )

    def _key_of(self, topic: str, payload: dict[str, Any] | None) -> bytes:
        field_name = {topics.CLICKSTREAM: "anonymous_id", topics.POS_SALES: "store_id"}.get(
            topic, "location_id"
        )
        value = payload.get(field_name) if payload is not None else None
        if isinstance(value, str):
            return value.encode()
        return self.rng.choice(self.sim.stores).location_id.encode()

    # --- well-formed bases, spoiled by the variants below ------------------------------------

    def _head(self, event_type: str) -> dict[str, Any]:
        self._made += 1
        ts_ms = self.sim.now
        ts: int | str = ts_ms if self.rng.random() < EPOCH_MS_SHARE else _rfc3339_local(ts_ms)
        return {"event_id": f"evt-{self.seed}-bad-{self._made}", "event_type": event_type, "ts": ts}

    def _pii(self, payload: dict[str, Any], email_too: bool) -> dict[str, Any]:
        """About half of the customer-facing bad events carry raw PII."""
        customer = self.rng.choice(self.sim.customers)
        if customer.phone is not None and self.rng.random() < 0.5:
            payload["phone"] = _format_phone(self.rng, customer.phone)
        if email_too and customer.email is not None and self.rng.random() < 0.5:
            payload["email"] = _format_email(self.rng, customer.email)
        return payload

    def _line(self) -> dict[str, Any]:
        sku = self.rng.choice(self.sim.skus)
        return {
            "sku": sku,
            "qty": self.rng.randint(1, 3),
            "unit_price": _money(self.sim.unit_cents[sku]),
        }

    def _cart_event(self) -> dict[str, Any]:
        customer = self.rng.choice(self.sim.customers)
        sku = self.rng.choice(self.sim.skus)
        payload = self._head(self.rng.choice(("add_to_cart", "product_view", "remove_from_cart")))
        payload.update(
            {
                "anonymous_id": customer.devices[0],
                "channel": self.rng.choice(CHANNELS),
                "region": customer.region,
                "sku": sku,
                "qty": 1,
                "price": _money(self.sim.unit_cents[sku]),
            }
        )
        return self._pii(payload, email_too=True)

    def _order_event(self) -> dict[str, Any]:
        customer = self.rng.choice(self.sim.customers)
        lines = [self._line() for _ in range(self.rng.randint(1, 3))]
        payload = self._head("order_placed")
        payload.update(
            {
                "anonymous_id": customer.devices[0],
                "channel": self.rng.choice(CHANNELS),
                "order_id": f"ORD-{self.seed}-bad-{self._made}",
                "lines": lines,
                "total": round(sum(ln["qty"] * ln["unit_price"] for ln in lines), 2),
                "fulfillment": {
                    "type": "delivery",
                    "location_id": self.sim._central_warehouse(None).location_id,
                },
            }
        )
        return self._pii(payload, email_too=True)

    def _sale_event(self) -> dict[str, Any]:
        store = self.rng.choice(self.sim.stores)
        lines = [self._line() for _ in range(self.rng.randint(1, 3))]
        payload = self._head("sale")
        payload.update(
            {
                "store_id": store.location_id,
                "receipt_id": f"{store.location_id}-bad-{self._made}",
                "lines": lines,
                "total": round(sum(ln["qty"] * ln["unit_price"] for ln in lines), 2),
            }
        )
        return self._pii(payload, email_too=False)

    def _movement_event(self, event_type: str | None = None) -> dict[str, Any]:
        location = self.rng.choice(self.sim.stores + self.sim.warehouses)
        payload = self._head(event_type or self.rng.choice(("receipt", "shipment", "adjustment")))
        payload.update(
            {
                "location_id": location.location_id,
                "sku": self.rng.choice(self.sim.skus),
                "qty": self.rng.randint(1, 20),
            }
        )
        return payload

    def _any_base(self) -> tuple[str, dict[str, Any]]:
        roll = self.rng.random()
        if roll < 0.3:
            return topics.CLICKSTREAM, self._cart_event()
        if roll < 0.45:
            return topics.CLICKSTREAM, self._order_event()
        if roll < 0.7:
            return topics.POS_SALES, self._sale_event()
        return topics.WMS_MOVEMENTS, self._movement_event()

    # --- malformed_json ----------------------------------------------------------------------

    def _truncated(self) -> tuple[str, bytes]:
        """Cut off mid-message (the PII, if any, stays inside the part that was sent)."""
        topic, payload = self._any_base()
        raw = orjson.dumps(payload)
        keep_from = len(raw) // 2
        for name in ("phone", "email"):
            if name in payload:
                end = raw.find(orjson.dumps(payload[name])) + len(orjson.dumps(payload[name]))
                keep_from = max(keep_from, end + 1)
        return topic, raw[: self.rng.randint(min(keep_from, len(raw) - 1), len(raw) - 1)]

    def _not_utf8(self) -> tuple[str, bytes]:
        """Latin-1 or garbage bytes inside a string: not valid UTF-8, so not JSON."""
        topic, payload = self._any_base()
        raw = orjson.dumps(payload)
        at = raw.find(b'"event_id":"') + len(b'"event_id":"')
        return topic, raw[:at] + b"\xff\xfe" + raw[at:]

    def _not_an_object(self) -> tuple[str, bytes]:
        topic, payload = self._any_base()
        shape = self.rng.choice(("list", "string", "null", "number"))
        value: Any = {
            "list": [payload],
            "string": orjson.dumps(payload).decode(),
            "null": None,
            "number": 42,
        }[shape]
        return topic, orjson.dumps(value)

    def _python_repr(self) -> tuple[str, bytes]:
        topic, payload = self._any_base()
        return topic, repr(payload).encode()

    def _csv_line(self) -> tuple[str, bytes]:
        payload = self._sale_event()
        line = payload["lines"][0]
        text = f"{payload['store_id']},{payload['receipt_id']},{line['sku']},{line['qty']}"
        if "phone" in payload:
            text += f",{payload['phone']}"
        return topics.POS_SALES, text.encode()

    def _empty(self) -> tuple[str, bytes]:
        return self.rng.choice(topics.INPUT_TOPICS), b""

    # --- field-level faults ------------------------------------------------------------------

    def _missing_field(self) -> tuple[str, dict[str, Any]]:
        choice = self.rng.randrange(8)
        if choice == 0:
            payload = self._movement_event()
            del payload["sku"]
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._movement_event("transfer_out")
            return topics.WMS_MOVEMENTS, payload  # a transfer without its transfer_id
        if choice == 2:
            payload = self._sale_event()
            del payload["receipt_id"]
            return topics.POS_SALES, payload
        if choice == 3:
            payload = self._sale_event()
            del payload["lines"][0]["unit_price"]
            return topics.POS_SALES, payload
        if choice == 4:
            payload = self._cart_event()
            del payload["anonymous_id"]
            return topics.CLICKSTREAM, payload
        if choice == 5:
            payload = self._order_event()
            del payload["fulfillment"]
            return topics.CLICKSTREAM, payload
        topic, payload = self._any_base()
        del payload["ts" if choice == 6 else "event_type"]
        return topic, payload

    def _bad_type(self) -> tuple[str, dict[str, Any]]:
        choice = self.rng.randrange(7)
        if choice == 0:
            payload = self._movement_event()
            payload["qty"] = str(payload["qty"])
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._sale_event()
            payload["lines"] = payload["lines"][0]  # an object, not a list
            return topics.POS_SALES, payload
        if choice == 2:
            payload = self._sale_event()
            payload["total"] = f"{payload['total']:.2f}"
            return topics.POS_SALES, payload
        if choice == 3:
            payload = self._sale_event()
            payload["coupon_codes"] = "C-WELCOME-SAVE10"
            return topics.POS_SALES, payload
        if choice == 4:
            payload = self._cart_event()
            payload["event_type"] = "add_to_cart"
            payload["qty"] = "2"
            return topics.CLICKSTREAM, payload
        if choice == 5:
            payload = self._cart_event()
            payload["campaign"] = "wechat"
            return topics.CLICKSTREAM, payload
        topic, payload = self._any_base()
        payload["event_id"] = self.rng.randint(1, 10**9)
        return topic, payload

    def _bad_value(self) -> tuple[str, dict[str, Any]]:
        choice = self.rng.randrange(9)
        if choice == 0:
            payload = self._movement_event("receipt")
            payload["qty"] = self.rng.choice((0, -3))
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._movement_event("adjustment")
            payload["qty"] = 0
            return topics.WMS_MOVEMENTS, payload
        if choice == 2:
            payload = self._movement_event("stock_count")
            payload["qty"] = -1
            return topics.WMS_MOVEMENTS, payload
        if choice == 3:
            payload = self._movement_event("receipt")
            payload["expiry_date"] = "2026-02-30"
            return topics.WMS_MOVEMENTS, payload
        if choice == 4:
            payload = self._sale_event()
            payload["lines"] = []
            return topics.POS_SALES, payload
        if choice == 5:
            payload = self._sale_event()
            payload["store_id"] = self._central_warehouse_id()  # a till is never in a warehouse
            return topics.POS_SALES, payload
        if choice == 6:
            payload = self._order_event()
            payload["fulfillment"] = {
                "type": "store_pickup",
                "location_id": self._central_warehouse_id(),
            }
            return topics.CLICKSTREAM, payload
        if choice == 7:
            payload = self._cart_event()
            payload["event_type"] = "add_to_cart"
            payload["qty"] = 0
            return topics.CLICKSTREAM, payload
        topic, payload = self._any_base()
        payload["event_id"] = self.rng.choice(("", "   ", "x" * 200))
        return topic, payload

    def _central_warehouse_id(self) -> str:
        return self.sim._central_warehouse(None).location_id

    def _bad_timestamp(self) -> tuple[str, dict[str, Any]]:
        topic, payload = self._any_base()
        local = _rfc3339_local(self.sim.now)
        payload["ts"] = self.rng.choice(
            (
                local[:19],  # no offset: local time of which zone?
                local[:10] + " " + local[11:19],
                local[:19] + "+0800",
                self.sim.now // 1000,  # epoch seconds instead of milliseconds
                str(self.sim.now),
                self.sim.now / 1000,
                "2026-11-31T10:00:00.000+08:00",
                "yesterday 10:15",
                "",
            )
        )
        return topic, payload

    def _unknown_event_type(self) -> tuple[str, dict[str, Any]]:
        topic, payload = self._any_base()
        payload["event_type"] = self.rng.choice(
            {
                topics.CLICKSTREAM: ("purchase", "pageview", "Page_View", "wishlist_add", "sale"),
                topics.POS_SALES: ("refund", "void", "Sale", "order_placed"),
                topics.WMS_MOVEMENTS: ("cycle_count", "putaway", "RECEIPT", "sale"),
            }[topic]
        )
        return topic, payload

    def _unknown_sku(self) -> tuple[str, dict[str, Any]]:
        known = self.sim.reference.products
        sku = self.rng.choice(self.sim.skus)
        unknown = sku.lower() if sku.lower() not in known else f"{sku}-X"
        if self.rng.random() < 0.5:
            unknown = f"SKU-{self.rng.randint(90000, 99999)}"
            while unknown in known:
                unknown += "9"
        topic, payload = self._any_base()
        if "lines" in payload:
            payload["lines"][-1]["sku"] = unknown
        else:
            payload["sku"] = unknown
        return topic, payload

    def _unknown_location(self) -> tuple[str, dict[str, Any]]:
        known = self.sim.reference.locations
        unknown = self.rng.choice(("WH-BJ-01", "ST-XX-09", "FW-GZ-02", "st-sh-01", "STORE 7"))
        while unknown in known:
            unknown += "X"
        choice = self.rng.randrange(3)
        if choice == 0:
            payload = self._movement_event()
            payload["location_id"] = unknown
            return topics.WMS_MOVEMENTS, payload
        if choice == 1:
            payload = self._sale_event()
            payload["store_id"] = unknown
            return topics.POS_SALES, payload
        payload = self._order_event()
        payload["fulfillment"]["location_id"] = unknown
        return topics.CLICKSTREAM, payload


# --- the public model ---------------------------------------------------------------------------


class TrafficModel:
    """A reproducible stream of retail traffic over the reference data (no Kafka involved).

    ``events(count)`` starts a fresh simulation on every call, so the same model (or another
    one with the same arguments) yields the same bytes again.
    """

    def __init__(
        self,
        reference: ReferenceData,
        seed: int = DEFAULT_SEED,
        customers: int = DEFAULT_CUSTOMERS,
        start_ms: int = DEFAULT_START_MS,
        bad_ratio: float = 0.0,
    ) -> None:
        if customers < 1:
            raise ValueError(f"customers must be ≥ 1, got {customers}")
        if not 0.0 <= bad_ratio <= 1.0:
            raise ValueError(f"bad_ratio must be between 0 and 1, got {bad_ratio}")
        kinds = {location.type for location in reference.locations.values()}
        if "store" not in kinds or not kinds & {"warehouse", "forward_warehouse"}:
            raise ValueError(
                "the reference data needs at least one store and one warehouse or forward "
                "warehouse to generate traffic"
            )
        if not reference.products:
            raise ValueError("the reference data has no products to generate traffic for")
        self.reference = reference
        self.seed = seed
        self.customers = customers
        self.start_ms = start_ms
        self.bad_ratio = bad_ratio
        self._customer_base: list[_Customer] | None = None

    def events(self, count: int | None = None) -> Iterator[GeneratedEvent]:
        """``count`` events (for ever when None): good ones, duplicates and malformed ones."""
        if count is not None and count < 0:
            raise ValueError(f"count must be ≥ 0, got {count}")
        if self._customer_base is None:
            stores_by_region: dict[str, list[str]] = {}
            for location in sorted(self.reference.locations.values(), key=lambda x: x.location_id):
                if location.type == "store":
                    stores_by_region.setdefault(location.region, []).append(location.location_id)
            self._customer_base = _customer_base(self.customers, stores_by_region)
        simulation = _Simulation(self.reference, self.seed, self._customer_base, self.start_ms)
        return self._mix(simulation, count)

    def _mix(self, simulation: _Simulation, count: int | None) -> Iterator[GeneratedEvent]:
        good = simulation.run()
        malformed = _Malformations(simulation, self.seed)
        dice = random.Random(f"omnistream-mix-{self.seed}")
        recent: deque[GeneratedEvent] = deque(maxlen=DUPLICATE_WINDOW)
        duplicate_share = DUPLICATE_SHARE * (1.0 - self.bad_ratio)
        emitted = 0
        while count is None or emitted < count:
            roll = dice.random()
            if roll < self.bad_ratio:
                yield malformed.make()
            elif roll < self.bad_ratio + duplicate_share and recent:
                yield dataclasses.replace(dice.choice(recent), duplicate=True)
            else:
                event = next(good)
                recent.append(event)
                yield event
            emitted += 1


# --- Kafka --------------------------------------------------------------------------------------


class _TokenBucket:
    """Paces to ``rate`` per second on average; bursts at most a tenth of a second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self.tokens = 1.0
        self.last = time.monotonic()

    def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            time.sleep((1.0 - self.tokens) / self.rate)


class _Progress:
    """A one-line progress display on stderr: count, events/s, elapsed (≤ 5 updates/s).

    On a terminal the line is redrawn in place; otherwise a new line is written every 5 s.
    """

    def __init__(
        self, enabled: bool, total: int | None, duration_s: float | None, stream: TextIO
    ) -> None:
        self.enabled = enabled
        self.total = total
        self.duration_s = duration_s
        self.stream = stream
        self.interactive = enabled and stream.isatty()
        self.interval = 0.2 if self.interactive else 5.0
        self.next_at = self.interval

    def update(self, done: int, elapsed: float, final: bool = False) -> None:
        if not self.enabled or (elapsed < self.next_at and not final):
            return
        self.next_at = elapsed + self.interval
        if self.total:
            count = f"{done:,}/{self.total:,} events ({100 * done / self.total:.0f}%)"
        else:
            count = f"{done:,} events"
        speed = f"{done / elapsed:,.0f} ev/s" if elapsed > 0 else "- ev/s"
        clock = f"{elapsed:.1f}/{self.duration_s:g} s" if self.duration_s else f"{elapsed:.1f} s"
        text = f"generate: {count}  {speed}  {clock} elapsed"
        self.stream.write(f"\r{text}\033[K" if self.interactive else text + "\n")
        self.stream.flush()

    def finish(self, done: int, elapsed: float) -> None:
        if self.enabled:
            self.update(done, elapsed, final=True)
            if self.interactive:
                self.stream.write("\n")
                self.stream.flush()


def produce(
    config: Config,
    events: Iterable[GeneratedEvent],
    *,
    rate: float | None = None,
    duration_s: float | None = None,
    progress: bool = True,
    total: int | None = None,
) -> GenerateStats:
    """Send events to the prefixed input topics; returns what was sent.

    Paced to ``rate`` events/s when given (a token bucket: exact on average), else as fast as
    the producer takes them. Stops when the events run out or after ``duration_s`` seconds,
    whichever comes first, or on Ctrl-C; in every case what was handed to the producer is
    flushed before returning. A full producer queue is waited out, never dropped. ``total``
    (the expected count, if known) only serves the progress display.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration_s}")
    producer = make_producer(config)
    stats = GenerateStats()
    bar = _Progress(progress, total, duration_s, sys.stderr)
    bucket = _TokenBucket(rate) if rate is not None else None
    full_names = {name: config.topic(name) for name in topics.INPUT_TOPICS}

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            stats.delivery_failures += 1

    started = time.monotonic()
    done = 0
    try:
        for event in events:
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if bucket is not None:
                bucket.take()
            topic = full_names.get(event.topic) or config.topic(event.topic)
            while True:
                try:
                    producer.produce(topic, value=event.value, key=event.key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            stats.count(event)
            done += 1
            if bucket is not None or done % 256 == 0:
                producer.poll(0)  # serve delivery reports
            bar.update(done, time.monotonic() - started)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        while producer.flush(1.0) > 0:
            bar.update(done, time.monotonic() - started)
        stats.elapsed_s = time.monotonic() - started
        bar.finish(done, stats.elapsed_s)
    return stats


# --- command line -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``omnistream generate``."""
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="random seed (default %(default)s). The same seed and options produce the same "
        "messages byte for byte, event ids included, so running it twice sends duplicates "
        "that the flows drop; use another seed for new traffic",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help=f"send N messages, then stop (default without --duration: {DEFAULT_COUNT:,}); "
        "duplicates and malformed messages count towards N",
    )
    amount.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="send for this many seconds of wall-clock time, then stop",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        metavar="EPS",
        help="send at most EPS messages per second on average (default: as fast as the "
        "broker accepts them). Event times in the messages are simulated and do not follow "
        "the wall clock",
    )
    parser.add_argument(
        "--customers",
        type=_positive_int,
        default=DEFAULT_CUSTOMERS,
        metavar="N",
        help="number of simulated shoppers (default %(default)s); they are the same for "
        "every seed, so different seeds are different days of the same customers",
    )
    parser.add_argument(
        "--bad-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help="share of malformed messages from 0 to 1 (default %(default)s): broken JSON, "
        "missing or mistyped fields, bad values or timestamps, unknown event types, skus and "
        "locations; the flows must send each to the deadletter topic",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show the progress line on stderr",
    )


def _summary(config: Config, stats: GenerateStats) -> str:
    per_topic = ", ".join(
        f"{config.topic(name)} {stats.produced.get(name, 0):,}" for name in topics.INPUT_TOPICS
    )
    bad = sum(stats.bad.values())
    text = (
        f"{'interrupted after' if stats.interrupted else 'generated'} {stats.total:,} messages "
        f"in {stats.elapsed_s:.1f} s ({stats.rate:,.0f}/s): {per_topic}; "
        f"{stats.duplicates:,} duplicates, {bad:,} malformed"
    )
    if stats.delivery_failures:
        text += f"; {stats.delivery_failures:,} NOT DELIVERED"
    return text


def run_generate(config: Config, args: argparse.Namespace) -> int:
    """``omnistream generate``: 0 when everything was delivered, 1 otherwise, 2 on bad input."""
    try:
        reference = load_reference(config)
        model = TrafficModel(
            reference,
            seed=args.seed,
            customers=args.customers,
            bad_ratio=args.bad_ratio,
        )
    except (ReferenceDataError, ValueError) as exc:
        print(f"omnistream generate: {exc}", file=sys.stderr)
        return 2
    count: int | None = args.count
    if count is None and args.duration is None:
        count = DEFAULT_COUNT
    try:
        ensure_topics(config, list(topics.INPUT_TOPICS))
    except (KafkaException, RuntimeError) as exc:
        print(
            f"omnistream generate: cannot prepare the input topics on {config.kafka.bootstrap}: "
            f"{exc}",
            file=sys.stderr,
        )
        return 1
    stats = produce(
        config,
        model.events(count),
        rate=args.rate,
        duration_s=args.duration,
        progress=args.progress,
        total=count,
    )
    print(_summary(config, stats))
    if stats.interrupted:
        return 130
    return 1 if stats.delivery_failures else 0
