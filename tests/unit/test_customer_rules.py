"""cart_abandonment, browse_nearby_stock and win_back, with the cases where they must not fire."""

from __future__ import annotations

from domain.customer_rules import (
    CouponDecision,
    CouponSuppressed,
    CustomerEvent,
    CustomerState,
    next_deadline,
    on_event,
    on_time,
)
from domain.rules import parse_rules
from tests.rule_samples import BROWSE, CART

MIN = 60_000
DAY = 86_400_000
T0 = 1_795_000_000_000


def ruleset(*rules: dict, cap: int = 3):
    return parse_rules("test", {"defaults": {"frequency_cap_per_day": cap}, "rules": list(rules)})


WINBACK = {
    "id": "winback",
    "kind": "win_back",
    "cooldown": "30d",
    "params": {"inactive_days": 60},
    "coupon": {"type": "percent_off", "value": 15},
}


def ev(
    n: int,
    kind: str,
    ts: int,
    sku: str | None = None,
    purchase: bool = False,
    region: str | None = "SH",
) -> CustomerEvent:
    return CustomerEvent(
        f"e{n}", kind, ts, "c1", region, sku, (sku,) if purchase and sku else (), purchase
    )


def stores_with(stock: dict[str, int]):
    def nearby(region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
        return sorted(((s, a) for s, a in stock.items() if a >= minimum), key=lambda x: -x[1])

    return nearby


NONE = stores_with({})
SOME = stores_with({"ST-SH-01": 5, "ST-SH-02": 9})


def feed(events, rules, nearby=SOME, state=None):
    fired = []
    for e in events:
        state, out = on_event(state, e, rules, nearby)
        fired += out
    return state, fired


def test_cart_abandonment_fires_after_the_deadline_without_an_order() -> None:
    rules = ruleset(CART)
    state, _ = feed([ev(1, "add_to_cart", T0, "SKU1")], rules)
    assert next_deadline(state) == T0 + 30 * MIN
    assert on_time(state, "c1", T0 + 29 * MIN, rules) == []
    (decision,) = on_time(state, "c1", T0 + 31 * MIN, rules)
    assert isinstance(decision, CouponDecision)
    assert decision.sku == "SKU1" and decision.evidence == ("e1",)
    assert decision.event_time_ms == T0 + 30 * MIN
    assert on_time(state, "c1", T0 + 60 * MIN, rules) == []  # fired once


def test_an_order_in_time_cancels_the_cart_coupon() -> None:
    rules = ruleset(CART)
    state, _ = feed(
        [
            ev(1, "add_to_cart", T0, "SKU1"),
            ev(2, "order_placed", T0 + 10 * MIN, "SKU1", purchase=True),
        ],
        rules,
    )
    assert on_time(state, "c1", T0 + 40 * MIN, rules) == []


def test_cart_coupon_respects_cooldown_and_daily_cap() -> None:
    rules = ruleset(CART, {**CART, "id": "cart2"}, cap=1)
    state, _ = feed([ev(1, "add_to_cart", T0, "SKU1")], rules)
    fired = on_time(state, "c1", T0 + 31 * MIN, rules)
    assert [type(x) for x in fired] == [CouponDecision, CouponSuppressed]
    assert isinstance(fired[1], CouponSuppressed) and fired[1].reason == "cap"
    state, _ = feed([ev(2, "add_to_cart", T0 + 40 * MIN, "SKU2")], rules, state=state)
    again = on_time(state, "c1", T0 + 80 * MIN, rules)
    assert [x.reason for x in again if isinstance(x, CouponSuppressed)] == ["cooldown", "cap"]


def test_browse_nearby_stock_fires_on_the_nth_view_with_the_best_store() -> None:
    rules = ruleset(BROWSE)
    _, fired = feed([ev(n, "product_view", T0 + n * MIN, "SKU1") for n in range(3)], rules)
    (decision,) = fired
    assert isinstance(decision, CouponDecision)
    assert decision.store_id == "ST-SH-02" and decision.evidence == ("e0", "e1", "e2")


def test_browse_does_not_fire_when_carted_out_of_window_or_without_stock_or_region() -> None:
    rules = ruleset(BROWSE)
    views = [ev(n, "product_view", T0 + n * MIN, "SKU1") for n in range(3)]
    assert feed([ev(9, "add_to_cart", T0 - MIN, "SKU1"), *views], rules)[1] == []
    spread = [ev(n, "product_view", T0 + n * 20 * MIN, "SKU1") for n in range(3)]
    assert feed(spread, rules)[1] == []  # not 3 views within 30 minutes
    assert feed(views, rules, nearby=NONE)[1] == []  # no store with stock
    assert (
        feed([ev(n, "product_view", T0 + n * MIN, "SKU1", region=None) for n in range(3)], rules)[1]
        == []
    )  # region unknown


def test_win_back_fires_on_activity_after_a_long_pause_only() -> None:
    rules = ruleset(WINBACK)
    state, fired = feed(
        [ev(1, "order_placed", T0, "SKU1", purchase=True), ev(2, "page_view", T0 + 10 * DAY)], rules
    )
    assert fired == []
    state, fired = feed([ev(3, "page_view", T0 + 61 * DAY)], rules, state=state)
    (decision,) = fired
    assert isinstance(decision, CouponDecision) and "61 days" in decision.reason
    _, fired = feed([ev(4, "page_view", T0 + 62 * DAY)], rules, state=state)
    assert isinstance(fired[0], CouponSuppressed) and fired[0].reason == "cooldown"
    assert feed([ev(5, "page_view", T0)], rules)[1] == []  # never purchased: nothing to win back


def test_control_group_draws_are_holdouts() -> None:
    rules = ruleset({**CART, "experiment": {"salt": "s", "control_share": 0.5}})
    holdouts = 0
    for n in range(200):
        state = CustomerState()
        state, _ = on_event(
            state, CustomerEvent("e", "add_to_cart", T0, f"c{n}", "SH", "SKU1"), rules, NONE
        )
        (decision,) = on_time(state, f"c{n}", T0 + 31 * MIN, rules)
        assert isinstance(decision, CouponDecision)
        holdouts += decision.holdout
    assert 70 < holdouts < 130
