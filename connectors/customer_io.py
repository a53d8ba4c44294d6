"""Wire encoding of rule_triggers' store visits: a ``customer_visit`` task (CONTRACT §10,
§11) on ``store.tasks`` and in the store's task hash, the same JSON in both places (minus
``fired_at`` in Redis), as stock_pool writes its pickup tasks (``connectors.fulfilment_io``),
so the store console shows a visiting customer beside the pickups.

The task id comes from the customer, the store and the event of the visit, so a replay
republishes the same id and rewrites the same record. Each visit is also indexed by its
``updated_at_ms`` in the store's visit index (internal, ``state.stock_store``), so the
visits past the retention are removed without reading the store's whole task hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from base.flow_names import RULE_TRIGGERS
from base.metrics import STORE_TASKS
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from domain.customer_rules import VisitTask
from domain.timeparse import format_event_time

#: How long a visit stays on the console (event time after the check-in).
VISIT_MINUTES = 30


def visit_task_id(visit: VisitTask) -> str:
    digest = hashlib.sha256(
        "\x1f".join(("visit", visit.customer_id, visit.store_id, *visit.evidence)).encode()
    )
    return "visit-" + digest.hexdigest()[:16]


def visit_data(visit: VisitTask, fired_at_ms: int | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": visit_task_id(visit),
        "kind": "customer_visit",
        "store_id": visit.store_id,
        "order_id": None,
        "customer_id": visit.customer_id,
        "lines": None,
        "pickup_code": None,
        "due_at": format_event_time(visit.event_time_ms + VISIT_MINUTES * 60_000),
        "alternative_location_id": None,
        "recent_views": [
            {"sku": sku, "ts": format_event_time(ts)} for sku, ts in visit.recent_views
        ],
        "reason": visit.reason,
        "evidence": list(visit.evidence),
        "event_time": format_event_time(visit.event_time_ms),
        "status": "open",
        "done_at": None,
        "rule_id": visit.rule_id,
    }
    if fired_at_ms is not None:
        data["fired_at"] = format_event_time(fired_at_ms)
    return data


def visit_message(visit: VisitTask, fired_at_ms: int) -> OutMessage:
    value = cloud_event(
        event_type="omnistream.store.task",
        source=RULE_TRIGGERS,
        subject=visit.store_id,
        event_id=cloud_event_id("store.task", visit_task_id(visit), "open"),
        time_ms=visit.event_time_ms,
        data=visit_data(visit, fired_at_ms),
    )
    STORE_TASKS.labels("customer_visit", "open").inc()
    return OutMessage(key=visit.store_id.encode(), value=value)


def visit_record(visit: VisitTask) -> bytes:
    """The task as the console reads it from Redis: a function of the input alone."""
    data = visit_data(visit, None)
    data["updated_at_ms"] = visit.event_time_ms
    return orjson.dumps(data)


#: (store id, task id, record or None to remove it, the visit's ``updated_at_ms``): what a
#: visit writer sets in Redis (``state.interfaces.TaskWrite``; the time indexes the visit).
TaskRecord = tuple[str, str, bytes | None, int]


def visit_writes(visits: Sequence[VisitTask]) -> list[TaskRecord]:
    """The batch's visit records, each indexed by its ``updated_at_ms`` (``visit_record``)."""
    return [(v.store_id, visit_task_id(v), visit_record(v), v.event_time_ms) for v in visits]


def visit_prunes(
    visits: Sequence[VisitTask],
    retention_ms: int,
    prune: Callable[[str], bool] = lambda _store: True,
) -> list[tuple[str, int]]:
    """(store id, time): each store of the batch whose visits indexed before that time —
    the retention before its newest visit — are to go (stock_pool prunes its own tasks;
    visits are ours). Only for the stores ``prune`` names: the retention is hours, so the
    writer asks at most once a minute per store."""
    newest: dict[str, int] = {}
    for v in visits:
        newest[v.store_id] = max(v.event_time_ms, newest.get(v.store_id, v.event_time_ms))
    return [
        (store_id, latest_ms - retention_ms)
        for store_id, latest_ms in newest.items()
        if prune(store_id)
    ]


def visits_of_erased(
    customer_ids: Sequence[str], store_ids: Sequence[str], tasks_of: Callable[[str], dict[str, str]]
) -> list[TaskRecord]:
    """The removal of every visit task naming an erased customer, in every store's task
    hash and visit index (visits are keyed by store; erasures are rare, so each store's
    hash is read)."""
    erased = set(customer_ids)
    removals: list[TaskRecord] = []
    for store_id in store_ids:
        for task_id, raw in tasks_of(store_id).items():
            if not task_id.startswith("visit-"):
                continue
            try:
                customer = orjson.loads(raw).get("customer_id")
            except orjson.JSONDecodeError:
                continue
            if customer in erased:
                removals.append((store_id, task_id, None, 0))
    return removals
