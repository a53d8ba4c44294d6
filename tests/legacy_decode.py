"""The pre-msgspec decoder (``connectors/decode.py`` as it was), kept only as the reference of
the differential tests (``tests/unit/test_decode_differential.py``): the production decoder
must give the same event, or the same reason code and message, for every message. It uses the
old event-time parser (``tests.legacy_timeparse``) too, so neither half of the comparison
shares code with the other. Not imported by the application.

Its original description: decoding and validation of the three input topics into typed
records (CONTRACT §1, §8).

``decode_message`` is the single entry point: bytes in, an ``InputEvent`` or a ``Rejection``
out, never an exception. Checks run in a fixed order so the reason code is predictable:
size → JSON → required fields → types → values → timestamp → reference data
(``unknown_sku``/``unknown_location``). Raw phone numbers and e-mails are turned into keyed
hashes here (when a hasher is given) and dropped otherwise; they never travel further.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, NoReturn

import orjson

from base import topics
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
from tests.legacy_timeparse import TimestampError, parse_event_time

#: Larger messages are refused before parsing: no retail event is anywhere near this big.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_ID_CHARS = 128
MAX_LINES = 500

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
    Their faults are dead-lettered by the flows that use them (identity_stitch)."""
    raw = value or b""
    try:
        data = load_object(raw)
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
    except Invalid as invalid:
        return Rejection(invalid.reason, invalid.error, origin, raw)
    except RecursionError:
        return Rejection("malformed_json", "JSON nested too deeply", origin, raw)


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
