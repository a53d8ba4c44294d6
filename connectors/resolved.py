"""Encoding of ``events.resolved``: a valid input event with its ``customer_id``, PII removed.

The record keeps every contract field of the original event except raw phone and e-mail
(which never reach a record anyway) and adds ``customer_id`` (null when the event carries no
usable identifier) and ``source_topic``. ``ts`` is written as epoch milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from flows.logic.events import ClickEvent, PosEvent

_DROPPED = frozenset({"origin", "phone_hash", "email_hash"})


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def resolved_event(event: ClickEvent | PosEvent, customer_id: str | None) -> bytes:
    record: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        if f.name in _DROPPED:
            continue
        value = getattr(event, f.name)
        if value is None or value == ():
            continue
        record["ts" if f.name == "ts_ms" else f.name] = _plain(value)
    record["customer_id"] = customer_id
    record["source_topic"] = "clickstream" if isinstance(event, ClickEvent) else "pos.sales"
    return orjson.dumps(record)
