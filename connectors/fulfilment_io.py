"""Wire encoding of stock_pool's fulfilment outputs (CONTRACT §10) and their metrics.

Ids come from the order and what changed, so a replay after a crash republishes the same id.
Everything in a payload except ``fired_at`` (the wall clock at sending) is a function of the
input. A store task is one JSON object, the same on ``store.tasks`` and in Redis
(``<prefix>tasks:<store_id>``, field = task id), so the console shows what subscribers get.
"""

from __future__ import annotations

from typing import Any

import orjson

from base.flow_names import STOCK_POOL
from base.metrics import ORDERS_SOURCED, SOURCING_LAG, STORE_TASKS
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from connectors.triggers import replenishment_data
from domain.pool import PICKUP_TRANSFER_RULE, PickupTransfer, SourcedOrder, StoreTask
from domain.stock_rules import StockDecision
from domain.timeparse import format_event_time


def _lines(lines: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
    return [{"sku": sku, "qty": qty} for sku, qty in lines]


def sourced_message(order: SourcedOrder, fired_at_ms: int) -> OutMessage:
    data = {
        "order_id": order.order_id,
        "status": order.status,
        "location_id": order.location_id,
        "distance_km": order.distance_km,
        "lines": _lines(order.lines),
        "reason": order.reason,
        "event_time": format_event_time(order.event_time_ms),
        "fired_at": format_event_time(fired_at_ms),
    }
    value = cloud_event(
        event_type="omnistream.order.sourced",
        source=STOCK_POOL,
        subject=order.order_id,
        event_id=cloud_event_id("order.sourced", order.order_id, order.event_id),
        time_ms=order.event_time_ms,
        data=data,
    )
    ORDERS_SOURCED.labels(order.status).inc()
    SOURCING_LAG.labels("orders_sourced").observe(
        max(0.0, (fired_at_ms - order.event_time_ms) / 1000)
    )
    return OutMessage(key=order.order_id.encode(), value=value)


def task_data(task: StoreTask, fired_at_ms: int) -> dict[str, Any]:
    """The ``data`` of a ``store.tasks`` event (CONTRACT §10, plus ``status``/``done_at``)."""
    return {
        "task_id": task.task_id,
        "kind": task.kind,
        "store_id": task.store_id,
        "order_id": task.order_id,
        "customer_id": None,  # stock_pool does not resolve identities
        "lines": _lines(task.lines),
        "pickup_code": task.pickup_code,
        "due_at": format_event_time(task.due_ms),
        "alternative_location_id": task.alternative_location_id,
        "recent_views": None,
        "reason": task.reason,
        "evidence": list(task.evidence),
        "event_time": format_event_time(task.event_time_ms),
        "fired_at": format_event_time(fired_at_ms),
        "status": task.status,
        "done_at": format_event_time(task.done_ms) if task.done_ms is not None else None,
    }


def task_message(task: StoreTask, fired_at_ms: int) -> OutMessage:
    value = cloud_event(
        event_type="omnistream.store.task",
        source=STOCK_POOL,
        subject=task.store_id,
        event_id=cloud_event_id("store.task", task.task_id, task.status),
        time_ms=task.updated_ms,
        data=task_data(task, fired_at_ms),
    )
    STORE_TASKS.labels(task.kind, task.status).inc()
    if task.status == "open":
        SOURCING_LAG.labels("store_tasks").observe(
            max(0.0, (fired_at_ms - task.event_time_ms) / 1000)
        )
    return OutMessage(key=task.store_id.encode(), value=value)


def task_record(task: StoreTask) -> bytes:
    """The task as the store console reads it from Redis: the ``store.tasks`` data without
    ``fired_at``, so what Redis holds is a function of the input alone (a replay writes the
    same bytes)."""
    data = task_data(task, 0)
    del data["fired_at"]
    data["updated_at_ms"] = task.updated_ms
    return orjson.dumps(data)


def transfer_message(transfer: PickupTransfer, fired_at_ms: int) -> OutMessage:
    """The transfer a pickup exception asks for, on ``triggers.replenishment`` beside the
    rules' own (same fields, plus the ``order_id`` it is for)."""
    key = f"{transfer.sku}:{transfer.store_id}"
    decision = StockDecision(
        PICKUP_TRANSFER_RULE,
        "transfer",
        transfer.sku,
        transfer.store_id,
        transfer.region,
        transfer.available_to_sell,
        transfer.reorder_point,
        transfer.suggested_qty,
        transfer.source_location_id,
        transfer.reason,
        (transfer.event_id,),
        transfer.event_time_ms,
    )
    data = {**replenishment_data(decision, fired_at_ms), "order_id": transfer.order_id}
    value = cloud_event(
        event_type="omnistream.trigger.replenishment",
        source=STOCK_POOL,
        subject=key,
        event_id=cloud_event_id("pickup.transfer", transfer.order_id, transfer.sku),
        time_ms=transfer.event_time_ms,
        data=data,
    )
    return OutMessage(key=key.encode(), value=value)
