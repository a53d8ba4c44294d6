"""The input topics' messages as msgspec structs: what ``connectors.decode`` reads first.

msgspec checks JSON syntax, field types, lengths and ranges in one C pass, ten times faster
than checking a dict field by field in Python. The structs say what a well-formed message
is, one class per ``event_type`` (a tagged union per topic, CONTRACT §1, §8); they do not say
why a message is refused. A message they refuse goes to the field-by-field decoder, which
names the reason (``connectors.decode``), so the bounds here mirror its rules exactly and a
bound here that is looser than a rule there is checked after decoding.

Two families, because msgspec skips an unknown field's value without checking it: orjson
refuses a message with an invalid UTF-8 string or an infinite number anywhere, msgspec would
not notice one in a field it skips. The strict family (``forbid_unknown_fields``) skips
nothing and bounds every number, so what it accepts orjson accepts too, down to a value that
a duplicate key overwrites (msgspec checks it, then keeps the last, as orjson does). The
contract allows extra fields, though (a page view's ``page``, a search's ``query``); a
message with one is checked by orjson and then read by the loose family, whose classes are
the strict ones with unknown fields allowed at the top level. Nested objects (lines,
campaign, fulfillment) stay strict in both: an extra field there is rare and goes to the
field-by-field decoder.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec

from base import topics
from domain.events import CLICK_EVENT_TYPES, MOVEMENT_EVENT_TYPES, POS_EVENT_TYPES
from domain.timeparse import MAX_TS_MS, MIN_TS_MS

MAX_ID_CHARS = 128
MAX_LINES = 500
#: Bounds of ``integer`` and ``number`` fields in the field-by-field decoder.
MAX_INTEGER = 1_000_000_000
MAX_NUMBER = 1e12


#: Strings of 1..N characters (code points, as ``len``). Blank strings are refused after
#: decoding: msgspec's ``pattern`` would cost ten times the whole decode.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
Text32 = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Text64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text256 = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Pii = Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
Text512 = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Date10 = Annotated[str, msgspec.Meta(min_length=1, max_length=10)]
Integer = Annotated[int, msgspec.Meta(ge=-MAX_INTEGER, le=MAX_INTEGER)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INTEGER)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=MAX_INTEGER)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=MAX_NUMBER)]
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
#: ``ts``: RFC 3339 text or epoch ms; which text is an event time is ``parse_event_time``'s.
#: The integer is bounded like every number here: msgspec reads integers of any size, orjson
#: refuses one past the range of a double, and a refused value can hide under a duplicate key
#: (``{"ts": 1000…0, "ts": 1795313730120}``: msgspec checks the first and keeps the last).
Timestamp = str | Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    """Every field known: nothing skipped unchecked (see the module docstring)."""


class LineWire(_Strict, kw_only=True):
    sku: Id
    qty: Quantity
    unit_price: Amount


Lines = Annotated[tuple[LineWire, ...], msgspec.Meta(min_length=1, max_length=MAX_LINES)]


class CampaignWire(_Strict, kw_only=True):
    source: Id
    medium: Id
    campaign: Id
    content: Text256 | None = None


class FulfillmentWire(_Strict, tag_field="type", kw_only=True):
    location_id: Id | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None
    region: Text32 | None = None


class DeliveryWire(FulfillmentWire, tag="delivery"):
    pass


class PickupWire(FulfillmentWire, tag="store_pickup", kw_only=True):
    location_id: Id


Fulfillment = DeliveryWire | PickupWire


class InputWire(_Strict, tag_field="event_type", kw_only=True):
    """Fields every input event has (CONTRACT §1); ``event_type`` is the tag."""

    event_id: Id
    ts: Timestamp


# --- clickstream ---------------------------------------------------------------------------------


class ClickWire(InputWire, kw_only=True):
    anonymous_id: Id
    channel: Text64
    user_id: Id | None = None
    region: Text32 | None = None
    campaign: CampaignWire | None = None
    phone: Pii | None = None
    email: Pii | None = None


class PageViewWire(ClickWire, tag="page_view"):
    pass


class SearchWire(ClickWire, tag="search"):
    pass


class CheckoutStartedWire(ClickWire, tag="checkout_started"):
    pass


class LoginWire(ClickWire, tag="login"):
    pass


class AdClickWire(ClickWire, tag="ad_click"):
    pass


class ProductWire(ClickWire, kw_only=True):
    sku: Id
    qty: Quantity | None = None
    price: Amount | None = None


class ProductViewWire(ProductWire, tag="product_view"):
    pass


class AddToCartWire(ProductWire, tag="add_to_cart", kw_only=True):
    qty: Quantity


class RemoveFromCartWire(ProductWire, tag="remove_from_cart", kw_only=True):
    qty: Quantity


class OrderWire(ClickWire, kw_only=True):
    order_id: Id
    lines: Lines
    total: Amount | None = None
    fulfillment: Fulfillment | None = None


class OrderPlacedWire(OrderWire, tag="order_placed", kw_only=True):
    total: Amount
    fulfillment: Fulfillment


class OrderCancelledWire(OrderWire, tag="order_cancelled"):
    pass


class StoreCheckinWire(ClickWire, tag="store_checkin", kw_only=True):
    store_id: Id


class ConsentWire(ClickWire, tag="consent", kw_only=True):
    marketing: bool


# --- pos.sales -----------------------------------------------------------------------------------


class PosWire(InputWire, kw_only=True):
    store_id: Id
    receipt_id: Id
    lines: Lines
    total: Amount
    member_code: Id | None = None
    order_id: Id | None = None
    #: No blank check here, as in the field-by-field decoder.
    coupon_codes: tuple[Id, ...] | None = None
    phone: Pii | None = None


class SaleWire(PosWire, tag="sale"):
    pass


class ReturnWire(PosWire, tag="return"):
    pass


# --- wms.movements -------------------------------------------------------------------------------


class MovementWire(InputWire, kw_only=True):
    location_id: Id
    sku: Id
    #: Signed for an adjustment (≠ 0, checked after decoding); the others narrow it.
    qty: Integer
    transfer_id: Id | None = None
    order_id: Id | None = None
    expiry_date: Date10 | None = None
    reason: Text512 | None = None


class ReceiptWire(MovementWire, tag="receipt", kw_only=True):
    qty: Quantity


class ShipmentWire(MovementWire, tag="shipment", kw_only=True):
    qty: Quantity


class TransferOutWire(MovementWire, tag="transfer_out", kw_only=True):
    qty: Quantity
    transfer_id: Id
    to_location_id: Id | None = None


class TransferInWire(MovementWire, tag="transfer_in", kw_only=True):
    qty: Quantity
    transfer_id: Id


class AdjustmentWire(MovementWire, tag="adjustment"):
    pass


class StockCountWire(MovementWire, tag="stock_count", kw_only=True):
    qty: Count


# --- decoders ------------------------------------------------------------------------------------

_STRICT: dict[str, tuple[type[InputWire], ...]] = {
    topics.CLICKSTREAM: (
        PageViewWire,
        ProductViewWire,
        SearchWire,
        AddToCartWire,
        RemoveFromCartWire,
        CheckoutStartedWire,
        OrderPlacedWire,
        OrderCancelledWire,
        LoginWire,
        AdClickWire,
        StoreCheckinWire,
        ConsentWire,
    ),
    topics.POS_SALES: (SaleWire, ReturnWire),
    topics.WMS_MOVEMENTS: (
        ReceiptWire,
        ShipmentWire,
        TransferOutWire,
        TransferInWire,
        AdjustmentWire,
        StockCountWire,
    ),
}

#: ``event_type`` of each struct class (strict and loose): the tag, looked up once.
EVENT_TYPES: dict[type[InputWire], str] = {}


def _tag(cls: type[InputWire]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str), cls
    return tag


def _loose(cls: type[InputWire]) -> type[InputWire]:
    """``cls`` with unknown top-level fields skipped: the same fields, tag and methods."""
    loose = msgspec.defstruct(
        f"Loose{cls.__name__}",
        [],
        bases=(cls,),
        module=__name__,
        tag=_tag(cls),
        forbid_unknown_fields=False,
    )
    assert issubclass(loose, cls)
    return loose


def _decoder(classes: tuple[type[InputWire], ...]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(Union[classes])  # type: ignore[valid-type]  # noqa: UP007


STRICT_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}
LOOSE_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}
for _topic, _classes in _STRICT.items():
    _loose_classes = tuple(_loose(cls) for cls in _classes)
    for _cls in (*_classes, *_loose_classes):
        EVENT_TYPES[_cls] = _tag(_cls)
    STRICT_DECODERS[_topic] = _decoder(_classes)
    LOOSE_DECODERS[_topic] = _decoder(_loose_classes)

# One struct per event type of the contract, no more and no fewer: a type without one would
# always take the slow path, a struct of a foreign type would accept what the contract refuses.
assert {_tag(cls) for cls in _STRICT[topics.CLICKSTREAM]} == CLICK_EVENT_TYPES
assert {_tag(cls) for cls in _STRICT[topics.POS_SALES]} == POS_EVENT_TYPES
assert {_tag(cls) for cls in _STRICT[topics.WMS_MOVEMENTS]} == MOVEMENT_EVENT_TYPES
