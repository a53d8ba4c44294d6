"""Topic names of CONTRACT §1 and §3, before the configurable prefix is applied."""

from __future__ import annotations

CLICKSTREAM = "clickstream"
POS_SALES = "pos.sales"
WMS_MOVEMENTS = "wms.movements"
INPUT_TOPICS: tuple[str, ...] = (CLICKSTREAM, POS_SALES, WMS_MOVEMENTS)

EVENTS_RESOLVED = "events.resolved"
IDENTITY_CHANGES = "identity.changes"
TRIGGERS_COUPON = "triggers.coupon"
TRIGGERS_HOLDOUT = "triggers.holdout"
TRIGGERS_REPLENISHMENT = "triggers.replenishment"
TRIGGERS_INSIGHTS = "triggers.insights"
ATTRIBUTION_CREDITS = "attribution.credits"
STOCK_CHANGES = "stock.changes"
ORDERS_SOURCED = "orders.sourced"
STORE_TASKS = "store.tasks"
DEADLETTER = "deadletter"

#: Output topics whose messages are CloudEvents (CONTRACT §3), published in structured mode
#: with the ``content-type`` header of the Kafka binding. ``events.resolved`` and
#: ``deadletter`` are plain JSON and carry no such header.
CLOUDEVENT_TOPICS: frozenset[str] = frozenset(
    {
        IDENTITY_CHANGES,
        TRIGGERS_COUPON,
        TRIGGERS_HOLDOUT,
        TRIGGERS_REPLENISHMENT,
        TRIGGERS_INSIGHTS,
        ATTRIBUTION_CREDITS,
        STOCK_CHANGES,
        ORDERS_SOURCED,
        STORE_TASKS,
    }
)

ALL_TOPICS: tuple[str, ...] = (
    *INPUT_TOPICS,
    EVENTS_RESOLVED,
    IDENTITY_CHANGES,
    TRIGGERS_COUPON,
    TRIGGERS_HOLDOUT,
    TRIGGERS_REPLENISHMENT,
    TRIGGERS_INSIGHTS,
    ATTRIBUTION_CREDITS,
    STOCK_CHANGES,
    ORDERS_SOURCED,
    STORE_TASKS,
    DEADLETTER,
)
