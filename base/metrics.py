"""Prometheus metrics of the flows, in ``prometheus_client``'s default registry.

Bytewax serves this registry together with its own per-step metrics on the flow process's
``/metrics`` (``BYTEWAX_DATAFLOW_API_ENABLED``), so there is one endpoint per process. No label
carries an unbounded value (no sku, customer or event id), nor free text of the input: the
attribution channel is one of ``attribution.channels`` or ``other``
(``tests/unit/test_metric_labels.py`` walks every label after hostile input).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "omnistream_events_consumed_total",
    "Input messages consumed, by flow and topic (before validation).",
    ["flow", "topic"],
)
CONSUMER_LAG = Gauge(
    "omnistream_consumer_lag_messages",
    "Messages of an input partition the flow has still to read: the partition's end offset "
    "(high watermark of the consumer's last fetch) minus the offset of the next message the "
    "flow reads, by flow, topic (without prefix) and partition; set every source batch by "
    "the process that reads the partition, absent until its first fetch answered.",
    ["flow", "topic", "partition"],
)
DEADLETTERS = Counter(
    "omnistream_deadletters_total",
    "Messages sent to the deadletter topic, by flow and reason code.",
    ["flow", "reason"],
)
PROCESSING_LAG = Histogram(
    "omnistream_processing_lag_seconds",
    "Processing time minus event time when an effect is written (Redis/outputs).",
    ["flow"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 86400),
)
STOCK_UNITS = Gauge(
    "omnistream_stock_units",
    "Units in the stock pool by region, location type and figure (on_hand, reserved, "
    "available, available_to_sell, in_transit).",
    ["region", "location_type", "figure"],
)
STOCK_STOCKOUTS = Gauge(
    "omnistream_stock_stockouts",
    "Sku × location positions with available ≤ 0, by region and location type.",
    ["region", "location_type"],
)
STOCK_LOW = Gauge(
    "omnistream_stock_low_positions",
    "Sku × location positions below their reorder point, by region and location type.",
    ["region", "location_type"],
)
STOCK_POSITIONS_WRITTEN = Counter(
    "omnistream_stock_positions_written_total",
    "Sku × location positions written to Redis (after collapsing a batch to the last per key).",
)
REDIS_WRITE_SECONDS = Histogram(
    "omnistream_redis_write_seconds",
    "Duration of one pipelined Redis write of a batch, by flow.",
    ["flow"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REDIS_ERRORS = Counter(
    "omnistream_redis_errors_total",
    "Failed Redis attempts, each one (the one retry policy retries them with back-off), by flow.",
    ["flow"],
)
IDENTITY_LINKS = Counter(
    "omnistream_identity_links_total",
    "Identifiers newly linked to a customer.",
)
IDENTITY_MERGES = Counter(
    "omnistream_identity_merges_total",
    "Customers merged into an older one.",
)
IDENTITY_CONFLICTS = Counter(
    "omnistream_identity_conflicts_total",
    "Links refused, by reason (two_users, two_members, limit_<type>).",
    ["reason"],
)
IDENTITY_JUNK = Counter(
    "omnistream_identity_junk_identifiers_total",
    "Identifiers refused as junk or blocked (seen with too many customers), by type.",
    ["type"],
)
IDENTITY_CUSTOMERS_CREATED = Counter(
    "omnistream_identity_customers_created_total",
    "Customers created (first sighting of an identifier that links to no one).",
)
IDENTITY_UNRESOLVED = Counter(
    "omnistream_identity_unresolved_events_total",
    "Events without a usable identifier (e.g. a walk-in sale without loyalty card).",
)
IDENTITY_CAS_RETRIES = Counter(
    "omnistream_identity_batch_retries_total",
    "Identity batches re-read and re-resolved because another worker changed the same data.",
)
TRIGGERS_FIRED = Counter(
    "omnistream_triggers_fired_total",
    "Triggers sent to triggers.coupon or triggers.replenishment, by rule, kind and variant.",
    ["rule", "kind", "variant"],
)
TRIGGERS_SUPPRESSED = Counter(
    "omnistream_triggers_suppressed_total",
    "Rule matches not sent, by rule, variant and reason: cooldown, cap, no_consent, "
    "no_stock, gone_customer (a clearance offer to an id merged away or erased), or control "
    "(the customer drew the control group; the trigger went to triggers.holdout).",
    ["rule", "variant", "reason"],
)
TRIGGER_CONVERSIONS = Counter(
    "omnistream_trigger_conversions_total",
    "Purchases by triggered or held-out customers within the conversion window, by rule, "
    "variant (control included) and how: redeemed (the coupon code at a till) or purchase.",
    ["rule", "variant", "via"],
)
COUPON_REDEMPTIONS = Counter(
    "omnistream_coupon_redemptions_total",
    "Coupons whose code a till scanned while their conversion window was open, by rule and "
    "variant (what redemption_review rules judge).",
    ["rule", "variant"],
)
TRIGGER_INSIGHTS = Counter(
    "omnistream_trigger_insights_total",
    "Insights published on triggers.insights, by the reviewed rule, variant and kind "
    "(low_redemption: a day's coupons redeemed under a redemption_review threshold).",
    ["rule", "variant", "kind"],
)
TRIGGER_LATENCY = Histogram(
    "omnistream_trigger_latency_seconds",
    "fired_at − event_time of every trigger sent (for a coupon held through quiet hours, "
    "from the end of the quiet hours), by rule.",
    ["rule"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
RULES_RELOADS = Counter(
    "omnistream_rules_reloads_total",
    "Changed rules files seen by rule_triggers: ok (now in force) or invalid (refused; the "
    "previous rules stay in force).",
    ["outcome"],
)
RULES_FILE_REFUSED = Gauge(
    "omnistream_rules_file_refused",
    "1 while the rules file on disk is one rule_triggers refused at reload (the previous "
    "rules are in force, not the file's), 0 once the file in force is the file on disk.",
)
RULES_ACTIVE = Gauge(
    "omnistream_rules_active",
    "Enabled rules in force in rule_triggers.",
)
TRIGGER_INPUTS_SKIPPED = Counter(
    "omnistream_trigger_inputs_skipped_total",
    "Valid inputs of rule_triggers with nothing for the rules, by reason (no_customer, "
    "not_perishable_receipt, gone_customer: a clearance offer to an id merged away or erased).",
    ["reason"],
)
CUSTOMERS_BY_SEGMENT = Gauge(
    "omnistream_customers",
    "Customer profiles in Redis by lifecycle segment (new, active, loyal, at_risk, lapsed), "
    "as the last profile write read them back: global, every rule_triggers process reports "
    "the same number (take max, not sum).",
    ["segment"],
)
RULE_STATE_HANDOVERS = Counter(
    "omnistream_rule_state_handovers_total",
    "Per-customer state moved on an identity change, by flow and kind: merged (a merged "
    "customer's state handed to its survivor), absorbed (a survivor took it over), erased "
    "(a forgotten customer's state dropped).",
    ["flow", "kind"],
)
ATTRIBUTED_REVENUE = Gauge(
    "omnistream_attributed_revenue",
    "Revenue credited to each channel by each attribution model since the totals began "
    "(absolute, from the flow's totals; the same figures as Redis). A channel not in "
    'attribution.channels is added into channel="other" (Redis keeps it by name).',
    ["model", "channel"],
)
ATTRIBUTED_CONVERSIONS = Gauge(
    "omnistream_attributed_conversions",
    "Conversions credited to each channel by each model (fractional: a conversion's credit "
    'is split like its revenue); channels outside attribution.channels under "other".',
    ["model", "channel"],
)
ATTRIBUTION_CONVERSIONS = Counter(
    "omnistream_attribution_conversions_total",
    "Conversions credited (each once), by whether they had touches (touched) or not (direct).",
    ["path"],
)
ORDERS_SOURCED = Counter(
    "omnistream_orders_sourced_total",
    "Delivery orders without a location that stock_pool sourced, by outcome (sourced, "
    "unfulfillable).",
    ["outcome"],
)
SOURCING_LAG = Histogram(
    "omnistream_sourcing_lag_seconds",
    "fired_at − event_time of each decision stock_pool publishes on orders.sourced and "
    "store.tasks, by output (orders_sourced, store_tasks): how long an order waits for its "
    "decision.",
    ["output"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
STORE_TASKS = Counter(
    "omnistream_store_tasks_total",
    "Store task events published on store.tasks, by kind (pickup_prep, pickup_exception) and "
    "status (open, done, cancelled).",
    ["kind", "status"],
)
STORE_TASKS_OPEN = Gauge(
    "omnistream_store_tasks_open",
    "Store tasks not yet done or cancelled, by kind, as of the flow's event time.",
    ["kind"],
)
PICKUPS_OVERDUE = Gauge(
    "omnistream_pickup_tasks_overdue",
    "Open pickup tasks (pickup_prep and pickup_exception) whose due time has passed, as of "
    "the flow's event time.",
)
HTTP_REQUESTS = Counter(
    "omnistream_http_requests_total",
    "Requests answered by omnistream serve, by route template and status code.",
    ["route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "omnistream_http_request_seconds",
    "Time omnistream serve took to answer a request (Redis round trip included), by route.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
IDENTITY_CUSTOMERS = Gauge(
    "omnistream_identity_customers",
    "Customers in the identity graph (records created minus merged away or erased), as the "
    "last batch's write in Redis answered: survives restarts; every identity_stitch process "
    "reports the same global number (take max, not sum).",
)
