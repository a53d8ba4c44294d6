"""The benchmark's trigger latency counts event-driven triggers only: a timer's trigger
(a cart deadline, a lapse, a repurchase reminder, a stock rule due once idle days have
passed) names the event that armed it as its evidence, produced long before the timer was
due, so its "latency" would be the timer's."""

from __future__ import annotations

import orjson

from base.config import Config
from connectors.generator import GeneratedEvent
from omnistream.trigger_watch import TriggerWatch

T0 = "2026-12-02T10:00:00+00:00"
LATER = "2026-12-02T10:00:05+00:00"


def event(event_id: str, ts: str) -> GeneratedEvent:
    value = orjson.dumps({"event_id": event_id, "ts": ts})
    return GeneratedEvent("clickstream", b"k", value, event_id, None)


def arrive(watch: TriggerWatch, kind: str, arrived_ms: int, cause: str, **data: object) -> None:
    """As the follower hands over a message of triggers.coupon."""
    document = {"data": {"rule_kind": kind, "evidence": [f"{cause}#0"], **data}}
    watch.received("triggers.coupon", arrived_ms, document)


def test_timer_triggers_and_held_coupons_are_not_latencies() -> None:
    watch = TriggerWatch(Config())  # never started: messages are handed to it here
    list(watch.stamp([event("e-view", T0), event("e-buy", T0), event("e-cart", T0)]))
    watch.produced_at = dict.fromkeys(watch.produced_at, 1_000.0)  # as if stamped at 1 s
    produced = 1_000
    arrive(watch, "browse_nearby_stock", int(produced) + 250, "e-view", event_time=T0)
    arrive(watch, "lapsed", int(produced) + 60_000, "e-buy", event_time=LATER)
    arrive(watch, "repurchase", int(produced) + 61_000, "e-buy", event_time=LATER)
    arrive(watch, "cart_abandonment", int(produced) + 62_000, "e-cart", event_time=LATER)
    arrive(watch, "browse_nearby_stock", int(produced) + 63_000, "e-view", held_until=LATER)
    arrive(watch, "browse_nearby_stock", int(produced) + 64_000, "elsewhere", event_time=T0)
    # A stock rule's coupon due at a later event time than its cause (idle days passed):
    arrive(watch, "overstock", int(produced) + 14_000, "e-view", event_time=LATER)
    # ... and one fired by its cause itself.
    arrive(watch, "overstock", int(produced) + 300, "e-view", event_time=T0)
    assert sorted(watch.latencies_ms()) == [250.0, 300.0]
