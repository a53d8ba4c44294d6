"""What attribution reads and writes: decoding of ``events.resolved``, ``triggers.coupon``
and ``identity.changes`` into the domain's touches, purchases and merges
(``domain.attribution_paths``), and the encoding of ``attribution.credits``.

A purchase (the conversion credited) is an ``order_placed`` or a till ``sale``; its id is
``order:<order_id>`` when it names an online order (so the store pickup of an order is the
same conversion as the order, not a second one) and ``receipt:<store>:<receipt>`` for a
walk-in sale.

``events.resolved`` also carries identity's notices (``connectors.resolved``):
``identity_merged`` is a merge like the ``merged`` change of ``identity.changes`` (the
merges step keeps the first of the two it reads), ``identity_erased`` an erasure like the
``erased`` change; ``identity_absorbed`` repeats the merge on the survivor's stream and is
skipped. None of them is a touch or a purchase, and none is dead-lettered.
"""

from __future__ import annotations

from base import topics
from base.flow_names import ATTRIBUTION
from connectors.decode import Fields, Invalid, event_time, load_object, resolved_head
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from connectors.resolved import ABSORBED, ERASED, MERGED_INTO
from connectors.resolved_structs import ResolvedWire, resolved_event_wire
from domain.attribution import ConvertedPath, Credits, Touch
from domain.attribution_paths import Absorb, AttributionInput, CustomerTouch, Erase, Purchase
from domain.events import Origin, Rejection
from domain.timeparse import format_event_time

#: What a decoder gives: the touches, purchases or merges of one message, a rejection, or
#: None for a message attribution does not need (``connectors.operators.MessageDecoder``).
Decoded = list[AttributionInput] | Rejection | None


def decode_resolved(raw: bytes, origin: Origin) -> Decoded:
    """An ``events.resolved`` record: through its struct (``connectors.resolved_structs``,
    as rule_triggers reads it) when it is one identity_stitch writes, else field by field
    (notices, foreign records, malformed ones), which gives the same result for every record
    the struct accepts (``tests/unit/test_attribution_resolved_differential.py``)."""
    wire = resolved_event_wire(raw)
    if wire is not None and (wire.campaign is None or _named_any(wire)):
        return _typed_resolved(wire)
    return _decode_resolved_fields(raw, origin)


def _named_any(wire: ResolvedWire) -> bool:
    """Whether the campaign names a field: the field-by-field path tells ``{}`` (no
    campaign) from ``{"source": null}`` (a campaign), which the struct reads alike."""
    c = wire.campaign
    assert c is not None
    return not (c.source is None and c.medium is None and c.campaign is None and c.content is None)


def _typed_resolved(wire: ResolvedWire) -> Decoded:
    """``_decode_resolved_fields`` on a record msgspec has checked (every field has its
    type, so the ``isinstance`` tests there are known here)."""
    customer, event_type, ts = wire.customer_id, wire.event_type, wire.ts
    out: list[AttributionInput] = []
    campaign = wire.campaign
    if customer and (campaign is not None or event_type == "ad_click"):
        source = campaign.source if campaign is not None else None
        channel = source if source else wire.channel
        if channel:
            name = campaign.campaign if campaign is not None else None
            out.append(CustomerTouch(customer, Touch(channel, name, ts, wire.event_id)))
    if event_type in ("order_placed", "sale"):
        total, order_id = wire.total, wire.order_id
        if order_id:
            conversion_id = f"order:{order_id}"
        else:
            conversion_id = f"receipt:{wire.store_id}:{wire.receipt_id}"
        revenue = total if total is not None and total >= 0 else 0.0
        out.append(Purchase(customer, conversion_id, revenue, ts, wire.event_id))
    return out or None


def _decode_resolved_fields(raw: bytes, origin: Origin) -> Decoded:
    """The field-by-field decoder: every check named, the reference of the typed path."""
    try:
        record, event_id, event_type, ts = resolved_head(raw)
    except Invalid as invalid:
        return Rejection(invalid.reason, f"events.resolved: {invalid.error}", origin, raw)
    customer = record.get("customer_id") if isinstance(record.get("customer_id"), str) else None
    if event_type in (MERGED_INTO, ABSORBED, ERASED):
        return _notice(record, event_type, customer, ts, origin, raw)
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


def _notice(
    record: dict[str, object],
    event_type: str,
    customer: str | None,
    ts: int,
    origin: Origin,
    raw: bytes,
) -> Decoded:
    """A merge or erasure notice; one naming no customer is a foreign record."""
    into = record.get("into")
    if not customer:
        error = f"events.resolved: {event_type} names no customer_id"
        return Rejection("missing_field", error, origin, raw)
    if event_type == ERASED:
        return [Erase(customer)]
    if event_type == ABSORBED:
        return None  # the same merge as the merged id's identity_merged
    if not isinstance(into, str) or not into:
        error = "events.resolved: identity_merged without `into`"
        return Rejection("missing_field", error, origin, raw)
    return [Absorb(customer, into, ts)]


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
    """``merged`` (at the change's ``time``; a change without one merges from the start)
    and ``erased``; ``linked`` and ``conflict`` move no path."""
    try:
        record = load_object(raw)
        data = Fields(record).obj("data")
        assert data is not None
        customer_id = data.req_string("customer_id")
        kind = data.data.get("kind")
        if kind == "erased":
            return [Erase(customer_id)]
        if kind != "merged":
            return None  # linked, conflict: no path changes owner
        ts = event_time(record, "time") if record.get("time") is not None else None
        merged = data.data.get("merged_from")
        if merged is None:
            merged = []
        if not isinstance(merged, list) or not all(isinstance(old, str) for old in merged):
            raise Invalid("bad_type", "`data.merged_from` must be a list of customer ids")
    except Invalid as invalid:
        return Rejection(invalid.reason, f"identity.changes: {invalid.error}", origin, raw)
    return [Absorb(old, customer_id, ts) for old in merged]


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
