"""Decoding and validation of the three input topics into typed records (CONTRACT §1, §8).

``decode_message`` is the single entry point: bytes in, an ``InputEvent`` or a ``Rejection``
out, never an exception. Checks run in a fixed order so the reason code is predictable:
size → JSON → required fields → types → values → timestamp → reference data
(``unknown_sku``/``unknown_location``). Raw phone numbers and e-mails are turned into keyed
hashes here (when a hasher is given) and dropped otherwise; they never travel further.

Two paths, one verdict. Nearly every message is well-formed, and for those the typed path
decides: msgspec reads the message into the struct of its event type
(``connectors.input_structs``) in C, and a few checks no struct can state follow (blank
strings, fields that depend on each other, the event time, reference data). That path only
ever accepts. Whatever it does not accept, for whatever reason, goes to the field-by-field
path (``_Fields`` and the ``_decode_*`` functions), which checks in the order above and names
the first fault. The typed path must therefore accept exactly what the field-by-field path
accepts, with the same event: ``tests/unit/test_decode_differential.py`` holds both against
the decoder as it was before the typed path, on generated and on mutated messages.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from datetime import date
from typing import Any, NoReturn

import msgspec
import orjson

from base import topics
from connectors.input_structs import (
    EVENT_TYPES,
    LOOSE_DECODERS,
    MAX_ID_CHARS,
    MAX_LINES,
    STRICT_DECODERS,
    AdjustmentWire,
    ClickWire,
    ConsentWire,
    FulfillmentWire,
    InputWire,
    LineWire,
    MovementWire,
    OrderWire,
    PickupWire,
    PosWire,
    ProductWire,
    StoreCheckinWire,
    TransferOutWire,
)
from domain.events import (
    CLICK_EVENT_TYPES,
    FULFILLMENT_TYPES,
    MOVEMENT_EVENT_TYPES,
    ORDER_EVENT_TYPES,
    POS_EVENT_TYPES,
    Campaign,
    ClickEvent,
    Fulfillment,
    InputEvent,
    MovementEvent,
    OrderLine,
    Origin,
    PosEvent,
    Rejection,
)
from domain.reference import ReferenceData
from domain.timeparse import TimestampError, parse_event_time

#: Larger messages are refused before parsing: no retail event is anywhere near this big.
MAX_MESSAGE_BYTES = 256 * 1024

#: ``(kind, raw value) -> hash``; kind is ``phone`` or ``email``.
PiiHasher = Callable[[str, str], str]

_TOPIC_EVENT_TYPES = {
    topics.CLICKSTREAM: CLICK_EVENT_TYPES,
    topics.POS_SALES: POS_EVENT_TYPES,
    topics.WMS_MOVEMENTS: MOVEMENT_EVENT_TYPES,
}
_POSITIVE_QTY_MOVEMENTS = frozenset({"receipt", "shipment", "transfer_out", "transfer_in"})
_PRODUCT_EVENTS = frozenset({"product_view", "add_to_cart", "remove_from_cart"})


class Invalid(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


class _Fields:
    """Typed access to one JSON object, raising ``Invalid`` with the contract's reason codes."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}{key}"

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            self._missing(key)
        return value

    # Each accessor returns a well-formed value on its first line and leaves every other
    # case, with its reason code, to ``_refuse_*``: nine fields per event pass through here,
    # and one call per field instead of three was a quarter of the decoding time.

    def string(self, key: str, required: bool = True, max_chars: int = MAX_ID_CHARS) -> str | None:
        value = self.data.get(key)
        if type(value) is str and 0 < len(value) <= max_chars and not value.isspace():
            return value
        if value is None and not required:
            return None
        self._refuse_string(key, value, max_chars)

    def req_string(self, key: str, max_chars: int = MAX_ID_CHARS) -> str:
        value = self.data.get(key)
        if type(value) is str and 0 < len(value) <= max_chars and not value.isspace():
            return value
        self._refuse_string(key, value, max_chars)

    def _refuse_string(self, key: str, value: Any, max_chars: int) -> NoReturn:
        if value is None:
            self._missing(key)
        if not isinstance(value, str):
            raise Invalid("bad_type", f"`{self._name(key)}` must be a string")
        raise Invalid("bad_value", f"`{self._name(key)}` must be 1..{max_chars} characters")

    def _missing(self, key: str) -> NoReturn:
        raise Invalid("missing_field", f"missing field `{self._name(key)}`")

    def integer(self, key: str, required: bool = True) -> int | None:
        value = self.data.get(key)
        if type(value) is int and -1_000_000_000 <= value <= 1_000_000_000:
            return value
        if value is None:
            if required:
                self._missing(key)
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("bad_type", f"`{self._name(key)}` must be an integer")
        raise Invalid("bad_value", f"`{self._name(key)}` is out of range")

    def number(self, key: str, required: bool = True) -> float | None:
        value = self.data.get(key)
        if (type(value) is float or type(value) is int) and 0 <= value <= 1e12:
            return float(value)  # NaN fails the comparison; orjson refuses Infinity
        if value is None:
            if required:
                self._missing(key)
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("bad_type", f"`{self._name(key)}` must be a number")
        raise Invalid("bad_value", f"`{self._name(key)}` must be a finite number ≥ 0")

    def obj(self, key: str, required: bool = True) -> _Fields | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise Invalid("bad_type", f"`{self._name(key)}` must be an object")
        return _Fields(value, f"{self._name(key)}.")

    def pii(self, key: str, hasher: PiiHasher | None) -> str | None:
        value = self.string(key, required=False, max_chars=320)
        if value is None or hasher is None:
            return None
        return hasher(key, value)


def _lines(fields: _Fields, reference: ReferenceData) -> tuple[OrderLine, ...]:
    raw = fields._get("lines", True)
    if not isinstance(raw, list):
        raise Invalid("bad_type", "`lines` must be a list")
    if not raw:
        raise Invalid("bad_value", "`lines` must hold at least one line")
    if len(raw) > MAX_LINES:
        raise Invalid("bad_value", f"`lines` holds more than {MAX_LINES} lines")
    lines = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise Invalid("bad_type", f"`lines[{index}]` must be an object")
        line = _Fields(item, f"lines[{index}].")
        sku = line.req_string("sku")
        qty = line.integer("qty")
        assert qty is not None
        if qty < 1:
            raise Invalid("bad_value", f"`lines[{index}].qty` must be ≥ 1")
        unit_price = line.number("unit_price")
        assert unit_price is not None
        lines.append(OrderLine(sku, qty, unit_price))
    return tuple(lines)


def _check_skus(reference: ReferenceData, skus: list[str]) -> None:
    for sku in skus:
        if sku not in reference.products:
            raise Invalid("unknown_sku", f"sku {sku!r} is not in the product reference data")


def _check_location(
    reference: ReferenceData, location_id: str, must_be_store: bool = False
) -> None:
    location = reference.locations.get(location_id)
    if location is None:
        raise Invalid("unknown_location", f"location {location_id!r} is not in the reference data")
    if must_be_store and location.type != "store":
        raise Invalid("bad_value", f"location {location_id!r} is a {location.type}, not a store")


def _coordinate(fields: _Fields, key: str, limit: float) -> float | None:
    """A WGS84 degree in ``[-limit, limit]`` (``_Fields.number`` takes only values ≥ 0)."""
    value = fields.data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("bad_type", f"`{fields._name(key)}` must be a number")
    if not -limit <= value <= limit:  # NaN fails too
        raise Invalid("bad_value", f"`{fields._name(key)}` must be within ±{limit:g} degrees")
    return float(value)


def _fulfillment(fields: _Fields, kind: str) -> Fulfillment:
    """A pickup names its store; a delivery may leave the location to Omnistream's sourcing
    (CONTRACT §10), with the address's ``lat``/``lon`` (both or neither) and ``region``."""
    location_id = fields.string("location_id", required=kind == "store_pickup")
    lat = _coordinate(fields, "lat", 90)
    lon = _coordinate(fields, "lon", 180)
    if (lat is None) != (lon is None):
        raise Invalid("bad_value", f"`{fields._name('lat')}` and `lon` come together or not at all")
    region = fields.string("region", required=False, max_chars=32)
    return Fulfillment(kind, location_id, lat, lon, region)


def _decode_click(
    f: _Fields, head: dict[str, Any], reference: ReferenceData, hasher: PiiHasher | None
) -> ClickEvent:
    event_type = head["event_type"]
    anonymous_id = f.req_string("anonymous_id")
    channel = f.req_string("channel", max_chars=64)
    user_id = f.string("user_id", required=False)
    region = f.string("region", required=False, max_chars=32)
    campaign = None
    campaign_fields = f.obj("campaign", required=False)
    if campaign_fields is not None:
        campaign = Campaign(
            source=campaign_fields.req_string("source"),
            medium=campaign_fields.req_string("medium"),
            campaign=campaign_fields.req_string("campaign"),
            content=campaign_fields.string("content", required=False, max_chars=256),
        )
    sku = qty = price = None
    order_id = total = fulfillment = None
    lines: tuple[OrderLine, ...] = ()
    if event_type in _PRODUCT_EVENTS:
        sku = f.req_string("sku")
        qty = f.integer("qty", required=event_type != "product_view")
        if qty is not None and qty < 1:
            raise Invalid("bad_value", "`qty` must be ≥ 1")
        price = f.number("price", required=False)
    if event_type in ORDER_EVENT_TYPES:
        order_id = f.req_string("order_id")
        lines = _lines(f, reference)
        total = f.number("total", required=event_type == "order_placed")
        fulfillment_fields = f.obj("fulfillment", required=event_type == "order_placed")
        if fulfillment_fields is not None:
            kind = fulfillment_fields.req_string("type", max_chars=32)
            if kind not in FULFILLMENT_TYPES:
                raise Invalid(
                    "bad_value",
                    f"`fulfillment.type` must be one of {', '.join(sorted(FULFILLMENT_TYPES))}",
                )
            fulfillment = _fulfillment(fulfillment_fields, kind)
    store_id = f.req_string("store_id") if event_type == "store_checkin" else None
    marketing = _marketing(f) if event_type == "consent" else None
    phone_hash = f.pii("phone", hasher)
    email_hash = f.pii("email", hasher)
    ts_ms = _timestamp(head)
    _check_skus(reference, [sku] if sku else [line.sku for line in lines])
    if fulfillment is not None and fulfillment.location_id is not None:
        _check_location(
            reference, fulfillment.location_id, must_be_store=fulfillment.type == "store_pickup"
        )
    if store_id is not None:  # a check-in happens at a till's kind of place, as pos.sales
        _check_location(reference, store_id, must_be_store=True)
    return ClickEvent(
        event_id=head["event_id"],
        event_type=event_type,
        ts_ms=ts_ms,
        anonymous_id=anonymous_id,
        channel=channel,
        origin=head["origin"],
        user_id=user_id,
        phone_hash=phone_hash,
        email_hash=email_hash,
        campaign=campaign,
        region=region,
        sku=sku,
        qty=qty,
        price=price,
        order_id=order_id,
        lines=lines,
        total=total,
        fulfillment=fulfillment,
        store_id=store_id,
        marketing=marketing,
    )


def _marketing(fields: _Fields) -> bool:
    """``marketing`` of a ``consent`` event: a JSON boolean and nothing else. A string
    ``"false"`` or a 0/1 is refused rather than guessed at: reading a withdrawal as consent
    would send coupons to a customer who said no (CONTRACT §11)."""
    value = fields.data.get("marketing")
    if type(value) is bool:
        return value
    if value is None:
        fields._missing("marketing")
    raise Invalid("bad_type", f"`{fields._name('marketing')}` must be true or false")


def _decode_pos(
    f: _Fields, head: dict[str, Any], reference: ReferenceData, hasher: PiiHasher | None
) -> PosEvent:
    store_id = f.req_string("store_id")
    receipt_id = f.req_string("receipt_id")
    lines = _lines(f, reference)
    total = f.number("total")
    assert total is not None
    member_code = f.string("member_code", required=False)
    order_id = f.string("order_id", required=False)
    coupon_codes_raw = f._get("coupon_codes", False)
    coupon_codes: tuple[str, ...] = ()
    if coupon_codes_raw is not None:
        if not isinstance(coupon_codes_raw, list) or not all(
            isinstance(code, str) and 0 < len(code) <= MAX_ID_CHARS for code in coupon_codes_raw
        ):
            raise Invalid("bad_type", "`coupon_codes` must be a list of strings")
        coupon_codes = tuple(coupon_codes_raw)
    phone_hash = f.pii("phone", hasher)
    ts_ms = _timestamp(head)
    _check_location(reference, store_id, must_be_store=True)
    _check_skus(reference, [line.sku for line in lines])
    return PosEvent(
        event_id=head["event_id"],
        event_type=head["event_type"],
        ts_ms=ts_ms,
        store_id=store_id,
        receipt_id=receipt_id,
        lines=lines,
        total=total,
        origin=head["origin"],
        member_code=member_code,
        phone_hash=phone_hash,
        coupon_codes=coupon_codes,
        order_id=order_id,
    )


def _decode_movement(f: _Fields, head: dict[str, Any], reference: ReferenceData) -> MovementEvent:
    event_type = head["event_type"]
    location_id = f.req_string("location_id")
    sku = f.req_string("sku")
    qty = f.integer("qty")
    assert qty is not None
    if event_type in _POSITIVE_QTY_MOVEMENTS and qty < 1:
        raise Invalid("bad_value", f"`qty` of a {event_type} must be ≥ 1")
    if event_type == "adjustment" and qty == 0:
        raise Invalid("bad_value", "`qty` of an adjustment must not be 0")
    if event_type == "stock_count" and qty < 0:
        raise Invalid("bad_value", "`qty` of a stock_count must be ≥ 0")
    transfer_id = f.string("transfer_id", required=event_type in {"transfer_out", "transfer_in"})
    order_id = f.string("order_id", required=False)
    expiry_date = f.string("expiry_date", required=False, max_chars=10)
    if expiry_date is not None:
        try:
            if len(expiry_date) != 10:
                raise ValueError(expiry_date)
            date.fromisoformat(expiry_date)
        except ValueError:
            raise Invalid("bad_value", "`expiry_date` must be YYYY-MM-DD") from None
    reason = f.string("reason", required=False, max_chars=512)
    to_location_id = None
    if event_type == "transfer_out":
        to_location_id = f.string("to_location_id", required=False)
        if to_location_id == location_id:
            raise Invalid("bad_value", "`to_location_id` must differ from `location_id`")
    ts_ms = _timestamp(head)
    _check_location(reference, location_id)
    if to_location_id is not None:
        _check_location(reference, to_location_id)
    _check_skus(reference, [sku])
    return MovementEvent(
        event_id=head["event_id"],
        event_type=event_type,
        ts_ms=ts_ms,
        location_id=location_id,
        sku=sku,
        qty=qty,
        origin=head["origin"],
        transfer_id=transfer_id,
        order_id=order_id,
        expiry_date=expiry_date,
        reason=reason,
        to_location_id=to_location_id,
    )


def _timestamp(head: dict[str, Any]) -> int:
    try:
        return parse_event_time(head["ts"])
    except TimestampError as exc:
        raise Invalid("bad_timestamp", f"`ts`: {exc}") from None


#: ``_Fields`` for decoders of Omnistream's own topics (``connectors.trigger_inputs``,
#: ``connectors.attribution_io``), so a bad field gets the same reason code on every topic.
Fields = _Fields


def load_object(raw: bytes) -> dict[str, Any]:
    """The JSON object of one message, or ``Invalid`` (``too_large``, ``malformed_json``).

    The size check comes first so a huge message is never parsed; orjson refuses invalid
    UTF-8, NaN/Infinity and nesting past 1024 levels (the ``RecursionError`` guard is for
    parsers that recurse in Python)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Invalid("too_large", f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid("malformed_json", f"not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise Invalid("malformed_json", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise Invalid("malformed_json", "a message must be a JSON object")
    return data


def event_time(data: dict[str, Any], key: str) -> int:
    """Epoch ms of ``data[key]``, or ``Invalid`` (``missing_field``, ``bad_timestamp``)."""
    if data.get(key) is None:
        raise Invalid("missing_field", f"missing field `{key}`")
    try:
        return parse_event_time(data[key])
    except TimestampError as exc:
        raise Invalid("bad_timestamp", f"`{key}`: {exc}") from None


def message_event_time(raw: bytes | None) -> int | None:
    """Event time of a message left undecoded (``only_types``), or None when it has none.

    Read for one message per partition and batch: how far a partition has been read counts
    the events a flow skips too (``domain.progress``)."""
    try:
        return event_time(load_object(raw or b""), "ts")
    except Invalid:
        return None


def resolved_head(raw: bytes) -> tuple[dict[str, Any], str, str, int]:
    """Record, ``event_id``, ``event_type`` and ``ts`` of an ``events.resolved`` message, or
    ``Invalid``. Two flows read that topic; both must refuse a foreign record the same way,
    and an event time outside 2000..2099 must not reach their clocks and timers."""
    record = load_object(raw)
    f = Fields(record)
    event_id = f.req_string("event_id")
    event_type = f.req_string("event_type", max_chars=64)
    ts = record.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise Invalid("bad_timestamp", "`ts` must be epoch milliseconds")  # as identity writes it
    return record, event_id, event_type, event_time(record, "ts")


class _Undecided(enum.Enum):
    """The typed path's answer when it does not accept a message: the field-by-field path
    decides (and names the reason)."""

    FIELD_BY_FIELD = enum.auto()


_UNDECIDED = _Undecided.FIELD_BY_FIELD
_TypedVerdict = InputEvent | None | _Undecided


def _typed_wire(
    decoders: dict[str, msgspec.json.Decoder[Any]], topic: str, raw: bytes
) -> InputWire | None:
    """The message as the struct of its event type, or None where msgspec refuses it.

    The loose decoders skip unknown top-level fields: only for a message orjson has accepted
    whole (see ``connectors.input_structs``). msgspec recurses into what it skips, so a field
    nested near orjson's depth limit can raise ``RecursionError``."""
    decoder = decoders.get(topic)
    if decoder is None:
        return None
    try:
        wire: InputWire = decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    return wire


#: The typed path builds events with positional arguments: for the 20 fields of a click,
#: keywords cost 0.5 µs, a quarter of the whole decode. The order they assume is pinned here,
#: so a field added or moved in ``domain.events`` fails at import instead of shifting values.
_POSITIONAL_FIELDS = {
    ClickEvent: (
        "event_id event_type ts_ms anonymous_id channel origin user_id phone_hash email_hash"
        " campaign region sku qty price order_id lines total fulfillment store_id marketing"
    ),
    PosEvent: (
        "event_id event_type ts_ms store_id receipt_id lines total origin member_code"
        " phone_hash coupon_codes order_id"
    ),
    MovementEvent: (
        "event_id event_type ts_ms location_id sku qty origin transfer_id order_id"
        " expiry_date reason to_location_id"
    ),
}
for _event_class, _names in _POSITIONAL_FIELDS.items():
    assert [f.name for f in dataclass_fields(_event_class)] == _names.split(), _event_class


def _typed_event(
    wire: InputWire,
    origin: Origin,
    reference: ReferenceData,
    hasher: PiiHasher | None,
    only_types: frozenset[str] | None,
) -> _TypedVerdict:
    """The event of a decoded struct, None for a type ``only_types`` leaves out, or
    ``_UNDECIDED`` when a check fails. The struct has already checked presence, types,
    lengths and ranges; what is left is each rule of the field-by-field path that a struct
    cannot state. Blank strings (all whitespace) are one: each string field of
    ``_Fields.string`` is checked here, spelled out because a helper call per field would
    cost a tenth of the decode."""
    if wire.event_id.isspace():
        return _UNDECIDED
    event_type = EVENT_TYPES[type(wire)]
    if only_types is not None and event_type not in only_types:
        return None
    try:
        ts_ms = parse_event_time(wire.ts)
    except TimestampError:
        return _UNDECIDED
    if isinstance(wire, ClickWire):
        return _typed_click(wire, event_type, ts_ms, origin, reference, hasher)
    if isinstance(wire, PosWire):
        return _typed_pos(wire, event_type, ts_ms, origin, reference, hasher)
    assert isinstance(wire, MovementWire)
    return _typed_movement(wire, event_type, ts_ms, origin, reference)


def _typed_lines(
    wires: tuple[LineWire, ...], reference: ReferenceData
) -> tuple[OrderLine, ...] | None:
    lines = []
    products = reference.products
    for line in wires:
        sku = line.sku
        if sku.isspace() or sku not in products:
            return None
        lines.append(OrderLine(sku, line.qty, line.unit_price))
    return tuple(lines)


def _typed_fulfillment(wire: FulfillmentWire, reference: ReferenceData) -> Fulfillment | None:
    location_id = wire.location_id
    region = wire.region
    if (wire.lat is None) != (wire.lon is None) or (region is not None and region.isspace()):
        return None
    pickup = isinstance(wire, PickupWire)
    if location_id is not None:
        location = reference.locations.get(location_id)
        if location_id.isspace() or location is None or (pickup and location.type != "store"):
            return None
    kind = "store_pickup" if pickup else "delivery"
    return Fulfillment(kind, location_id, wire.lat, wire.lon, region)


def _typed_click(
    wire: ClickWire,
    event_type: str,
    ts_ms: int,
    origin: Origin,
    reference: ReferenceData,
    hasher: PiiHasher | None,
) -> ClickEvent | _Undecided:
    user_id, region, phone, email = wire.user_id, wire.region, wire.phone, wire.email
    if (
        wire.anonymous_id.isspace()
        or wire.channel.isspace()
        or (user_id is not None and user_id.isspace())
        or (region is not None and region.isspace())
        or (phone is not None and phone.isspace())
        or (email is not None and email.isspace())
    ):
        return _UNDECIDED
    campaign = None
    if wire.campaign is not None:
        c = wire.campaign
        content = c.content
        if (
            c.source.isspace()
            or c.medium.isspace()
            or c.campaign.isspace()
            or (content is not None and content.isspace())
        ):
            return _UNDECIDED
        campaign = Campaign(c.source, c.medium, c.campaign, content)
    sku = qty = price = None
    order_id = total = fulfillment = store_id = marketing = None
    lines: tuple[OrderLine, ...] = ()
    if isinstance(wire, ProductWire):
        sku, qty, price = wire.sku, wire.qty, wire.price
        if sku.isspace() or sku not in reference.products:
            return _UNDECIDED
    elif isinstance(wire, OrderWire):
        order_id, total = wire.order_id, wire.total
        typed_lines = _typed_lines(wire.lines, reference)
        if order_id.isspace() or typed_lines is None:
            return _UNDECIDED
        lines = typed_lines
        if wire.fulfillment is not None:
            fulfillment = _typed_fulfillment(wire.fulfillment, reference)
            if fulfillment is None:
                return _UNDECIDED
    elif isinstance(wire, StoreCheckinWire):
        store_id = wire.store_id
        location = reference.locations.get(store_id)
        if store_id.isspace() or location is None or location.type != "store":
            return _UNDECIDED
    elif isinstance(wire, ConsentWire):
        marketing = wire.marketing
    return ClickEvent(
        wire.event_id,
        event_type,
        ts_ms,
        wire.anonymous_id,
        wire.channel,
        origin,
        user_id,
        hasher("phone", phone) if phone is not None and hasher is not None else None,
        hasher("email", email) if email is not None and hasher is not None else None,
        campaign,
        region,
        sku,
        qty,
        price,
        order_id,
        lines,
        total,
        fulfillment,
        store_id,
        marketing,
    )


def _typed_pos(
    wire: PosWire,
    event_type: str,
    ts_ms: int,
    origin: Origin,
    reference: ReferenceData,
    hasher: PiiHasher | None,
) -> PosEvent | _Undecided:
    store_id, member_code, order_id, phone = (
        wire.store_id,
        wire.member_code,
        wire.order_id,
        wire.phone,
    )
    store = reference.locations.get(store_id)
    lines = _typed_lines(wire.lines, reference)
    if (
        lines is None
        or store_id.isspace()
        or wire.receipt_id.isspace()
        or (member_code is not None and member_code.isspace())
        or (order_id is not None and order_id.isspace())
        or (phone is not None and phone.isspace())
        or store is None
        or store.type != "store"
    ):
        return _UNDECIDED
    return PosEvent(
        wire.event_id,
        event_type,
        ts_ms,
        store_id,
        wire.receipt_id,
        lines,
        wire.total,
        origin,
        member_code,
        hasher("phone", phone) if phone is not None and hasher is not None else None,
        wire.coupon_codes or (),
        order_id,
    )


def _typed_movement(
    wire: MovementWire, event_type: str, ts_ms: int, origin: Origin, reference: ReferenceData
) -> MovementEvent | _Undecided:
    location_id, sku = wire.location_id, wire.sku
    transfer_id, order_id, expiry_date, reason = (
        wire.transfer_id,
        wire.order_id,
        wire.expiry_date,
        wire.reason,
    )
    to_location_id = wire.to_location_id if isinstance(wire, TransferOutWire) else None
    locations = reference.locations
    if (
        location_id.isspace()
        or sku.isspace()
        or (transfer_id is not None and transfer_id.isspace())
        or (order_id is not None and order_id.isspace())
        or (expiry_date is not None and not _is_expiry_date(expiry_date))
        or (reason is not None and reason.isspace())
        or (isinstance(wire, AdjustmentWire) and wire.qty == 0)
        or location_id not in locations
        or sku not in reference.products
    ):
        return _UNDECIDED
    if to_location_id is not None and (
        to_location_id.isspace() or to_location_id == location_id or to_location_id not in locations
    ):
        return _UNDECIDED
    return MovementEvent(
        wire.event_id,
        event_type,
        ts_ms,
        location_id,
        sku,
        wire.qty,
        origin,
        transfer_id,
        order_id,
        expiry_date,
        reason,
        to_location_id,
    )


def _is_expiry_date(text: str) -> bool:
    """``expiry_date`` as ``_decode_movement`` accepts it (whatever ``date.fromisoformat``
    reads in ten characters)."""
    if len(text) != 10 or text.isspace():
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def decode_message(
    topic: str,
    value: bytes | None,
    origin: Origin,
    reference: ReferenceData,
    hasher: PiiHasher | None = None,
    only_types: frozenset[str] | None = None,
) -> InputEvent | Rejection | None:
    """Decode one message of an input topic (``topic`` without prefix).

    With ``only_types``, an event of another (valid) type is checked up to its type and
    then left undecoded (None): stock_pool reads the clickstream for its orders only, and
    validating the bodies of the other two thirds of its input was a sixth of its time.
    Their faults are dead-lettered by the flows that use them (identity_stitch).

    The typed path first (see the module docstring): the strict structs, then, for a message
    they refuse (most often for a field the contract does not name), orjson's check of the
    whole message and the loose structs; the field-by-field path has the last word."""
    raw = value or b""
    try:
        data = None
        wire = None
        if len(raw) <= MAX_MESSAGE_BYTES:
            wire = _typed_wire(STRICT_DECODERS, topic, raw)
        if wire is None:
            data = load_object(raw)
            wire = _typed_wire(LOOSE_DECODERS, topic, raw)
        if wire is not None:
            verdict = _typed_event(wire, origin, reference, hasher, only_types)
            if verdict is not _UNDECIDED:
                return verdict
        if data is None:
            data = load_object(raw)
        return _decode_fields(topic, data, origin, reference, hasher, only_types)
    except Invalid as invalid:
        return Rejection(invalid.reason, invalid.error, origin, raw)
    except RecursionError:
        return Rejection("malformed_json", "JSON nested too deeply", origin, raw)


def _decode_fields(
    topic: str,
    data: dict[str, Any],
    origin: Origin,
    reference: ReferenceData,
    hasher: PiiHasher | None,
    only_types: frozenset[str] | None,
) -> InputEvent | None:
    """The field-by-field path: the message's JSON object checked in the module's fixed
    order, ``Invalid`` at the first fault."""
    f = _Fields(data)
    event_id = f.req_string("event_id")
    event_type = f.req_string("event_type", max_chars=64)
    if "ts" not in data or data["ts"] is None:
        raise Invalid("missing_field", "missing field `ts`")
    allowed = _TOPIC_EVENT_TYPES.get(topic)
    if allowed is None:
        raise Invalid("unknown_topic", f"topic {topic!r} is not an input topic")
    if event_type not in allowed:
        raise Invalid(
            "unknown_event_type",
            f"event_type {event_type[:64]!r} is not one of {', '.join(sorted(allowed))}",
        )
    if only_types is not None and event_type not in only_types:
        return None
    head = {"event_id": event_id, "event_type": event_type, "ts": data["ts"], "origin": origin}
    if topic == topics.CLICKSTREAM:
        return _decode_click(f, head, reference, hasher)
    if topic == topics.POS_SALES:
        return _decode_pos(f, head, reference, hasher)
    return _decode_movement(f, head, reference)


def input_decoder(
    reference: ReferenceData,
    hasher: PiiHasher | None = None,
    only_types: frozenset[str] | None = None,
) -> Callable[[str, bytes, Origin], InputEvent | Rejection | None]:
    """``decode_message`` with its reference data, hasher and types fixed: the decoder of
    the input topics for ``connectors.operators.decode``."""

    def decode_input(topic: str, value: bytes, origin: Origin) -> InputEvent | Rejection | None:
        return decode_message(topic, value, origin, reference, hasher, only_types)

    return decode_input
