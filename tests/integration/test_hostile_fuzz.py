"""Generated hostile messages on every input topic of every flow, mixed with valid traffic.

``test_hostile_input.py`` replays a fixed list of bad payloads on the three connector topics.
Here hypothesis builds them, for all seven topics the four flows read: each hostile message is
a valid template with exactly one fault (so the reason it must be refused with follows from
how it was built), or bytes that are not a JSON object at all (invalid UTF-8, not JSON, nested
past the parser's depth limit, NaN/Infinity literals, up to a full 1 MiB). Valid generated
traffic — some of it with extra fields, which the contract allows — runs through the same
topics. Checked per flow: every hostile message is dead-lettered exactly once with its
reason and nothing else is; every valid event is applied; the flow exits 0; and its peak RSS
stays within a bound that retaining the oversized payloads would break.

A pipeline run costs ~40 s, so hypothesis does not drive the runs: it draws the hostile
batch (a few examples of every fault strategy, see ``collect``) and the extra fields; one run
checks the whole batch. The run prints ``OMNI_FUZZ_SEED``; setting it reproduces the batch.
A 1 MiB message needs a producer with ``message.max.bytes`` above the default 1,000,000
(librdkafka refuses it locally with MSG_SIZE_TOO_LARGE); the embedded broker (Tansu) stores
and serves it (5 MB messages too).
"""

from __future__ import annotations

import collections
import copy
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import hypothesis
import orjson
import pytest
import redis
from confluent_kafka import KafkaError, Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from base import topics
from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.decode import MAX_MESSAGE_BYTES
from connectors.generator import GeneratedEvent, TrafficModel
from connectors.kafka_clients import ensure_topics, make_producer, read_topic
from connectors.reference_files import load_reference
from domain.events import CLICK_EVENT_TYPES, MOVEMENT_EVENT_TYPES, POS_EVENT_TYPES
from domain.reference import ReferenceData
from omnistream.bench import peak_rss_mb
from omnistream.processes import start_flow
from tests.integration.test_stock_pool_flow import (
    expected_stock,
    redis_figures,
    stock_pool_decodes,
)

pytestmark = pytest.mark.integration

ONE_MIB = 1_048_576
VALID_EVENTS = 2_500
DRAWS_PER_FAULT = 3  # hypothesis's first draw is the simplest value, the others random
#: Which flows read each topic (README, "Today's flows"): a hostile message on a topic must be
#: dead-lettered once by each of them.
CONSUMERS: dict[str, tuple[str, ...]] = {
    topics.CLICKSTREAM: ("stock_pool", "identity_stitch"),
    topics.POS_SALES: ("stock_pool", "identity_stitch"),
    topics.WMS_MOVEMENTS: ("stock_pool", "rule_triggers"),
    topics.EVENTS_RESOLVED: ("rule_triggers", "attribution"),
    topics.STOCK_CHANGES: ("rule_triggers",),
    topics.TRIGGERS_COUPON: ("attribution",),
    topics.IDENTITY_CHANGES: ("attribution",),
}
FLOWS = ("stock_pool", "identity_stitch", "rule_triggers", "attribution")
#: Peak RSS allowed per flow process. Measured (2 cores): stock_pool ~100 MB, rule_triggers
#: ~110 MB, identity_stitch and attribution ~80 MB. Each of stock_pool and rule_triggers
#: reads ``BULK_MIB`` + a few one-MiB messages on wms.movements, so a flow that kept them (or
#: their text) would exceed the bound by far; the consumers' read-ahead is capped by
#: ``queued.max.messages.kbytes`` so prefetching alone cannot reach it.
PEAK_RSS_BOUND_MB = 250.0
BULK_MIB = 240
READ_AHEAD_KB = "8192"
INPUT_EVENT_TYPES = {
    topics.CLICKSTREAM: CLICK_EVENT_TYPES,
    topics.POS_SALES: POS_EVENT_TYPES,
    topics.WMS_MOVEMENTS: MOVEMENT_EVENT_TYPES,
}
SENTINEL = "@@raw-literal@@"
ID_MARKER = "hostile-XXXXXX"

Doc = dict[str, Any]
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Hostile:
    """One bad message and the reason every flow reading ``topic`` must refuse it with."""

    topic: str
    payload: bytes
    reason: str
    category: str


@dataclass(frozen=True)
class FieldSpec:
    path: FieldPath
    kind: str
    required: bool = True


@dataclass
class Template:
    """A valid message of one topic and how each of its fields may be broken."""

    topic: str
    doc: Doc
    fields: list[FieldSpec] = field(default_factory=list)


# --- building payloads --------------------------------------------------------------------------


def _with(doc: Doc, path: FieldPath, value: Any) -> Doc:
    out = copy.deepcopy(doc)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def _without(doc: Doc, path: FieldPath) -> Doc:
    out = copy.deepcopy(doc)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return out


def _render(doc: Doc, literal: bytes | None = None) -> bytes:
    """JSON of ``doc``; the one ``SENTINEL`` string in it becomes ``literal`` (NaN, 2**70 …:
    things orjson will not write but a hostile producer can)."""
    text = orjson.dumps(doc)
    if literal is not None:
        text = text.replace(orjson.dumps(SENTINEL), literal, 1)
    return text


def _padded(doc: Doc, size: int) -> bytes:
    """``doc`` with a filler field, exactly ``size`` bytes long."""
    base = orjson.dumps({**doc, "zz_pad": ""})
    return orjson.dumps({**doc, "zz_pad": "x" * (size - len(base))})


def _json_int_reason(value: int, in_range: Callable[[int], bool]) -> str:
    """orjson reads integers beyond 64 bits as floats, which an integer field refuses."""
    if not -(2**63) <= value < 2**64:
        return "bad_type"
    return "bad_value" if not in_range(value) else "ok"


# --- strategies ---------------------------------------------------------------------------------

non_strings = st.one_of(
    st.integers(-(2**63), 2**63),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=2),
)
non_integers = st.one_of(
    st.text(max_size=12),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), max_size=3),
)
non_numbers: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=12), st.booleans(), st.lists(st.integers(0, 9), max_size=3), st.just({})
)
non_timestamps = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1), max_size=2),
)
blank_or_long = st.one_of(
    st.sampled_from(["", " ", "\t\n"]),
    st.integers(129, 400).map(lambda n: "i" * n),
)
naive_times = st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds"))
far_times = st.one_of(st.integers(1000, 1998), st.integers(2101, 9999)).map(
    lambda year: f"{year:04d}-06-15T12:00:00.000+08:00"
)
out_of_range_ms = st.one_of(
    st.integers(-(2**63), 946_684_800_000 - 1), st.integers(4_102_444_800_000, 2**63 - 1)
)
bad_time_strings = st.one_of(
    naive_times,
    far_times,
    st.just("9999-12-31T23:59:59Z"),
    st.text(max_size=30).filter(lambda t: not t[:1].isdigit()),
)
non_finite = st.sampled_from([b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
unknown_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=128).filter(
    lambda t: bool(t.strip())
)


def _unknown(known: Iterable[str]) -> st.SearchStrategy[str]:
    taken = set(known)
    return unknown_names.filter(lambda name: name not in taken)


def _raw_faults(template: Template) -> list[st.SearchStrategy[Hostile]]:
    """Bytes that are not one JSON object of acceptable size: no template field matters."""
    topic, doc = template.topic, template.doc
    valid = orjson.dumps(doc)

    def make(category: str, reason: str) -> Callable[[bytes], Hostile]:
        return lambda payload: Hostile(topic, payload, reason, category)

    invalid_utf8 = st.tuples(st.integers(1, len(valid) - 2), st.binary(max_size=8)).map(
        lambda cut: valid[: cut[0]] + cut[1] + b"\xff\xfe" + valid[cut[0] :]
    )
    truncated = st.integers(0, len(valid) - 1).map(lambda cut: valid[:cut])
    not_json = st.text(max_size=200).map(lambda t: ("<" + t).encode())
    not_object = st.sampled_from([b"null", b"[]", b"1", b'"text"', b"true", b"[{}]", b" "])
    # orjson stops at depth 1024; arrays cost 2 bytes a level, objects 6, under 256 KiB.
    deep_arrays = st.integers(1025, 100_000).map(lambda n: b"[" * n + b"]" * n)
    deep_objects = st.integers(1025, 40_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    deep_field = st.integers(1025, 50_000).map(
        lambda n: valid[:-1] + b',"zz_extra":' + b"[" * n + b"]" * n + b"}"
    )
    oversized = st.integers(MAX_MESSAGE_BYTES + 1, ONE_MIB).map(lambda n: _padded(doc, n))
    return [
        invalid_utf8.map(make("invalid_utf8", "malformed_json")),
        truncated.map(make("truncated", "malformed_json")),
        not_json.map(make("not_json", "malformed_json")),
        not_object.map(make("not_object", "malformed_json")),
        deep_arrays.map(make("deep_nesting", "malformed_json")),
        deep_objects.map(make("deep_nesting", "malformed_json")),
        deep_field.map(make("deep_nesting", "malformed_json")),
        oversized.map(make("oversized", "too_large")),
    ]


def _field_faults(template: Template, reference: ReferenceData) -> list[st.SearchStrategy[Hostile]]:
    """One field of a valid template broken: missing, wrong type, bad value, bad time,
    unknown reference data. The reason follows from the field's kind and the fault."""
    topic, doc = template.topic, template.doc
    strategies: list[st.SearchStrategy[Hostile]] = []

    def add(strategy: st.SearchStrategy[Any], build: Callable[[Any], Hostile]) -> None:
        strategies.append(strategy.map(build))

    def at(path: FieldPath, value: Any, reason: str, category: str) -> Hostile:
        return Hostile(topic, _render(_with(doc, path, value)), reason, category)

    def literal(path: FieldPath, raw: bytes, reason: str, category: str) -> Hostile:
        return Hostile(topic, _render(_with(doc, path, SENTINEL), raw), reason, category)

    def put(path: FieldPath, reason: str, category: str) -> Callable[[Any], Hostile]:
        return lambda value: at(path, value, reason, category)

    def put_raw(path: FieldPath, reason: str, category: str) -> Callable[[bytes], Hostile]:
        return lambda raw: literal(path, raw, reason, category)

    for spec in template.fields:
        path, kind = spec.path, spec.kind
        name = ".".join(str(step) for step in path)

        if spec.required:
            drop = Hostile(topic, _render(_without(doc, path)), "missing_field", f"missing:{name}")
            add(st.just(drop), lambda h: h)
            add(st.just(None), put(path, "missing_field", f"null:{name}"))
        if kind in {"id", "event_type", "sku", "location", "store"}:
            add(non_strings, put(path, "bad_type", f"wrong_type:{name}"))
            add(blank_or_long, put(path, "bad_value", f"bad_value:{name}"))
        allowed = INPUT_EVENT_TYPES.get(topic)
        if kind == "event_type" and allowed is not None:
            add(
                _unknown(allowed).filter(lambda t: len(t) <= 64),
                put(path, "unknown_event_type", f"unknown:{name}"),
            )
        if kind == "sku":
            add(
                _unknown(reference.products),
                put(path, "unknown_sku", f"unknown:{name}"),
            )
        if kind in {"location", "store"}:
            add(
                _unknown(reference.locations),
                put(path, "unknown_location", f"unknown:{name}"),
            )
        if kind == "store":
            warehouses = sorted(k for k, v in reference.locations.items() if v.type != "store")
            add(
                st.sampled_from(warehouses),
                put(path, "bad_value", f"not_store:{name}"),
            )
        if kind in {"qty", "int", "count"}:
            low = {"qty": 1, "int": -1_000_000_000, "count": 0}[kind]
            add(non_integers, put(path, "bad_type", f"wrong_type:{name}"))
            add(
                non_finite,
                put_raw(path, "malformed_json", f"non_finite:{name}"),
            )
            out_of_range: st.SearchStrategy[int] = st.one_of(
                st.integers(max_value=low - 1), st.integers(min_value=1_000_000_001)
            )

            def bad_int(v: int, n: str = name, low: int = low, p: FieldPath = path) -> Hostile:
                reason = _json_int_reason(v, lambda x: low <= x <= 10**9)
                return literal(p, str(v).encode(), reason, f"int_range:{n}")

            add(out_of_range, bad_int)
        if kind == "number":
            add(non_numbers, put(path, "bad_type", f"wrong_type:{name}"))
            add(
                non_finite,
                put_raw(path, "malformed_json", f"non_finite:{name}"),
            )
            add(
                st.one_of(
                    st.floats(max_value=-1e-9, allow_infinity=False),
                    st.floats(min_value=1.1e12, allow_infinity=False),
                ),
                put(path, "bad_value", f"number_range:{name}"),
            )
        if kind in {"ts", "time"}:
            add(
                non_timestamps,
                put(path, "bad_timestamp", f"wrong_type:{name}"),
            )
            add(
                bad_time_strings,
                put(path, "bad_timestamp", f"bad_time:{name}"),
            )
            add(
                out_of_range_ms,
                put(path, "bad_timestamp", f"bad_time:{name}"),
            )
        if kind == "epoch_ms":
            add(
                st.one_of(non_timestamps, bad_time_strings),
                put(path, "bad_timestamp", f"wrong_type:{name}"),
            )
            add(
                out_of_range_ms,
                put(path, "bad_timestamp", f"bad_time:{name}"),
            )
        if kind in {"lines", "list"}:
            add(
                st.one_of(
                    st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.just({"sku": "x"})
                ),
                put(path, "bad_type", f"wrong_type:{name}"),
            )
        if kind == "lines":
            add(st.just([]), put(path, "bad_value", f"empty:{name}"))
        if kind == "object":
            add(
                st.one_of(
                    st.text(max_size=5),
                    st.integers(-(2**63), 2**63 - 1),
                    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
                ),
                put(path, "bad_type", f"wrong_type:{name}"),
            )
    return strategies


def hostile_faults(
    template: Template, reference: ReferenceData
) -> list[st.SearchStrategy[Hostile]]:
    """One strategy per fault of the template: drawing from each (rather than from their
    union) guarantees every category is in the batch, however the draws fall."""
    return [*_raw_faults(template), *_field_faults(template, reference)]


# --- templates: one valid message per shape ------------------------------------------------------

TS = "2026-11-01T10:00:00.000+08:00"
TS_MS = 1_793_498_400_000


def templates(reference: ReferenceData) -> list[Template]:
    sku = sorted(reference.products)[0]
    store = sorted(k for k, v in reference.locations.items() if v.type == "store")[0]
    warehouse = sorted(k for k, v in reference.locations.items() if v.type == "warehouse")[0]
    head = [FieldSpec(("event_id",), "id"), FieldSpec(("event_type",), "event_type")]
    line_fields = [
        FieldSpec(("lines",), "lines"),
        FieldSpec(("lines", 0, "sku"), "sku"),
        FieldSpec(("lines", 0, "qty"), "qty"),
        FieldSpec(("lines", 0, "unit_price"), "number"),
    ]
    line = {"sku": sku, "qty": 2, "unit_price": 10.9}
    click = {"event_id": ID_MARKER, "ts": TS, "anonymous_id": "dev-hostile", "channel": "app"}
    cloud = {
        "specversion": "1.0",
        "id": ID_MARKER,
        "time": TS,
        "datacontenttype": "application/json",
    }
    return [
        Template(
            topics.CLICKSTREAM,
            {**click, "event_type": "add_to_cart", "sku": sku, "qty": 1, "price": 10.9},
            [
                *head,
                FieldSpec(("ts",), "ts"),
                FieldSpec(("anonymous_id",), "id"),
                FieldSpec(("sku",), "sku"),
                FieldSpec(("qty",), "qty"),
                FieldSpec(("price",), "number", required=False),
            ],
        ),
        Template(
            topics.CLICKSTREAM,
            {
                **click,
                "event_type": "order_placed",
                "order_id": "o-hostile",
                "lines": [line],
                "total": 21.8,
                "fulfillment": {"type": "delivery", "location_id": warehouse},
            },
            [
                *head,
                FieldSpec(("ts",), "ts"),
                FieldSpec(("order_id",), "id"),
                *line_fields,
                FieldSpec(("total",), "number"),
                FieldSpec(("fulfillment",), "object"),
                # a delivery may leave its location to Omnistream's sourcing (CONTRACT §10)
                FieldSpec(("fulfillment", "location_id"), "location", required=False),
            ],
        ),
        Template(
            topics.POS_SALES,
            {
                "event_id": ID_MARKER,
                "event_type": "sale",
                "ts": TS,
                "store_id": store,
                "receipt_id": "r-hostile",
                "lines": [line],
                "total": 21.8,
            },
            [
                *head,
                FieldSpec(("ts",), "ts"),
                FieldSpec(("store_id",), "store"),
                FieldSpec(("receipt_id",), "id"),
                *line_fields,
                FieldSpec(("total",), "number"),
            ],
        ),
        Template(
            topics.WMS_MOVEMENTS,
            {
                "event_id": ID_MARKER,
                "event_type": "receipt",
                "ts": TS,
                "location_id": warehouse,
                "sku": sku,
                "qty": 5,
            },
            [
                *head,
                FieldSpec(("ts",), "ts"),
                FieldSpec(("location_id",), "location"),
                FieldSpec(("sku",), "sku"),
                FieldSpec(("qty",), "qty"),
            ],
        ),
        Template(
            topics.EVENTS_RESOLVED,
            {
                "event_id": ID_MARKER,
                "event_type": "order_placed",
                "ts": TS_MS,
                "anonymous_id": "dev-hostile",
                "channel": "app",
                "campaign": {"source": "hostile", "medium": "cpc", "campaign": "hostile"},
                "order_id": "o-hostile",
                "lines": [line],
                "total": 21.8,
                "customer_id": "c-hostile",
                "source_topic": "clickstream",
            },
            [*head, FieldSpec(("ts",), "epoch_ms")],
        ),
        Template(
            topics.STOCK_CHANGES,
            {
                **cloud,
                "source": "stock_pool",
                "type": "omnistream.stock.changed",
                "subject": f"{sku}:{warehouse}",
                "data": {
                    "sku": sku,
                    "location_id": warehouse,
                    "region": reference.locations[warehouse].region,
                    "on_hand": 3,
                    "reserved": 0,
                    "available": 3,
                    "sold_1h": 0,
                    "sold_24h": 0,
                    "days_of_cover": None,
                    "cause": ID_MARKER,
                },
            },
            [
                FieldSpec(("time",), "time"),
                FieldSpec(("data",), "object"),
                FieldSpec(("data", "sku"), "sku"),
                FieldSpec(("data", "location_id"), "location"),
                FieldSpec(("data", "available"), "int"),
                FieldSpec(("data", "on_hand"), "int"),
                FieldSpec(("data", "sold_24h"), "count"),
                FieldSpec(("data", "cause"), "id"),
            ],
        ),
        Template(
            topics.TRIGGERS_COUPON,
            {
                **cloud,
                "source": "rule_triggers",
                "type": "omnistream.trigger.coupon",
                "subject": "c-hostile",
                "data": {"rule_id": "hostile_rule", "customer_id": "c-hostile", "variant": "a"},
            },
            [
                FieldSpec(("id",), "id"),
                FieldSpec(("time",), "time"),
                FieldSpec(("data",), "object"),
                FieldSpec(("data", "rule_id"), "id"),
                FieldSpec(("data", "customer_id"), "id"),
            ],
        ),
        Template(
            topics.IDENTITY_CHANGES,
            {
                **cloud,
                "source": "identity_stitch",
                "type": "omnistream.identity.merged",
                "subject": "c-hostile",
                "data": {
                    "kind": "merged",
                    "customer_id": "c-hostile",
                    "merged_from": ["c-hostile-2"],
                    "identifiers": [],
                },
            },
            [
                FieldSpec(("data",), "object"),
                FieldSpec(("data", "customer_id"), "id"),
                FieldSpec(("data", "merged_from"), "list", required=False),
            ],
        ),
    ]


def with_unique_id(hostile: Hostile, serial: int) -> Hostile:
    """Ids of hostile messages never collide with valid ones (or each other), so a message
    that slipped through would show up as an unknown id rather than as a duplicate. The
    replacement has the marker's length: a 1 MiB message stays exactly 1 MiB."""
    unique = f"{ID_MARKER[:-6]}{serial:06d}".encode()
    return replace(hostile, payload=hostile.payload.replace(ID_MARKER.encode(), unique))


def with_extra_fields(event: GeneratedEvent, extra: dict[str, Any]) -> GeneratedEvent:
    """A valid event with unknown extra fields: CONTRACT §1 lets producers add them."""
    doc = orjson.loads(event.value)
    return replace(event, value=orjson.dumps({**doc, **extra}))


extra_fields = st.dictionaries(
    st.text(max_size=12).map(lambda k: f"zz_{k}"),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=8,
    ),
    min_size=1,
    max_size=3,
)


# --- running and measuring -----------------------------------------------------------------------


def refusers(h: Hostile) -> tuple[str, ...]:
    """The flows that must dead-letter ``h``: every consumer of its topic, except stock_pool
    for a clickstream event it skips (see ``stock_pool_decodes``)."""
    flows = CONSUMERS[h.topic]
    if stock_pool_decodes(h.topic, h.payload):
        return flows
    return tuple(flow for flow in flows if flow != "stock_pool")


@dataclass
class FlowRun:
    code: int
    peak_rss_mb: float
    seconds: float


def run_flows(names: Iterable[str], config: Config, workdir: Path) -> dict[str, FlowRun]:
    """Run flows side by side until their inputs are drained, sampling each one's peak RSS
    (VmHWM never falls, so sampling until the process is gone misses at most the last
    interval)."""
    started = time.monotonic()
    processes = {}
    for name in names:
        path = workdir / f"{name}.yaml"
        dump_config(config, path)
        with (workdir / f"{name}.log").open("wb") as log:
            processes[name] = start_flow(name, path, until_idle=True, log=log)
    peaks = dict.fromkeys(processes, 0.0)
    done: dict[str, float] = {}
    deadline = started + 300
    try:
        while len(done) < len(processes):
            for name, process in processes.items():
                if name in done:
                    continue
                peaks[name] = max(peaks[name], peak_rss_mb(process.pid))
                if process.poll() is not None:
                    done[name] = time.monotonic() - started
            assert time.monotonic() < deadline, f"flows still running: {set(processes) - set(done)}"
            time.sleep(0.02)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return {
        name: FlowRun(process.returncode, peaks[name], done[name])
        for name, process in processes.items()
    }


def value_of(message: Message) -> Any:
    return orjson.loads(message.value() or b"")


def fresh_config(base: Config) -> Config:
    """Topics and Redis keys of one hypothesis example (an example never sees another's)."""
    tag = uuid.uuid4().hex[:10]
    config = base.with_overrides(
        kafka={
            "topic_prefix": f"f{tag}.",
            "client": {**base.kafka.client, "queued.max.messages.kbytes": READ_AHEAD_KB},
        },
        redis={"key_prefix": f"fz{tag}:"},
    )
    ensure_topics(config, list(ALL_TOPICS))
    return config


Location = tuple[str, int, int]  # topic without prefix, partition, offset


class Producer:
    """Produces and remembers where each message landed (topic, partition, offset)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.producer = make_producer(config, **{"message.max.bytes": "2000000"})
        self.placed: dict[int, Location] = {}
        self.failed: list[str] = []
        self.lock = threading.Lock()

    def send(self, topic: str, key: bytes, value: bytes, tag: int | None = None) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failed.append(f"{topic}: {err}")
            elif tag is not None:
                with self.lock:
                    self.placed[tag] = (topic, msg.partition() or 0, msg.offset() or 0)

        self.producer.produce(self.config.topic(topic), key=key, value=value, on_delivery=delivered)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(120) == 0
        assert not self.failed, self.failed[:5]


def collect(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    """``count`` examples of ``strategy`` from hypothesis's own search.

    One pipeline run costs about a minute, so the test cannot be one hypothesis example per
    run: hypothesis would spend its single example on the simplest value of every strategy.
    Instead the batch is gathered from ``count`` examples of a test that only keeps them.
    """
    found: list[Any] = []

    @hypothesis.seed(seed)
    @settings(
        max_examples=count,
        deadline=None,
        phases=[Phase.generate],
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def gather(value: Any) -> None:
        found.append(value)

    gather()
    return found


def test_generated_hostile_messages_on_every_topic(omni_config: Config, tmp_path: Path) -> None:
    seed = int(os.environ.get("OMNI_FUZZ_SEED") or random.randrange(2**32))
    print(f"\nOMNI_FUZZ_SEED={seed} reproduces this run")
    started = time.monotonic()
    config = fresh_config(omni_config)
    reference = load_reference(config)
    shapes = templates(reference)

    # Hostile batch: per template a drawn set of faults, plus one message of exactly 1 MiB.
    hostile: list[Hostile] = []
    for number, template in enumerate(shapes):
        for fault in hostile_faults(template, reference):
            hostile += collect(fault, DRAWS_PER_FAULT, seed + number)
        hostile.append(Hostile(template.topic, _padded(template.doc, ONE_MIB), "too_large", "1MiB"))
    bulk = _padded(shapes[3].doc, ONE_MIB)
    hostile += [Hostile(topics.WMS_MOVEMENTS, bulk, "too_large", "bulk_1MiB")] * BULK_MIB
    hostile = [with_unique_id(h, serial) for serial, h in enumerate(hostile)]
    # (a drawn oversized payload may be exactly 1 MiB too: count the ones made so.)
    exact = [h for h in hostile if h.category in {"1MiB", "bulk_1MiB"}]
    assert len(exact) == len(shapes) + BULK_MIB
    assert all(len(h.payload) == ONE_MIB for h in exact)

    rnd = random.Random(seed)
    valid = list(TrafficModel(reference, seed=rnd.randrange(1, 10_000)).events(VALID_EVENTS))
    extras = iter(collect(extra_fields, VALID_EVENTS // 5, seed))
    valid = [
        with_extra_fields(event, next(extras, {"zz": 1})) if rnd.random() < 0.2 else event
        for event in valid
    ]
    # Valid traffic keeps its generated order (a shipment follows its order); each hostile
    # message is slotted in before a drawn valid event.
    slots = [rnd.randrange(len(valid) + 1) for _ in hostile]
    before: dict[int, list[int]] = collections.defaultdict(list)
    for tag, slot in enumerate(slots):
        before[slot].append(tag)

    producer = Producer(config)
    for index in range(len(valid) + 1):
        for tag in before[index]:
            producer.send(hostile[tag].topic, b"hostile", hostile[tag].payload, tag=tag)
        if index < len(valid):
            producer.send(valid[index].topic, valid[index].key, valid[index].value)
    producer.flush()
    produced_s = time.monotonic() - started

    runs = run_flows(("stock_pool", "identity_stitch"), config, tmp_path)
    runs |= run_flows(("rule_triggers",), config, tmp_path)
    runs |= run_flows(("attribution",), config, tmp_path)
    for name, run in runs.items():
        log = (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
        assert run.code == 0, f"{name} exited with {run.code}:\n{log}"

    # Dead letters: exactly the hostile messages, once per consuming flow, with their reason.
    prefix = config.kafka.topic_prefix
    expected: dict[tuple[str, Location], str] = {}
    for tag, h in enumerate(hostile):
        for flow in refusers(h):
            expected[(flow, producer.placed[tag])] = h.reason
    letters = [value_of(m) for m in read_topic(config, "deadletter", timeout_s=60)]
    got: dict[tuple[str, Location], str] = {}
    raw_of: dict[tuple[str, Location], str] = {}
    repeated = []
    for letter in letters:
        where = (letter["topic"].removeprefix(prefix), letter["partition"], letter["offset"])
        if (letter["flow"], where) in got:
            repeated.append((letter["flow"], where))
        got[(letter["flow"], where)] = letter["reason"]
        raw_of[(letter["flow"], where)] = letter["raw"][:160]
    assert not repeated, f"dead-lettered more than once: {repeated[:10]}"
    by_tag = {producer.placed[tag]: h for tag, h in enumerate(hostile)}
    wrong = [
        (
            flow,
            where,
            by_tag[where].category,
            reason,
            got.get((flow, where)),
            by_tag[where].payload[:160],
            raw_of.get((flow, where)),
        )
        for (flow, where), reason in expected.items()
        if got.get((flow, where)) != reason
    ]
    assert not wrong, f"{len(wrong)} hostile messages not refused as built: {wrong[:20]}"
    unexpected = [key for key in got if key not in expected]
    assert not unexpected, f"valid messages dead-lettered: {unexpected[:10]}"
    assert all(len(letter["raw"]) <= 64 * 1024 for letter in letters)

    hostile_places = set(by_tag)
    good = {e.topic: set[str]() for e in valid}
    for event in valid:
        good[event.topic].add(orjson.loads(event.value)["event_id"])

    # stock_pool: every valid movement, sale and order applied, none of the hostile ones.
    client = redis.Redis.from_url(config.redis.url)
    try:
        for key, figures in expected_stock(valid).items():
            row = client.hgetall(f"{config.redis.key_prefix}stock:{key}")
            assert redis_figures(cast(dict[bytes, bytes], row)) == figures, key
    finally:
        client.close()

    # identity_stitch: every valid clickstream and till event resolved, nothing else.
    resolved = [
        value_of(m)
        for m in read_topic(config, "events.resolved", timeout_s=60)
        if (topics.EVENTS_RESOLVED, m.partition(), m.offset()) not in hostile_places
    ]
    # (the merges' notices name the merge, not an input event)
    resolved_ids = {r["event_id"] for r in resolved if r.get("source_topic") != "identity"}
    assert resolved_ids == good[topics.CLICKSTREAM] | good[topics.POS_SALES]

    # rule_triggers: it fired, and only on valid events.
    fired = [
        value_of(m)
        for name in ("triggers.coupon", "triggers.holdout", "triggers.replenishment")
        for m in read_topic(config, name, timeout_s=60)
        if (name, m.partition(), m.offset()) not in hostile_places
    ]
    assert fired, "rule_triggers fired nothing on 2,500 events of traffic"
    all_good = set().union(*good.values())
    stray = [t for t in fired for cause in t["data"]["evidence"] if cause not in all_good]
    assert not stray, stray[:3]

    # attribution: one credit per valid conversion, none for a hostile one.
    conversions: dict[str, dict[str, Any]] = {}
    for r in resolved:
        if r["event_type"] in ("order_placed", "sale"):
            key = (
                f"order:{r['order_id']}"
                if r.get("order_id")
                else f"receipt:{r.get('store_id')}:{r.get('receipt_id')}"
            )
            conversions.setdefault(key, r)
    credit_data = [value_of(m)["data"] for m in read_topic(config, "attribution.credits")]
    assert collections.Counter(c["conversion_id"] for c in credit_data) == collections.Counter(
        set(conversions)
    )
    channels = {t["channel"] for c in credit_data for t in c["touches"]}
    assert not {"hostile", "coupon:hostile_rule"} & channels

    # Memory: bounded although hundreds of MiB of oversized messages went through.
    reasons = collections.Counter(f"{h.topic}:{h.reason}" for h in hostile)
    categories = collections.Counter(h.category.split(":")[0] for h in hostile)
    print(
        f"\nhostile messages: {len(hostile)} ({len(valid)} valid events); produced in "
        f"{produced_s:.1f} s; total {time.monotonic() - started:.1f} s"
    )
    print("per topic:reason:", dict(sorted(reasons.items())))
    print("per category:", dict(sorted(categories.items())))
    print("dead letters per flow:", dict(collections.Counter(letter["flow"] for letter in letters)))
    for name, run in runs.items():
        print(f"{name}: peak RSS {run.peak_rss_mb:.0f} MB, {run.seconds:.1f} s")
    for name, run in runs.items():
        assert 0 < run.peak_rss_mb < PEAK_RSS_BOUND_MB, (name, run.peak_rss_mb)
