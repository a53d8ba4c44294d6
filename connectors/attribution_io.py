"""What attribution reads and writes: decoding of ``events.resolved``, ``triggers.coupon``
and ``identity.changes`` into touches, conversions and merges, and the encoding of
``attribution.credits``.

A conversion is an ``order_placed`` or a till ``sale``; its id is ``order:<order_id>`` when
it names an online order (so the store pickup of an order is the same conversion as the
order, not a second one) and ``receipt:<store>:<receipt>`` for a walk-in sale.
"""

from __future__ import annotations

from dataclasses import dataclass

from base import topics
from base.flow_names import ATTRIBUTION
from connectors.decode import Fields, Invalid, event_time, load_object, resolved_head
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from domain.attribution import ConvertedPath, Credits, Touch
from domain.events import Origin, Rejection
from domain.timeparse import format_event_time


@dataclass(frozen=True, slots=True)
class CustomerTouch:
    customer_id: str
    touch: Touch


@dataclass(frozen=True, slots=True)
class Conversion:
    customer_id: str | None
    conversion_id: str
    revenue: float
    ts_ms: int
    event_id: str


@dataclass(frozen=True, slots=True)
class Absorb:
    """``customer_id`` was merged into ``into`` (from ``identity.changes``)."""

    customer_id: str
    into: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


AttributionInput = CustomerTouch | Conversion | Absorb


def decode_resolved(raw: bytes, origin: Origin) -> list[AttributionInput] | Ignored | Rejection:
    try:
        record, event_id, event_type, ts = resolved_head(raw)
    except Invalid as invalid:
        return Rejection(invalid.reason, f"events.resolved: {invalid.error}", origin, raw)
    customer = record.get("customer_id") if isinstance(record.get("customer_id"), str) else None
    out: list[AttributionInput] = []
    campaign = record.get("campaign") if isinstance(record.get("campaign"), dict) else None
    if customer and (campaign or event_type == "ad_click"):
        source = campaign.get("source") if campaign else None
        channel = source if isinstance(source, str) and source else record.get("channel")
        name = campaign.get("campaign") if campaign else None
        if isinstance(channel, str) and channel:
            touch = Touch(channel, name if isinstance(name, str) else None, ts, event_id)
            out.append(CustomerTouch(customer, touch))
    if event_type in ("order_placed", "sale"):
        total = record.get("total")
        order_id = record.get("order_id")
        if isinstance(order_id, str) and order_id:
            conversion_id = f"order:{order_id}"
        else:
            conversion_id = f"receipt:{record.get('store_id')}:{record.get('receipt_id')}"
        revenue = float(total) if isinstance(total, int | float) and total >= 0 else 0.0
        out.append(Conversion(customer, conversion_id, revenue, ts, event_id))
    return out if out else Ignored("not_a_touch_or_conversion")


def decode_coupon(raw: bytes, origin: Origin) -> list[AttributionInput] | Ignored | Rejection:
    """A coupon sent is a touch of its customer; ids must be strings (they become keys and
    channel names), the time an event time like any other."""
    try:
        record = load_object(raw)
        fields = Fields(record)
        coupon_id = fields.req_string("id")
        time_ms = event_time(record, "time")
        data = fields.obj("data")
        assert data is not None
        rule_id = data.req_string("rule_id")
        customer_id = data.req_string("customer_id")
    except Invalid as invalid:
        return Rejection(invalid.reason, f"triggers.coupon: {invalid.error}", origin, raw)
    return [CustomerTouch(customer_id, Touch(f"coupon:{rule_id}", rule_id, time_ms, coupon_id))]


def decode_identity(raw: bytes, origin: Origin) -> list[AttributionInput] | Ignored | Rejection:
    try:
        record = load_object(raw)
        data = Fields(record).obj("data")
        assert data is not None
        customer_id = data.req_string("customer_id")
        if data.data.get("kind") != "merged":
            return Ignored("not_a_merge")
        merged = data.data.get("merged_from")
        if merged is None:
            merged = []
        if not isinstance(merged, list) or not all(isinstance(old, str) for old in merged):
            raise Invalid("bad_type", "`data.merged_from` must be a list of customer ids")
    except Invalid as invalid:
        return Rejection(invalid.reason, f"identity.changes: {invalid.error}", origin, raw)
    return [Absorb(old, customer_id) for old in merged]


DECODERS = {
    topics.EVENTS_RESOLVED: decode_resolved,
    topics.TRIGGERS_COUPON: decode_coupon,
    topics.IDENTITY_CHANGES: decode_identity,
}


def credits_message(
    converted: ConvertedPath, credited: Credits, origin_key: bytes | None = None
) -> OutMessage:
    data = {
        "conversion_id": converted.conversion_id,
        "customer_id": converted.customer_id,
        "revenue": converted.revenue,
        "touches": [
            {"channel": t.channel, "campaign": t.campaign, "ts": format_event_time(t.ts_ms)}
            for t in converted.path
        ],
        "credits": credited,
        "event_time": format_event_time(converted.ts_ms),
        "cause": converted.event_id,
    }
    value = cloud_event(
        event_type="omnistream.attribution.credit",
        source=ATTRIBUTION,
        subject=converted.customer_id or converted.conversion_id,
        event_id=cloud_event_id("attribution", converted.conversion_id),
        time_ms=converted.ts_ms,
        data=data,
    )
    key = converted.customer_id.encode() if converted.customer_id else origin_key
    return OutMessage(key=key, value=value)
