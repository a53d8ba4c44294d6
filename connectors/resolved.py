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


# --- identity notices: merges and erasures in the customer's own stream ---------------------

#: ``event_type`` of the notices identity_stitch and ``forget`` write into ``events.resolved``.
MERGED_INTO = "identity_merged"
ABSORBED = "identity_absorbed"
ERASED = "identity_erased"
NOTICE_TYPES = frozenset({MERGED_INTO, ABSORBED, ERASED})


def merge_notices(merged: str, survivor: str, cause: str, ts_ms: int) -> list[tuple[str, bytes]]:
    """(key, record) of the two notices of one merge, in the order they must be written.

    A flow that keeps state per customer (rule_triggers) must move the merged customer's
    state to the survivor, and the survivor must not decide anything before it has it. The
    notices travel in each customer's own stream of ``events.resolved`` (keyed by customer):
    ``identity_merged`` on the merged id's stream follows every event resolved to that id,
    so its key has seen all of them when it hands its state over; ``identity_absorbed``
    on the survivor's stream comes before the first event resolved to the survivor after
    the merge, so the survivor waits for the handover exactly when it must — whatever order
    or speed a reader takes the partitions in. ``identity.changes`` names a merge too, but
    on the survivor's partition of another topic, with no order against either stream."""
    base = f"{cause}:{merged}:{survivor}"
    away = {
        "event_id": f"{base}:merged",
        "event_type": MERGED_INTO,
        "ts": ts_ms,
        "customer_id": merged,
        "into": survivor,
        "source_topic": "identity",
    }
    absorbed = {
        "event_id": f"{base}:absorbed",
        "event_type": ABSORBED,
        "ts": ts_ms,
        "customer_id": survivor,
        "merged_from": merged,
        "source_topic": "identity",
    }
    return [(merged, orjson.dumps(away)), (survivor, orjson.dumps(absorbed))]


def erased_notice(customer_id: str, ts_ms: int) -> bytes:
    """The notice ``forget`` writes into the erased customer's stream: every flow reading
    ``events.resolved`` drops what it keeps for the id, after the events before it."""
    return orjson.dumps(
        {
            "event_id": f"erased:{customer_id}:{ts_ms}",
            "event_type": ERASED,
            "ts": ts_ms,
            "customer_id": customer_id,
            "source_topic": "identity",
        }
    )
