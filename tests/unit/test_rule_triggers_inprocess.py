"""rule_triggers run in-process (``tests.inprocess.MemoryIO``, the memory stock pool and
coupon store): the real dataflow as a replay, on 1 worker and on 2, on a scripted hour of a
Shanghai morning whose triggers are worked out by hand below, from the rules, not from the
code. Every topic × partition is a source partition of its own, read in the order Bytewax
picks.

The pool is what stock_pool would have left once it caught up with the same stock changes
(a replay's lookups read that).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from base import topics
from base.config import Config
from base.metrics import TRIGGERS_SUPPRESSED
from connectors.envelopes import cloud_event
from connectors.reference_files import load_reference
from connectors.resolved import erased_notice, merge_notices
from domain.rules import Experiment
from domain.stock import StockPosition
from domain.trigger_policy import draw_variant
from flows import rule_triggers
from state.coupon_store import MemoryCouponStore
from state.memory_stock import MemoryStockStore
from tests.inprocess import CustomerStores, MemoryIO, run

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
CST = timezone(timedelta(hours=8))
T0 = int(datetime(2026, 11, 18, 12, tzinfo=CST).timestamp() * 1000)  # noon in Shanghai
PARTITIONS = 4
MILK, CONDENSED, SPINACH = "SKU-10009", "SKU-10012", "SKU-10001"  # reorder points 22, 12, 13
RULES = """
defaults: {frequency_cap_per_day: 5, conversion_window: 1d, max_audience: 10}
rules:
  - {id: low, kind: low_stock, cooldown: 6h, params: {target_cover_days: 7}}
  - {id: out, kind: stockout, cooldown: 1h}
  - id: cart
    kind: cart_abandonment
    cooldown: 1d
    # the morning's pool holds no online stock of the carts' skus: no stock guard here
    params: {within: 10m, min_available: 0}
    coupon: {type: amount_off, value: 5, expires_in: 24h}
    quiet_hours: {start: "12:55", end: "13:30", utc_offset: "+08:00"}
  - id: browse
    kind: browse_nearby_stock
    cooldown: 1d
    params: {views: 2, within: 30m, min_available: 3}
    coupon: {type: percent_off, value: 10, expires_in: 48h}
    experiment: {salt: inproc, control_share: 0.5, variants: {a: 1}}
  - id: win
    kind: win_back
    cooldown: 30d
    params: {inactive_days: 60}
    coupon: {type: percent_off, value: 15, expires_in: 7d}
  - id: over
    kind: overstock
    cooldown: 7d
    params: {cover_days: 30, idle_days: 30, min_on_hand: 10, viewed_within: 1d}
    coupon: {type: percent_off, value: 20, expires_in: 72h}
  - id: fresh
    kind: expiring_stock
    cooldown: 1h
    params: {within_days: 4, viewed_within: 1d}
    coupon: {type: percent_off, value: 30, expires_in: 24h}
  - id: prep
    kind: campaign_prep
    cooldown: 12h
    params: {triggers: 2, window: 1h}
"""
EXPERIMENT = Experiment("inproc", 0.5, {"a": 1.0})


def iso(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def customer_drawing(arm: str, prefix: str) -> str:
    """A customer id the browse experiment puts in ``arm`` (control or a)."""
    for n in range(1000):
        customer = f"{prefix}-{n}"
        if (draw_variant(EXPERIMENT, customer, "browse") == "control") == (arm == "control"):
            return customer
    raise AssertionError(arm)


BROWSER, HELD_OUT = customer_drawing("a", "browser"), customer_drawing("control", "browser")


class Script:
    """The inputs, a partition per key as on Kafka."""

    def __init__(self, config: Config, partitioned: bool = True) -> None:
        self.io = MemoryIO(
            config,
            partition_counts=dict.fromkeys(rule_triggers.INPUTS, PARTITIONS),
            partitioned=partitioned,
        )
        self.count = 0

    def _add(self, topic: str, key: str, value: bytes) -> None:
        partition = sum(key.encode()) % PARTITIONS
        self.io.add(topic, [(key.encode(), value)], partition)

    def event(
        self, customer: str | None, event_type: str, ts: int, key: str | None = None, **body: Any
    ) -> str:
        self.count += 1
        event_id = f"{customer or 'anon'}-{self.count}"
        record = {"event_id": event_id, "event_type": event_type, "ts": ts, **body}
        record |= {"customer_id": customer, "channel": "app", "region": "SH"}
        self._add(topics.EVENTS_RESOLVED, key or customer or event_id, orjson.dumps(record))
        return event_id

    def stock(
        self, sku: str, location: str, available: int, ts: int, cause: str, sold: int = 2
    ) -> None:
        data = {"sku": sku, "location_id": location, "region": "SH", "on_hand": available}
        data |= {"reserved": 0, "available": available, "sold_1h": 0, "sold_24h": sold}
        data |= {"cause": cause}
        key = f"{sku}:{location}"
        value = cloud_event(
            event_type="omnistream.stock.changed",
            source="stock_pool",
            subject=key,
            event_id=f"change-{cause}",
            time_ms=ts,
            data=data,
        )
        self._add(topics.STOCK_CHANGES, key, value)

    def receipt(self, sku: str, location: str, qty: int, ts: int, expiry_date: str) -> str:
        self.count += 1
        event_id = f"rcv-{self.count}"
        record = {"event_id": event_id, "event_type": "receipt", "ts": iso(ts), "sku": sku}
        record |= {"location_id": location, "qty": qty, "expiry_date": expiry_date}
        self._add(topics.WMS_MOVEMENTS, location, orjson.dumps(record))
        return event_id


@pytest.fixture
def config(tmp_path: Path) -> Config:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return Config().with_overrides(rules={"file": str(rules)})


def morning(config: Config) -> tuple[Script, dict[str, str]]:
    """The scripted hour; the ids of the events the expected triggers name."""
    s, ids = Script(config), {}
    # Carts (deadline 10 min; quiet 12:55-13:30).
    ids["cart"] = s.event("c-cart", "add_to_cart", T0, sku=CONDENSED)
    s.event("c-ordered", "add_to_cart", T0, sku=CONDENSED)
    s.event("c-ordered", "order_placed", T0 + 5 * MIN, lines=[{"sku": CONDENSED, "qty": 1}])
    s.event("c-till", "add_to_cart", T0, sku=CONDENSED)
    till = {"store_id": "ST-SH-01", "lines": [{"sku": CONDENSED, "qty": 1}]}
    # c-till's coupon, read after c-till's cart: a receipt given to a coupon's customer meets
    # the customer's own events in the order they are read (here one partition holds both).
    s.event(None, "sale", T0 + 5 * MIN, key="c-till", coupon_codes=["OSKNOWN"], **till)
    s.event(None, "sale", T0 + 6 * MIN, coupon_codes=["C-WELCOME-1"], **till)  # nobody's
    ids["quiet"] = s.event("c-quiet", "add_to_cart", T0 + 50 * MIN, sku=CONDENSED)
    # Win-back: the last purchase 61 days ago.
    s.event("c-away", "order_placed", T0 - 61 * DAY, lines=[{"sku": CONDENSED, "qty": 1}])
    ids["back"] = s.event("c-away", "page_view", T0 + 15 * MIN)
    # Browsing milk twice: one customer in each arm of the experiment.
    for customer in (BROWSER, HELD_OUT):
        first = s.event(customer, "product_view", T0 + 20 * MIN, sku=MILK)
        ids[customer] = f"{first},{s.event(customer, 'product_view', T0 + 21 * MIN, sku=MILK)}"
    s.event("c-viewer", "product_view", T0 + 10 * MIN, sku=CONDENSED)
    s.event("c-late", "page_view", T0 + 2 * HOUR)  # the input goes on to 14:00
    # Stock: milk runs low at Lujiazui; condensed milk piles up at Xujiahui; spinach arrives
    # at Wujiaochang expiring in 2.9 days.
    s.stock(MILK, "ST-SH-01", 50, T0 - HOUR, "s1")
    s.stock(MILK, "ST-SH-02", 30, T0 - 50 * MIN, "s2")
    s.stock(MILK, "ST-SH-02", 10, T0 + 40 * MIN, "s3")
    s.stock(CONDENSED, "ST-SH-03", 400, T0 + 30 * MIN, "s4", sold=1)
    ids["receipt"] = s.receipt(SPINACH, "ST-SH-04", 20, T0 - 2 * HOUR, "2026-11-20")
    s.stock(SPINACH, "ST-SH-04", 20, T0 - 2 * HOUR, ids["receipt"], sold=0)
    s.io.add(topics.STOCK_CHANGES, [b'{"type": "omnistream.stock.changed", "data": {}}'], 3)
    return s, ids


def pool_after_stock_pool(config: Config) -> MemoryStockStore:
    pool = MemoryStockStore(load_reference(config))
    final = [
        (MILK, "ST-SH-01", 50, 2, "s1"),
        (MILK, "ST-SH-02", 10, 2, "s3"),
        (CONDENSED, "ST-SH-03", 400, 1, "s4"),
        (SPINACH, "ST-SH-04", 20, 0, "rcv"),
    ]
    pool.write(
        [
            StockPosition(sku, loc, n, 0, n, 0, sold, None, T0, cause, f"{cause}#0")
            for sku, loc, n, sold, cause in final
        ]
    )
    return pool


def published(config: Config, workers: int) -> tuple[dict[str, list[dict[str, Any]]], dict]:
    script, ids = morning(config)
    replayed(config, script, workers)
    out = {name: script.io.values(name) for name in (*OUTPUTS, topics.DEADLETTER)}
    return out, ids


def replayed(config: Config, script: Script, workers: int) -> None:
    """The flow replays the script (c-till owns the code OSKNOWN)."""
    codes = MemoryCouponStore()
    codes.remember([("OSKNOWN", "c-till", DAY // 1000)])
    flow = rule_triggers.build(
        config,
        until_idle=True,
        io=script.io,
        stock_store=lambda: pool_after_stock_pool(config),
        coupon_store=lambda: codes,
        **CustomerStores(load_reference(config)).build_args(),
    )
    run(flow, workers)


OUTPUTS = (topics.TRIGGERS_COUPON, topics.TRIGGERS_HOLDOUT, topics.TRIGGERS_REPLENISHMENT)


def summary(event: dict[str, Any]) -> tuple[Any, ...]:
    data = event["data"]
    if "customer_id" in data:
        coupon = data["coupon"]
        return (data["rule_id"], data["customer_id"], coupon.get("sku"), coupon.get("store_id"))
    return (data["rule_id"], data["kind"], data["sku"], data["location_id"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scripted_morning_fires_the_triggers_worked_out_by_hand(
    config: Config, workers: int
) -> None:
    out, ids = published(config, workers)
    by_rule = {name: {summary(e): e["data"] for e in out[name]} for name in OUTPUTS}
    coupons, holdouts = by_rule[topics.TRIGGERS_COUPON], by_rule[topics.TRIGGERS_HOLDOUT]
    replenishments = by_rule[topics.TRIGGERS_REPLENISHMENT]
    viewers = sorted([BROWSER, HELD_OUT, "c-viewer"])  # milk is dairy, as condensed milk is
    assert set(coupons) == {
        ("cart", "c-cart", CONDENSED, None),  # c-ordered ordered, c-till paid with its code
        ("cart", "c-quiet", CONDENSED, None),
        ("win", "c-away", None, None),
        ("browse", BROWSER, MILK, "ST-SH-01"),  # the store with the most milk
        *(("over", customer, CONDENSED, "ST-SH-03") for customer in viewers),
    }
    assert set(holdouts) == {("browse", HELD_OUT, MILK, "ST-SH-01")}
    assert set(replenishments) == {
        ("low", "transfer", MILK, "ST-SH-02"),
        ("fresh", "prepare", SPINACH, "ST-SH-04"),
        ("prep", "prepare", CONDENSED, "ST-SH-03"),
    }

    cart = coupons[("cart", "c-cart", CONDENSED, None)]
    assert cart["event_time"] == iso(T0 + 10 * MIN) and cart["evidence"] == [ids["cart"]]
    assert cart["coupon"]["expires_at"] == iso(T0 + 10 * MIN + DAY) and "held_until" not in cart
    quiet = coupons[("cart", "c-quiet", CONDENSED, None)]
    assert quiet["event_time"] == iso(T0 + HOUR)  # 13:00, inside the quiet half hour
    assert quiet["held_until"] == iso(T0 + 90 * MIN)
    assert coupons[("win", "c-away", None, None)]["reason"] == "last purchase 61 days ago"
    browse = coupons[("browse", BROWSER, MILK, "ST-SH-01")]
    assert browse["reason"] == "viewed 2 times; ST-SH-01 has 50"
    assert browse["evidence"] == ids[BROWSER].split(",")

    transfer = replenishments[("low", "transfer", MILK, "ST-SH-02")]
    needed = max(22, math.ceil(7 * 2)) - 10
    assert (transfer["source_location_id"], transfer["suggested_qty"]) == ("ST-SH-01", needed)
    assert transfer["evidence"] == ["s3", "s1"] and transfer["event_time"] == iso(T0 + 40 * MIN)
    fresh = replenishments[("fresh", "prepare", SPINACH, "ST-SH-04")]
    expires = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp() * 1000)  # end of 11-20 UTC
    days_left = (expires - (T0 - 2 * HOUR)) / DAY
    assert fresh["reason"] == (
        f"20 units at ST-SH-04 expire in {days_left:.1f} days; prepare a clearance display"
    )
    assert fresh["evidence"] == [ids["receipt"]] and fresh["suggested_qty"] == 20
    # Three overstock coupons name Xujiahui for condensed milk within the hour (more than 2).
    prep = replenishments[("prep", "prepare", CONDENSED, "ST-SH-03")]
    over = [coupons[("over", c, CONDENSED, "ST-SH-03")] for c in viewers]
    assert sorted(prep["evidence"]) == sorted(o["coupon"]["code"] for o in over)
    assert prep["suggested_qty"] == 1 and prep["event_time"] == iso(T0 + 30 * MIN)
    assert all(o["event_time"] == iso(T0 + 30 * MIN) for o in over)

    (dead,) = out[topics.DEADLETTER]
    assert dead["reason"] == "missing_field" and dead["topic"] == "stock.changes"


def test_one_and_two_workers_publish_the_same(config: Config) -> None:
    def ids_and_payloads(workers: int) -> dict[str, dict[str, Any]]:
        out, _ = published(config, workers)
        found = {}
        for name in OUTPUTS:
            for event in out[name]:
                event["data"].pop("fired_at")
                found[event["id"]] = event
        return found

    assert ids_and_payloads(1) == ids_and_payloads(2)


FRESH_ONLY = """
rules:
  - id: fresh
    kind: expiring_stock
    cooldown: 1h
    params: {within_days: 4, viewed_within: 1d}
    coupon: {type: percent_off, value: 30, expires_in: 24h}
"""


@pytest.mark.parametrize(
    ("partitioned", "workers"),
    [(False, 1), (True, 1), (True, 2)],
    ids=["receipts-read-last", "partitions-1-worker", "partitions-2-workers"],
)
def test_receipts_read_after_a_month_of_stock_changes_are_judged_in_event_time(
    tmp_path: Path, partitioned: bool, workers: int
) -> None:
    """Two spinach receipts at Wujiaochang, two hours apart, expiring the same day; the
    store's stock changes go on a month later. Read as one source (``receipts-read-last``),
    every ``wms.movements`` message comes after every stock change, as one batch of a
    partition near its end did on the broker. Worked out by hand: when their window opens
    (2026-11-20, 4 days before the end of 11-23) 37 are on hand; first-expiring-first-out
    gives the second receipt its 8 (same expiry, later event id) and the first 29, which is
    judged first and fires; the cooldown (1 h) holds the second back. (Handed to the rules
    as read, the month-later change fired the first batch alone, with 30, before the second
    receipt was read.)"""
    rules = tmp_path / "rules.yaml"
    rules.write_text(FRESH_ONLY)
    config = Config().with_overrides(rules={"file": str(rules)})
    s = Script(config, partitioned=partitioned)
    first = s.receipt(SPINACH, "ST-SH-04", 30, T0, "2026-11-23")
    second = s.receipt(SPINACH, "ST-SH-04", 8, T0 + 2 * HOUR, "2026-11-23")
    s.stock(SPINACH, "ST-SH-04", 30, T0, first, sold=0)
    s.stock(SPINACH, "ST-SH-04", 29, T0 + HOUR, "sale-1", sold=1)
    s.stock(SPINACH, "ST-SH-04", 37, T0 + 2 * HOUR, second, sold=1)
    s.stock(SPINACH, "ST-SH-04", 54, T0 + 30 * DAY, "receipt-next-month", sold=0)
    s.stock(SPINACH, "ST-SH-04", 50, T0 + 30 * DAY + HOUR, "sale-2", sold=4)
    pool = MemoryStockStore(load_reference(config))
    pool.write(
        [StockPosition(SPINACH, "ST-SH-04", 50, 0, 50, 4, 4, None, T0 + 30 * DAY, "sale-2", "x")]
    )
    flow = rule_triggers.build(
        config,
        until_idle=True,
        io=s.io,
        stock_store=lambda: pool,
        coupon_store=MemoryCouponStore,
        **CustomerStores(load_reference(config)).build_args(),
    )
    run(flow, workers)
    opens = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp() * 1000)
    (fresh,) = [e["data"] for e in s.io.values(topics.TRIGGERS_REPLENISHMENT)]
    assert (fresh["kind"], fresh["evidence"], fresh["suggested_qty"]) == ("prepare", [first], 29)
    assert fresh["reason"] == "29 units at ST-SH-04 expire in 4.0 days; prepare a clearance display"
    assert fresh["event_time"] == iso(opens) and fresh["available"] == 37
    assert s.io.values(topics.TRIGGERS_COUPON) == []  # nobody viewed spinach


@pytest.mark.parametrize("workers", [1, 2])
def test_clearance_offers_follow_merges_and_erasures(config: Config, workers: int) -> None:
    """The morning, plus: a device that viewed condensed milk logs in as an older member
    (its notices as identity_stitch writes them), and c-viewer is erased after its view;
    c-a, who viewed it too, merges into c-b, who never browsed, and c-b into c-c. Xujiahui's
    overstock of condensed milk then goes to the member, once, and not to the device or the
    erased customer; c-a's view counts for c-c, through c-b: one offer to c-c, none dropped
    as addressed to a key that is gone."""
    script, _ = morning(config)
    script.event("c-device", "product_view", T0 + 12 * MIN, sku=CONDENSED)
    script.event("c-member", "page_view", T0 - DAY)
    script.event("c-a", "product_view", T0 + 12 * MIN, sku=CONDENSED)
    script.event("c-b", "page_view", T0 - DAY)
    notices = merge_notices("c-device", "c-member", "login", T0 + 14 * MIN)
    notices += merge_notices("c-a", "c-b", "phone", T0 + 14 * MIN)
    notices += merge_notices("c-b", "c-c", "card", T0 + 16 * MIN)
    for key, value in notices:
        script._add(topics.EVENTS_RESOLVED, key, value)
    script._add(topics.EVENTS_RESOLVED, "c-viewer", erased_notice("c-viewer", T0 + 15 * MIN))
    gone = TRIGGERS_SUPPRESSED.labels("over", "default", "gone_customer")
    before = gone._value.get()
    replayed(config, script, workers)
    assert gone._value.get() - before == 0
    over = [
        e["data"]["customer_id"]
        for e in script.io.values(topics.TRIGGERS_COUPON)
        if e["data"]["rule_id"] == "over"
    ]
    assert sorted(over) == sorted([BROWSER, HELD_OUT, "c-member", "c-c"])
