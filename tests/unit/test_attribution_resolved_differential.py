"""attribution's ``events.resolved`` decoder against the decoder it replaced: the same touches
and purchases, or the same reason code and message, for every message.

``decode_resolved`` reads a record through the struct rule_triggers reads it with and falls
back to the field-by-field decoder for whatever the struct refuses; that decoder is the old
one, unchanged (``_decode_resolved_fields``), so it is the reference here. The corpus and the
mutations are rule_triggers' (``tests/unit/test_resolved_differential.py``): what
identity_stitch writes for generated traffic with and without a customer id, its notices,
each field deleted or set to each edge value, campaigns of every shape, random mutations and
arbitrary bytes. Results are compared by ``repr``, which also tells ``5`` from ``5.0``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.attribution_io as attribution_io
from connectors.attribution_io import _decode_resolved_fields, decode_resolved
from domain.attribution_paths import CustomerTouch, Purchase
from domain.events import Origin
from tests.unit.test_decode_differential import EDGE_VALUES, _changed, _field_paths
from tests.unit.test_resolved_differential import CORPUS, mutated_records, resolved_records

ORIGIN = Origin("events.resolved", 1, 99, b"C-7")
#: Campaign shapes the struct reads alike and the field-by-field path may not.
CAMPAIGNS: list[Any] = [
    {},
    {"source": None},
    {"source": ""},
    {"source": "mail", "campaign": None},
    {"campaign": "spring"},
    {"source": "ads", "medium": "cpc", "campaign": "spring", "content": "a"},
]


def both(raw: bytes) -> tuple[str, str]:
    return repr(decode_resolved(raw, ORIGIN)), repr(_decode_resolved_fields(raw, ORIGIN))


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    records = resolved_records(12_000, seed=43)
    with_campaigns = []
    for raw in records[:400]:
        doc = orjson.loads(raw)
        if not doc["event_type"].startswith("identity_"):
            with_campaigns += [orjson.dumps({**doc, "campaign": c}) for c in CAMPAIGNS]
            with_campaigns.append(orjson.dumps({**doc, "event_type": "ad_click"}))
    return records + with_campaigns


def test_what_identity_stitch_writes_decodes_as_before(corpus: list[bytes]) -> None:
    differences = [(raw, *pair) for raw in corpus if (pair := both(raw))[0] != pair[1]]
    assert differences == []
    found = [item for raw in corpus for item in decode_resolved(raw, ORIGIN) or ()]
    assert {type(item) for item in found} >= {CustomerTouch, Purchase}


def test_touches_and_purchases_are_decided_by_the_struct(
    corpus: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed rests on this: only notices and empty campaigns take the old path."""
    slow: list[bytes] = []
    original = attribution_io._decode_resolved_fields

    def counting(raw: bytes, origin: Origin) -> Any:
        slow.append(raw)
        return original(raw, origin)

    monkeypatch.setattr(attribution_io, "_decode_resolved_fields", counting)
    for raw in corpus:
        decode_resolved(raw, ORIGIN)
    for raw in slow:
        doc = orjson.loads(raw)
        assert doc["event_type"].startswith("identity_") or doc.get("campaign") in (
            {},
            {"source": None},
        ), raw
    assert len(corpus) - len(slow) > 10_000


def test_every_field_set_to_each_edge_value(corpus: list[bytes]) -> None:
    """A record of every shape, each field in turn deleted or set to each edge value."""
    samples: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}
    for raw in corpus:
        doc = orjson.loads(raw)
        samples.setdefault((doc["event_type"], frozenset(doc)), doc)
    differences = []
    for doc in samples.values():
        for path in _field_paths(doc):
            for drop, value in [(True, None)] + [(False, v) for v in EDGE_VALUES + CAMPAIGNS]:
                raw = _changed(doc, path, value, drop)
                new, old = both(raw)
                if new != old:
                    differences.append((path, raw[:200], new, old))
    assert differences == []


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
