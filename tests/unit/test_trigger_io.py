"""rule_triggers' wire formats: decoding its inputs and encoding its triggers (CloudEvents)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from base.config import Config
from connectors.envelopes import cloud_event
from connectors.reference_files import load_reference
from connectors.trigger_inputs import (
    Skipped,
    decode_receipt,
    decode_resolved,
    decode_stock_change,
    end_of_day_ms,
)
from connectors.triggers import (
    coupon_id,
    coupon_message,
    replenishment_id,
    replenishment_message,
)
from domain.customer_rules import CouponDecision, CustomerEvent
from domain.events import Origin, Rejection
from domain.reference import ReferenceData
from domain.rules import RuleSet, parse_rules
from domain.stock_rules import ExpiryBatch, StockChange, StockDecision

ORIGIN = Origin("t", 2, 10, b"k")
HOUR_MS = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


T0 = ms("2026-11-22T10:00:00+00:00")


@pytest.fixture(scope="module")
def reference() -> ReferenceData:
    return load_reference(Config())  # the sample CSVs


def raw(record: object) -> bytes:
    return orjson.dumps(record)


# --- events.resolved -------------------------------------------------------------------------


def resolved(**over: object) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e1",
        "event_type": "product_view",
        "ts": T0,
        "anonymous_id": "a1",
        "channel": "app",
        "sku": "SKU-10001",
        "region": "HZ",
        "customer_id": "C1",
        "source_topic": "clickstream",
    }
    base.update(over)
    return base


def test_names_events_repeat_are_one_string_for_every_event(reference: ReferenceData) -> None:
    """Skus, channels, stores and regions are interned: each customer's state keeps them as
    keys, and a copy of each per customer cost rule_triggers about 340 B of its 4.1 KB."""
    first, second = (
        decode_resolved(
            raw(resolved(event_id=f"e{n}", store_id="S001", lines=[{"sku": "SKU-10002"}])),
            ORIGIN,
            reference,
        )
        for n in (1, 2)
    )
    assert isinstance(first, CustomerEvent) and isinstance(second, CustomerEvent)
    assert first.sku is second.sku and first.channel is second.channel
    assert first.region is second.region and first.store_id is second.store_id
    assert first.skus[0] is second.skus[0] and first.event_id is not second.event_id


def test_a_product_view_decodes_with_the_category_of_its_sku(reference: ReferenceData) -> None:
    event = decode_resolved(raw(resolved()), ORIGIN, reference)
    assert event == CustomerEvent(
        event_id="e1",
        event_type="product_view",
        ts_ms=T0,
        customer_id="C1",
        region="HZ",
        sku="SKU-10001",
        skus=(),
        is_purchase=False,
        coupon_codes=(),
        category="fresh_food",  # from products.csv
        source_partition=2,
        channel="app",
    )


def test_an_unknown_sku_has_no_category(reference: ReferenceData) -> None:
    event = decode_resolved(raw(resolved(sku="SKU-NOPE")), ORIGIN, reference)
    assert isinstance(event, CustomerEvent)
    assert event.sku == "SKU-NOPE"
    assert event.category is None


def test_a_till_sale_takes_the_region_of_its_store(reference: ReferenceData) -> None:
    sale = {
        "event_id": "p1",
        "event_type": "sale",
        "ts": T0,
        "store_id": "ST-SH-01",
        "receipt_id": "R1",
        "lines": [
            {"sku": "SKU-10001", "qty": 1, "unit_price": 10.9},
            {"sku": "SKU-10021", "qty": 2, "unit_price": 13.9},
            {"qty": 1},  # a line without a sku is skipped
        ],
        "total": 38.7,
        "coupon_codes": ["OSABCDEF123456", 7],
        "customer_id": "C2",
        "source_topic": "pos.sales",
    }
    event = decode_resolved(raw(sale), ORIGIN, reference)
    assert isinstance(event, CustomerEvent)
    assert event.region == "SH"  # ST-SH-01 is in SH
    assert event.is_purchase is True
    assert event.skus == ("SKU-10001", "SKU-10021")
    assert event.coupon_codes == ("OSABCDEF123456",)
    assert event.sku is None and event.category is None
    assert event.customer_id == "C2"
    assert event.source_partition == 2


def test_a_region_given_by_the_event_wins_over_the_store(reference: ReferenceData) -> None:
    event = decode_resolved(raw(resolved(store_id="ST-SH-01", region="SZ")), ORIGIN, reference)
    assert isinstance(event, CustomerEvent)
    assert event.region == "SZ"


@pytest.mark.parametrize(
    ("event_type", "purchase"),
    [("order_placed", True), ("sale", True), ("add_to_cart", False), ("order_cancelled", False)],
)
def test_orders_and_sales_are_purchases(
    reference: ReferenceData, event_type: str, purchase: bool
) -> None:
    lines = [{"sku": "SKU-10002", "qty": 1, "unit_price": 7.9}]
    order = {} if event_type == "sale" else {"order_id": "O1"}
    record = resolved(event_type=event_type, sku=None, lines=lines, total=7.9, **order)
    event = decode_resolved(raw(record), ORIGIN, reference)
    assert isinstance(event, CustomerEvent)
    assert event.is_purchase is purchase
    assert event.revenue == (7.9 if purchase else 0.0)
    assert event.skus == ("SKU-10002",)


def test_the_till_sale_of_an_order_s_pickup_is_no_second_purchase(
    reference: ReferenceData,
) -> None:
    """The order was the purchase (revenue, conversion); collecting it at the till is a
    store visit on the card, and the code scanned there still counts as redeemed."""
    lines = [{"sku": "SKU-10002", "qty": 1, "unit_price": 7.9}]
    record = resolved(
        event_type="sale",
        source_topic="pos.sales",
        store_id="ST-SH-01",
        sku=None,
        lines=lines,
        total=7.9,
        order_id="O1",
        member_code="M1",
        coupon_codes=["OS1"],
    )
    event = decode_resolved(raw(record), ORIGIN, reference)
    assert isinstance(event, CustomerEvent)
    assert (event.is_purchase, event.revenue, event.repurchase_days) == (False, 0.0, ())
    assert event.member_scan and event.coupon_codes == ("OS1",)


@pytest.mark.parametrize("customer_id", [None, "", 42])
def test_an_event_without_a_customer_is_skipped(
    reference: ReferenceData, customer_id: object
) -> None:
    record = resolved(customer_id=customer_id)
    assert decode_resolved(raw(record), ORIGIN, reference) == Skipped("no_customer")
    del record["customer_id"]
    assert decode_resolved(raw(record), ORIGIN, reference) == Skipped("no_customer")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (b'"a string"', "malformed_json"),
        (raw({k: v for k, v in resolved().items() if k != "event_id"}), "missing_field"),
        (raw(resolved(event_id=7)), "bad_type"),
        (raw(resolved(event_id="")), "bad_value"),
        (raw({k: v for k, v in resolved().items() if k != "ts"}), "missing_field"),
        # Epoch ms in year 9999 / 2**62 reached the event clocks and crashed date formatting.
        (raw(resolved(ts=253_402_214_400_000)), "bad_timestamp"),
        (raw(resolved(ts=2**62)), "bad_timestamp"),
        (raw(resolved(zz_pad="x" * 1_048_576)), "too_large"),
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),
        (b'{"event_id": "e", "ts": NaN}', "malformed_json"),
        (raw(resolved(event_type=None)), "missing_field"),
        (raw(resolved(ts="2026-11-22T10:00:00Z")), "bad_timestamp"),
        (raw(resolved(ts=1.5e12)), "bad_timestamp"),
        (raw(resolved(ts=True)), "bad_timestamp"),
    ],
)
def test_undecodable_resolved_records_are_rejected(
    reference: ReferenceData, payload: bytes, reason: str
) -> None:
    rejection = decode_resolved(payload, ORIGIN, reference)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason
    assert rejection.origin == ORIGIN
    assert rejection.raw == payload
    assert rejection.error.startswith("events.resolved")


# --- stock.changes ---------------------------------------------------------------------------


def stock_changed(time_ms: int = T0 + 123, **data_over: object) -> bytes:
    data: dict[str, Any] = {
        "sku": "SKU-10001",
        "location_id": "WH-SH-01",
        "region": "SH",
        "on_hand": 40,
        "reserved": 5,
        "available": 35,
        "sold_1h": 1,
        "sold_24h": 12,
        "days_of_cover": 2.9,
        "cause": "m-42",
    }
    data.update(data_over)
    data = {k: v for k, v in data.items() if v is not None}
    return cloud_event(
        event_type="omnistream.stock.changed",
        source="stock_pool",
        subject=f"{data.get('sku')}:{data.get('location_id')}",
        event_id="x1",
        time_ms=time_ms,
        data=data,
    )


def test_a_stock_change_decodes_with_its_time_and_location(reference: ReferenceData) -> None:
    change = decode_stock_change(stock_changed(), ORIGIN, reference)
    assert change == StockChange(
        sku="SKU-10001",
        location_id="WH-SH-01",
        region="SH",
        available=35,
        sold_24h=12,
        ts_ms=T0 + 123,
        cause="m-42",
        on_hand=40,
        location_type="warehouse",  # from locations.csv
        source_partition=2,
    )
    store = decode_stock_change(stock_changed(location_id="ST-HZ-01"), ORIGIN, reference)
    assert isinstance(store, StockChange)
    assert (store.region, store.location_type) == ("HZ", "store")


@pytest.mark.parametrize("offset_ms", [0, 1, 7, 999, 86_399_999])
def test_a_stock_change_keeps_its_time_to_the_millisecond(
    reference: ReferenceData, offset_ms: int
) -> None:
    change = decode_stock_change(stock_changed(time_ms=T0 + offset_ms), ORIGIN, reference)
    assert isinstance(change, StockChange)
    assert change.ts_ms == T0 + offset_ms


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (stock_changed(sold_24h=None), "missing_field"),
        (stock_changed(available=None), "missing_field"),
        (stock_changed(on_hand=None), "missing_field"),
        (stock_changed(cause=None), "missing_field"),
        (stock_changed(sku=None), "missing_field"),
        (raw({"specversion": "1.0", "time": "2026-11-22T10:00:00Z"}), "missing_field"),  # no data
        (stock_changed(location_id="WH-NOWHERE"), "unknown_location"),
        (stock_changed(sku="SKU-NOWHERE"), "unknown_sku"),
        (stock_changed(available="many"), "bad_type"),
        (stock_changed(available="7"), "bad_type"),
        (stock_changed(available=3.5), "bad_type"),
        # A list as sku became a state key and crashed rule_triggers (unhashable).
        (stock_changed(sku=["SKU-10001"]), "bad_type"),
        (stock_changed(location_id={"id": 1}), "bad_type"),
        (stock_changed(on_hand=10**15), "bad_value"),
        (stock_changed(sold_24h=-1), "bad_value"),
        (stock_changed().replace(b'"available":35', b'"available":1e400'), "malformed_json"),
        (
            stock_changed().replace(b'"time":"2026-11-22T10:00:00.123Z"', b'"time":"yesterday"'),
            "bad_timestamp",
        ),
        (
            stock_changed().replace(
                b'"time":"2026-11-22T10:00:00.123Z"', b'"time":"2026-11-22T10:00:00"'
            ),
            "bad_timestamp",
        ),
        (
            stock_changed().replace(
                b'"time":"2026-11-22T10:00:00.123Z"', b'"time":"9999-11-22T10:00:00Z"'
            ),
            "bad_timestamp",
        ),
        (raw([1, 2]), "malformed_json"),
        (b"null", "malformed_json"),
        (stock_changed(zz_pad="x" * 1_048_576), "too_large"),
    ],
)
def test_an_unusable_stock_change_is_refused_with_its_reason(
    reference: ReferenceData, payload: bytes, reason: str
) -> None:
    """The same reason codes as on the input topics, so one dashboard reads them all."""
    rejection = decode_stock_change(payload, ORIGIN, reference)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason
    assert rejection.origin == ORIGIN
    assert rejection.raw == payload


def test_a_stock_change_that_is_not_json_is_malformed(reference: ReferenceData) -> None:
    rejection = decode_stock_change(b"{oops", ORIGIN, reference)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "malformed_json"


# --- wms.movements receipts ------------------------------------------------------------------


def movement(**over: object) -> bytes:
    base: dict[str, Any] = {
        "event_id": "m1",
        "event_type": "receipt",
        "ts": "2026-11-22T10:15:30.120+08:00",
        "location_id": "WH-SH-01",
        "sku": "SKU-10001",
        "qty": 24,
        "expiry_date": "2026-11-24",
    }
    base.update(over)
    return raw({k: v for k, v in base.items() if v is not None})


def test_end_of_day_is_the_next_midnight_utc() -> None:
    assert end_of_day_ms("2026-11-24") == ms("2026-11-25T00:00:00+00:00")
    assert end_of_day_ms("2026-12-31") == ms("2027-01-01T00:00:00+00:00")
    assert end_of_day_ms("2028-02-28") == ms("2028-02-29T00:00:00+00:00")


def test_a_perishable_receipt_is_an_expiry_batch(reference: ReferenceData) -> None:
    batch = decode_receipt(movement(), ORIGIN, reference)
    assert batch == ExpiryBatch(
        sku="SKU-10001",
        location_id="WH-SH-01",
        region="SH",
        qty=24,
        expires_ms=ms("2026-11-25T00:00:00+00:00"),
        event_id="m1",
        ts_ms=ms("2026-11-22T10:15:30.120+08:00"),
        source_partition=2,
    )


@pytest.mark.parametrize(
    "payload",
    [
        movement(expiry_date=None),
        movement(event_type="shipment"),
        movement(event_type="adjustment", qty=-3),
        movement(event_type="stock_count", expiry_date=None),
    ],
)
def test_other_movements_are_skipped(reference: ReferenceData, payload: bytes) -> None:
    assert decode_receipt(payload, ORIGIN, reference) == Skipped("not_perishable_receipt")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (movement(qty=0), "bad_value"),
        (movement(expiry_date="24/11/2026"), "bad_value"),
        (movement(sku=None), "missing_field"),
        (movement(location_id="WH-NOWHERE"), "unknown_location"),
        (movement(sku="SKU-NOPE"), "unknown_sku"),
        (movement(ts="2026-11-22T10:15:30"), "bad_timestamp"),
        (movement(event_type="teleport"), "unknown_event_type"),
    ],
)
def test_a_malformed_movement_is_rejected(
    reference: ReferenceData, payload: bytes, reason: str
) -> None:
    rejection = decode_receipt(payload, ORIGIN, reference)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason
    assert rejection.origin == ORIGIN


# --- triggers --------------------------------------------------------------------------------

RULES: RuleSet = parse_rules(
    "test-rules.yaml",
    {
        "version": 1,
        "rules": [
            {
                "id": "cart-io-test",
                "kind": "cart_abandonment",
                "cooldown": "1d",
                "params": {"within": "1h"},
                "coupon": {"type": "amount_off", "value": 15, "expires_in": "24h"},
                "experiment": {
                    "salt": "s",
                    "control_share": 0.1,
                    "variants": {
                        "amount_15": 1,
                        "free_ship": {
                            "coupon": {"type": "free_shipping", "expires_in": "2d"},
                        },
                    },
                },
            },
            {
                "id": "holdout-io-test",
                "kind": "browse_nearby_stock",
                "cooldown": "3d",
                "coupon": {"type": "percent_off", "value": 10, "expires_in": "48h"},
            },
            {"id": "low-stock-io-test", "kind": "low_stock", "cooldown": "6h"},
        ],
    },
)


def coupon_decision(**over: Any) -> CouponDecision:
    base = CouponDecision(
        rule_id="cart-io-test",
        customer_id="C1",
        variant="amount_15",
        sku="SKU-10001",
        store_id="ST-SH-01",
        reason="cart of SKU-10001 not ordered within 1h",
        evidence=("e-cart-1", "e-view-2"),
        event_time_ms=T0,
    )
    return dataclasses.replace(base, **over)


def stock_decision(**over: Any) -> StockDecision:
    base = StockDecision(
        rule_id="low-stock-io-test",
        kind="replenish",
        sku="SKU-10001",
        location_id="ST-SH-01",
        region="SH",
        available=3,
        reorder_point=13,
        suggested_qty=20,
        source_location_id="WH-SH-01",
        reason="available 3 below reorder point 13",
        evidence=("m-1", "m-2"),
        event_time_ms=T0,
    )
    return dataclasses.replace(base, **over)


def document(value: bytes | None) -> dict[str, Any]:
    assert value is not None
    parsed = orjson.loads(value)
    assert isinstance(parsed, dict)
    return parsed


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def fired_for(rule_id: str) -> float:
    """All ``omnistream_triggers_fired_total`` of a rule, whatever its other labels."""
    return sum(s.value for s in _samples("omnistream_triggers_fired_total", rule_id))


def _samples(name: str, rule_id: str) -> Iterator[Any]:
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and s.labels.get("rule") == rule_id:
                yield s


def test_a_coupon_is_a_cloud_event_with_the_contract_fields() -> None:
    decision = coupon_decision()
    message = coupon_message(decision, RULES, T0 + 1_500)
    assert message.key == b"C1"
    event = document(message.value)
    assert {k: v for k, v in event.items() if k != "data"} == {
        "specversion": "1.0",
        "id": coupon_id(decision),
        "source": "omnistream/rule_triggers",
        "type": "omnistream.trigger.coupon",
        "time": "2026-11-22T10:00:00.000Z",
        "subject": "C1",
        "datacontenttype": "application/json",
    }
    assert event["data"] == {
        "rule_id": "cart-io-test",
        "rule_kind": "cart_abandonment",
        "customer_id": "C1",
        "variant": "amount_15",
        "coupon": {
            "code": decision.code,
            "kind": "amount_off",
            "value": 15,
            "sku": "SKU-10001",
            "store_id": "ST-SH-01",
            "expires_at": "2026-11-23T10:00:00.000Z",  # sent + 24h
        },
        "reason": "cart of SKU-10001 not ordered within 1h",
        "evidence": ["e-cart-1", "e-view-2"],
        "event_time": "2026-11-22T10:00:00.000Z",
        "fired_at": "2026-11-22T10:00:01.500Z",
    }
    assert "held_until" not in event["data"]


def test_each_variant_sends_its_own_coupon() -> None:
    """The two arms of the cart experiment differ in what the customer receives; a holdout
    record names the rule's offer (nothing is sent to the control)."""
    free = document(coupon_message(coupon_decision(variant="free_ship"), RULES, T0).value)
    assert free["data"]["variant"] == "free_ship"
    assert free["data"]["coupon"] == {
        "code": coupon_decision().code,
        "kind": "free_shipping",
        "value": 0,
        "sku": "SKU-10001",
        "store_id": "ST-SH-01",
        "expires_at": "2026-11-24T10:00:00.000Z",  # sent + 2d, its own expiry
    }
    amount = document(coupon_message(coupon_decision(), RULES, T0).value)["data"]["coupon"]
    assert (amount["kind"], amount["value"]) == ("amount_off", 15)
    control = document(coupon_message(coupon_decision(variant="control"), RULES, T0).value)
    assert control["type"] == "omnistream.trigger.holdout"
    assert (control["data"]["coupon"]["kind"], control["data"]["variant"]) == (
        "amount_off",
        "control",
    )


def test_a_coupon_without_sku_or_store_leaves_them_out() -> None:
    decision = coupon_decision(sku=None, store_id=None)
    coupon = document(coupon_message(decision, RULES, T0).value)["data"]["coupon"]
    assert "sku" not in coupon and "store_id" not in coupon
    assert coupon["kind"] == "amount_off"


def test_a_held_coupon_counts_its_expiry_from_the_end_of_quiet_hours() -> None:
    held_until = T0 + 10 * HOUR_MS
    decision = coupon_decision(held_until_ms=held_until)
    event = document(coupon_message(decision, RULES, held_until + 200).value)
    assert event["time"] == "2026-11-22T20:00:00.000Z"
    data = event["data"]
    assert data["held_until"] == "2026-11-22T20:00:00.000Z"
    assert data["coupon"]["expires_at"] == "2026-11-23T20:00:00.000Z"  # held_until + 24h
    assert data["event_time"] == "2026-11-22T10:00:00.000Z"  # still the cause's time
    assert data["fired_at"] == "2026-11-22T20:00:00.200Z"


def test_coupon_ids_are_derived_from_the_cause_only() -> None:
    decision = coupon_decision()
    assert coupon_id(decision) == coupon_id(coupon_decision())
    assert coupon_id(decision) != coupon_id(coupon_decision(evidence=("e-cart-1", "e-view-3")))
    assert coupon_id(decision) != coupon_id(coupon_decision(customer_id="C2"))
    assert coupon_id(decision) != coupon_id(coupon_decision(rule_id="holdout-io-test"))
    assert coupon_id(decision) != coupon_id(coupon_decision(sku="SKU-10002"))
    first = document(coupon_message(decision, RULES, T0 + 1_000).value)
    again = document(coupon_message(decision, RULES, T0 + 9_000).value)
    assert first["id"] == again["id"] == coupon_id(decision)
    assert first["data"].pop("fired_at") != again["data"].pop("fired_at")
    assert first == again  # a replay gives the same payload but for fired_at


def test_a_coupon_counts_as_fired_and_observes_its_latency() -> None:
    rule = "cart-io-test"
    labels = {"rule": rule, "kind": "cart_abandonment", "variant": "amount_15"}
    fired = sample("omnistream_triggers_fired_total", labels)
    count = sample("omnistream_trigger_latency_seconds_count", {"rule": rule})
    total = sample("omnistream_trigger_latency_seconds_sum", {"rule": rule})
    suppressed = sample(
        "omnistream_triggers_suppressed_total",
        {"rule": rule, "variant": "amount_15", "reason": "control"},
    )
    coupon_message(coupon_decision(), RULES, T0 + 1_500)
    assert sample("omnistream_triggers_fired_total", labels) - fired == 1
    assert sample("omnistream_trigger_latency_seconds_count", {"rule": rule}) - count == 1
    latency = sample("omnistream_trigger_latency_seconds_sum", {"rule": rule}) - total
    assert latency == pytest.approx(1.5)
    assert (
        sample(
            "omnistream_triggers_suppressed_total",
            {"rule": rule, "variant": "amount_15", "reason": "control"},
        )
        == suppressed
    )


def test_a_held_coupon_latency_runs_from_the_end_of_quiet_hours() -> None:
    rule = "cart-io-test"
    held_until = T0 + 10 * HOUR_MS
    total = sample("omnistream_trigger_latency_seconds_sum", {"rule": rule})
    coupon_message(coupon_decision(held_until_ms=held_until), RULES, held_until + 2_000)
    latency = sample("omnistream_trigger_latency_seconds_sum", {"rule": rule}) - total
    assert latency == pytest.approx(2.0)


def test_a_holdout_is_written_to_holdout_and_counted_as_suppressed() -> None:
    rule = "holdout-io-test"
    decision = coupon_decision(rule_id=rule, variant="control")
    labels = {"rule": rule, "variant": "control", "reason": "control"}
    suppressed = sample("omnistream_triggers_suppressed_total", labels)
    fired = fired_for(rule)
    count = sample("omnistream_trigger_latency_seconds_count", {"rule": rule})
    message = coupon_message(decision, RULES, T0 + 1_000)
    event = document(message.value)
    assert event["type"] == "omnistream.trigger.holdout"
    assert event["id"] == coupon_id(decision)
    assert message.key == b"C1"
    assert event["data"]["variant"] == "control"
    assert event["data"]["coupon"]["kind"] == "percent_off"
    assert sample("omnistream_triggers_suppressed_total", labels) - suppressed == 1
    assert fired_for(rule) == fired
    assert sample("omnistream_trigger_latency_seconds_count", {"rule": rule}) == count


def test_a_coupon_of_a_rule_no_longer_in_force_still_encodes() -> None:
    decision = coupon_decision(rule_id="retired-io-test")
    fired = sample(
        "omnistream_triggers_fired_total",
        {"rule": "retired-io-test", "kind": "unknown", "variant": "amount_15"},
    )
    data = document(coupon_message(decision, RULES, T0).value)["data"]
    assert data["rule_kind"] is None
    assert data["coupon"] == {"code": decision.code, "sku": "SKU-10001", "store_id": "ST-SH-01"}
    after = sample(
        "omnistream_triggers_fired_total",
        {"rule": "retired-io-test", "kind": "unknown", "variant": "amount_15"},
    )
    assert after - fired == 1


def test_a_replenishment_is_a_cloud_event_with_the_contract_fields() -> None:
    decision = stock_decision()
    message = replenishment_message(decision, T0 + 250)
    assert message.key == b"SKU-10001:ST-SH-01"
    event = document(message.value)
    assert {k: v for k, v in event.items() if k != "data"} == {
        "specversion": "1.0",
        "id": replenishment_id(decision),
        "source": "omnistream/rule_triggers",
        "type": "omnistream.trigger.replenishment",
        "time": "2026-11-22T10:00:00.000Z",
        "subject": "SKU-10001:ST-SH-01",
        "datacontenttype": "application/json",
    }
    assert event["data"] == {
        "rule_id": "low-stock-io-test",
        "kind": "replenish",
        "sku": "SKU-10001",
        "location_id": "ST-SH-01",
        "region": "SH",
        "available": 3,
        "reorder_point": 13,
        "suggested_qty": 20,
        "source_location_id": "WH-SH-01",
        "reason": "available 3 below reorder point 13",
        "evidence": ["m-1", "m-2"],
        "event_time": "2026-11-22T10:00:00.000Z",
        "fired_at": "2026-11-22T10:00:00.250Z",
    }


def test_a_replenishment_of_a_stock_experiment_names_its_arm() -> None:
    data = document(replenishment_message(stock_decision(variant="cover_5"), T0).value)["data"]
    assert data["variant"] == "cover_5"
    plain = document(replenishment_message(stock_decision(), T0).value)["data"]
    assert "variant" not in plain  # a rule without an experiment: the record as before


def test_a_stockout_has_no_source_location() -> None:
    decision = stock_decision(
        kind="stockout", available=0, suggested_qty=0, source_location_id=None
    )
    data = document(replenishment_message(decision, T0).value)["data"]
    assert data["kind"] == "stockout"
    assert data["source_location_id"] is None


def test_replenishment_ids_are_derived_from_the_cause_only() -> None:
    decision = stock_decision()
    assert replenishment_id(decision) == replenishment_id(stock_decision())
    assert replenishment_id(decision) != replenishment_id(stock_decision(evidence=("m-1", "m-3")))
    assert replenishment_id(decision) != replenishment_id(stock_decision(kind="transfer"))
    assert replenishment_id(decision) != replenishment_id(stock_decision(location_id="ST-SH-02"))
    # the suggested quantity follows from the cause; it is not part of the id
    assert replenishment_id(decision) == replenishment_id(stock_decision(suggested_qty=99))
    first = document(replenishment_message(decision, T0 + 1_000).value)
    again = document(replenishment_message(decision, T0 + 5_000).value)
    assert first["id"] == again["id"] == replenishment_id(decision)
    assert first["data"].pop("fired_at") != again["data"].pop("fired_at")
    assert first == again


def test_a_replenishment_counts_as_fired_with_its_latency() -> None:
    rule = "low-stock-io-test"
    labels = {"rule": rule, "kind": "replenish", "variant": "default"}
    fired = sample("omnistream_triggers_fired_total", labels)
    count = sample("omnistream_trigger_latency_seconds_count", {"rule": rule})
    total = sample("omnistream_trigger_latency_seconds_sum", {"rule": rule})
    replenishment_message(stock_decision(), T0 + 750)
    assert sample("omnistream_triggers_fired_total", labels) - fired == 1
    assert sample("omnistream_trigger_latency_seconds_count", {"rule": rule}) - count == 1
    latency = sample("omnistream_trigger_latency_seconds_sum", {"rule": rule}) - total
    assert latency == pytest.approx(0.75)


def test_merge_and_erasure_notices_decode_to_what_the_customer_keys_take(
    reference: ReferenceData,
) -> None:
    from connectors.resolved import erased_notice, merge_notices
    from domain.customer_key import IdentityNotice

    (_, away), (_, absorbed) = merge_notices("A", "B", "e9", T0)
    assert decode_resolved(away, ORIGIN, reference) == IdentityNotice(
        "merged", "A", "B", T0, "e9:A:B:merged", 2
    )
    assert decode_resolved(absorbed, ORIGIN, reference) == IdentityNotice(
        "absorbed", "B", "A", T0, "e9:A:B:absorbed", 2
    )
    erased = decode_resolved(erased_notice("B", T0), ORIGIN, reference)
    assert isinstance(erased, IdentityNotice) and (erased.kind, erased.other) == ("erased", None)
    broken = orjson.loads(away)
    del broken["into"]
    refused = decode_resolved(raw(broken), ORIGIN, reference)
    assert isinstance(refused, Rejection) and refused.reason == "missing_field"
    assert "`into`" in refused.error


def test_a_till_sale_carries_what_profiles_and_lifecycle_rules_read(
    reference: ReferenceData,
) -> None:
    """Channel, store, revenue, categories and repurchase days from the products file."""
    lines = [{"sku": "SKU-10001", "qty": 1, "unit_price": 10.9}]
    sale = resolved(
        event_type="sale",
        source_topic="pos.sales",
        store_id="ST-SH-01",
        lines=lines,
        total=10.9,
        member_code="m-1",
    )
    del sale["sku"], sale["channel"], sale["region"]
    event = decode_resolved(raw(sale), ORIGIN, reference)
    assert isinstance(event, CustomerEvent)
    product = reference.products["SKU-10001"]
    assert (event.channel, event.store_id, event.revenue) == ("store", "ST-SH-01", 10.9)
    assert event.categories == (product.category,) and event.member_scan
    assert event.repurchase_days == (("SKU-10001", product.repurchase_days),)
    consent = decode_resolved(
        raw(resolved(event_type="consent", marketing=False)), ORIGIN, reference
    )
    assert isinstance(consent, CustomerEvent) and consent.consent is False
