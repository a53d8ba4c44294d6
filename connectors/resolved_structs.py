"""``events.resolved`` records as msgspec structs: what rule_triggers reads them through first.

identity_stitch writes every record the same way (``connectors.resolved``): the input event's
contract fields, ``customer_id`` and ``source_topic``. The struct names all of them, with
types at least as narrow as anything the field-by-field decoder
(``connectors.trigger_inputs``) accepts, and refuses any other field
(``forbid_unknown_fields``), so msgspec checks every value of the message in one C pass and
nothing it accepts is a message orjson would refuse (invalid UTF-8, a number out of range,
an integer past 64 bits that orjson reads as a float). Whatever the struct refuses — an
identity notice, a foreign or older producer's record, a malformed message — goes to the
field-by-field decoder, which names the reason. So the struct decides only what the old
path would accept, and decides it the same way (``tests/unit/test_resolved_differential.py``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from connectors.decode import MAX_MESSAGE_BYTES
from connectors.input_structs import MAX_INTEGER, MAX_NUMBER
from connectors.resolved import NOTICE_TYPES
from domain.timeparse import MAX_TS_MS, MIN_TS_MS

#: ``Fields.req_string``'s bounds (a blank one is refused after decoding).
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
#: ``parse_event_time``'s range for epoch milliseconds.
EpochMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]
Integer = Annotated[int, msgspec.Meta(ge=-MAX_INTEGER, le=MAX_INTEGER)]
Number = Annotated[float, msgspec.Meta(ge=-MAX_NUMBER, le=MAX_NUMBER)]


class LineWire(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    qty: Integer | None = None
    unit_price: Number | None = None


class CampaignWire(msgspec.Struct, forbid_unknown_fields=True):
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    content: str | None = None


class FulfillmentWire(msgspec.Struct, forbid_unknown_fields=True):
    type: str | None = None
    location_id: str | None = None
    lat: Number | None = None
    lon: Number | None = None
    region: str | None = None


class ResolvedWire(msgspec.Struct, forbid_unknown_fields=True):
    """One resolved click or till receipt (the fields of ``domain.events.ClickEvent`` and
    ``PosEvent`` that ``connectors.resolved`` writes, ``ts`` for ``ts_ms``)."""

    event_id: EventId
    event_type: EventType
    ts: EpochMs
    customer_id: str | None = None
    source_topic: str | None = None
    anonymous_id: str | None = None
    channel: str | None = None
    user_id: str | None = None
    campaign: CampaignWire | None = None
    region: str | None = None
    sku: str | None = None
    qty: Integer | None = None
    price: Number | None = None
    order_id: str | None = None
    lines: list[LineWire] | None = None
    total: Number | None = None
    fulfillment: FulfillmentWire | None = None
    store_id: str | None = None
    marketing: bool | None = None
    receipt_id: str | None = None
    member_code: str | None = None
    coupon_codes: list[str] | None = None


RESOLVED_DECODER = msgspec.json.Decoder(ResolvedWire)


def resolved_event_wire(raw: bytes) -> ResolvedWire | None:
    """The record as its struct when it is a resolved event the struct decides: not too
    large, accepted by msgspec, not an identity notice, its id and type not blank. None
    sends it to the reader's field-by-field decoder, which names the reason of a refusal."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        wire = RESOLVED_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    if wire.event_type in NOTICE_TYPES or wire.event_id.isspace() or wire.event_type.isspace():
        return None
    return wire
