"""Encoding of ``events.resolved``: a valid input event with its ``customer_id``, PII removed.

The record keeps every contract field of the original event except raw phone and e-mail
(which never reach a record anyway) and adds ``customer_id`` (null when the event carries no
usable identifier) and ``source_topic``. ``ts`` is written as epoch milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from domain.events import ClickEvent, PosEvent

_DROPPED = frozenset({"origin", "phone_hash", "email_hash"})
#: Fields written per event class, looked up once: this runs for every resolved event.
_WRITTEN: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name not in _DROPPED)
    for cls in (ClickEvent, PosEvent)
}


def resolved_event(event: ClickEvent | PosEvent, customer_id: str | None) -> bytes:
    """Nested values (order lines, campaign, fulfillment) are dataclasses that orjson
    writes as objects with all their fields; tuples become arrays."""
    record: dict[str, Any] = {}
    for name in _WRITTEN[type(event)]:
        value = getattr(event, name)
        if value is None or value == ():
            continue
        record["ts" if name == "ts_ms" else name] = value
    record["customer_id"] = customer_id
    record["source_topic"] = "clickstream" if isinstance(event, ClickEvent) else "pos.sales"
    return orjson.dumps(record)
