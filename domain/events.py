"""Typed input events of CONTRACT §1, as the flows see them after decoding.

Flows never touch raw bytes or loose dicts: the decoder (``connectors.decode``) turns a Kafka
message into one of these records or into a rejection with a reason code. Raw phone numbers
and e-mails never reach a record; at most their keyed hashes do.

Records are treated as immutable but not declared ``frozen``: a frozen dataclass's
``__init__`` sets each field through ``object.__setattr__`` and costs about five times as
much (1.9 µs against 0.4 µs for an 18-field event), paid for every message of every flow.
"""

from __future__ import annotations

from dataclasses import dataclass

CLICK_EVENT_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
        "order_placed",
        "order_cancelled",
        "login",
        "ad_click",
        "store_checkin",
        "consent",
    }
)
#: Clickstream events that reserve or release stock (and carry order lines).
ORDER_EVENT_TYPES = frozenset({"order_placed", "order_cancelled"})
POS_EVENT_TYPES = frozenset({"sale", "return"})
MOVEMENT_EVENT_TYPES = frozenset(
    {
        "receipt",
        "shipment",
        "transfer_out",
        "transfer_in",
        "adjustment",
        "stock_count",
    }
)
FULFILLMENT_TYPES = frozenset({"delivery", "store_pickup"})


@dataclass(slots=True)
class Origin:
    """Where a record came from, so a later rejection can still name its Kafka coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(slots=True)
class OrderLine:
    sku: str
    qty: int
    unit_price: float


@dataclass(slots=True)
class Campaign:
    source: str
    medium: str
    campaign: str
    content: str | None = None


@dataclass(slots=True)
class Fulfillment:
    """How an online order reaches the customer (CONTRACT §1, §8).

    ``location_id`` is absent for a delivery Omnistream sources itself (CONTRACT §10); the
    delivery address's coordinates and region then guide the choice."""

    type: str
    location_id: str | None
    lat: float | None = None
    lon: float | None = None
    region: str | None = None


@dataclass(slots=True)
class ClickEvent:
    """Online behaviour, keyed by device (``anonymous_id``)."""

    event_id: str
    event_type: str
    ts_ms: int
    anonymous_id: str
    channel: str
    origin: Origin
    user_id: str | None = None
    phone_hash: str | None = None
    email_hash: str | None = None
    campaign: Campaign | None = None
    region: str | None = None
    sku: str | None = None
    qty: int | None = None
    price: float | None = None
    order_id: str | None = None
    lines: tuple[OrderLine, ...] = ()
    total: float | None = None
    fulfillment: Fulfillment | None = None
    #: ``store_checkin``: the store the customer arrived at (CONTRACT §8), always a known
    #: location of type ``store``; None on every other event type.
    store_id: str | None = None
    #: ``consent``: whether the customer now accepts marketing (CONTRACT §8); None on every
    #: other event type, so "no consent event" (consented) stays distinct from ``False``.
    marketing: bool | None = None


@dataclass(slots=True)
class PosEvent:
    """A till receipt: a sale or a return at one store."""

    event_id: str
    event_type: str
    ts_ms: int
    store_id: str
    receipt_id: str
    lines: tuple[OrderLine, ...]
    total: float
    origin: Origin
    member_code: str | None = None
    phone_hash: str | None = None
    coupon_codes: tuple[str, ...] = ()
    order_id: str | None = None


@dataclass(slots=True)
class MovementEvent:
    """A warehouse or store stock movement of one sku at one location."""

    event_id: str
    event_type: str
    ts_ms: int
    location_id: str
    sku: str
    qty: int
    origin: Origin
    transfer_id: str | None = None
    order_id: str | None = None
    expiry_date: str | None = None
    reason: str | None = None
    #: ``transfer_out``: the destination, where the units are in transit until the
    #: ``transfer_in`` with the same ``transfer_id`` (CONTRACT §8).
    to_location_id: str | None = None


InputEvent = ClickEvent | PosEvent | MovementEvent


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that must go to ``deadletter``: a short reason code and a readable error.

    ``raw`` is the original payload (masked and capped by the dead-letter encoder).
    """

    reason: str
    error: str
    origin: Origin
    raw: bytes
