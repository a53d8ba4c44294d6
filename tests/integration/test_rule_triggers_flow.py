"""rule_triggers end to end on the real broker and Redis, behind stock_pool and identity_stitch.

A scripted day in Shanghai: stock falling at one store while another holds plenty, a shopper
browsing one product again and again, carts left behind (one of them at night, in quiet
hours), an order in time, a customer back after three months, a perishable batch close to
its expiry. Every trigger on the three topics is predicted exactly, and so is everything
that must not fire.
"""

from __future__ import annotations

import io
import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from base.config import Config, dump_config
from connectors.kafka_clients import make_producer
from domain.customer_rules import coupon_code
from domain.identity import by_priority, new_customer_id
from domain.rules import Experiment
from domain.trigger_policy import draw_variant
from omnistream.embedded import free_port
from omnistream.experiments_report import run_report
from omnistream.processes import scrape, start_flow, stop_process
from tests.kafka_helpers import TopicWatcher, read_topic

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
#: 2026-11-02 10:00 in Shanghai (+08:00): shops open, outside quiet hours.
T0 = int(datetime(2026, 11, 2, 2, 0, tzinfo=UTC).timestamp() * 1000)

RULES = """
version: 1
defaults: {frequency_cap_per_day: 3, conversion_window: 1d}
rules:
  - {id: low-stock, kind: low_stock, cooldown: 6h, params: {target_cover_days: 7}}
  - {id: stockout, kind: stockout, cooldown: 1h}
  - id: browse
    kind: browse_nearby_stock
    cooldown: 1d
    params: {views: 3, within: 30m, min_available: 2}
    coupon: {type: percent_off, value: 10, expires_in: 48h}
  - id: cart
    kind: cart_abandonment
    cooldown: 1d
    params: {within: 10m}
    coupon: {type: amount_off, value: 15, expires_in: 24h}
    experiment: {salt: e2e, control_share: 0.5, variants: {a: 1}}
    quiet_hours: {start: "22:00", end: "08:00", utc_offset: "+08:00"}
  - id: winback
    kind: win_back
    cooldown: 30d
    params: {inactive_days: 60}
    coupon: {type: percent_off, value: 15, expires_in: 7d}
  - id: expiring
    kind: expiring_stock
    cooldown: 1d
    params: {within_days: 2, viewed_within: 7d}
    coupon: {type: percent_off, value: 30, expires_in: 24h}
"""
CART_EXPERIMENT = Experiment("e2e", 0.5, {"a": 1.0})


class Script:
    """Builds the input events and remembers each shopper's customer id."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.customers: dict[str, str] = {}
        self._serial = itertools.count(1)
        self._clicks: dict[str, int] = {}

    def click(self, who: str, event_type: str, ts: int, **fields: Any) -> str:
        self._clicks[who] = self._clicks.get(who, 0) + 1
        event_id = f"{who}-{self._clicks[who]}"
        if who not in self.customers and not who.startswith("anon"):
            self.customers[who] = customer_of(who)
        user = {} if who.startswith("anon") else {"user_id": f"u-{who}"}
        event = {
            "event_id": event_id,
            "event_type": event_type,
            "ts": ts,
            "anonymous_id": f"d-{who}",
            "channel": "app",
            "region": "SH",
            **user,
            **fields,
        }
        self.events.append(("clickstream", event))
        return event_id

    def move(self, event_type: str, location: str, sku: str, qty: int, ts: int, **f: Any) -> str:
        event_id = f"m-{next(self._serial)}"
        event = {"event_id": event_id, "event_type": event_type, "ts": ts}
        event |= {"location_id": location, "sku": sku, "qty": qty, **f}
        self.events.append(("wms.movements", event))
        return event_id

    def sale(self, store: str, sku: str, qty: int, ts: int) -> str:
        event_id = f"p-{next(self._serial)}"
        line = {"sku": sku, "qty": qty, "unit_price": 10.0}
        event = {"event_id": event_id, "event_type": "sale", "ts": ts, "store_id": store}
        event |= {"receipt_id": f"r-{event_id}", "lines": [line], "total": 10.0 * qty}
        self.events.append(("pos.sales", event))
        return event_id


def customer_of(who: str) -> str:
    """The customer id identity_stitch mints for a shopper: from the shopper's first event
    (``<who>-1``) and its highest-priority identifier."""
    primary = by_priority([f"anon:d-{who}", f"user:u-{who}"])[0]
    return new_customer_id(f"{who}-1", primary)


def shopper(prefix: str, arm: str) -> str:
    """A shopper name whose customer id draws ``arm`` in the cart experiment."""
    for n in range(1000):
        who = f"{prefix}{n}"
        variant = draw_variant(CART_EXPERIMENT, customer_of(who), "cart")
        if (variant == "control") == (arm == "control"):
            return who
    raise AssertionError("no shopper found")


def scenario() -> tuple[Script, dict[str, Any]]:
    s = Script()
    expect: dict[str, Any] = {}
    milk, fresh = "SKU-10009", "SKU-10001"  # reorder point 22; perishable
    # Stock: Lujiazui (ST-SH-02) runs low and out while Jing'an (ST-SH-01) holds plenty.
    s.move("receipt", "WH-SH-01", "SKU-10012", 100, T0 - 100 * DAY)
    s.move("receipt", "ST-SH-01", "SKU-10012", 50, T0 - 70 * MIN)
    s.move("receipt", "ST-SH-01", milk, 100, T0 - 60 * MIN)
    s.move("receipt", "ST-SH-02", milk, 30, T0 - 50 * MIN)
    # milk holds back a safety stock of 3 (sample products): the rules read available-to-sell
    s.sale("ST-SH-02", milk, 10, T0 - 40 * MIN)  # 20 − 3 = 17 < 22: low stock → transfer
    s.sale("ST-SH-02", milk, 5, T0 - 30 * MIN)  # still low: no storm
    s.sale("ST-SH-02", milk, 15, T0 - 20 * MIN)  # 0: stockout
    s.move("receipt", "ST-SH-02", milk, 40, T0 - 10 * MIN)  # back above: re-armed
    s.sale("ST-SH-02", milk, 20, T0 - 5 * MIN)  # low again, but inside the 6 h cooldown
    batch = s.move("receipt", "ST-SH-03", fresh, 20, T0, expiry_date="2026-11-03")
    expect["replenishment"] = {
        # target cover 7 days × 10 sold = 70; 70 − 17 = 53, less than the 75 surplus
        # (Jing'an: 100 − 3 to sell, 22 of them its own reorder point)
        ("low-stock", "transfer", milk, "ST-SH-02", "ST-SH-01", 53),
        # 7 × 30 sold = 210 to get back to target cover
        ("stockout", "stockout", milk, "ST-SH-02", None, 210),
        ("expiring", "prepare", fresh, "ST-SH-03", None, 20),
    }

    # A browses the milk three times: Jing'an has the most → a store-pickup coupon.
    for n in range(3):
        s.click("a", "product_view", T0 + n * MIN, sku=milk, price=93.9)
    s.click(
        "a",
        "order_placed",
        T0 + 20 * MIN,
        order_id="o-a",
        total=93.9,
        lines=[{"sku": milk, "qty": 1, "unit_price": 93.9}],
        fulfillment={"type": "store_pickup", "location_id": "ST-SH-01"},
    )
    # B leaves two carts: one coupon, the second inside the cooldown.
    b = shopper("b", "a")
    s.click(b, "add_to_cart", T0 + 1 * MIN, sku="SKU-10012", qty=1, price=13.9)
    s.click(b, "add_to_cart", T0 + 2 * MIN, sku="SKU-10010", qty=1, price=80.9)
    # The next morning B redeems the cart coupon at a till without a loyalty card (sent
    # once the coupon is out: the code must exist before a till can scan it).
    code = coupon_code("cart", customer_of(b), "SKU-10012", (f"{b}-1",))
    s.sale("ST-SH-01", "SKU-10012", 1, T0 + 23 * HOUR + MIN)
    s.events[-1][1]["coupon_codes"] = [code]
    expect["redemption"] = s.events.pop()
    # C orders in time: no coupon.
    s.click("c", "add_to_cart", T0 + 1 * MIN, sku="SKU-10012", qty=1, price=13.9)
    s.click(
        "c",
        "order_placed",
        T0 + 5 * MIN,
        order_id="o-c",
        total=13.9,
        lines=[{"sku": "SKU-10012", "qty": 1, "unit_price": 13.9}],
        fulfillment={"type": "delivery", "location_id": "WH-SH-01"},
    )
    # D bought 90 days ago and is back.
    s.click(
        "d",
        "order_placed",
        T0 - 90 * DAY,
        order_id="o-d",
        total=13.9,
        lines=[{"sku": "SKU-10012", "qty": 1, "unit_price": 13.9}],
        fulfillment={"type": "delivery", "location_id": "WH-SH-01"},
    )
    s.click("d", "page_view", T0 + 30 * MIN)
    # E draws the control group: its coupon goes to the holdout topic only.
    e = shopper("e", "control")
    s.click(e, "add_to_cart", T0 + 3 * MIN, sku="SKU-10012", qty=1, price=13.9)
    # G leaves a cart at 21:55: due at 22:05, held until 08:00 the next morning.
    g = shopper("g", "a")
    s.click(g, "add_to_cart", T0 + 11 * HOUR + 55 * MIN, sku="SKU-10012", qty=1, price=13.9)
    # H looked at fresh food last week: the expiring batch's clearance coupon reaches H.
    s.click("h", "product_view", T0 - 2 * DAY, sku="SKU-10002", price=7.9)
    # Late traffic of anonymous visitors moves every partition's clock past the deadlines.
    for n in range(40):
        s.click(f"anon{n}", "page_view", T0 + 23 * HOUR)

    next_morning = T0 + 22 * HOUR  # 08:00 +08:00 on 2026-11-03
    cid = s.customers
    expect["coupon"] = {
        ("browse", cid["a"], "default", milk, "ST-SH-01", None),
        ("cart", cid[b], "a", "SKU-10012", None, None),
        ("winback", cid["d"], "default", None, None, None),
        ("cart", cid[g], "a", "SKU-10012", None, next_morning),
        ("expiring", cid["h"], "default", fresh, "ST-SH-03", None),
    }
    expect["holdout"] = {("cart", cid[e], "control", "SKU-10012", None, None)}
    expect["batch"] = batch
    return s, expect


STOCK_EVENTS = {"order_placed", "order_cancelled", "sale", "return"}


def caused_by(event_id: str) -> Any:
    def check(value: dict[str, Any]) -> bool:
        cause = value["data"]["cause"]
        return bool(cause == event_id or cause.startswith(event_id + "#"))

    return check


def start_live(config: Config, tmp_path: Path, *names: str) -> dict[str, tuple[Any, int]]:
    """Each flow with a metrics port of its own: name → (process, port)."""
    processes = {}
    for name in names:
        port = free_port()
        path = tmp_path / f"{name}.yaml"
        dump_config(config.with_overrides(metrics={"port": port}), path)
        with (tmp_path / f"{name}.log").open("ab") as log:
            processes[name] = (start_flow(name, path, log=log), port)
    return processes


def produce_in_order(config: Config, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Send the day in event-time order; after each event that moves stock, wait until
    stock_pool has published its effect, so the stock pool sees the day as it happened."""
    producer = make_producer(config)
    changes = TopicWatcher(config, "stock.changes")
    try:
        for topic, event in sorted(events, key=lambda item: item[1]["ts"]):
            key = event.get("anonymous_id") or event.get("store_id") or event.get("location_id")
            producer.produce(config.topic(topic), key=str(key).encode(), value=orjson.dumps(event))
            assert producer.flush(30) == 0
            if topic == "wms.movements" or event["event_type"] in STOCK_EVENTS:
                changes.wait_for(caused_by(event["event_id"]), timeout_s=60)
    finally:
        changes.close()


def wait_for_counts(config: Config, counts: dict[str, int], timeout_s: float = 90) -> None:
    """Until each topic holds at least the expected number of messages, then a little longer
    (so an unexpected extra trigger would be seen too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(len(read_topic(config, t, timeout_s=20)) >= n for t, n in counts.items()):
            time.sleep(3)
            return
        time.sleep(0.5)


def conversions_of(samples: Any) -> dict[tuple[str, str, str], float]:
    return {
        (labels["rule"], labels["variant"], labels["via"]): value
        for labels, value in (samples or {}).get("omnistream_trigger_conversions_total", [])
        if value > 0
    }


def wait_for_conversions(port: int, count: int, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    samples = scrape(port)
    while sum(conversions_of(samples).values()) < count and time.monotonic() < deadline:
        time.sleep(0.3)
        samples = scrape(port)
    return samples


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def coupon_tuple(data: dict[str, Any]) -> tuple[Any, ...]:
    held = data.get("held_until")
    return (
        data["rule_id"],
        data["customer_id"],
        data["variant"],
        data["coupon"].get("sku"),
        data["coupon"].get("store_id"),
        iso_ms(held) if held else None,
    )


def replenishment_tuple(data: dict[str, Any]) -> tuple[Any, ...]:
    return (
        data["rule_id"],
        data["kind"],
        data["sku"],
        data["location_id"],
        data["source_location_id"],
        data["suggested_qty"],
    )


@pytest.fixture
def rules_config(omni_config: Config, tmp_path: Path) -> Config:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return omni_config.with_overrides(pii={"key": "test-secret"}, rules={"file": str(rules)})


def read_data(config: Config, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in read_topic(config, topic, timeout_s=20)]


def test_scripted_day_fires_exactly_the_expected_triggers(
    rules_config: Config, tmp_path: Path
) -> None:
    config = rules_config
    script, expect = scenario()
    flows = start_live(config, tmp_path, "stock_pool", "identity_stitch", "rule_triggers")
    try:
        produce_in_order(config, script.events)
        wait_for_counts(
            config,
            {
                "triggers.coupon": len(expect["coupon"]),
                "triggers.holdout": len(expect["holdout"]),
                "triggers.replenishment": len(expect["replenishment"]),
            },
        )
        produce_in_order(config, [expect["redemption"]])
        metrics = wait_for_conversions(flows["rule_triggers"][1], 2)
    finally:
        codes = [stop_process(process) for process, _ in flows.values()]
    assert codes == [0, 0, 0], (tmp_path / "rule_triggers.log").read_text(errors="replace")[-3000:]

    coupons = read_data(config, "triggers.coupon")
    holdouts = read_data(config, "triggers.holdout")
    replenishments = read_data(config, "triggers.replenishment")
    assert sorted(map(coupon_tuple, (c["data"] for c in coupons))) == sorted(expect["coupon"])
    assert sorted(map(coupon_tuple, (h["data"] for h in holdouts))) == sorted(expect["holdout"])
    assert sorted(map(replenishment_tuple, (r["data"] for r in replenishments))) == sorted(
        expect["replenishment"]
    )
    for message in coupons + holdouts + replenishments:
        assert message["specversion"] == "1.0" and message["datacontenttype"] == "application/json"
        data = message["data"]
        assert data["evidence"] and data["reason"]
        assert iso_ms(data["fired_at"]) >= iso_ms(data["event_time"]) - 1000
    by_rule = {c["data"]["rule_id"]: c for c in coupons}
    assert {h["type"] for h in holdouts} == {"omnistream.trigger.holdout"}
    assert by_rule["expiring"]["data"]["evidence"] == [expect["batch"]]
    assert by_rule["browse"]["data"]["coupon"]["kind"] == "percent_off"
    assert read_data(config, "deadletter") == []
    # Closing the loop: the walk-in redemption of B's code converts the cart coupon; the
    # browse coupon converts through A's order.
    assert conversions_of(metrics) == {
        ("cart", "a", "redeemed"): 1.0,
        ("browse", "default", "purchase"): 1.0,
    }
    # The experiment report reads, from Redis, the cart experiment's arms as the topics
    # show them: customers and triggers per arm, and the one redemption under `a`.
    out = io.StringIO()
    assert run_report(config, True, out) == 0
    rows = {(r["rule_id"], r["variant"]): r for r in orjson.loads(out.getvalue())["experiments"]}
    assert set(rows) == {("cart", "a"), ("cart", "control")}
    for variant, records in (("a", coupons), ("control", holdouts)):
        cart = [m["data"] for m in records if m["data"]["rule_id"] == "cart"]
        row = rows["cart", variant]
        assert (row["sent"], row["assigned"]) == (
            len(cart),
            len({d["customer_id"] for d in cart}),
        )
        assert row["conversions"] == (1 if variant == "a" else 0)
    assert rows["cart", "control"]["uplift"] is None
    assert rows["cart", "a"]["verdict"] == "too small"  # a handful of customers
