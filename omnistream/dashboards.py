"""Grafana boards as code: the panels and their PromQL, rendered to dashboard JSON.

``python -m omnistream.dashboards`` writes ``grafana/dashboards/*.json`` (checked in, and a
test fails when they drift from this file); Grafana provisions them from there
(``grafana/provisioning``), and ``omnistream grafana push`` uploads them through
``grafana-client`` (the ``grafana`` extra).

Error and rare-event panels end in ``or vector(0)``: no error is a real zero, not an empty
panel.

Every board has a ``$datasource`` variable (any Prometheus data source; no uid is written
in the boards) and ``$flow`` and ``$region`` (values from ``label_values``; "All" is
``.*``). The panels' PromQL here names no variable: rendering adds ``flow=~"$flow"`` to the
selector of every series the flows export (their own ``flow`` label or the scrape's) and
``region=~"$region"`` to every series with a ``region`` label (``filtered``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from prometheus_client.metrics import MetricWrapperBase

import base.metrics
from domain.experiments import ALPHA, MIN_OUTCOMES

#: Every panel and query reads the data source the board's ``$datasource`` variable picks.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Series of ``omnistream serve`` (job omnistream-serve): no ``flow`` label, not filtered by it.
SERVICE_SERIES = re.compile(r"omnistream_(http|experiment)_")
#: A series selector of the panels' PromQL: a metric name and its optional ``{matchers}``.
SELECTOR = re.compile(r"\b(omnistream_[a-z0-9_]+|up)\b(\{[^}]*\})?")
#: ``kind`` values of stock triggers in ``omnistream_triggers_fired_total`` (a regex).
STOCK_TRIGGER_KINDS = "replenish|transfer|stockout|prepare"
OUT_DIR = Path(__file__).resolve().parent.parent / "grafana" / "dashboards"
#: Share of sourcing decisions that found no location over 5 minutes; the alert rule
#: OmnistreamUnfulfillableOrdersSurge computes the same ratio over 10 minutes.
UNFULFILLABLE_SHARE = (
    'sum(rate(omnistream_orders_sourced_total{outcome="unfulfillable"}[5m])) '
    "/ sum(rate(omnistream_orders_sourced_total[5m]))"
)


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    #: Instant queries: each series' latest value, not its history over the board's time
    #: range (bar gauges and tables of figures that are already totals). A ``table`` always
    #: queries instantly.
    instant: bool = False
    #: A ``table``'s value columns, one per query in ``exprs`` order ("" drops it: a query
    #: that brings a label, such as a verdict, rather than a number). The queries' rows are
    #: merged on their shared labels, one row per label set.
    columns: tuple[str, ...] = ()
    #: Grafana field overrides (a column's unit, a line's style), as the JSON has them.
    overrides: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("omnistream",))


def _rate_by(metric: str, by: str, window: str = "5m", selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{window}]))"


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[5m])))"


OPERATIONS = Board(
    "omnistream-operations",
    "Omnistream · Operations",
    (
        Panel(
            "Events consumed per second",
            (
                (
                    _rate_by("omnistream_events_consumed_total", "flow, topic", "1m"),
                    "{{flow}} {{topic}}",
                ),
            ),
            "ops",
            description="Input messages consumed by each flow, per topic.",
        ),
        Panel(
            "Consumer lag by flow and topic",
            (("sum by (flow, topic) (omnistream_consumer_lag_messages)", "{{flow}} {{topic}}"),),
            "short",
            description="Messages each flow has still to read of each input (end offset − "
            "position, over its partitions; each partition reported by the process that "
            "reads it). Bytewax commits no offsets, so the broker's group tools see none of "
            "this. Alert when it exceeds 5 minutes of consumption for 10 minutes "
            "(OmnistreamConsumerLagHigh).",
        ),
        Panel(
            "Flow up",
            (('up{job="omnistream"}', "{{flow}}"),),
            "none",
            "stat",
            "1 when Prometheus can scrape the flow.",
        ),
        Panel(
            "Processing lag p50 / p99",
            (
                (_quantile(0.5, "omnistream_processing_lag_seconds", "flow"), "p50 {{flow}}"),
                (_quantile(0.99, "omnistream_processing_lag_seconds", "flow"), "p99 {{flow}}"),
            ),
            "s",
            description="Processing time minus event time when effects are written.",
        ),
        Panel(
            "Dead letters per second by reason",
            (
                (
                    _rate_by("omnistream_deadletters_total", "flow, reason") + " or vector(0)",
                    "{{flow}} {{reason}}",
                ),
            ),
            "ops",
        ),
        Panel(
            "Dead-letter ratio",
            (
                (
                    "sum by (flow) (rate(omnistream_deadletters_total[5m])) / "
                    "sum by (flow) (rate(omnistream_events_consumed_total[5m]))",
                    "{{flow}}",
                ),
            ),
            "percentunit",
            description="Alert above 1 % (OmnistreamDeadLetterRatioHigh).",
        ),
        Panel(
            "Redis batch time p99",
            ((_quantile(0.99, "omnistream_redis_write_seconds", "flow"), "{{flow}}"),),
            "s",
        ),
        Panel(
            "Redis errors per second",
            ((_rate_by("omnistream_redis_errors_total", "flow") + " or vector(0)", "{{flow}}"),),
            "ops",
        ),
        Panel(
            "Kafka consumer errors per second",
            (
                (
                    _rate_by(
                        "omnistream_deadletters_total", "flow", selector='reason="kafka_error"'
                    )
                    + " or vector(0)",
                    "{{flow}}",
                ),
            ),
            "ops",
        ),
        Panel(
            "Trigger latency p50 / p99",
            (
                (_quantile(0.5, "omnistream_trigger_latency_seconds", "rule"), "p50 {{rule}}"),
                (
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(omnistream_trigger_latency_seconds_bucket[5m])))",
                    "p99 all rules",
                ),
            ),
            "s",
            description="fired_at − event_time of triggers sent; alert when p99 > 5 s for "
            "5 minutes (OmnistreamTriggerLatencyHigh).",
        ),
        Panel(
            "Rules file reloads",
            (
                (
                    "sum by (outcome) (increase(omnistream_rules_reloads_total[1h])) or vector(0)",
                    "{{outcome}}",
                ),
                ("max(omnistream_rules_active)", "rules in force"),
            ),
            "short",
            description="Changed rules files seen by rule_triggers in the last hour; an "
            "`invalid` one was refused and the previous rules stayed in force.",
        ),
        Panel(
            "Resident memory",
            (('process_resident_memory_bytes{job="omnistream"}', "{{flow}}"),),
            "bytes",
        ),
    ),
)

INVENTORY = Board(
    "omnistream-inventory",
    "Omnistream · Inventory",
    (
        Panel(
            "Stockouts by region",
            (("sum by (region) (omnistream_stock_stockouts)", "{{region}}"),),
            description="Sku × location positions with available ≤ 0.",
        ),
        Panel(
            "Low stock by region",
            (("sum by (region) (omnistream_stock_low_positions)", "{{region}}"),),
            description="Positions below their reorder point (stockouts included).",
        ),
        Panel(
            "Available units by location type",
            (
                (
                    'sum by (location_type) (omnistream_stock_units{figure="available"})',
                    "{{location_type}}",
                ),
            ),
        ),
        Panel(
            "Units by region and figure",
            (("sum by (region, figure) (omnistream_stock_units)", "{{region}} {{figure}}"),),
        ),
        Panel(
            "Reserved units by region",
            (('sum by (region) (omnistream_stock_units{figure="reserved"})', "{{region}}"),),
        ),
        Panel(
            "Replenishment and transfer triggers per second",
            (
                (
                    _rate_by(
                        "omnistream_triggers_fired_total",
                        "kind",
                        selector=f'kind=~"{STOCK_TRIGGER_KINDS}"',
                    )
                    + " or vector(0)",
                    "{{kind}}",
                ),
            ),
            "ops",
            description="triggers.replenishment by kind: replenish, transfer, stockout, prepare.",
        ),
        Panel(
            "Stock positions written per second",
            (("sum(rate(omnistream_stock_positions_written_total[1m]))", "positions"),),
            "ops",
        ),
        Panel(
            "Available to sell by region and location type",
            (
                (
                    "sum by (region, location_type) "
                    '(omnistream_stock_units{figure="available_to_sell"})',
                    "{{region}} {{location_type}}",
                ),
            ),
            description="available − safety stock, never below 0: the units sourcing, the "
            "availability API and the coupon rules may promise.",
        ),
        Panel(
            "In-transit units by region and location type",
            (
                (
                    'sum by (region, location_type) (omnistream_stock_units{figure="in_transit"})',
                    "{{region}} {{location_type}}",
                ),
            ),
            description="Units of transfers sent towards the locations that have not arrived "
            "yet (counted at the destination, not yet available there).",
        ),
        Panel(
            "Delivery orders sourced per second by outcome",
            (
                (
                    _rate_by("omnistream_orders_sourced_total", "outcome") + " or vector(0)",
                    "{{outcome}}",
                ),
            ),
            "ops",
            description="Delivery orders without a location that stock_pool placed at a "
            "shipping location (sourced) or could not place anywhere (unfulfillable).",
        ),
        Panel(
            "Unfulfillable share of sourced orders",
            ((f"{UNFULFILLABLE_SHARE} or vector(0)", "unfulfillable"),),
            "percentunit",
            description="Share of the last 5 minutes' sourcing decisions that found no "
            "shipping location covering every line; alert above 20 % for 10 minutes "
            "(OmnistreamUnfulfillableOrdersSurge).",
        ),
        Panel(
            "Open store tasks by kind, overdue pickups",
            (
                ("sum by (kind) (omnistream_store_tasks_open) or vector(0)", "{{kind}}"),
                ("sum(omnistream_pickup_tasks_overdue)", "overdue pickups"),
            ),
            description="Tasks not yet done or cancelled, and open pickups past their due "
            "time, as of stock_pool's event time; alert when pickups stay overdue for 15 "
            "minutes (OmnistreamPickupTasksOverdue).",
        ),
        Panel(
            "Sourcing lag p50 / p99",
            (
                (_quantile(0.5, "omnistream_sourcing_lag_seconds", "output"), "p50 {{output}}"),
                (_quantile(0.99, "omnistream_sourcing_lag_seconds", "output"), "p99 {{output}}"),
            ),
            "s",
            description="fired_at − event_time of the decisions on orders.sourced and "
            "store.tasks: how long an order waits for its location or its store task.",
        ),
        Panel(
            "Service requests per second by route and status",
            (
                (
                    _rate_by("omnistream_http_requests_total", "route, status"),
                    "{{route}} {{status}}",
                ),
            ),
            "ops",
            description="Requests answered by `omnistream serve` (availability, stock, "
            "customers, store consoles, health and metrics).",
        ),
        Panel(
            "Service latency p99 by route",
            ((_quantile(0.99, "omnistream_http_request_seconds", "route"), "{{route}}"),),
            "s",
            description="Time `omnistream serve` took to answer, Redis round trip included.",
        ),
    ),
)

IDENTITY = Board(
    "omnistream-identity",
    "Omnistream · Identity",
    (
        Panel(
            "Customer base",
            (("max(omnistream_identity_customers)", "customers"),),
            kind="stat",
            description="Customers in the identity graph (records created minus merged away "
            "or erased), counted in Redis by identity_stitch's own writes: it survives "
            "restarts and replays. Every identity_stitch process reports the same global "
            "count, hence max, not sum.",
        ),
        Panel(
            "Customers by segment",
            (("max by (segment) (omnistream_customers)", "{{segment}}"),),
            description="Profiles per segment (new, active, loyal, at_risk, lapsed; CONTRACT "
            "§11), from the segment counts rule_triggers keeps in Redis; global, hence max "
            "over the processes.",
        ),
        Panel(
            "Identifiers linked per second",
            (("sum(rate(omnistream_identity_links_total[5m]))", "links"),),
            "ops",
        ),
        Panel(
            "Merges per second",
            (("sum(rate(omnistream_identity_merges_total[5m]))", "merges"),),
            "ops",
        ),
        Panel(
            "Conflicts per second by reason",
            (
                (
                    _rate_by("omnistream_identity_conflicts_total", "reason") + " or vector(0)",
                    "{{reason}}",
                ),
            ),
            "ops",
        ),
        Panel(
            "Junk or blocked identifiers per second",
            (
                (
                    _rate_by("omnistream_identity_junk_identifiers_total", "type")
                    + " or vector(0)",
                    "{{type}}",
                ),
            ),
            "ops",
        ),
        Panel(
            "Events without identifier per second",
            (("sum(rate(omnistream_identity_unresolved_events_total[5m]))", "unresolved"),),
            "ops",
        ),
        Panel(
            "Batch retries per second",
            (("sum(rate(omnistream_identity_batch_retries_total[5m]))", "retries"),),
            "ops",
            description="Batches re-read because another worker changed the same data.",
        ),
    ),
)

_COUPONS = f'kind!~"{STOCK_TRIGGER_KINDS}"'
_TRIGGERS_BY_ARM = (
    "sum by (rule, variant) (omnistream_triggers_fired_total{" + _COUPONS + "}) "
    'or sum by (rule, variant) (omnistream_triggers_suppressed_total{reason="control"})'
)

#: The experiment report's interval: "95 %".
_CI = f"{round((1 - ALPHA) * 100)} %"


def _arm(metric: str) -> str:
    """A per-arm figure of ``omnistream serve``'s experiment report: every replica of the
    service reads the same Redis and reports the same figure, hence max."""
    return f"max by (rule, variant) ({metric})"


MARKETING = Board(
    "omnistream-marketing",
    "Omnistream · Marketing",
    (
        Panel(
            "Coupon triggers per second by rule and variant",
            (
                (
                    _rate_by("omnistream_triggers_fired_total", "rule, variant", selector=_COUPONS)
                    + " or vector(0)",
                    "{{rule}} {{variant}}",
                ),
            ),
            "ops",
            description="Coupons sent to triggers.coupon.",
        ),
        Panel(
            "Holdouts per second by rule",
            (
                (
                    _rate_by(
                        "omnistream_triggers_suppressed_total", "rule", selector='reason="control"'
                    )
                    + " or vector(0)",
                    "{{rule}}",
                ),
            ),
            "ops",
            description="Customers drawn into a rule's control group (triggers.holdout only).",
        ),
        Panel(
            "Held back per second by reason",
            (
                (
                    _rate_by("omnistream_triggers_suppressed_total", "reason") + " or vector(0)",
                    "{{reason}}",
                ),
            ),
            "ops",
            description="cooldown, frequency cap, control group.",
        ),
        Panel(
            "Conversions per second by rule and variant",
            (
                (
                    _rate_by("omnistream_trigger_conversions_total", "rule, variant")
                    + " or vector(0)",
                    "{{rule}} {{variant}}",
                ),
            ),
            "ops",
        ),
        Panel(
            "Conversion rate per trigger (uplift against control)",
            (
                (
                    "sum by (rule, variant) (omnistream_trigger_conversions_total) / "
                    f"({_TRIGGERS_BY_ARM}) or vector(0)",
                    "{{rule}} {{variant}}",
                ),
            ),
            "percentunit",
            description="Conversions of a rule × variant over the triggers (or holdouts) it "
            "made since the flow started; a variant above `control` is uplift.",
        ),
        Panel(
            "Attributed revenue by channel (per model)",
            (("sum by (model, channel) (omnistream_attributed_revenue)", "{{model}} {{channel}}"),),
            "currencyCNY",
            description="Running totals of the attribution flow (the same as Redis and "
            "`omnistream attribution report`).",
        ),
        Panel(
            "Attributed conversions by channel (markov)",
            (
                (
                    'sum by (channel) (omnistream_attributed_conversions{model="markov"})',
                    "{{channel}}",
                ),
            ),
            description="Conversions credited to each channel by the Markov model (fractional).",
        ),
        Panel(
            "Experiments: conversion rate by rule and variant",
            ((_arm("omnistream_experiment_conversion_rate"), "{{rule}} {{variant}}"),),
            "percentunit",
            "bargauge",
            "Customers who converted ÷ customers drawn into each arm (sent its coupon, or "
            "held out for `control`), each customer counted once, since the experiment "
            "began: the figures of `omnistream experiments report`, recomputed by "
            "`omnistream serve` at most every `service.experiments_cache_seconds` (30 s).",
            instant=True,
        ),
        Panel(
            f"Experiments: uplift against control ({_CI} interval, p-value, verdict)",
            (
                (_arm("omnistream_experiment_uplift"), ""),
                (_arm("omnistream_experiment_uplift_ci_low"), ""),
                (_arm("omnistream_experiment_uplift_ci_high"), ""),
                (_arm("omnistream_experiment_p_value"), ""),
                (
                    "max by (rule, variant, verdict) "
                    '(omnistream_experiment_verdict{variant!="control"})',
                    "",
                ),
            ),
            "percentunit",
            "table",
            "Each variant's conversion rate minus its rule's control's (absolute), with "
            f"the {_CI} Wald interval and the two-sided p-value (`omnistream experiments "
            f"report`). `too small`: fewer than {MIN_OUTCOMES} converted or {MIN_OUTCOMES} "
            "not-converted customers in an arm, too few for the interval's normal "
            f"approximation; `significant`: p < {ALPHA}.",
            columns=("uplift", f"{_CI} low", f"{_CI} high", "p", ""),
            overrides=(
                {
                    "matcher": {"id": "byName", "options": "p"},
                    "properties": [
                        {"id": "unit", "value": "none"},
                        {"id": "decimals", "value": 4},
                    ],
                },
            ),
        ),
        Panel(
            f"Experiments: uplift against control over time ({_CI} interval)",
            (
                (_arm("omnistream_experiment_uplift"), "{{rule}} {{variant}} uplift"),
                (
                    _arm("omnistream_experiment_uplift_ci_low"),
                    "{{rule}} {{variant}} " + f"{_CI} low",
                ),
                (
                    _arm("omnistream_experiment_uplift_ci_high"),
                    "{{rule}} {{variant}} " + f"{_CI} high",
                ),
            ),
            "percentunit",
            description="How each variant's uplift and its interval moved as customers came "
            "in: an interval that no longer spans 0 is a difference the data supports.",
            overrides=(
                {
                    "matcher": {"id": "byRegexp", "options": f".* {_CI} (low|high)"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                    ],
                },
            ),
        ),
    ),
)

BOARDS: tuple[Board, ...] = (OPERATIONS, INVENTORY, MARKETING, IDENTITY)


def _labelled(label: str) -> frozenset[str]:
    """Series names (with their type's suffixes) of base/metrics.py with ``label``."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for metric in vars(base.metrics).values():
        # prometheus_client keeps the name, type and label names in these attributes only.
        if isinstance(metric, MetricWrapperBase) and label in metric._labelnames:
            names |= {metric._name + x for x in suffixes.get(str(metric._type), ("",))}
    return frozenset(names)


_REGION_SERIES = _labelled("region")


def filtered(expr: str) -> str:
    """``expr`` with the board's variables in its selectors: ``flow=~"$flow"`` on every
    series a flow exports (``up`` of the flows' job included; the service's series have no
    ``flow``), ``region=~"$region"`` on the series with a ``region`` label."""

    def add(match: re.Match[str]) -> str:
        name, matchers = match.group(1), (match.group(2) or "{}")[1:-1]
        if name == "up" and 'job="omnistream"' not in matchers:
            return match.group(0)
        extra = []
        if not SERVICE_SERIES.match(name):
            extra.append('flow=~"$flow"')
        if name in _REGION_SERIES:
            extra.append('region=~"$region"')
        if not extra:
            return match.group(0)
        return name + "{" + ", ".join(m for m in (matchers, *extra) if m) + "}"

    return SELECTOR.sub(add, expr)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value query variable from ``label_values``; "All" is the regex ``.*``."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }


TEMPLATING: dict[str, Any] = {
    "list": [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "refresh": 1,
            "regex": "",
            "current": {},
            "options": [],
        },
        _variable("flow", "Flow", 'label_values(up{job="omnistream"}, flow)'),
        _variable("region", "Region", "label_values(omnistream_stock_units, region)"),
    ]
}


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def _table_transformations(panel: Panel) -> list[dict[str, Any]]:
    """Merge the queries' frames into one row per label set, drop the evaluation time, and
    name each query's value column (Grafana calls them ``Value #<refId>``)."""
    assert len(panel.columns) == len(panel.exprs) > 1, panel.title
    named = dict(
        zip((f"Value #{_ref_id(i)}" for i in range(len(panel.exprs))), panel.columns, strict=True)
    )
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True}
                | {v: True for v, name in named.items() if not name},
                "renameByName": {v: name for v, name in named.items() if name},
                "indexByName": {},
            },
        },
    ]


def _target(panel: Panel, index: int, expr: str, legend: str) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": filtered(expr),
        "legendFormat": legend,
        "refId": _ref_id(index),
    }
    if panel.kind == "table":
        target |= {"format": "table", "instant": True, "range": False}
    elif panel.instant:
        target |= {"instant": True, "range": False}
    return target


def panel_json(panel: Panel, panel_id: int) -> dict[str, Any]:
    width, height = 12, 8
    defaults: dict[str, Any] = {"unit": panel.unit}
    doc: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {
            "x": (panel_id - 1) % 2 * width,
            "y": (panel_id - 1) // 2 * height,
            "w": width,
            "h": height,
        },
        "fieldConfig": {"defaults": defaults, "overrides": list(panel.overrides)},
        "targets": [
            _target(panel, index, expr, legend) for index, (expr, legend) in enumerate(panel.exprs)
        ],
    }
    if panel.kind == "bargauge":
        defaults["min"] = 0
        doc["options"] = {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
    if panel.kind == "table":
        doc["transformations"] = _table_transformations(panel)
    return doc


def board_json(board: Board) -> dict[str, Any]:
    return {
        "uid": board.uid,
        "title": board.title,
        "tags": list(board.tags),
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": TEMPLATING,
        "panels": [panel_json(p, i) for i, p in enumerate(board.panels, start=1)],
    }


def rendered() -> dict[str, bytes]:
    """File name → JSON bytes of every board."""
    return {
        f"{board.uid}.json": orjson.dumps(board_json(board), option=orjson.OPT_INDENT_2) + b"\n"
        for board in BOARDS
    }


def write_boards(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in rendered().items():
        path = out_dir / name
        path.write_bytes(content)
        paths.append(path)
    return paths


#: The extra that brings grafana-client (pyproject.toml says why it is not a base dependency).
GRAFANA_EXTRA = "grafana"
#: Seconds grafana-client waits for Grafana to connect and to answer one board's upload.
PUSH_TIMEOUT_S = 10.0
_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _shown_url(url: str) -> str:
    """``url`` without user and password (``http://admin:secret@host`` is accepted)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _connection_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused", "Name or
    service not known"): the HTTP stack wraps the socket's error several layers deep (in
    ``args`` and as the cause), each layer's message repeating the one below with object
    reprs. Else the ``[Errno N] …`` part of the message, else its first line."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if type(current).__module__ in {"builtins", "socket"} and isinstance(current, OSError):
            return str(current.strerror or current).strip()
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    text = str(exc)
    match = _ERRNO_REASON.search(text)
    if match:
        return match.group(1).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


def _status(exc: Any) -> str:
    """``403: Permission denied``: a refused request's status and Grafana's own message (the
    JSON body's ``message``), without grafana-client's prefix."""
    response = getattr(exc, "response", None)
    message = response.get("message") if isinstance(response, dict) else None
    return f"{exc.status_code}: {message}" if message else str(exc.status_code)


def push_boards(url: str, token: str, folder_uid: str | None = None) -> int:
    """Upload every board to a Grafana server (create or overwrite), through grafana-client.

    Why it never raises for a Grafana that is away or refuses: an operator runs this by hand
    or from a deploy job, and needs the one line saying what went wrong, not the HTTP stack's
    traceback. So every failure is one line on stderr and exit status 1 (2 for a URL that is
    not ``http(s)://host``); boards pushed before the failure stay pushed (each upload is a
    whole overwrite, so running it again is safe).
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        print(
            f"omnistream: --url must be http://HOST[:PORT] or https://…, got {url!r}",
            file=sys.stderr,
        )
        return 2
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import (
            GrafanaClientError,
            GrafanaException,
            GrafanaTimeoutError,
            GrafanaUnauthorizedError,
        )
    except ModuleNotFoundError:
        print(
            f"omnistream: `grafana push` needs the `{GRAFANA_EXTRA}` extra, which is not "
            f"installed: pip install 'omnistream[{GRAFANA_EXTRA}]'",
            file=sys.stderr,
        )
        return 1
    shown = _shown_url(url)
    api = GrafanaApi.from_url(url, credential=token, timeout=PUSH_TIMEOUT_S)
    for board in BOARDS:
        payload: dict[str, Any] = {
            "dashboard": board_json(board),
            "overwrite": True,
            "message": "omnistream grafana push",
        }
        if folder_uid:
            payload["folderUid"] = folder_uid
        try:
            api.dashboard.update_dashboard(payload)
        except GrafanaUnauthorizedError:
            problem = (
                f"token refused by Grafana at {shown} (401): --token needs a service-account "
                "token with editor rights"
            )
        except GrafanaTimeoutError:
            problem = f"Grafana at {shown} did not answer within {PUSH_TIMEOUT_S:g} s"
        except GrafanaClientError as exc:
            problem = f"Grafana at {shown} refused board {board.uid} ({_status(exc)})"
            if exc.status_code == 403:
                problem = (
                    f"token refused by Grafana at {shown} ({_status(exc)}): it lacks editor rights"
                )
        except GrafanaException as exc:
            if exc.status_code:  # the server's 5xx
                problem = f"Grafana at {shown} failed on board {board.uid} ({_status(exc)})"
            else:  # an HTTP failure grafana-client wrapped
                problem = f"Grafana at {shown} failed: {_connection_reason(exc)}"
        except OSError as exc:  # the HTTP stack's connection errors are OSErrors
            problem = f"cannot connect to Grafana at {shown}: {_connection_reason(exc)}"
        else:
            print(f"pushed {board.uid} ({board.title})")
            continue
        print(f"omnistream: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    for written in write_boards():
        print(written)
    sys.exit(0)
