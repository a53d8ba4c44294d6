"""Metric labels stay bounded by the configuration whatever the input says.

Every flow runs in-process on generated traffic in which thousands of free-text values are
hostile: campaign sources, channels, event types, locations, skus, identifiers, reasons, rule
ids of coupons, raw bytes that are no JSON. Then every omnistream_* series of the registry is
walked: no label value may carry any of that text, and each label's values must come from
the configuration (topics, flows, the reference data, the rules file, attribution.channels)
or from a fixed set of codes.

Where each ``.labels(`` call of the project takes its values (checked here, or by the route
tests of the service and the lag tests of the Kafka source):

- configuration: ``flow`` (flow names), ``topic`` (CONTRACT topics of the flow's inputs),
  ``partition`` (the topic's partitions), ``region``/``location_type`` (locations file),
  ``rule``/``variant`` (rules file), ``channel`` (attribution.channels, the rest ``other``);
- fixed codes: dead-letter ``reason``, identity conflict ``reason`` and junk ``type``,
  trigger ``kind``, ``reason`` and ``via``, ``outcome``, ``figure``, ``segment``, ``path``,
  ``model``, store task ``kind``/``status``, sourcing ``output``;
- the service: ``route`` is the matched route's template (``unmatched`` otherwise) and
  ``status`` an HTTP status code (omnistream.serve.route_label).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from base import topics
from base.config import Config
from base.flow_names import ATTRIBUTION, IDENTITY_STITCH, RULE_TRIGGERS, STOCK_POOL
from connectors.generator import TrafficModel
from connectors.reference_files import load_reference
from connectors.rules_file import load_rules
from domain.attribution import MODELS
from flows import attribution, identity_stitch, rule_triggers, stock_pool
from flows.attribution import OTHER_CHANNEL, TotalsGauges, _totals_writer, channel_allowlist
from state.attribution_store import MemoryAttributionStore
from state.coupon_store import MemoryCouponStore
from state.memory_identity import MemoryIdentityStore
from state.memory_stock import MemoryStockStore
from tests.inprocess import CustomerStores, MemoryIO, run

#: Every hostile value contains it; no label value may.
MARK = "hostile"
EVENTS = 3000
COUPONS_PER_PURCHASE = 8
#: The dead-letter reason codes of the contract (docs/metrics.md lists them).
DEADLETTER_REASONS = frozenset(
    {
        "malformed_json",
        "too_large",
        "missing_field",
        "bad_type",
        "bad_value",
        "bad_timestamp",
        "unknown_event_type",
        "unknown_sku",
        "unknown_location",
        "unknown_topic",
        "duplicate_order",
        "too_late",
        "kafka_error",
    }
)
#: A label of fixed codes has at most this many values.
FIXED_CODES_MAX = 20

Series = tuple[str, tuple[tuple[str, str], ...]]


def omnistream_series() -> dict[Series, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.name.startswith("omnistream_")
        for sample in family.samples
    }


def moved(before: dict[Series, float], after: dict[Series, float]) -> set[Series]:
    """The series that appeared or changed value: what a run fed (earlier tests of the
    session may have made the same series already, so appearing alone is not enough)."""
    return {series for series, value in after.items() if before.get(series) != value}


def strings_of(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of every string field of a JSON value."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in strings_of(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in strings_of(v, (*path, str(i)))]
    return [path] if isinstance(value, str) else []


def replaced(value: Any, path: tuple[str, ...], new: str) -> None:
    for step in path[:-1]:
        value = value[int(step)] if isinstance(value, list) else value[step]
    if isinstance(value, list):
        value[int(path[-1])] = new
    else:
        value[path[-1]] = new


def hostile(value: bytes, n: int, rng: random.Random) -> bytes:
    """The message with free text of its own: its campaign source always, and one string
    field drawn at random (any field: event type, ids, sku, store, reason …); one message
    in 13 is no JSON at all."""
    if n % 13 == 0:
        return f"{MARK} bytes {n} {{".encode()
    record = orjson.loads(value)
    if not isinstance(record, dict):
        return value
    campaign = record.get("campaign")
    if isinstance(campaign, dict) and n % 2 == 0:
        campaign["source"] = f"{MARK}-source-{n}"
    if "channel" in record and n % 3 == 0:
        record["channel"] = f"{MARK}-channel-{n}"
    fields = strings_of(record)
    if fields and n % 2 == 1:
        replaced(record, rng.choice(fields), f"{MARK}-{n}")
    return orjson.dumps(record)


def coupons_before_purchases(resolved: list[tuple[bytes | None, bytes]]) -> list[bytes]:
    """Coupons in the minutes before each purchase of a resolved customer, of a rule no rules
    file has: a touch of channel ``coupon:<rule_id>`` that the purchase credits."""
    out = []
    for n, (_, value) in enumerate(resolved):
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        data = event.get("data", event) if isinstance(event, dict) else None
        if not isinstance(data, dict) or data.get("event_type") not in ("order_placed", "sale"):
            continue
        customer, ts = data.get("customer_id"), data.get("ts")  # epoch ms on this topic
        if not isinstance(customer, str) or not isinstance(ts, int):
            continue
        for k in range(COUPONS_PER_PURCHASE):
            sent = datetime.fromtimestamp(ts / 1000, UTC) - timedelta(minutes=1 + k)
            coupon = {
                "specversion": "1.0",
                "id": f"{MARK}-coupon-{n}-{k}",
                "source": "omnistream.rule_triggers",
                "type": "omnistream.trigger.coupon",
                "time": sent.isoformat().replace("+00:00", "Z"),
                "data": {"rule_id": f"{MARK}-rule-{n}-{k}", "customer_id": customer},
            }
            out.append(orjson.dumps(coupon))
    return out


@pytest.fixture(scope="module")
def new_series(tmp_path_factory: pytest.TempPathFactory) -> set[Series]:
    """The omnistream series the four flows added on hostile input."""
    # The Markov chain is left to the end: its removal effects cost a pass over the paths
    # per channel, and the label is all this test looks at.
    config = Config().with_overrides(
        pii={"key": "label-test"},
        attribution={"markov_refresh_conversions": 10**9, "markov_refresh_minutes": 1e9},
    )
    reference = load_reference(config)
    before = omnistream_series()
    rng = random.Random(20)
    traffic = [
        (event.topic, event.key, hostile(event.value, n, rng))
        for n, event in enumerate(TrafficModel(reference, seed=20, customers=300).events(EVENTS))
    ]

    def fed(inputs: tuple[str, ...], extra: dict[str, list[Any]] | None = None) -> MemoryIO:
        io = MemoryIO(config)
        for topic, key, value in traffic:
            if topic in inputs:
                io.add(topic, [(key, value)])
        for topic, values in (extra or {}).items():
            io.add(topic, values)
        return io

    pool = MemoryStockStore(reference)
    stock_io = fed(stock_pool.INPUTS)
    run(stock_pool.build(config, until_idle=True, io=stock_io, stock_store=lambda: pool))
    identity_io = fed(identity_stitch.INPUTS)
    graph = MemoryIdentityStore()
    run(
        identity_stitch.build(config, until_idle=True, io=identity_io, identity_store=lambda: graph)
    )
    resolved = [(m.key, m.value) for m in identity_io.collect()[config.topic("events.resolved")]]
    changes = identity_io.collect().get(config.topic(topics.IDENTITY_CHANGES), [])
    stock_changes = stock_io.collect()[config.topic(topics.STOCK_CHANGES)]
    triggers_io = fed(
        (topics.WMS_MOVEMENTS,),
        {
            topics.EVENTS_RESOLVED: [*resolved, *(f"{MARK} {n}".encode() for n in range(50))],
            topics.STOCK_CHANGES: [(m.key, m.value) for m in stock_changes],
        },
    )
    run(
        rule_triggers.build(
            config,
            until_idle=True,
            io=triggers_io,
            stock_store=lambda: pool,
            coupon_store=MemoryCouponStore,
            **CustomerStores(reference).build_args(),
        )
    )
    coupons = triggers_io.collect().get(config.topic(topics.TRIGGERS_COUPON), [])
    attribution_io = MemoryIO(config)
    attribution_io.add(topics.EVENTS_RESOLVED, resolved)
    attribution_io.add(
        topics.TRIGGERS_COUPON,
        [*((m.key, m.value) for m in coupons), *coupons_before_purchases(resolved)],
    )
    attribution_io.add(topics.IDENTITY_CHANGES, [(m.key, m.value) for m in changes])
    store = MemoryAttributionStore()
    run(attribution.build(config, until_idle=True, io=attribution_io, open_store=lambda: store))
    # the hostile input reached the totals: the store keeps the channels as they came
    channels = {c for table in store.read_totals(MODELS).values() for c in table}
    assert len({c for c in channels if MARK in c}) > 1000, sorted(channels)[:20]
    return moved(before, omnistream_series())


def allowed(config: Config) -> dict[str, frozenset[str]]:
    """Label → the values the configuration (and the fixed codes) allow."""
    reference = load_reference(config)
    rules = load_rules(config.rules.file).rules
    variants = {v for r in rules if r.experiment is not None for v in r.experiment.variants} | {
        "default",
        "control",
    }
    return {
        "flow": frozenset({STOCK_POOL, IDENTITY_STITCH, RULE_TRIGGERS, ATTRIBUTION}),
        "topic": frozenset(topics.INPUT_TOPICS)
        | frozenset(stock_pool.INPUTS + identity_stitch.INPUTS)
        | frozenset(rule_triggers.INPUTS + attribution.INPUTS),
        "region": frozenset(loc.region for loc in reference.locations.values()),
        "location_type": frozenset(loc.type for loc in reference.locations.values()),
        "rule": frozenset(r.rule_id for r in rules),
        "variant": frozenset(variants),
        "channel": channel_allowlist(config) | {OTHER_CHANNEL},
        "model": frozenset(MODELS),
    }


def test_no_label_carries_free_text_input(new_series: set[Series]) -> None:
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name, labels in new_series:
        for label, value in labels:
            values[(name, label)].add(value)
    leaked = {key: sorted(v)[:3] for key, v in values.items() if any(MARK in x for x in v)}
    assert not leaked, f"labels fed from free-text input: {leaked}"
    bounds = allowed(Config())
    for (name, label), seen in values.items():
        where = f"{name}{{{label}}}"
        if label in bounds:
            assert seen <= bounds[label], f"{where}: {sorted(seen - bounds[label])}"
        elif name == "omnistream_deadletters_total" and label == "reason":
            assert seen <= DEADLETTER_REASONS, f"{where}: {sorted(seen - DEADLETTER_REASONS)}"
        elif label != "le":
            assert len(seen) <= FIXED_CODES_MAX, f"{where}: {len(seen)} values"
    # the input did reach the labelled metrics: they are not silent
    assert values[("omnistream_attributed_revenue", "channel")] >= {OTHER_CHANNEL}
    assert len(values[("omnistream_deadletters_total", "reason")]) >= 3


def test_channels_outside_the_allowlist_are_summed_under_other() -> None:
    """``other`` is the sum of every folded channel's absolute figures, across batches."""
    gauges = TotalsGauges(frozenset({"wechat", "direct"}))
    gauges.set({("linear", "wechat"): (10.0, 1.0), ("linear", "promo-a"): (4.0, 0.5)})
    gauges.set({("linear", "promo-b"): (6.0, 1.0), ("linear", "promo-a"): (5.0, 1.0)})
    revenue = REGISTRY.get_sample_value
    assert revenue("omnistream_attributed_revenue", {"model": "linear", "channel": "other"}) == 11
    assert (
        revenue("omnistream_attributed_conversions", {"model": "linear", "channel": "other"}) == 2
    )
    assert revenue("omnistream_attributed_revenue", {"model": "linear", "channel": "wechat"}) == 10
    assert (
        revenue("omnistream_attributed_revenue", {"model": "linear", "channel": "promo-a"}) is None
    )


def test_a_restarted_writer_starts_other_from_the_stored_totals() -> None:
    """After a restart only changed cells come: ``other`` still adds the stored ones."""
    store = MemoryAttributionStore()
    store.write_totals({("markov", "promo-x"): (30.0, 3.0), ("markov", "sms"): (7.0, 1.0)})
    write, close = _totals_writer(store, frozenset({"sms"}))
    write([("markov", "promo-y", 2.0, 0.5)])
    close()
    value = REGISTRY.get_sample_value
    assert value("omnistream_attributed_revenue", {"model": "markov", "channel": "other"}) == 32
    assert value("omnistream_attributed_revenue", {"model": "markov", "channel": "sms"}) == 7
    assert store.read_totals(("markov",))["markov"]["promo-y"] == (2.0, 0.5)


def test_channels_come_from_the_configuration(tmp_path: Path) -> None:
    from base.config import load_config

    path = tmp_path / "omnistream.yaml"
    path.write_text("attribution:\n  channels: [wechat, ' douyin ', coupon:win-back]\n")
    assert channel_allowlist(load_config(path, env={})) == {"wechat", "douyin", "coupon:win-back"}
    env = {"OMNI_ATTRIBUTION_CHANNELS": "email,sms"}
    assert channel_allowlist(load_config(path, env=env)) == {"email", "sms"}
    assert "newsletter" in channel_allowlist(Config())


#: Series name suffixes of the Prometheus text format, by metric type.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def defined_metrics() -> set[str]:
    """Every series name base/metrics.py and the service's experiment collector define."""
    from prometheus_client.metrics import MetricWrapperBase

    import base.metrics
    from omnistream import experiment_metrics

    names = set(experiment_metrics.SERIES)
    for metric in vars(base.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            # prometheus_client keeps the name and type in these attributes only.
            names |= {metric._name + suffix for suffix in SUFFIXES[str(metric._type)]}
    return names


def test_every_metric_the_runbook_and_catalogue_name_exists() -> None:
    """A runbook step that queries a metric nobody exports sends on-call to an empty graph."""
    defined = defined_metrics()
    process = {family.name for family in REGISTRY.collect()}
    for doc in ("runbook.md", "metrics.md"):
        text = (DOCS / doc).read_text()
        for name in set(re.findall(r"\bomnistream_[a-z0-9_]+", text)):
            assert name in defined, f"docs/{doc} names {name}, which no code defines"
        for name in set(re.findall(r"\bprocess_[a-z_]+", text)):
            assert name.removesuffix("_total") in process, f"docs/{doc}: {name}"


def test_every_metric_is_in_the_catalogue() -> None:
    text = (DOCS / "metrics.md").read_text()
    documented = set(re.findall(r"`(omnistream_[a-z0-9_]+)`", text))
    base_names = {
        name for name in defined_metrics() if not name.endswith(("_bucket", "_sum", "_count"))
    }
    assert base_names <= documented, sorted(base_names - documented)
