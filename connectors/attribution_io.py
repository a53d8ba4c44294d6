"""What attribution reads and writes: decoding of ``events.resolved``, ``triggers.coupon``
and ``identity.changes`` into the domain's touches, purchases and merges
(``domain.attribution_paths``), and the encoding of ``attribution.credits``.

A purchase (the conversion credited) is an ``order_placed`` or a till ``sale``; its id is
``order:<order_id>`` when it names an online order (so the store pickup of an order is the
same conversion as the order, not a second one) and ``receipt:<store>:<receipt>`` for a
walk-in sale.
"""

from __future__ import annotations

from base import topics
from base.flow_names import ATTRIBUTION
from connectors.decode import Fields, Invalid, event_time, load_object, resolved_head
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from domain.attribution import ConvertedPath, Credits, Touch
from domain.attribution_paths import Absorb, AttributionInput, CustomerTouch, Purchase
from domain.events import Origin, Rejection
from domain.timeparse import format_event_time

#: What a decoder gives: the touches, purchases or merges of one message, a rejection, or
#: None for a message attribution does not need (``connectors.operators.MessageDecoder``).
Decoded = list[AttributionInput] | Rejection | None


def decode_resolved(raw: bytes, origin: Origin) -> Decoded:
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
        out.append(Purchase(customer, conversion_id, revenue, ts, event_id))
    return out or None


def decode_coupon(raw: bytes, origin: Origin) -> Decoded:
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


def decode_identity(raw: bytes, origin: Origin) -> Decoded:
    try:
        record = load_object(raw)
        data = Fields(record).obj("data")
        assert data is not None
        customer_id = data.req_string("customer_id")
        if data.data.get("kind") != "merged":
            return None  # linked, conflict, erased: no path changes owner
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


def __getattr__(name: str) -> object:
    """Recovery snapshots of a replay written before the records moved to the domain name
    the purchase class ``connectors.attribution_io.Conversion``; unpickling them finds it
    here (not a public name: ``Conversion`` is the rule engine's)."""
    if name == "Conversion":
        return Purchase
    raise AttributeError(name)
