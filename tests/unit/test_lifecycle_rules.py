"""Lifecycle rules (CONTRACT §11): ``lapsed`` and ``repurchase`` fire on their own timers,
without new activity; ``store_visit`` turns a check-in or a member scan into a task with the
customer's recent views. Timers fire alike whichever clock policy drives them."""

from __future__ import annotations

from typing import Any

import pytest

from domain.customer_rules import (
    CouponConversion,
    CouponDecision,
    CouponSuppressed,
    CustomerEvent,
    CustomerState,
    Outcome,
    VisitTask,
    next_deadline,
    on_event,
    on_time,
)
from domain.rules import RulesError, RuleSet, parse_rules
from domain.stock_rules import StockChange
from domain.stock_view import RecordedStock
from domain.trigger_engine import CustomerTriggers
from tests.rule_samples import CART

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_795_000_000_000  # 2026-11-18 07:06:40 UTC

LAPSED = {
    "id": "lapsed",
    "kind": "lapsed",
    "cooldown": "1d",
    "params": {"inactive_days": 30},
    "coupon": {"type": "percent_off", "value": 15},
}
REPURCHASE = {
    "id": "repurchase",
    "kind": "repurchase",
    "cooldown": "1h",
    "params": {"lead_days": 2},
    "coupon": {"type": "percent_off", "value": 5},
}
VISIT = {
    "id": "visit",
    "kind": "store_visit",
    "cooldown": "2h",
    "params": {"max_views": 2, "views_within": "3d"},
}


def ruleset(*rules: dict[str, Any], cap: int = 3) -> RuleSet:
    return parse_rules("test", {"defaults": {"frequency_cap_per_day": cap}, "rules": list(rules)})


def ev(n: int, kind: str, ts: int, sku: str | None = None, **more: object) -> CustomerEvent:
    return CustomerEvent(f"e{n}", kind, ts, "c1", "SH", sku, **more)  # type: ignore[arg-type]


def buy(n: int, ts: int, *skus: str, every: dict[str, int] | None = None) -> CustomerEvent:
    return ev(
        n,
        "order_placed",
        ts,
        skus=skus,
        is_purchase=True,
        repurchase_days=tuple((every or {}).items()),
    )


def no_stores(region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
    return []


def feed(
    events: list[CustomerEvent], rules: RuleSet, state: CustomerState | None = None
) -> tuple[CustomerState, list[Outcome]]:
    """Each event after the timers due before it, as the engine runs them."""
    out: list[Outcome] = []
    for e in events:
        if state is not None:
            out += on_time(state, "c1", e.ts_ms - 1, rules)
        state, fired = on_event(state, e, rules, no_stores)
        out += fired
    assert state is not None
    return state, out


def coupons(out: list[Outcome]) -> list[CouponDecision]:
    return [o for o in out if isinstance(o, CouponDecision)]


# --- lapsed -------------------------------------------------------------------------------------


def test_lapsed_fires_on_its_timer_without_new_activity() -> None:
    rules = ruleset(LAPSED)
    state, _ = feed([buy(1, T0, "SKU1")], rules)
    assert next_deadline(state) == T0 + 30 * DAY
    assert on_time(state, "c1", T0 + 30 * DAY - 1, rules) == []
    (coupon,) = on_time(state, "c1", T0 + 40 * DAY, rules)  # a late timer: its own time
    assert isinstance(coupon, CouponDecision)
    assert coupon.event_time_ms == T0 + 30 * DAY
    assert coupon.sku is None and coupon.evidence == ("e1",)
    assert coupon.reason == "no purchase for 30 days"
    assert next_deadline(state) is None
    assert on_time(state, "c1", T0 + 90 * DAY, rules) == []  # once per lapse


def test_a_purchase_before_the_lapse_rearms_it_and_after_one_lapse_the_next() -> None:
    rules = ruleset(LAPSED)
    state, out = feed([buy(1, T0, "SKU1"), buy(2, T0 + 20 * DAY, "SKU2")], rules)
    assert out == [] and next_deadline(state) == T0 + 50 * DAY
    state, out = feed([ev(3, "product_view", T0 + 60 * DAY, "SKU3")], rules, state)
    assert [c.event_time_ms for c in coupons(out)] == [T0 + 50 * DAY]  # fired before the view
    state, out = feed([buy(4, T0 + 61 * DAY, "SKU1")], rules, state)
    assert out == [] and next_deadline(state) == T0 + 91 * DAY  # a new lapse to wait for
    (again,) = on_time(state, "c1", T0 + 91 * DAY, rules)
    assert isinstance(again, CouponDecision) and again.evidence == ("e4",)


def test_a_customer_who_never_bought_never_lapses() -> None:
    rules = ruleset(LAPSED)
    state, out = feed([ev(1, "product_view", T0, "SKU1"), ev(2, "add_to_cart", T0, "SKU1")], rules)
    assert next_deadline(state) is None
    assert on_time(state, "c1", T0 + 400 * DAY, rules) == [] and out == []


def test_a_lapse_coupon_goes_through_quiet_hours_and_the_cap() -> None:
    quiet = {"start": "00:00", "end": "12:00", "utc_offset": "+00:00"}
    rules = ruleset({**LAPSED, "quiet_hours": quiet})
    state, _ = feed([buy(1, T0, "SKU1")], rules)  # due 07:06 UTC: inside the quiet hours
    assert on_time(state, "c1", T0 + 30 * DAY, rules) == []
    release = (T0 + 30 * DAY) // DAY * DAY + 12 * HOUR
    assert next_deadline(state) == release
    (held,) = on_time(state, "c1", release, rules)
    assert isinstance(held, CouponDecision) and held.held_until_ms == release
    # Cap 1: a cart coupon the same day takes the day's one coupon first.
    rules = ruleset(LAPSED, {**CART, "params": {"within": "1m"}}, cap=1)
    state, _ = feed(
        [buy(1, T0, "SKU1"), ev(2, "add_to_cart", T0 + 30 * DAY - 2 * MIN, "SKU2")], rules
    )
    out = on_time(state, "c1", T0 + 31 * DAY, rules)
    assert [type(o) for o in out] == [CouponDecision, CouponSuppressed]
    assert out[1] == CouponSuppressed("lapsed", "cap", "default")


# --- repurchase ---------------------------------------------------------------------------------


def test_repurchase_fires_lead_days_early_naming_the_sku() -> None:
    rules = ruleset(REPURCHASE)
    state, _ = feed([buy(1, T0, "SOAP", "BREAD", every={"SOAP": 30})], rules)
    assert next_deadline(state) == T0 + 28 * DAY  # 30 days less 2 lead days
    (coupon,) = on_time(state, "c1", T0 + 29 * DAY, rules)
    assert isinstance(coupon, CouponDecision)
    assert (coupon.sku, coupon.event_time_ms, coupon.evidence) == ("SOAP", T0 + 28 * DAY, ("e1",))
    assert on_time(state, "c1", T0 + 90 * DAY, rules) == []  # BREAD is no repurchase item


def test_buying_the_sku_again_meanwhile_rearms_from_the_new_purchase() -> None:
    rules = ruleset(REPURCHASE)
    state, out = feed(
        [
            buy(1, T0, "SOAP", "TEA", every={"SOAP": 30, "TEA": 10}),
            buy(2, T0 + 20 * DAY, "SOAP", every={"SOAP": 30}),
        ],
        rules,
    )
    # TEA was due at T0+8d (before the second order), SOAP re-armed to T0+20d+28d.
    assert [(c.sku, c.event_time_ms) for c in coupons(out)] == [("TEA", T0 + 8 * DAY)]
    assert next_deadline(state) == T0 + 48 * DAY
    assert on_time(state, "c1", T0 + 47 * DAY, rules) == []
    (soap,) = on_time(state, "c1", T0 + 48 * DAY, rules)
    assert isinstance(soap, CouponDecision) and soap.evidence == ("e2",)


# --- store visits -------------------------------------------------------------------------------


def test_a_check_in_makes_a_visit_task_with_the_latest_views_most_recent_first() -> None:
    rules = ruleset(VISIT)
    views = [
        ev(1, "product_view", T0 - 4 * DAY, "OLD"),  # outside views_within (3d)
        ev(2, "product_view", T0 - 2 * DAY, "COAT"),
        ev(3, "product_view", T0 - DAY, "HAT"),
        ev(4, "product_view", T0 - HOUR, "COAT"),  # COAT's latest view
        ev(5, "product_view", T0 - 2 * HOUR, "SCARF"),
    ]
    state, _ = feed(views, rules)
    _, out = feed([ev(6, "store_checkin", T0, store_id="ST1")], rules, state)
    assert out == [
        VisitTask(
            "visit",
            "c1",
            "ST1",
            (("COAT", T0 - HOUR), ("SCARF", T0 - 2 * HOUR)),  # at most max_views (2)
            "checked in at ST1; 2 recent views",
            ("e6", "e4", "e5"),
            T0,
        )
    ]


def test_walking_in_twice_in_ten_minutes_is_one_visit_per_store() -> None:
    rules = ruleset(VISIT)
    _, out = feed(
        [
            ev(1, "store_checkin", T0, store_id="ST1"),
            ev(2, "store_checkin", T0 + 10 * MIN, store_id="ST1"),
            ev(3, "store_checkin", T0 + 11 * MIN, store_id="ST2"),  # another store
            ev(4, "sale", T0 + 3 * HOUR, store_id="ST1", is_purchase=True, member_scan=True),
            ev(5, "sale", T0 + 6 * HOUR, store_id="ST1", is_purchase=True),  # no card: unknown
        ],
        rules,
    )
    assert [(t.store_id, t.evidence[0]) for t in out if isinstance(t, VisitTask)] == [
        ("ST1", "e1"),
        ("ST2", "e3"),
        ("ST1", "e4"),
    ]
    assert [o for o in out if not isinstance(o, VisitTask)] == []


def test_a_visit_is_no_coupon_a_withdrawn_customer_still_gets_served() -> None:
    rules = ruleset(VISIT)
    _, out = feed(
        [ev(1, "consent", T0, consent=False), ev(2, "store_checkin", T0, store_id="S")], rules
    )
    assert [type(o) for o in out] == [VisitTask]


def test_views_are_kept_for_the_visits_without_a_browse_rule() -> None:
    rules = ruleset(VISIT)
    state, _ = feed([ev(1, "product_view", T0 - 2 * DAY, "COAT")], rules)
    state, _ = feed([ev(2, "product_view", T0 - DAY, "HAT")], rules, state)
    assert set(state.views) == {"COAT", "HAT"}
    state, _ = feed([ev(3, "product_view", T0 + 2 * DAY, "HAT")], rules, state)
    assert set(state.views) == {"HAT"}  # COAT's view is older than views_within now


# --- the rules file ----------------------------------------------------------------------------


def test_the_new_kinds_parse_with_their_defaults() -> None:
    rules = ruleset(
        {"id": "l", "kind": "lapsed", "cooldown": "1d", "coupon": {"type": "gift"}},
        {"id": "r", "kind": "repurchase", "cooldown": "1d", "coupon": {"type": "gift"}},
        {"id": "v", "kind": "store_visit", "cooldown": "1h"},
    )
    assert rules.by_id["l"].params == {"inactive_days": 30, "min_available": 1}
    assert rules.by_id["r"].params == {"lead_days": 0, "min_available": 1}
    assert rules.by_id["v"].params == {"max_views": 5, "views_within": 7 * 86400}


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"kind": "store_visit", "coupon": {"type": "gift"}}, "key `coupon`: expected no coupon"),
        (
            {"kind": "store_visit", "quiet_hours": {"start": "22:00", "end": "08:00"}},
            "quiet hours only",
        ),
        ({"kind": "store_visit", "params": {"max_views": 0}}, "key `params.max_views`"),
        ({"kind": "lapsed", "params": {"inactive_days": 0}}, "key `params.inactive_days`"),
        ({"kind": "repurchase", "params": {"lead_days": -1}}, "key `params.lead_days`"),
        ({"kind": "repurchase", "params": {"min_available": 1.5}}, "key `params.min_available`"),
    ],
)
def test_the_new_kinds_are_validated(rule: dict, problem: str) -> None:
    with pytest.raises(RulesError) as raised:
        ruleset({"id": "x", "cooldown": "1h", **rule})
    assert any(problem in p for p in raised.value.problems), raised.value.problems


# --- the clock policies -------------------------------------------------------------------------


def test_live_timers_and_a_replay_s_end_fire_the_same_outcomes() -> None:
    """The same customer, once with timers fired at clock marks between records (live),
    once only on the customer's next record and at the end of the input (a replay)."""
    rules = ruleset(LAPSED, REPURCHASE, CART, VISIT)
    stock = RecordedStock(
        [
            StockChange(s, "WH1", "SH", 100, 0, T0 - DAY, "m", 100, "warehouse")
            for s in ("SOAP", "TEA")
        ]
    ).at_end()
    events = [
        buy(1, T0, "SOAP", "TEA", every={"SOAP": 20, "TEA": 5}),
        ev(2, "add_to_cart", T0 + 10 * DAY, "TEA"),
        ev(3, "product_view", T0 + 11 * DAY, "SOAP"),
        ev(4, "store_checkin", T0 + 12 * DAY, store_id="ST1"),
        buy(5, T0 + 25 * DAY, "SOAP", every={"SOAP": 20}),
    ]
    end = T0 + 80 * DAY

    replay = CustomerTriggers()
    replayed = []
    for e in events:
        replayed += replay.on_event(e, rules, stock)
    replayed += replay.finish(end, rules, stock)

    live = CustomerTriggers()
    lived = []
    marks = iter(range(T0, end + 1, 6 * HOUR))
    mark = next(marks)
    for e in events:
        while mark < e.ts_ms:
            lived += live.fire_due(mark, rules, stock)
            mark = next(marks)
        lived += live.on_event(e, rules, stock)
    for later in (mark, *marks):
        lived += live.fire_due(later, rules, stock)
    lived += live.finish(end, rules, stock)

    assert lived == replayed
    assert live.state == replay.state

    # Worked out by hand: TEA due at T0+3d, cart TEA at T0+10d+30m, the visit at the
    # check-in, SOAP at T0+18d and again from the second order (T0+25d+18d), the lapse
    # re-armed by that order (T0+25d+30d).
    def when(o: object) -> tuple[str, str | None, int]:
        if isinstance(o, CouponConversion):
            return ("CouponConversion", o.rule_id, o.ts_ms)
        assert isinstance(o, CouponDecision | VisitTask)
        return (type(o).__name__, getattr(o, "sku", None), o.event_time_ms)

    assert [when(o) for o in replayed] == [
        ("CouponDecision", "TEA", T0 + 3 * DAY),
        ("CouponDecision", "TEA", T0 + 10 * DAY + 30 * MIN),
        ("VisitTask", None, T0 + 12 * DAY),
        ("CouponDecision", "SOAP", T0 + 18 * DAY),
        ("CouponConversion", "repurchase", T0 + 25 * DAY),  # the second order, 7 days after
        ("CouponDecision", "SOAP", T0 + 43 * DAY),
        ("CouponDecision", None, T0 + 55 * DAY),
    ]
