"""Experiment draws, cooldowns, frequency caps and quiet hours (event time)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from domain.rules import Experiment, QuietHours
from domain.trigger_policy import (
    CONTROL,
    DAY_MS,
    Ledger,
    draw_variant,
    may_fire,
    quiet_until,
)

HOUR_MS = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_control_share_holds_over_ten_thousand_customers() -> None:
    experiment = Experiment("cart-2026-11", 0.1, {"a": 1.0, "b": 3.0})
    draws = Counter(draw_variant(experiment, f"c{n}", "cart") for n in range(10_000))
    assert abs(draws[CONTROL] / 10_000 - 0.1) <= 0.015
    treated = draws["a"] + draws["b"]
    assert abs(draws["b"] / treated - 0.75) <= 0.02  # weights 1:3


@given(st.text(min_size=1, max_size=20))
def test_the_same_customer_always_draws_the_same(customer: str) -> None:
    experiment = Experiment("s", 0.3, {"a": 1.0, "b": 1.0})
    assert len({draw_variant(experiment, customer, "r") for _ in range(3)}) == 1


def test_draws_differ_across_salts_and_rules() -> None:
    one = Experiment("s1", 0.5, {"a": 1.0})
    two = Experiment("s2", 0.5, {"a": 1.0})
    first = [draw_variant(one, f"c{n}", "r") for n in range(200)]
    assert first != [draw_variant(two, f"c{n}", "r") for n in range(200)]
    assert first != [draw_variant(one, f"c{n}", "other") for n in range(200)]
    assert draw_variant(None, "c", "r") == "default"


def test_cooldown_and_cap_suppress_and_expire() -> None:
    ledger = Ledger()
    t0 = ms("2026-11-22T10:00:00+00:00")
    assert may_fire(ledger, "cart", HOUR_MS, t0, True, 2) is None
    ledger.record("cart", t0, coupon=True)
    assert may_fire(ledger, "cart", HOUR_MS, t0 + HOUR_MS // 2, True, 2) == "cooldown"
    assert may_fire(ledger, "cart", HOUR_MS, t0 + HOUR_MS, True, 2) is None
    ledger.record("browse", t0 + 1, coupon=True)
    assert may_fire(ledger, "winback", HOUR_MS, t0 + 2, True, 2) == "cap"
    assert may_fire(ledger, "low-stock", HOUR_MS, t0 + 2, False, 2) is None  # not a coupon
    assert may_fire(ledger, "winback", HOUR_MS, t0 + DAY_MS, True, 2) is None  # a new day


def test_quiet_hours_across_midnight_in_local_time() -> None:
    quiet = QuietHours(22 * 60, 8 * 60, 8 * 60)  # 22:00-08:00 at +08:00
    late = ms("2026-11-22T23:30:00+08:00")
    assert quiet_until(quiet, late) == ms("2026-11-23T08:00:00+08:00")
    early = ms("2026-11-23T06:00:00+08:00")
    assert quiet_until(quiet, early) == ms("2026-11-23T08:00:00+08:00")
    assert quiet_until(quiet, ms("2026-11-23T08:00:00+08:00")) is None
    assert quiet_until(quiet, ms("2026-11-23T12:00:00+08:00")) is None
    daytime = QuietHours(12 * 60, 14 * 60, 0)
    assert quiet_until(daytime, ms("2026-11-23T13:00:00+00:00")) == ms("2026-11-23T14:00:00+00:00")
    assert quiet_until(None, late) is None
    assert datetime.fromtimestamp(late / 1000, tz=UTC).hour == 15


def test_a_short_rule_firing_keeps_a_long_rules_cooldown() -> None:
    """A 30-day win-back, then a 1-hour cart coupon two days later: the win-back's cooldown
    still holds on day 3 (one rule's horizon must not prune another's entry)."""
    from domain.trigger_policy import Ledger

    day = 86_400_000
    ledger = Ledger()
    ledger.record("win-back", 0, coupon=True)
    ledger.record("cart", 2 * day, coupon=True)
    assert ledger.in_cooldown("win-back", 30 * day, 3 * day)
    assert not ledger.in_cooldown("win-back", 30 * day, 31 * day)
    assert not ledger.in_cooldown("cart", 3_600_000, 3 * day)
