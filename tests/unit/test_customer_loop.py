"""The customer loop around a coupon: quiet hours hold it, a purchase in the window converts
it, clearance offers pass the same policy, and the same input gives the same output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.customer_rules import (
    CouponConversion,
    CouponDecision,
    CouponRedeemed,
    CouponSuppressed,
    CustomerEvent,
    CustomerState,
    Offer,
    Outcome,
    absorb,
    next_deadline,
    on_event,
    on_offer,
    on_time,
    state_from_json,
    state_to_json,
)
from domain.rules import Rule, RuleSet, parse_rules
from domain.trigger_policy import CONTROL, draw_variant
from tests.rule_samples import BROWSE, CART

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
CST = timezone(timedelta(hours=8))
QUIET = {"start": "22:00", "end": "08:00", "utc_offset": "+08:00"}

OVERSTOCK = {
    "id": "overstock",
    "kind": "overstock",
    "cooldown": "1d",
    "coupon": {"type": "percent_off", "value": 20},
}


def local(day: int, hour: int, minute: int = 0) -> int:
    """Epoch ms of a wall-clock time in November 2026 at +08:00."""
    return int(datetime(2026, 11, day, hour, minute, tzinfo=CST).timestamp() * 1000)


T0 = local(18, 12)  # noon, outside quiet hours


def ruleset(*rules: dict, cap: int = 3, window: str = "7d") -> RuleSet:
    return parse_rules(
        "test",
        {
            "defaults": {"frequency_cap_per_day": cap, "conversion_window": window},
            "rules": list(rules),
        },
    )


def ev(
    n: int,
    kind: str,
    ts: int,
    sku: str | None = None,
    purchase: bool = False,
    customer: str = "c1",
    codes: tuple[str, ...] = (),
) -> CustomerEvent:
    skus = (sku,) if purchase and sku else ()
    return CustomerEvent(f"e{n}", kind, ts, customer, "SH", sku, skus, purchase, codes)


def order(n: int, ts: int, customer: str = "c1") -> CustomerEvent:
    return ev(n, "order_placed", ts, "SKU9", purchase=True, customer=customer)


def offer(ts: int, customer: str = "c1", rule: str = "overstock", sku: str = "SKU1") -> Offer:
    return Offer(rule, customer, sku, "ST-SH-01", "ST-SH-01: 90 days of cover", ("chg1",), ts)


def nearby(region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
    return [("ST-SH-02", 9)]


def feed(
    events: list[CustomerEvent], rules: RuleSet, state: CustomerState | None = None
) -> tuple[CustomerState, list[Outcome]]:
    fired: list[Outcome] = []
    for e in events:
        state, out = on_event(state, e, rules, nearby)
        fired += out
    assert state is not None
    return state, fired


def rule_of(rules: RuleSet, rule_id: str) -> Rule:
    return rules.by_id[rule_id]


def control_customer(rule: Rule, want_control: bool = True) -> str:
    for n in range(1000):
        customer = f"c{n}"
        if (draw_variant(rule.experiment, customer, rule.rule_id) == CONTROL) == want_control:
            return customer
    raise AssertionError("no such customer in 1000 draws")


def decisions(out: list[Outcome]) -> list[CouponDecision]:
    return [o for o in out if isinstance(o, CouponDecision)]


def conversions(out: list[Outcome]) -> list[CouponConversion]:
    return [o for o in out if isinstance(o, CouponConversion)]


def sent_coupon(rules: RuleSet, ts: int = T0) -> tuple[CustomerState, CouponDecision]:
    """A cart coupon sent at ``ts`` + 30 minutes."""
    state, _ = feed([ev(1, "add_to_cart", ts, "SKU1")], rules)
    (decision,) = on_time(state, "c1", ts + 31 * MIN, rules)
    assert isinstance(decision, CouponDecision) and decision.held_until_ms is None
    return state, decision


# --- quiet hours --------------------------------------------------------------------------------


def test_the_local_clock_helper_is_what_the_quiet_hours_mean() -> None:
    assert local(19, 8) == 1_795_046_400_000  # 2026-11-19T00:00:00Z
    assert local(18, 22) == 1_795_010_400_000  # 2026-11-18T14:00:00Z


def test_a_cart_coupon_due_in_quiet_hours_is_held_until_they_end() -> None:
    rules = ruleset({**CART, "quiet_hours": QUIET})
    state, fired = feed([ev(1, "add_to_cart", local(18, 22, 10), "SKU1")], rules)
    assert fired == []
    assert next_deadline(state) == local(18, 22, 40)
    assert on_time(state, "c1", local(18, 22, 41), rules) == []  # fired, but held
    assert next_deadline(state) == local(19, 8) == 1_795_046_400_000
    assert on_time(state, "c1", local(19, 8) - 1, rules) == []
    (decision,) = on_time(state, "c1", local(19, 8), rules)
    assert isinstance(decision, CouponDecision)
    assert decision.held_until_ms == 1_795_046_400_000 == decision.sent_at_ms
    assert decision.event_time_ms == local(18, 22, 40) and decision.sku == "SKU1"
    assert next_deadline(state) is None
    assert on_time(state, "c1", local(19, 9), rules) == []  # released once


def test_a_held_coupon_is_released_by_a_late_timer_with_the_end_of_quiet_hours() -> None:
    rules = ruleset({**CART, "quiet_hours": QUIET})
    state, _ = feed([ev(1, "add_to_cart", local(18, 23), "SKU1")], rules)
    (decision,) = on_time(state, "c1", local(19, 11), rules)  # the timer ran late
    assert isinstance(decision, CouponDecision)
    assert decision.event_time_ms == local(18, 23, 30)
    assert decision.held_until_ms == local(19, 8)


def test_a_browse_coupon_in_the_early_morning_is_held_until_eight() -> None:
    rules = ruleset({**BROWSE, "quiet_hours": QUIET})
    views = [ev(n, "product_view", local(19, 7, n), "SKU1") for n in range(3)]
    state, fired = feed(views, rules)
    assert fired == []
    assert next_deadline(state) == local(19, 8)
    (decision,) = on_time(state, "c1", local(19, 8), rules)
    assert isinstance(decision, CouponDecision)
    assert decision.held_until_ms == 1_795_046_400_000
    assert decision.evidence == ("e0", "e1", "e2") and decision.store_id == "ST-SH-02"


def test_coupons_outside_quiet_hours_are_sent_at_once() -> None:
    rules = ruleset({**CART, "quiet_hours": QUIET}, {**BROWSE, "quiet_hours": QUIET})
    state, fired = feed([ev(n, "product_view", T0 + n * MIN, "SKU1") for n in range(3)], rules)
    (browse,) = decisions(fired)
    assert browse.held_until_ms is None and browse.sent_at_ms == T0 + 2 * MIN
    assert next_deadline(state) is None
    state, _ = feed([ev(5, "add_to_cart", local(18, 21), "SKU2")], rules)
    (cart,) = on_time(state, "c1", local(18, 21, 31), rules)
    assert isinstance(cart, CouponDecision) and cart.held_until_ms is None
    assert cart.event_time_ms == local(18, 21, 30)


@pytest.mark.parametrize(
    ("at", "held_until"),
    [
        (local(18, 21, 59), None),
        (local(18, 22), local(19, 8)),
        (local(18, 23, 59), local(19, 8)),
        (local(19, 0), local(19, 8)),
        (local(19, 7, 59), local(19, 8)),
        (local(19, 8), None),
        (local(19, 12), None),
    ],
)
def test_quiet_hours_bounds_on_an_offer(at: int, held_until: int | None) -> None:
    rules = ruleset({**OVERSTOCK, "quiet_hours": QUIET})
    state, out = on_offer(None, offer(at), rules)
    if held_until is None:
        (decision,) = out
        assert isinstance(decision, CouponDecision) and decision.held_until_ms is None
        return
    assert out == []
    assert next_deadline(state) == held_until
    (decision,) = on_time(state, "c1", held_until, rules)
    assert isinstance(decision, CouponDecision)
    assert decision.held_until_ms == held_until and decision.event_time_ms == at


def test_quiet_hours_in_another_offset() -> None:
    rules = ruleset({**OVERSTOCK, "quiet_hours": {**QUIET, "utc_offset": "-05:00"}})
    # 23:00 in New York on 18 November is 04:00Z on the 19th; quiet until 08:00 there, 13:00Z.
    at = int(datetime(2026, 11, 19, 4, tzinfo=UTC).timestamp() * 1000)
    state, out = on_offer(None, offer(at), rules)
    assert out == []
    expected = int(datetime(2026, 11, 19, 13, tzinfo=UTC).timestamp() * 1000)
    assert next_deadline(state) == expected


def test_holdouts_are_held_through_quiet_hours_alike() -> None:
    rules = ruleset(
        {**CART, "quiet_hours": QUIET, "experiment": {"salt": "s", "control_share": 0.99}}
    )
    customer = control_customer(rule_of(rules, "cart"))
    start = CustomerEvent("e1", "add_to_cart", local(18, 22, 10), customer, "SH", "SKU1")
    state, _ = on_event(None, start, rules, nearby)
    assert on_time(state, customer, local(18, 22, 41), rules) == []
    assert next_deadline(state) == local(19, 8)
    (decision,) = on_time(state, customer, local(19, 8), rules)
    assert isinstance(decision, CouponDecision)
    assert decision.holdout and decision.variant == CONTROL
    assert decision.held_until_ms == local(19, 8)


# --- conversions --------------------------------------------------------------------------------


def test_a_purchase_in_the_window_converts_once() -> None:
    rules = ruleset(CART, window="2d")
    state, decision = sent_coupon(rules)
    state, out = feed([order(2, T0 + DAY)], rules, state)
    assert out == [
        CouponConversion("cart", "default", "c1", decision.code, "purchase", "e2", T0 + DAY)
    ]
    state, again = feed([order(3, T0 + DAY + HOUR)], rules, state)
    assert again == []


def test_the_window_is_counted_from_the_sending_inclusive() -> None:
    rules = ruleset(CART, window="2d")
    sent = T0 + 30 * MIN
    state, _ = sent_coupon(rules)
    state, out = feed([order(2, sent + 2 * DAY)], rules, state)
    assert len(conversions(out)) == 1
    state, _ = sent_coupon(rules)
    state, out = feed([order(2, sent + 2 * DAY + 1)], rules, state)
    assert out == []
    state, out = feed([order(3, sent + 2 * DAY + HOUR)], rules, state)
    assert out == []


def test_a_purchase_before_the_coupon_was_sent_does_not_convert() -> None:
    rules = ruleset(OVERSTOCK, window="2d")
    state, _ = feed([order(1, T0 - HOUR)], rules)
    state, out = on_offer(state, offer(T0), rules)
    assert [type(o) for o in out] == [CouponDecision]
    # An earlier purchase arriving late does not convert, nor close the window.
    state, late = feed([order(2, T0 - MIN)], rules, state)
    assert late == []
    state, later = feed([order(3, T0 + HOUR)], rules, state)
    assert [(c.rule_id, c.event_id) for c in conversions(later)] == [("overstock", "e3")]


def test_a_purchase_while_the_coupon_is_held_does_not_convert_it() -> None:
    rules = ruleset({**OVERSTOCK, "quiet_hours": QUIET}, window="2d")
    state, _ = on_offer(None, offer(local(18, 23)), rules)
    state, out = feed([order(1, local(18, 23, 30))], rules, state)
    assert out == []  # not sent yet
    (decision,) = on_time(state, "c1", local(19, 8), rules)
    assert isinstance(decision, CouponDecision)
    state, out = feed([order(2, local(19, 9))], rules, state)
    assert out == [
        CouponConversion(
            "overstock", "default", "c1", decision.code, "purchase", "e2", local(19, 9)
        )
    ]


def test_a_till_sale_with_the_coupon_code_is_a_redemption() -> None:
    rules = ruleset(OVERSTOCK)
    state, (decision,) = on_offer(None, offer(T0), rules)
    assert isinstance(decision, CouponDecision)
    sale = ev(2, "sale", T0 + HOUR, "SKU1", purchase=True, codes=("OTHER", decision.code))
    state, out = feed([sale], rules, state)
    assert out == [
        CouponRedeemed("overstock", "default", decision.code, T0, T0 + HOUR),
        CouponConversion("overstock", "default", "c1", decision.code, "redeemed", "e2", T0 + HOUR),
    ]


def test_a_till_sale_with_other_codes_is_a_plain_purchase() -> None:
    rules = ruleset(OVERSTOCK)
    state, _ = on_offer(None, offer(T0), rules)
    sale = ev(2, "sale", T0 + HOUR, "SKU1", purchase=True, codes=("OS000000000000",))
    _, out = feed([sale], rules, state)
    assert [c.via for c in conversions(out)] == ["purchase"]


def test_a_non_purchase_event_does_not_convert() -> None:
    rules = ruleset(OVERSTOCK)
    state, _ = on_offer(None, offer(T0), rules)
    state, out = feed([ev(2, "add_to_cart", T0 + MIN, "SKU1")], rules, state)
    assert conversions(out) == []
    _, out = feed([order(3, T0 + HOUR)], rules, state)
    assert len(conversions(out)) == 1


def test_a_holdout_converts_as_control() -> None:
    rules = ruleset({**OVERSTOCK, "experiment": {"salt": "s", "control_share": 0.99}})
    customer = control_customer(rule_of(rules, "overstock"))
    state, (decision,) = on_offer(None, offer(T0, customer), rules)
    assert isinstance(decision, CouponDecision) and decision.holdout
    _, out = feed([order(2, T0 + HOUR, customer)], rules, state)
    assert out == [
        CouponConversion("overstock", CONTROL, customer, decision.code, "purchase", "e2", T0 + HOUR)
    ]


def test_a_purchase_converts_only_the_latest_trigger_across_rules() -> None:
    """CONTRACT §12: the cart coupon (12:30) and the clearance coupon (13:00) were both
    open; the order at 14:00 converts the clearance one alone, and a second order converts
    nothing: its latest trigger has converted, and the cart coupon was superseded."""
    rules = ruleset(CART, OVERSTOCK)
    state, cart = sent_coupon(rules)
    state, (clearance,) = on_offer(state, offer(T0 + HOUR), rules)
    assert isinstance(clearance, CouponDecision) and clearance.sent_at_ms > cart.sent_at_ms
    state, out = feed([order(2, T0 + 2 * HOUR)], rules, state)
    assert [(c.rule_id, c.code) for c in conversions(out)] == [("overstock", clearance.code)]
    _, out = feed([order(3, T0 + 3 * HOUR)], rules, state)
    assert out == []


def test_a_redeemed_code_beats_a_later_trigger() -> None:
    """The till scanned the cart coupon's code: that coupon is the one the purchase
    converts, though the clearance coupon came later."""
    rules = ruleset(CART, OVERSTOCK)
    state, cart = sent_coupon(rules)
    state, _ = on_offer(state, offer(T0 + HOUR), rules)
    sale = ev(2, "sale", T0 + 2 * HOUR, "SKU1", purchase=True, codes=(cart.code,))
    _, out = feed([sale], rules, state)
    assert [(c.rule_id, c.via) for c in conversions(out)] == [("cart", "redeemed")]


def test_after_a_merge_only_the_latest_trigger_of_both_ids_converts() -> None:
    """One person, two ids, each sent a coupon: after ``absorb`` (either way round) one
    purchase converts the later coupon only, and a conversion one id already had still
    counts after the merge (the survivor's next purchase converts nothing)."""
    rules = ruleset(CART, OVERSTOCK)
    device, _cart = sent_coupon(rules)  # 12:30, under the device's id
    member, (clearance,) = on_offer(None, offer(T0 + HOUR), rules)  # 13:00, the member's
    assert isinstance(clearance, CouponDecision)
    for merged in (absorb(member, device), absorb(device, member)):
        merged = state_from_json(state_to_json(merged))  # as handed over through Redis
        after, out = feed([order(2, T0 + 2 * HOUR)], rules, merged)
        assert [c.code for c in conversions(out)] == [clearance.code]
        _, again = feed([order(3, T0 + 3 * HOUR)], rules, after)
        assert again == []
    # The member converted before the merge: the merged state knows it.
    member, out = feed([order(4, T0 + 90 * MIN)], rules, member)
    assert [c.code for c in conversions(out)] == [clearance.code]
    merged = state_from_json(state_to_json(absorb(device, member)))
    _, out = feed([order(5, T0 + 2 * HOUR)], rules, merged)
    assert out == []


# --- offers and the shared policy ---------------------------------------------------------------


def test_an_offer_becomes_a_coupon_with_its_fields() -> None:
    rules = ruleset(OVERSTOCK)
    state, out = on_offer(None, offer(T0), rules)
    assert out == [
        CouponDecision(
            "overstock",
            "c1",
            "default",
            "SKU1",
            "ST-SH-01",
            "ST-SH-01: 90 days of cover",
            ("chg1",),
            T0,
        )
    ]
    assert state.ledger.last_fired == {"overstock": T0}


def test_an_offer_takes_the_experiment_draw() -> None:
    b = {"coupon": {"type": "amount_off", "value": 5}}
    rules = ruleset({**OVERSTOCK, "experiment": {"salt": "x", "variants": {"a": 1, "b": b}}})
    rule = rule_of(rules, "overstock")
    seen = set()
    for n in range(40):
        _, (decision,) = on_offer(None, offer(T0, f"c{n}"), rules)
        assert isinstance(decision, CouponDecision)
        assert decision.variant == draw_variant(rule.experiment, f"c{n}", "overstock")
        seen.add(decision.variant)
    assert seen == {"a", "b"}


def test_offers_respect_the_cooldown_with_the_drawn_variant() -> None:
    rules = ruleset({**OVERSTOCK, "experiment": {"salt": "x", "variants": {"a": 1}}})
    state, first = on_offer(None, offer(T0), rules)
    assert [d.variant for d in decisions(first)] == ["a"]
    state, second = on_offer(state, offer(T0 + HOUR, sku="SKU2"), rules)
    assert second == [CouponSuppressed("overstock", "cooldown", "a")]
    _, third = on_offer(state, offer(T0 + DAY, sku="SKU3"), rules)
    assert [d.variant for d in decisions(third)] == ["a"]


def test_holdouts_are_suppressed_by_the_cooldown_as_control() -> None:
    rules = ruleset({**OVERSTOCK, "experiment": {"salt": "s", "control_share": 0.99}})
    customer = control_customer(rule_of(rules, "overstock"))
    state, _ = on_offer(None, offer(T0, customer), rules)
    _, out = on_offer(state, offer(T0 + HOUR, customer), rules)
    assert out == [CouponSuppressed("overstock", "cooldown", CONTROL)]


def test_the_daily_cap_counts_event_coupons_and_offers_together() -> None:
    rules = ruleset(CART, {**OVERSTOCK, "experiment": {"salt": "x", "variants": {"b": 1}}}, cap=1)
    state, _ = sent_coupon(rules)
    state, out = on_offer(state, offer(T0 + HOUR), rules)
    assert out == [CouponSuppressed("overstock", "cap", "b")]
    next_day = T0 - T0 % DAY + DAY + HOUR  # the cap is per UTC day
    _, out = on_offer(state, offer(next_day), rules)
    assert [d.variant for d in decisions(out)] == ["b"]


def test_an_offer_counts_against_the_cap_of_event_coupons() -> None:
    rules = ruleset(CART, OVERSTOCK, cap=1)
    state, out = on_offer(None, offer(T0), rules)
    assert len(decisions(out)) == 1
    state, _ = feed([ev(1, "add_to_cart", T0 + MIN, "SKU1")], rules, state)
    assert on_time(state, "c1", T0 + 31 * MIN, rules) == [
        CouponSuppressed("cart", "cap", "default")
    ]


def test_a_holdout_counts_against_the_cap_as_the_coupon_it_stands_for() -> None:
    """Both arms must meet the same other coupons afterwards: a held-out customer sent one
    more of them would see its purchases taken by that later trigger."""
    experiment = {"salt": "cap-arms", "control_share": 0.5, "variants": {"a": 1}}
    rules = ruleset({**OVERSTOCK, "experiment": experiment}, CART, cap=1)
    for want_control in (True, False):
        customer = control_customer(rule_of(rules, "overstock"), want_control)
        state, out = on_offer(None, offer(T0, customer), rules)
        (first,) = decisions(out)
        assert first.holdout is want_control
        state, _ = feed([ev(1, "add_to_cart", T0 + MIN, "SKU1", customer=customer)], rules, state)
        assert on_time(state, customer, T0 + 31 * MIN, rules) == [
            CouponSuppressed("cart", "cap", "default")
        ], want_control


def test_an_offer_for_an_unknown_or_disabled_rule_is_dropped() -> None:
    rules = ruleset(CART, {**OVERSTOCK, "enabled": False})
    state, out = on_offer(None, offer(T0), rules)
    assert out == [] and isinstance(state, CustomerState)
    assert state.ledger.last_fired == {} and next_deadline(state) is None
    state, out = on_offer(state, offer(T0, rule="removed"), rules)
    assert out == [] and state.ledger.last_fired == {}


# --- determinism --------------------------------------------------------------------------------


def _scenario(rules: RuleSet) -> list[Outcome]:
    state: CustomerState | None = None
    out: list[Outcome] = []
    steps: list[CustomerEvent | Offer | int] = [
        ev(1, "product_view", local(18, 21, 50), "SKU1"),
        ev(2, "add_to_cart", local(18, 21, 55), "SKU2"),
        ev(3, "product_view", local(18, 21, 56), "SKU1"),
        ev(4, "product_view", local(18, 21, 57), "SKU1"),
        local(18, 22, 30),
        offer(local(18, 23)),
        offer(local(18, 23, 5), sku="SKU3"),
        local(19, 8),
        ev(5, "sale", local(19, 9), "SKU1", purchase=True),
        order(6, local(19, 10)),
        offer(local(20, 12)),
        order(7, local(20, 13)),
    ]
    for step in steps:
        if isinstance(step, int):
            assert state is not None
            out += on_time(state, "c1", step, rules)
        elif isinstance(step, Offer):
            state, fired = on_offer(state, step, rules)
            out += fired
        else:
            state, fired = on_event(state, step, rules, nearby)
            out += fired
    return out


def test_the_same_input_gives_the_same_output() -> None:
    b = {"weight": 2, "coupon": {"type": "free_shipping"}}
    experiment = {"salt": "s", "control_share": 0.3, "variants": {"a": 1, "b": b}}
    rules = ruleset(
        {**CART, "quiet_hours": QUIET, "experiment": experiment},
        {**BROWSE, "experiment": experiment},
        {**OVERSTOCK, "quiet_hours": QUIET, "experiment": experiment},
        cap=2,
    )
    first, second = _scenario(rules), _scenario(rules)
    assert first == second
    kinds = {type(o).__name__ for o in first}
    assert kinds == {"CouponDecision", "CouponSuppressed", "CouponConversion"}
