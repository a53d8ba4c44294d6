"""Decoding of what rule_triggers reads: ``events.resolved``, ``stock.changes`` and perishable
receipts on ``wms.movements``.

The first two are written by Omnistream's own flows, so a record that does not decode means a
foreign producer or a version skew: it goes to ``deadletter`` with a reason like any input.
Records that are valid but carry nothing for the rules (an event without a customer, a
movement that is not a perishable receipt) come back as ``Skipped`` with a reason, so they are
counted rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from connectors import topics
from connectors.decode import decode_message
from flows.logic.customer_rules import CustomerEvent
from flows.logic.events import MovementEvent, Origin, Rejection
from flows.logic.reference import ReferenceData
from flows.logic.stock_rules import ExpiryBatch, StockChange
from flows.logic.timeparse import TimestampError, parse_event_time

PURCHASE_TYPES = frozenset({"order_placed", "sale"})


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str  # no_customer | not_perishable_receipt


TriggerInput = CustomerEvent | StockChange | ExpiryBatch | Skipped | Rejection


def _reject(reason: str, error: str, origin: Origin, raw: bytes) -> Rejection:
    return Rejection(reason, error, origin, raw)


def _str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def decode_resolved(raw: bytes, origin: Origin, reference: ReferenceData) -> TriggerInput:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _reject("malformed_json", f"events.resolved: {exc}", origin, raw)
    if not isinstance(record, dict):
        return _reject("malformed_json", "events.resolved: not a JSON object", origin, raw)
    event_id, event_type, ts = record.get("event_id"), record.get("event_type"), record.get("ts")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        return _reject("missing_field", "events.resolved: event_id/event_type", origin, raw)
    if not isinstance(ts, int) or isinstance(ts, bool):
        return _reject("bad_timestamp", "events.resolved: ts must be epoch ms", origin, raw)
    customer_id = record.get("customer_id")
    codes = record.get("coupon_codes")
    codes = codes if isinstance(codes, list) else []
    if not isinstance(customer_id, str) or not customer_id:
        if not (codes and event_type in PURCHASE_TYPES):
            return Skipped("no_customer")
        # A till redeemed a coupon without a loyalty card: the flow looks up whose coupon
        # the code is (``customer_id`` empty until then).
        customer_id = ""
    lines = record.get("lines")
    lines = lines if isinstance(lines, list) else []
    skus = tuple(
        line["sku"] for line in lines if isinstance(line, dict) and isinstance(line.get("sku"), str)
    )
    sku = _str(record, "sku")
    region = _str(record, "region")
    store_id = _str(record, "store_id")
    if region is None and store_id is not None and store_id in reference.locations:
        region = reference.locations[store_id].region  # a till sale: the store's region
    product = reference.products.get(sku) if sku else None
    return CustomerEvent(
        event_id=event_id,
        event_type=event_type,
        ts_ms=ts,
        customer_id=customer_id,
        region=region,
        sku=sku,
        skus=skus,
        is_purchase=event_type in PURCHASE_TYPES,
        coupon_codes=tuple(c for c in codes if isinstance(c, str))
        if isinstance(codes, list)
        else (),
        category=product.category if product else None,
        source_partition=origin.partition,
    )


def decode_stock_change(raw: bytes, origin: Origin, reference: ReferenceData) -> TriggerInput:
    try:
        document = orjson.loads(raw)
        data = document["data"]
        sku, location_id = data["sku"], data["location_id"]
        location = reference.locations[location_id]
        time_ms = parse_event_time(document["time"])
        return StockChange(
            sku=sku,
            location_id=location_id,
            region=location.region,
            available=int(data["available"]),
            sold_24h=int(data["sold_24h"]),
            ts_ms=time_ms,
            cause=str(data["cause"]),
            on_hand=int(data["on_hand"]),
            location_type=location.type,
            source_partition=origin.partition,
        )
    except orjson.JSONDecodeError as exc:
        return _reject("malformed_json", f"stock.changes: {exc}", origin, raw)
    except (KeyError, TypeError, ValueError, TimestampError) as exc:
        return _reject("bad_value", f"stock.changes: unusable field {exc}", origin, raw)


def end_of_day_ms(day: str) -> int:
    """Goods best before a date keep until the end of it (UTC)."""
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
    return int((start + timedelta(days=1)).timestamp() * 1000)


def decode_receipt(raw: bytes, origin: Origin, reference: ReferenceData) -> TriggerInput:
    event = decode_message(topics.WMS_MOVEMENTS, raw, origin, reference)
    if isinstance(event, Rejection):
        return event
    assert isinstance(event, MovementEvent)
    if event.event_type != "receipt" or event.expiry_date is None:
        return Skipped("not_perishable_receipt")
    return ExpiryBatch(
        sku=event.sku,
        location_id=event.location_id,
        region=reference.locations[event.location_id].region,
        qty=event.qty,
        expires_ms=end_of_day_ms(event.expiry_date),
        event_id=event.event_id,
        ts_ms=event.ts_ms,
        source_partition=origin.partition,
    )


DECODERS = {
    topics.EVENTS_RESOLVED: decode_resolved,
    topics.STOCK_CHANGES: decode_stock_change,
    topics.WMS_MOVEMENTS: decode_receipt,
}
