"""rule_triggers' ``events.resolved`` decoder against the decoder it replaced: the same event,
or the same reason code and message, for every message.

``decode_resolved`` reads a record through its msgspec struct and falls back to the
field-by-field decoder for whatever the struct refuses; that decoder is the old one,
unchanged (``_decode_resolved_fields``), so it is the reference here. The corpus is what
identity_stitch writes for generated traffic (with, without and with an empty customer id),
its merge and erasure notices, each field deleted or set to each edge value, random
mutations and arbitrary bytes. Results are compared by ``repr``, which also tells ``5``
from ``5.0`` and ``0.0`` from ``-0.0``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.trigger_inputs as trigger_inputs
from connectors.decode import input_decoder
from connectors.resolved import erased_notice, merge_notices, resolved_event
from connectors.trigger_inputs import Skipped, _decode_resolved_fields, decode_resolved
from domain.customer_rules import CustomerEvent
from domain.events import ClickEvent, Origin, PosEvent, Rejection
from tests.unit.test_decode_differential import (
    EDGE_VALUES,
    REFERENCE,
    TrafficModel,
    _changed,
    _field_paths,
    _render,
    change_nested,
    edge_numbers,
    edge_strings,
    json_values,
    with_oddity,
)

ORIGIN = Origin("events.resolved", 2, 41, b"C-7")
CUSTOMER_IDS = ("C-7", None, "")
RESOLVED_FIELDS = st.sampled_from(
    [
        "event_id", "event_type", "ts", "customer_id", "source_topic", "channel", "region",
        "sku", "order_id", "lines", "total", "fulfillment", "store_id", "marketing",
        "member_code", "coupon_codes", "receipt_id", "into", "merged_from", "page",
    ]
)  # fmt: skip


def both(raw: bytes) -> tuple[str, str]:
    return (
        repr(decode_resolved(raw, ORIGIN, REFERENCE)),
        repr(_decode_resolved_fields(raw, ORIGIN, REFERENCE)),
    )


def resolved_records(count: int, seed: int) -> list[bytes]:
    """What identity_stitch writes for ``count`` generated input messages, each event with
    every customer id of ``CUSTOMER_IDS`` in turn, and the notices of some merges."""
    decode = input_decoder(REFERENCE, lambda kind, value: f"h:{value}")
    records: list[bytes] = []
    for n, event in enumerate(TrafficModel(REFERENCE, seed=seed).events(count)):
        decoded = decode(event.topic, event.value, Origin(event.topic, 0, n, event.key))
        if isinstance(decoded, ClickEvent | PosEvent):
            records.append(resolved_event(decoded, CUSTOMER_IDS[n % len(CUSTOMER_IDS)]))
        if n % 50 == 0:
            records += [
                raw for _, raw in merge_notices(f"C-{n}", "C-1", "linked", 1_795_000_000_000)
            ]
            records.append(erased_notice(f"C-{n}", 1_795_000_000_000))
    return records


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return resolved_records(12_000, seed=31)


def test_what_identity_stitch_writes_decodes_as_before(corpus: list[bytes]) -> None:
    differences = [(raw, *pair) for raw in corpus if (pair := both(raw))[0] != pair[1]]
    assert differences == []
    kinds = {type(decode_resolved(raw, ORIGIN, REFERENCE)).__name__ for raw in corpus}
    assert {"CustomerEvent", "IdentityNotice", "Skipped"} <= kinds


def test_every_resolved_event_is_decided_by_the_struct(
    corpus: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed rests on this: only notices (and foreign records) take the old path."""
    slow: list[bytes] = []
    original = trigger_inputs._decode_resolved_fields

    def counting(raw: bytes, origin: Origin, reference: Any) -> Any:
        slow.append(raw)
        return original(raw, origin, reference)

    monkeypatch.setattr(trigger_inputs, "_decode_resolved_fields", counting)
    results = [decode_resolved(raw, ORIGIN, REFERENCE) for raw in corpus]
    assert all(not isinstance(r, Rejection) for r in results)
    assert [orjson.loads(raw)["event_type"].startswith("identity_") for raw in slow] == [
        True
    ] * len(slow)
    assert sum(isinstance(r, CustomerEvent | Skipped) for r in results) > 5_000


def test_every_field_set_to_each_edge_value(corpus: list[bytes]) -> None:
    """Exhaustive where random mutation is thin: a record of every shape, each field in turn
    deleted or set to each edge value."""
    samples: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}
    for raw in corpus:
        doc = orjson.loads(raw)
        samples.setdefault((doc["event_type"], frozenset(doc)), doc)
    assert len({event_type for event_type, _ in samples}) >= 10
    differences = []
    for doc in samples.values():
        for path in _field_paths(doc):
            for drop, value in [(True, None)] + [(False, v) for v in EDGE_VALUES]:
                raw = _changed(doc, path, value, drop)
                new, old = both(raw)
                if new != old:
                    differences.append((path, raw[:200], new, old))
    assert differences == []


@st.composite
def mutated_records(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A resolved record with one to three faults or oddities."""
    doc = orjson.loads(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "delete", "nested_set", "nested_delete"]))
        if op == "set":
            doc[draw(st.sampled_from(sorted(doc)) | RESOLVED_FIELDS)] = draw(
                edge_strings | edge_numbers | json_values
            )
        elif op == "delete" and doc:
            del doc[draw(st.sampled_from(sorted(doc)))]
        else:
            change_nested(draw, doc, delete=op == "nested_delete")
    return with_oddity(draw, _render(doc, draw), RESOLVED_FIELDS)


CORPUS = resolved_records(1_500, seed=7)


@settings(max_examples=1_500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_records(CORPUS))
def test_mutated_records_decode_as_before(raw: bytes) -> None:
    new, old = both(raw)
    assert new == old, raw


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_as_before(raw: bytes) -> None:
    new, old = both(raw)
    assert new == old, raw
