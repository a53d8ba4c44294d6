"""attribution's input decoders refuse foreign records with the reason codes of the input
topics (found by tests/integration/test_hostile_fuzz.py: wrong types were ``missing_field`` or
``bad_value``, an epoch time in year 9999 was accepted, and a non-string rule or customer id
was turned into a channel name or a customer key by ``str()``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest

from connectors.attribution_io import decode_coupon, decode_identity, decode_resolved
from connectors.resolved import erased_notice, merge_notices
from domain.attribution_paths import Absorb, CustomerTouch, Erase, Purchase
from domain.events import Origin, Rejection

ORIGIN = Origin("t", 1, 7, b"k")
TS_MS = 1_793_498_400_000


def resolved(**over: Any) -> bytes:
    record = {
        "event_id": "e1",
        "event_type": "order_placed",
        "ts": TS_MS,
        "order_id": "o1",
        "total": 20.5,
        "customer_id": "c1",
    }
    record.update(over)
    return orjson.dumps({k: v for k, v in record.items() if v is not None})


def coupon(data: Any = None, **over: Any) -> bytes:
    document = {
        "specversion": "1.0",
        "id": "cp1",
        "time": "2026-11-01T10:00:00.000+08:00",
        "data": {"rule_id": "win_back", "customer_id": "c1"} if data is None else data,
    }
    document.update(over)
    return orjson.dumps({k: v for k, v in document.items() if v is not None})


def merged(**data: Any) -> bytes:
    body = {"kind": "merged", "customer_id": "c1", "merged_from": ["c2"], **data}
    return orjson.dumps({"data": {k: v for k, v in body.items() if v is not None}})


def test_valid_records_decode() -> None:
    assert decode_resolved(resolved(), ORIGIN) == [Purchase("c1", "order:o1", 20.5, TS_MS, "e1")]
    touch = decode_coupon(coupon(), ORIGIN)
    assert isinstance(touch, list) and isinstance(touch[0], CustomerTouch)
    assert touch[0].customer_id == "c1" and touch[0].touch.channel == "coupon:win_back"
    assert decode_identity(merged(), ORIGIN) == [Absorb("c2", "c1")]
    assert decode_identity(merged(kind="linked"), ORIGIN) is None  # not needed: no merge
    assert decode_resolved(resolved(event_type="page_view"), ORIGIN) is None


@pytest.mark.parametrize(
    ("decoder", "payload", "reason"),
    [
        (decode_resolved, resolved(event_id=7), "bad_type"),
        (decode_resolved, resolved(event_type=["sale"]), "bad_type"),
        (decode_resolved, resolved(ts=None), "missing_field"),
        (decode_resolved, resolved(ts=253_402_214_400_000), "bad_timestamp"),
        (decode_resolved, resolved(ts="2026-11-01T10:00:00"), "bad_timestamp"),
        (decode_resolved, resolved(zz_pad="x" * 1_048_576), "too_large"),
        (decode_resolved, b"[" * 3000 + b"]" * 3000, "malformed_json"),
        (decode_coupon, coupon(id=None), "missing_field"),
        (decode_coupon, coupon(data={"rule_id": {"a": 1}, "customer_id": "c1"}), "bad_type"),
        (decode_coupon, coupon(data={"rule_id": "r", "customer_id": 12}), "bad_type"),
        (decode_coupon, coupon(data={"rule_id": "r"}), "missing_field"),
        (decode_coupon, coupon(data=[1]), "bad_type"),
        (decode_coupon, coupon(time="9999-12-31T00:00:00Z"), "bad_timestamp"),
        (decode_coupon, b"\xff\xfe", "malformed_json"),
        (decode_identity, merged(customer_id=None), "missing_field"),
        (decode_identity, merged(customer_id=5), "bad_type"),
        (decode_identity, merged(merged_from="c2"), "bad_type"),
        (decode_identity, orjson.dumps({"data": "merged"}), "bad_type"),
        (decode_identity, b"null", "malformed_json"),
    ],
)
def test_foreign_records_are_refused_with_a_reason(
    decoder: Any, payload: bytes, reason: str
) -> None:
    rejection = decoder(payload, ORIGIN)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.origin, rejection.raw) == (reason, ORIGIN, payload)


def test_merges_and_erasures_decode_from_both_topics() -> None:
    """A merge carries its change's time; identity's notices in ``events.resolved`` are
    merges and erasures too (``identity_absorbed`` repeats the merge and is skipped), never
    dead letters; one naming nobody is refused."""
    timed = orjson.dumps({"time": "2026-11-01T10:00:00.000+08:00", **orjson.loads(merged())})
    at = int(datetime.fromisoformat("2026-11-01T10:00:00+08:00").timestamp() * 1000)
    assert decode_identity(timed, ORIGIN) == [Absorb("c2", "c1", at)]
    assert decode_identity(merged(kind="erased", merged_from=None), ORIGIN) == [Erase("c1")]
    away, absorbed = (record for _, record in merge_notices("c2", "c1", "e9", TS_MS))
    assert decode_resolved(away, ORIGIN) == [Absorb("c2", "c1", TS_MS)]
    assert decode_resolved(absorbed, ORIGIN) is None
    assert decode_resolved(erased_notice("c1", TS_MS), ORIGIN) == [Erase("c1")]
    nobody = decode_resolved(resolved(event_type="identity_erased", customer_id=None), ORIGIN)
    assert isinstance(nobody, Rejection) and nobody.reason == "missing_field"
    no_into = decode_resolved(resolved(event_type="identity_merged"), ORIGIN)
    assert isinstance(no_into, Rejection) and no_into.reason == "missing_field"
