"""``stock.changes`` CloudEvents as msgspec structs: what rule_triggers reads them through first.

stock_pool writes every change the same way (``flows.stock_pool``: the CloudEvent attributes
and the position's figures, CONTRACT §3 and §9). The structs name all of them, with types at
least as narrow as anything the field-by-field decoder (``connectors.trigger_inputs``)
accepts, and refuse any other field (``forbid_unknown_fields``), so msgspec checks every
value of the message in one C pass and nothing it accepts is a message orjson would refuse
(every number is bounded, every string is checked UTF-8). Whatever the structs refuse — a
CloudEvent extension attribute, an older or foreign producer's record, a malformed message —
goes to the field-by-field decoder, which names the reason. So the structs decide only what
the old path would accept, and decide it the same way
(``tests/unit/test_stock_change_differential.py``).
"""

from __future__ import annotations

import msgspec

from connectors.input_structs import Count, Id, Integer, Timestamp
from connectors.resolved_structs import Number  # bounded: no infinite number is accepted


class StockFiguresWire(msgspec.Struct, forbid_unknown_fields=True):
    """The ``data`` of one change: the figures the rules read, then those they do not."""

    sku: Id
    location_id: Id
    available: Integer
    on_hand: Integer
    #: ``Count``: a negative one is refused (``bad_value``) by the field-by-field decoder
    sold_24h: Count
    cause: Id
    available_to_sell: Integer | None = None
    in_transit: Integer | None = None
    sold: Count | None = None
    region: str | None = None
    reserved: Integer | None = None
    safety_stock: Integer | None = None
    sold_1h: Integer | None = None
    days_of_cover: Number | None = None


class StockChangeWire(msgspec.Struct, forbid_unknown_fields=True):
    """The CloudEvent: its attributes (only ``time`` is read) and the figures."""

    time: Timestamp
    data: StockFiguresWire
    specversion: str | None = None
    id: str | None = None
    source: str | None = None
    type: str | None = None
    subject: str | None = None
    datacontenttype: str | None = None


STOCK_CHANGE_DECODER = msgspec.json.Decoder(StockChangeWire)
