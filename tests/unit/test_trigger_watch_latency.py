"""The benchmark's trigger latency counts event-driven triggers only: a timer's trigger
(a cart deadline, a lapse, a repurchase reminder) names the event that armed it as its
evidence, produced long before the timer was due, so its "latency" would be the timer."""

from __future__ import annotations

from base.config import Config
from omnistream.trigger_watch import TriggerWatch


def arrive(watch: TriggerWatch, kind: str, arrived_ms: int, cause: str, **data: object) -> None:
    """As the follower hands over a message of triggers.coupon."""
    document = {"data": {"rule_kind": kind, "evidence": [f"{cause}#0"], **data}}
    watch.received("triggers.coupon", arrived_ms, document)


def test_timer_triggers_and_held_coupons_are_not_latencies() -> None:
    watch = TriggerWatch(Config())  # never started: messages are handed to it here
    watch.produced_at = {"e-view": 1_000.0, "e-buy": 1_000.0, "e-cart": 1_000.0}
    arrive(watch, "browse_nearby_stock", 1_250, "e-view")
    arrive(watch, "lapsed", 60_000, "e-buy")
    arrive(watch, "repurchase", 61_000, "e-buy")
    arrive(watch, "cart_abandonment", 62_000, "e-cart")
    arrive(watch, "browse_nearby_stock", 63_000, "e-view", held_until="2026-12-02T08:00:00Z")
    arrive(watch, "browse_nearby_stock", 64_000, "not-produced-in-this-run")
    assert watch.latencies_ms() == [250.0]
