"""Decoding and validation of input events (CONTRACT §1) and dead-letter masking."""

from __future__ import annotations

import orjson
import pytest

from connectors.decode import decode_message
from connectors.envelopes import deadletter_record, mask_pii
from domain.events import ClickEvent, MovementEvent, Origin, PosEvent, Rejection
from domain.reference import Location, Product, ReferenceData

REF = ReferenceData(
    locations={
        "WH1": Location("WH1", "warehouse", "SH"),
        "S1": Location("S1", "store", "SH"),
    },
    products={"SKU1": Product("SKU1", "dairy", 3.5, 5, 2, 7)},
)
ORIGIN = Origin("wms.movements", 1, 42, b"S1")


def decode(topic: str, payload: object | bytes) -> object:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_message(topic, raw, ORIGIN, REF, hasher=lambda kind, v: f"h:{kind}")


def movement(**over: object) -> dict:
    base = {
        "event_id": "m1",
        "event_type": "receipt",
        "ts": "2026-11-22T10:15:30.120+08:00",
        "location_id": "WH1",
        "sku": "SKU1",
        "qty": 5,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_movement_decodes_to_typed_record() -> None:
    event = decode("wms.movements", movement(expiry_date="2026-12-01"))
    assert isinstance(event, MovementEvent)
    assert event.qty == 5 and event.ts_ms == 1795313730120 and event.expiry_date == "2026-12-01"
    assert isinstance(decode("wms.movements", movement(ts=1795313730120)), MovementEvent)


def test_valid_order_and_sale() -> None:
    order = {
        "event_id": "c1",
        "event_type": "order_placed",
        "ts": "2026-11-22T02:15:30Z",
        "anonymous_id": "a1",
        "channel": "app",
        "order_id": "o1",
        "phone": "13800138000",
        "lines": [{"sku": "SKU1", "qty": 2, "unit_price": 3.5}],
        "total": 7.0,
        "fulfillment": {"type": "store_pickup", "location_id": "S1"},
    }
    event = decode("clickstream", order)
    assert isinstance(event, ClickEvent)
    assert event.fulfillment is not None and event.fulfillment.location_id == "S1"
    assert event.phone_hash == "h:phone"  # raw phone never kept
    sale = {
        "event_id": "p1",
        "event_type": "sale",
        "ts": 1795313730120,
        "store_id": "S1",
        "receipt_id": "r1",
        "lines": [{"sku": "SKU1", "qty": 1, "unit_price": 3.5}],
        "total": 3.5,
        "order_id": "o1",
        "coupon_codes": ["C1"],
    }
    assert isinstance(decode("pos.sales", sale), PosEvent)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("wms.movements", b"{not json", "malformed_json"),
        ("wms.movements", b"\xff\xfe\x00", "malformed_json"),
        ("wms.movements", b"[1,2]", "malformed_json"),
        ("wms.movements", b'{"event_id":"x","qty":NaN}', "malformed_json"),
        ("wms.movements", b"[" * 5000 + b"]" * 5000, "malformed_json"),
        ("wms.movements", b"x" * (300 * 1024), "too_large"),
        ("wms.movements", movement(sku=None), "missing_field"),
        ("wms.movements", movement(event_id=None), "missing_field"),
        ("wms.movements", movement(ts=None), "missing_field"),
        ("wms.movements", movement(qty="3"), "bad_type"),
        ("wms.movements", movement(qty=True), "bad_type"),
        ("wms.movements", movement(qty=0), "bad_value"),
        ("wms.movements", movement(qty=-2), "bad_value"),
        ("wms.movements", movement(event_type="adjustment", qty=0), "bad_value"),
        ("wms.movements", movement(event_type="stock_count", qty=-1), "bad_value"),
        ("wms.movements", movement(event_type="transfer_out"), "missing_field"),
        ("wms.movements", movement(event_id=""), "bad_value"),
        ("wms.movements", movement(event_id="x" * 129), "bad_value"),
        (
            "wms.movements",
            orjson.dumps(movement(qty=1)).replace(b'"qty":1', b'"qty":' + b"9" * 30),
            "bad_type",
        ),  # orjson reads integers beyond 64 bits as floats
        ("wms.movements", movement(qty=10**12), "bad_value"),
        ("wms.movements", movement(expiry_date="01/12/2026"), "bad_value"),
        ("wms.movements", movement(ts="2026-11-22T10:15:30"), "bad_timestamp"),
        ("wms.movements", movement(ts="9999-12-31T00:00:00+00:00"), "bad_timestamp"),
        ("wms.movements", movement(ts="yesterday"), "bad_timestamp"),
        ("wms.movements", movement(ts=1.5), "bad_timestamp"),
        ("wms.movements", movement(event_type="teleport"), "unknown_event_type"),
        ("wms.movements", movement(sku="NOPE"), "unknown_sku"),
        ("wms.movements", movement(location_id="NOWHERE"), "unknown_location"),
        (
            "pos.sales",
            {
                "event_id": "p",
                "event_type": "sale",
                "ts": 1795313730120,
                "store_id": "WH1",
                "receipt_id": "r",
                "lines": [{"sku": "SKU1", "qty": 1, "unit_price": 1}],
                "total": 1,
            },
            "bad_value",
        ),
        (
            "pos.sales",
            {
                "event_id": "p",
                "event_type": "sale",
                "ts": 1795313730120,
                "store_id": "S1",
                "receipt_id": "r",
                "lines": [],
                "total": 1,
            },
            "bad_value",
        ),
        (
            "pos.sales",
            {
                "event_id": "p",
                "event_type": "sale",
                "ts": 1795313730120,
                "store_id": "S1",
                "receipt_id": "r",
                "lines": "SKU1",
                "total": 1,
            },
            "bad_type",
        ),
        (
            "clickstream",
            {
                "event_id": "c",
                "event_type": "order_placed",
                "ts": 1795313730120,
                "anonymous_id": "a",
                "channel": "app",
                "order_id": "o",
                "lines": [{"sku": "SKU1", "qty": 1, "unit_price": 1}],
                "total": 1,
            },
            "missing_field",
        ),
        (
            "clickstream",
            b'{"event_id":"c","event_type":"product_view","ts":1795313730120,'
            b'"anonymous_id":"a","channel":"app","sku":"SKU1","price":Infinity}',
            "malformed_json",
        ),
    ],
)
def test_bad_input_gets_its_reason_code(topic: str, payload: object, reason: str) -> None:
    result = decode(topic, payload)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.error
    assert result.origin == ORIGIN


def test_deadletter_masks_pii_and_keeps_coordinates() -> None:
    raw = (
        b'{"event_id":"x","phone":"+86 138-0013-8000","email":"Ann@Example.com",'
        b'"note":"call 13912345678","ts":1795313730120'
    )
    result = decode("clickstream", raw)
    assert isinstance(result, Rejection)
    key, value = deadletter_record(result)
    record = orjson.loads(value)
    assert key == b"S1"
    assert (record["topic"], record["partition"], record["offset"]) == ("wms.movements", 1, 42)
    assert record["reason"] == "malformed_json"
    for secret in ("138-0013-8000", "Ann@Example.com", "13912345678", "13800138000"):
        assert secret not in record["raw"]
    assert "1795313730120" in record["raw"]  # timestamps are not mistaken for phones


def test_deadletter_raw_is_capped_at_64_kib() -> None:
    result = Rejection("too_large", "big", ORIGIN, b"a" * 200_000)
    assert len(orjson.loads(deadletter_record(result)[1])["raw"]) == 64 * 1024


def test_mask_pii_handles_escaped_quotes() -> None:
    assert "secret" not in mask_pii('{"email": "se\\"cret@x.io"}')


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # A product view with a broken body: not stock_pool's to decode (identity_stitch
        # dead-letters it), so it is skipped without a rejection.
        ({"event_type": "product_view", "sku": 7, "anonymous_id": ""}, None),
        # An order with the same kind of fault is stock_pool's: refused as usual.
        ({"event_type": "order_placed", "lines": "none"}, "missing_field"),
        # Faults up to the event type are refused whatever the type.
        ({"event_type": "product_view", "event_id": None}, "missing_field"),
        ({"event_type": "product_view", "ts": None}, "missing_field"),
        ({"event_type": "receipt"}, "unknown_event_type"),
        (b"{not json", "malformed_json"),
    ],
)
def test_only_the_listed_event_types_are_decoded_in_full(
    payload: dict | bytes, expected: str | None
) -> None:
    if isinstance(payload, dict):
        base = {"event_id": "c1", "ts": "2026-11-22T02:15:30Z", "channel": "app"}
        payload = orjson.dumps({k: v for k, v in {**base, **payload}.items() if v is not None})
    only = frozenset({"order_placed", "order_cancelled"})
    result = decode_message("clickstream", payload, ORIGIN, REF, only_types=only)
    if expected is None:
        assert result is None
        assert isinstance(decode("clickstream", payload), Rejection)  # without the filter
    else:
        assert isinstance(result, Rejection) and result.reason == expected
