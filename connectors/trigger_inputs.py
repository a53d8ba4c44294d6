"""Decoding of what rule_triggers reads: ``events.resolved``, ``stock.changes`` and perishable
receipts on ``wms.movements``.

The first two are written by Omnistream's own flows, so a record that does not decode means a
foreign producer or a version skew: it goes to ``deadletter`` with a reason like any input.
Records that are valid but carry nothing for the rules (an event without a customer, a
movement that is not a perishable receipt) come back as ``Skipped`` with a reason, so they are
counted rather than silently dropped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from base import topics
from connectors.decode import (
    MAX_MESSAGE_BYTES,
    Fields,
    Invalid,
    decode_message,
    event_time,
    load_object,
    resolved_head,
)
from connectors.resolved import ABSORBED, ERASED, MERGED_INTO, NOTICE_TYPES
from connectors.resolved_structs import ResolvedWire, resolved_event_wire
from connectors.stock_change_structs import STOCK_CHANGE_DECODER, StockChangeWire
from domain.customer_key import ABSORBED as NOTICE_ABSORBED
from domain.customer_key import ERASED as NOTICE_ERASED
from domain.customer_key import MERGED, IdentityNotice
from domain.customer_rules import CustomerEvent
from domain.events import MovementEvent, Origin, Rejection
from domain.reference import ReferenceData
from domain.stock_rules import ExpiryBatch, StockChange
from domain.timeparse import TimestampError, parse_event_time

PURCHASE_TYPES = frozenset({"order_placed", "sale"})


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str  # no_customer | not_perishable_receipt


TriggerInput = CustomerEvent | IdentityNotice | StockChange | ExpiryBatch | Skipped | Rejection


def _reject(reason: str, error: str, origin: Origin, raw: bytes) -> Rejection:
    return Rejection(reason, error, origin, raw)


def _shared(value: str | None) -> str | None:
    """One copy of a name many events repeat (a sku, a channel, a store, a region): a
    customer's state keeps them as keys (views, carts, channels, stores), one string each
    per customer otherwise (about 340 B of rule_triggers' 4.1 KB per customer, measured)."""
    return None if value is None else sys.intern(value)


def _str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def decode_resolved(raw: bytes, origin: Origin, reference: ReferenceData) -> TriggerInput:
    """An ``events.resolved`` record: through its struct (``connectors.resolved_structs``)
    when it is one identity_stitch writes, else field by field (notices, foreign records,
    malformed ones), which gives the same result for every record the struct accepts."""
    wire = resolved_event_wire(raw)
    if wire is not None:
        return _typed_resolved(wire, origin, reference)
    return _decode_resolved_fields(raw, origin, reference)


#: ``_typed_resolved`` builds the event with positional arguments (keywords cost a fifth of
#: its time); the order they assume is pinned, so a field added or moved in
#: ``CustomerEvent`` fails at import instead of shifting values.
_CUSTOMER_EVENT_FIELDS = (
    "event_id event_type ts_ms customer_id region sku skus is_purchase coupon_codes category"
    " source_partition channel store_id fulfillment revenue categories consent member_scan"
    " repurchase_days"
)
assert [f.name for f in dataclass_fields(CustomerEvent)] == _CUSTOMER_EVENT_FIELDS.split()


def _typed_resolved(wire: ResolvedWire, origin: Origin, reference: ReferenceData) -> TriggerInput:
    """``_decode_resolved_fields`` on a record msgspec has checked: each field has its type,
    so what the field-by-field path tests with ``isinstance`` is known here."""
    event_type = wire.event_type
    customer_id = wire.customer_id
    codes = wire.coupon_codes or ()
    if not customer_id:
        if not (codes and event_type in PURCHASE_TYPES):
            return Skipped("no_customer")
        customer_id = ""
    order_id = wire.order_id
    purchase = event_type in PURCHASE_TYPES and not (event_type == "sale" and order_id)
    products = reference.products
    intern = sys.intern
    skus = tuple(intern(line.sku) for line in wire.lines) if wire.lines else ()
    sku = wire.sku
    if sku is not None:
        sku = intern(sku)
    region = wire.region
    if region is not None:
        region = intern(region)
    store_id = wire.store_id
    if store_id is not None:
        store_id = intern(store_id)
        if region is None and store_id in reference.locations:
            region = reference.locations[store_id].region  # a till sale: the store's region
    product = products.get(sku) if sku else None
    if skus:
        categories = tuple(products[s].category for s in skus if s in products)
        repurchase = (
            tuple(
                (s, p.repurchase_days)
                for s in skus
                if (p := products.get(s)) is not None and p.repurchase_days is not None
            )
            if purchase
            else ()
        )
    else:
        categories = repurchase = ()
    channel = wire.channel
    if wire.source_topic == "pos.sales":
        channel = "store"
    elif channel is not None:
        channel = intern(channel)
    fulfillment = wire.fulfillment.type if wire.fulfillment is not None else None
    total = wire.total
    return CustomerEvent(
        wire.event_id,
        event_type,
        wire.ts,
        customer_id,
        region,
        sku,
        skus,
        purchase,
        tuple(codes),
        product.category if product else None,
        origin.partition,
        channel,
        store_id,
        fulfillment,
        total if purchase and total is not None else 0.0,
        categories,
        wire.marketing if event_type == "consent" else None,
        event_type == "sale" and wire.member_code is not None,
        repurchase,
    )


def _decode_resolved_fields(raw: bytes, origin: Origin, reference: ReferenceData) -> TriggerInput:
    try:
        record, event_id, event_type, ts = resolved_head(raw)
    except Invalid as invalid:
        return _reject(invalid.reason, f"events.resolved: {invalid.error}", origin, raw)
    customer_id = record.get("customer_id")
    if event_type in NOTICE_TYPES:
        return _notice(record, event_id, event_type, ts, origin, raw)
    codes = record.get("coupon_codes")
    codes = codes if isinstance(codes, list) else []
    if not isinstance(customer_id, str) or not customer_id:
        if not (codes and event_type in PURCHASE_TYPES):
            return Skipped("no_customer")
        # A till redeemed a coupon without a loyalty card: the flow looks up whose coupon
        # the code is (``customer_id`` empty until then).
        customer_id = ""
    # A till sale naming an online order is its store pickup: the order was the purchase
    # (its revenue, its conversion); the collection is a store visit and may redeem a code.
    order_id = record.get("order_id")
    purchase = event_type in PURCHASE_TYPES and not (
        event_type == "sale" and isinstance(order_id, str) and order_id
    )
    lines = record.get("lines")
    lines = lines if isinstance(lines, list) else []
    skus = tuple(
        sys.intern(line["sku"])
        for line in lines
        if isinstance(line, dict) and isinstance(line.get("sku"), str)
    )
    sku = _shared(_str(record, "sku"))
    region = _shared(_str(record, "region"))
    store_id = _shared(_str(record, "store_id"))
    if region is None and store_id is not None and store_id in reference.locations:
        region = reference.locations[store_id].region  # a till sale: the store's region
    product = reference.products.get(sku) if sku else None
    products = reference.products
    categories = tuple(products[s].category for s in skus if s in products)
    total = record.get("total")
    revenue = (
        float(total) if isinstance(total, int | float) and not isinstance(total, bool) else 0.0
    )
    fulfillment = record.get("fulfillment")
    fulfillment_type = fulfillment.get("type") if isinstance(fulfillment, dict) else None
    source_topic = record.get("source_topic")
    channel = "store" if source_topic == "pos.sales" else _shared(_str(record, "channel"))
    marketing = record.get("marketing")
    repurchase = tuple(
        (s, p.repurchase_days)
        for s in skus
        if (p := products.get(s)) is not None and p.repurchase_days is not None
    )
    return CustomerEvent(
        event_id=event_id,
        event_type=event_type,
        ts_ms=ts,
        customer_id=customer_id,
        region=region,
        sku=sku,
        skus=skus,
        is_purchase=purchase,
        coupon_codes=tuple(c for c in codes if isinstance(c, str))
        if isinstance(codes, list)
        else (),
        category=product.category if product else None,
        source_partition=origin.partition,
        channel=channel,
        store_id=store_id,
        fulfillment=fulfillment_type if isinstance(fulfillment_type, str) else None,
        revenue=revenue if purchase else 0.0,
        categories=categories,
        consent=marketing if event_type == "consent" and isinstance(marketing, bool) else None,
        member_scan=event_type == "sale" and isinstance(record.get("member_code"), str),
        repurchase_days=repurchase if purchase else (),
    )


_NOTICE_KINDS = {MERGED_INTO: MERGED, ABSORBED: NOTICE_ABSORBED, ERASED: NOTICE_ERASED}


def _notice(
    record: dict[str, Any], event_id: str, event_type: str, ts: int, origin: Origin, raw: bytes
) -> TriggerInput:
    """A merge or erasure notice (``connectors.resolved``): the customer and the other id."""
    customer_id = record.get("customer_id")
    other_field = {MERGED_INTO: "into", ABSORBED: "merged_from"}.get(event_type)
    other = record.get(other_field) if other_field else None
    if not isinstance(customer_id, str) or not customer_id:
        return _reject(
            "missing_field", "events.resolved: a notice needs `customer_id`", origin, raw
        )
    if other_field is not None and (not isinstance(other, str) or not other):
        error = f"events.resolved: `{other_field}` must name a customer id"
        return _reject("missing_field", error, origin, raw)
    return IdentityNotice(
        _NOTICE_KINDS[event_type], customer_id, other, ts, event_id, origin.partition
    )


def decode_stock_change(raw: bytes, origin: Origin, reference: ReferenceData) -> TriggerInput:
    """A ``stock.changes`` CloudEvent: through its struct
    (``connectors.stock_change_structs``) when it is one stock_pool writes, else field by
    field, which gives the same result for every record the struct accepts and names the
    reason of every refusal."""
    if len(raw) <= MAX_MESSAGE_BYTES:
        try:
            wire = STOCK_CHANGE_DECODER.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            pass
        else:
            change = _typed_stock_change(wire, origin, reference)
            if change is not None:
                return change
    return _decode_stock_change_fields(raw, origin, reference)


#: ``_typed_stock_change`` builds the change with positional arguments (keywords cost a
#: third of its time), so the order they assume is pinned, as ``_CUSTOMER_EVENT_FIELDS``.
_STOCK_CHANGE_FIELDS = (
    "sku location_id region available sold_24h ts_ms cause on_hand location_type"
    " source_partition in_transit sold"
)
assert [f.name for f in dataclass_fields(StockChange)] == _STOCK_CHANGE_FIELDS.split()


def _typed_stock_change(
    wire: StockChangeWire, origin: Origin, reference: ReferenceData
) -> StockChange | None:
    """``_decode_stock_change_fields`` on a record msgspec has checked, or None where that
    decoder would refuse it (a blank string, an unknown sku or location, a time that is not
    an event time): it then decides, and words the reason."""
    data = wire.data
    sku, location_id, cause = data.sku, data.location_id, data.cause
    if sku.isspace() or location_id.isspace() or cause.isspace():
        return None
    location = reference.locations.get(location_id)
    if location is None or sku not in reference.products:
        return None
    try:
        time_ms = parse_event_time(wire.time)
    except TimestampError:
        return None
    to_sell = data.available_to_sell
    return StockChange(
        sys.intern(sku),
        sys.intern(location_id),
        location.region,
        data.available if to_sell is None else to_sell,
        data.sold_24h,
        time_ms,
        cause,
        data.on_hand,
        location.type,
        origin.partition,
        data.in_transit or 0,
        data.sold or 0,
    )


def _decode_stock_change_fields(
    raw: bytes, origin: Origin, reference: ReferenceData
) -> TriggerInput:
    """The field-by-field decoder: every field the rules use is checked, since the sku and
    location become state keys (a list there crashed the flow) and the figures feed
    arithmetic."""
    try:
        document = load_object(raw)
        time_ms = event_time(document, "time")
        data = Fields(document).obj("data")
        assert data is not None
        sku = data.req_string("sku")
        location_id = data.req_string("location_id")
        available, on_hand, sold_24h = (
            data.integer(key) for key in ("available", "on_hand", "sold_24h")
        )
        assert available is not None and on_hand is not None and sold_24h is not None
        # The rules judge what may be sold (CONTRACT §9); records written before the field
        # existed carry only ``available``.
        to_sell = data.integer("available_to_sell", required=False)
        if to_sell is not None:
            available = to_sell
        in_transit = data.integer("in_transit", required=False) or 0
        sold = data.integer("sold", required=False) or 0
        if sold_24h < 0:
            raise Invalid("bad_value", "`data.sold_24h` must be ≥ 0")
        if sold < 0:
            raise Invalid("bad_value", "`data.sold` must be ≥ 0")
        cause = data.req_string("cause")
        location = reference.locations.get(location_id)
        if location is None:
            raise Invalid("unknown_location", f"location {location_id!r} is not in the reference")
        if sku not in reference.products:
            raise Invalid("unknown_sku", f"sku {sku!r} is not in the product reference data")
    except Invalid as invalid:
        return _reject(invalid.reason, f"stock.changes: {invalid.error}", origin, raw)
    return StockChange(
        sku=sku,
        location_id=location_id,
        region=location.region,
        available=available,
        sold_24h=sold_24h,
        ts_ms=time_ms,
        cause=cause,
        on_hand=on_hand,
        location_type=location.type,
        source_partition=origin.partition,
        in_transit=in_transit,
        sold=sold,
    )


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
