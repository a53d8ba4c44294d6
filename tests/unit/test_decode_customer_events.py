"""Decoding of the customer input events of CONTRACT §8: ``store_checkin`` and ``consent``.

The expected verdicts are written out by hand from the contract (a check-in names a known
store; consent carries a JSON boolean), not derived from the decoder, and the resolved record
is read back as a subscriber of ``events.resolved`` would.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connectors.decode import decode_message
from connectors.resolved import resolved_event
from domain.events import ClickEvent, Origin, Rejection
from domain.reference import Location, Product, ReferenceData

REF = ReferenceData(
    locations={
        "WH-SH-01": Location("WH-SH-01", "warehouse", "SH"),
        "FW-HZ-01": Location("FW-HZ-01", "forward_warehouse", "HZ"),
        "ST-SH-01": Location("ST-SH-01", "store", "SH"),
    },
    products={"SKU1": Product("SKU1", "dairy", 3.5, 5, 2, 7)},
)
ORIGIN = Origin("clickstream", 0, 7, b"anon-1")
TS = "2026-11-22T10:15:30.120+08:00"
TS_MS = 1_795_313_730_120


def click(event_type: str, **over: Any) -> dict[str, Any]:
    """A check-in or consent event from the app of a signed-in shopper; ``None`` drops a key."""
    base: dict[str, Any] = {
        "event_id": "e1",
        "event_type": event_type,
        "ts": TS,
        "anonymous_id": "anon-1",
        "user_id": "u-100001",
        "channel": "app",
        "region": "SH",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def decode(payload: dict[str, Any] | bytes) -> object:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_message("clickstream", raw, ORIGIN, REF, hasher=lambda kind, v: f"h:{kind}")


def test_a_check_in_at_a_store_decodes_with_its_store() -> None:
    event = decode(click("store_checkin", store_id="ST-SH-01"))
    assert isinstance(event, ClickEvent)
    assert (event.event_type, event.store_id, event.ts_ms) == ("store_checkin", "ST-SH-01", TS_MS)
    assert event.user_id == "u-100001" and event.marketing is None


@pytest.mark.parametrize(
    ("store_id", "reason", "words"),
    [
        (None, "missing_field", "missing field `store_id`"),
        ("", "bad_value", "`store_id` must be 1..128 characters"),
        ("   ", "bad_value", "`store_id` must be 1..128 characters"),
        (42, "bad_type", "`store_id` must be a string"),
        (["ST-SH-01"], "bad_type", "`store_id` must be a string"),
        ("ST-XX-09", "unknown_location", "location 'ST-XX-09' is not in the reference data"),
        ("st-sh-01", "unknown_location", "location 'st-sh-01' is not in the reference data"),
        ("WH-SH-01", "bad_value", "location 'WH-SH-01' is a warehouse, not a store"),
        ("FW-HZ-01", "bad_value", "location 'FW-HZ-01' is a forward_warehouse, not a store"),
    ],
)
def test_a_check_in_without_a_known_store_is_dead_lettered(
    store_id: object, reason: str, words: str
) -> None:
    rejection = decode(click("store_checkin", store_id=store_id))
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.error) == (reason, words)


def test_a_check_in_is_refused_the_same_way_as_a_till_at_the_same_place() -> None:
    """pos.sales validates ``store_id`` the same way: the same reason for the same place."""
    for store_id in ("ST-XX-09", "WH-SH-01"):
        checkin = decode(click("store_checkin", store_id=store_id))
        sale = decode_message(
            "pos.sales",
            orjson.dumps(
                {
                    "event_id": "s1",
                    "event_type": "sale",
                    "ts": TS,
                    "store_id": store_id,
                    "receipt_id": "r1",
                    "lines": [{"sku": "SKU1", "qty": 1, "unit_price": 3.5}],
                    "total": 3.5,
                }
            ),
            ORIGIN,
            REF,
        )
        assert isinstance(checkin, Rejection) and isinstance(sale, Rejection)
        assert (checkin.reason, checkin.error) == (sale.reason, sale.error)


def test_a_bad_timestamp_is_reported_before_an_unknown_store() -> None:
    """The decoder's fixed order: values, then the timestamp, then reference data."""
    rejection = decode(click("store_checkin", store_id="ST-XX-09", ts="yesterday"))
    assert isinstance(rejection, Rejection) and rejection.reason == "bad_timestamp"


@pytest.mark.parametrize("marketing", [True, False])
def test_consent_decodes_with_its_boolean(marketing: bool) -> None:
    event = decode(click("consent", marketing=marketing))
    assert isinstance(event, ClickEvent)
    assert event.marketing is marketing and event.store_id is None


@pytest.mark.parametrize(
    ("marketing", "reason", "words"),
    [
        (None, "missing_field", "missing field `marketing`"),
        ("false", "bad_type", "`marketing` must be true or false"),
        ("true", "bad_type", "`marketing` must be true or false"),
        (0, "bad_type", "`marketing` must be true or false"),
        (1, "bad_type", "`marketing` must be true or false"),
        ("no", "bad_type", "`marketing` must be true or false"),
        ({"email": False}, "bad_type", "`marketing` must be true or false"),
    ],
)
def test_consent_without_a_boolean_is_dead_lettered(
    marketing: object, reason: str, words: str
) -> None:
    rejection = decode(click("consent", marketing=marketing))
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.error) == (reason, words)


def test_a_json_null_marketing_counts_as_missing() -> None:
    raw = orjson.dumps(click("consent")).replace(b'"region"', b'"marketing":null,"region"')
    rejection = decode(raw)
    assert isinstance(rejection, Rejection) and rejection.reason == "missing_field"


def test_other_events_ignore_a_stray_store_id_or_marketing_as_any_unknown_field() -> None:
    """Only the event type that defines a field reads it; elsewhere it is an unknown field
    (ignored, as every unknown field is), even when it names no known store."""
    event = decode(click("page_view", store_id="ST-XX-09", marketing="maybe"))
    assert isinstance(event, ClickEvent)
    assert event.store_id is None and event.marketing is None
    consent = decode(click("consent", marketing=False, store_id="ST-XX-09"))
    assert isinstance(consent, ClickEvent) and consent.store_id is None
    checkin = decode(click("store_checkin", store_id="ST-SH-01", marketing="x"))
    assert isinstance(checkin, ClickEvent) and checkin.marketing is None


def test_the_resolved_record_carries_the_store_and_the_consent() -> None:
    checkin = decode(click("store_checkin", store_id="ST-SH-01"))
    withdrawn = decode(click("consent", marketing=False))
    assert isinstance(checkin, ClickEvent) and isinstance(withdrawn, ClickEvent)
    record = orjson.loads(resolved_event(checkin, "C1"))
    assert record["store_id"] == "ST-SH-01" and "marketing" not in record
    assert record["event_type"] == "store_checkin" and record["customer_id"] == "C1"
    record = orjson.loads(resolved_event(withdrawn, "C1"))
    assert record["marketing"] is False and "store_id" not in record
    granted = decode(click("consent", marketing=True))
    assert isinstance(granted, ClickEvent)
    assert orjson.loads(resolved_event(granted, "C1"))["marketing"] is True
