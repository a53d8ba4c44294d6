"""What attribution reads and writes: decoding of ``events.resolved``, ``triggers.coupon``
and ``identity.changes`` into touches, conversions and merges, and the encoding of
``attribution.credits``.

A conversion is an ``order_placed`` or a till ``sale``; its id is ``order:<order_id>`` when
it names an online order (so the store pickup of an order is the same conversion as the
order, not a second one) and ``receipt:<store>:<receipt>`` for a walk-in sale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSinkMessage

from connectors import topics
from connectors.envelopes import cloud_event, cloud_event_id
from flows.logic.attribution import ConvertedPath, Credits, Touch
from flows.logic.events import Origin, Rejection
from flows.logic.timeparse import TimestampError, format_event_time, parse_event_time

FLOW = "attribution"


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


def _json(raw: bytes, origin: Origin, name: str) -> dict[str, Any] | Rejection:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("malformed_json", f"{name}: {exc}", origin, raw)
    if not isinstance(record, dict):
        return Rejection("malformed_json", f"{name}: not a JSON object", origin, raw)
    return record


def decode_resolved(raw: bytes, origin: Origin) -> list[AttributionInput] | Ignored | Rejection:
    record = _json(raw, origin, topics.EVENTS_RESOLVED)
    if isinstance(record, Rejection):
        return record
    event_id, event_type, ts = record.get("event_id"), record.get("event_type"), record.get("ts")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        return Rejection("missing_field", "events.resolved: event_id/event_type", origin, raw)
    if not isinstance(ts, int) or isinstance(ts, bool):
        return Rejection("bad_timestamp", "events.resolved: ts must be epoch ms", origin, raw)
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
    record = _json(raw, origin, topics.TRIGGERS_COUPON)
    if isinstance(record, Rejection):
        return record
    try:
        data = record["data"]
        touch = Touch(
            f"coupon:{data['rule_id']}",
            data["rule_id"],
            parse_event_time(record["time"]),
            str(record["id"]),
        )
        return [CustomerTouch(str(data["customer_id"]), touch)]
    except (KeyError, TypeError, ValueError, TimestampError) as exc:
        return Rejection("bad_value", f"triggers.coupon: unusable field {exc}", origin, raw)


def decode_identity(raw: bytes, origin: Origin) -> list[AttributionInput] | Ignored | Rejection:
    record = _json(raw, origin, topics.IDENTITY_CHANGES)
    if isinstance(record, Rejection):
        return record
    data = record.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("customer_id"), str):
        return Rejection("bad_value", "identity.changes: no data.customer_id", origin, raw)
    if data.get("kind") != "merged":
        return Ignored("not_a_merge")
    merged = data.get("merged_from")
    merged = merged if isinstance(merged, list) else []
    return [Absorb(old, data["customer_id"]) for old in merged if isinstance(old, str)]


DECODERS = {
    topics.EVENTS_RESOLVED: decode_resolved,
    topics.TRIGGERS_COUPON: decode_coupon,
    topics.IDENTITY_CHANGES: decode_identity,
}


def credits_message(
    converted: ConvertedPath, credited: Credits, origin_key: bytes | None = None
) -> KafkaSinkMessage[bytes | None, bytes]:
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
        source=FLOW,
        subject=converted.customer_id or converted.conversion_id,
        event_id=cloud_event_id("attribution", converted.conversion_id),
        time_ms=converted.ts_ms,
        data=data,
    )
    key = converted.customer_id.encode() if converted.customer_id else origin_key
    return KafkaSinkMessage(key=key, value=value)
