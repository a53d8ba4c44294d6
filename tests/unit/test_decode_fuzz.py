"""Hostile input never escapes the decoder: any bytes give a typed event or a rejection."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.decode import decode_message
from connectors.envelopes import deadletter_record
from domain.events import ClickEvent, MovementEvent, Origin, PosEvent, Rejection
from domain.reference import Location, Product, ReferenceData

REF = ReferenceData(
    locations={"WH1": Location("WH1", "warehouse", "SH"), "S1": Location("S1", "store", "SH")},
    products={"SKU1": Product("SKU1", "dairy", 3.5, 5, 2, 7)},
)
ORIGIN = Origin("t", 0, 0, None)
TOPICS = ("clickstream", "pos.sales", "wms.movements")
REASONS = {
    "malformed_json",
    "too_large",
    "missing_field",
    "bad_type",
    "bad_value",
    "bad_timestamp",
    "unknown_event_type",
    "unknown_sku",
    "unknown_location",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "event_id",
        "event_type",
        "ts",
        "anonymous_id",
        "channel",
        "sku",
        "qty",
        "price",
        "order_id",
        "lines",
        "total",
        "fulfillment",
        "store_id",
        "receipt_id",
        "location_id",
        "transfer_id",
        "expiry_date",
        "member_code",
        "phone",
        "email",
        "coupon_codes",
        "campaign",
    ]
)
near_valid = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=5) | st.integers(),
        "event_type": st.sampled_from(["sale", "receipt", "order_placed", "login", "x"]),
        "ts": st.integers() | st.text(max_size=30) | st.just("2026-11-22T10:00:00+08:00"),
    },
    optional={
        "sku": st.sampled_from(["SKU1", "NOPE", ""]) | json_values,
        "location_id": st.sampled_from(["WH1", "S1", "X"]) | json_values,
        "store_id": st.sampled_from(["S1", "WH1"]) | json_values,
        "qty": st.integers() | json_values,
        "lines": st.lists(
            st.fixed_dictionaries(
                {
                    "sku": st.sampled_from(["SKU1", "NOPE"]),
                    "qty": st.integers(),
                    "unit_price": st.floats(allow_nan=False) | st.integers(),
                }
            ),
            max_size=3,
        )
        | json_values,
        "anonymous_id": st.text(max_size=5),
        "channel": st.text(max_size=5),
        "receipt_id": st.text(max_size=5),
        "total": json_values,
    },
).flatmap(
    lambda base: st.dictionaries(field_names, json_values, max_size=3).map(
        lambda extra: {**extra, **base}
    )
)


def check(topic: str, raw: bytes) -> None:
    result = decode_message(topic, raw, ORIGIN, REF, hasher=lambda kind, value: "h")
    assert isinstance(result, ClickEvent | PosEvent | MovementEvent | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REASONS, result
        _key, value = deadletter_record(result, "test")
        assert orjson.loads(value)["reason"] == result.reason


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TOPICS), st.binary(max_size=300))
def test_arbitrary_bytes(topic: str, raw: bytes) -> None:
    check(topic, raw)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(TOPICS), near_valid)
def test_almost_valid_events(topic: str, event: dict) -> None:
    try:
        raw = orjson.dumps(event)
    except TypeError:  # integers beyond 64 bits: send them as text JSON would carry them
        raw = str(event).encode()
    check(topic, raw)


def test_deep_nesting_and_huge_numbers() -> None:
    for raw in (
        b'{"a":' * 100_000,
        b"[" * 100_000,
        b'{"qty": 1' + b"0" * 5000 + b"}",
        b'{"ts": 1e999}',
        b"\x00" * 10,
    ):
        for topic in TOPICS:
            check(topic, raw)
