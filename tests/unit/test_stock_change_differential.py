"""rule_triggers' ``stock.changes`` decoder against the decoder it replaced: the same change,
or the same reason code and message, for every message.

``decode_stock_change`` reads a CloudEvent through its msgspec structs and falls back to the
field-by-field decoder for whatever they refuse; that decoder is the old one, unchanged
(``_decode_stock_change_fields``), so it is the reference here. The corpus is what stock_pool
writes for generated traffic (run in-process), as it is and as older producers wrote it
(without ``available_to_sell``, ``in_transit`` and ``sold``, or with epoch-ms times), each
field deleted or set to each edge value, random mutations and arbitrary bytes. Results are
compared by ``repr``, which also tells ``5`` from ``5.0``.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.trigger_inputs as trigger_inputs
from base import topics
from base.config import Config
from connectors.trigger_inputs import _decode_stock_change_fields, decode_stock_change
from domain.events import Origin, Rejection
from domain.stock_rules import StockChange
from flows import stock_pool
from state.memory_stock import MemoryStockStore
from tests.inprocess import MemoryIO, run
from tests.unit.test_decode_differential import (
    EDGE_VALUES,
    REFERENCE,
    TrafficModel,
    _changed,
    _render,
    edge_numbers,
    edge_strings,
    json_values,
    with_oddity,
)

ORIGIN = Origin("stock.changes", 3, 17, b"SKU:LOC")
STOCK_FIELDS = st.sampled_from(
    [
        "time", "data", "id", "type", "specversion", "traceparent", "sku", "location_id",
        "available", "available_to_sell", "on_hand", "sold_24h", "sold", "in_transit",
        "cause", "region", "days_of_cover",
    ]
)  # fmt: skip


def both(raw: bytes) -> tuple[str, str]:
    return (
        repr(decode_stock_change(raw, ORIGIN, REFERENCE)),
        repr(_decode_stock_change_fields(raw, ORIGIN, REFERENCE)),
    )


def stock_changes(count: int, seed: int) -> list[bytes]:
    """What stock_pool writes on ``stock.changes`` for ``count`` generated input messages."""
    config = Config()
    io = MemoryIO(config, partition_counts=dict.fromkeys(stock_pool.INPUTS, 2))
    for event in TrafficModel(REFERENCE, seed=seed).events(count):
        if event.topic in stock_pool.INPUTS:
            io.add(event.topic, [(event.key, event.value)], zlib.crc32(event.key or b"") % 2)
    pool = MemoryStockStore(REFERENCE)
    run(stock_pool.build(config, until_idle=True, io=io, stock_store=lambda: pool))
    return [m.value for m in io.collect()[config.topic(topics.STOCK_CHANGES)]]


def older_forms(raw: bytes) -> list[bytes]:
    """The same change as an older or another producer may write it."""
    doc = orjson.loads(raw)
    bare = json.loads(json.dumps(doc))
    for name in ("available_to_sell", "in_transit", "sold"):
        bare["data"].pop(name, None)
    epoch = {**doc, "time": 1_795_313_730_120}
    extended = {**doc, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    return [json.dumps(d).encode() for d in (bare, epoch, extended)]


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    written = stock_changes(4_000, seed=37)
    return written + [old for raw in written[:300] for old in older_forms(raw)]


def test_what_stock_pool_writes_decodes_as_before(corpus: list[bytes]) -> None:
    differences = [(raw, *pair) for raw in corpus if (pair := both(raw))[0] != pair[1]]
    assert differences == []
    results = [decode_stock_change(raw, ORIGIN, REFERENCE) for raw in corpus]
    assert all(isinstance(r, StockChange) for r in results)
    assert {r.location_type for r in results if isinstance(r, StockChange)} >= {
        "store",
        "warehouse",
    }


def test_every_change_stock_pool_writes_is_decided_by_the_struct(
    corpus: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed rests on this: only a record with an attribute the struct does not name (a
    CloudEvent extension) takes the old path."""
    slow: list[bytes] = []
    original = trigger_inputs._decode_stock_change_fields

    def counting(raw: bytes, origin: Origin, reference: Any) -> Any:
        slow.append(raw)
        return original(raw, origin, reference)

    monkeypatch.setattr(trigger_inputs, "_decode_stock_change_fields", counting)
    for raw in corpus:
        decode_stock_change(raw, ORIGIN, REFERENCE)
    assert slow and all("traceparent" in orjson.loads(raw) for raw in slow)


def _paths(doc: dict[str, Any]) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = [(key,) for key in doc]
    if isinstance(doc.get("data"), dict):
        paths += [("data", inner) for inner in doc["data"]]
    return paths


def test_every_field_set_to_each_edge_value(corpus: list[bytes]) -> None:
    """Exhaustive where random mutation is thin: a store's and a warehouse's change, each
    field in turn deleted or set to each edge value."""
    samples: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}
    for raw in corpus:
        doc = orjson.loads(raw)
        location = REFERENCE.locations[doc["data"]["location_id"]]
        samples.setdefault((location.type, frozenset(doc["data"])), doc)
    differences = []
    rejected: set[str] = set()
    for doc in samples.values():
        for path in _paths(doc):
            for drop, value in [(True, None)] + [(False, v) for v in EDGE_VALUES]:
                raw = _changed(doc, path, value, drop)
                new, old = both(raw)
                if new != old:
                    differences.append((path, raw[:200], new, old))
                found = decode_stock_change(raw, ORIGIN, REFERENCE)
                if isinstance(found, Rejection):
                    rejected.add(found.reason)
    assert differences == []
    assert {"missing_field", "bad_type", "bad_value", "bad_timestamp"} <= rejected
    assert {"unknown_sku", "unknown_location"} <= rejected


@st.composite
def mutated_changes(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A stock change with one to three faults or oddities."""
    doc = orjson.loads(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "delete", "data_set", "data_delete"]))
        target = doc["data"] if op.startswith("data") and isinstance(doc.get("data"), dict) else doc
        if op.endswith("set"):
            names = st.sampled_from(sorted(target)) | STOCK_FIELDS if target else STOCK_FIELDS
            target[draw(names)] = draw(edge_strings | edge_numbers | json_values)
        elif target:
            del target[draw(st.sampled_from(sorted(target)))]
    return with_oddity(draw, _render(doc, draw), STOCK_FIELDS)


CORPUS = stock_changes(1_500, seed=8)


@settings(max_examples=1_500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_changes(CORPUS))
def test_mutated_changes_decode_as_before(raw: bytes) -> None:
    new, old = both(raw)
    assert new == old, raw


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_as_before(raw: bytes) -> None:
    new, old = both(raw)
    assert new == old, raw
