"""A customer's rule state merges (``absorb``: two ids found to be one person) and travels
(``state_to_json`` / ``state_from_json``: handed to the survivor through Redis)."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from domain.customer_rules import (
    CouponDecision,
    CouponSuppressed,
    CustomerEvent,
    CustomerState,
    LifecycleTimer,
    Offer,
    OpenTrigger,
    Outcome,
    absorb,
    next_deadline,
    state_from_json,
    state_to_json,
)
from domain.rules import RuleSet, parse_rules
from domain.stock_rules import StockChange
from domain.stock_view import RecordedStock
from domain.trigger_engine import CustomerTriggers
from tests.rule_samples import BROWSE, CART, OVERSTOCK

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_795_000_000_000  # 2026-11-18 07:06:40 UTC

QUIET = {"start": "20:00", "end": "23:00", "utc_offset": "+00:00"}
RULES: list[dict[str, Any]] = [
    {**CART, "params": {"within": "30m", "min_available": 0}},
    {**BROWSE, "params": {"views": 2, "within": "1h", "min_available": 1}},
    {**OVERSTOCK, "quiet_hours": QUIET, "params": {"min_available": 0}},
    {
        "id": "lapsed",
        "kind": "lapsed",
        "cooldown": "1d",
        "params": {"inactive_days": 30},
        "coupon": {"type": "percent_off", "value": 15},
    },
    {
        "id": "repurchase",
        "kind": "repurchase",
        "cooldown": "1h",
        "coupon": {"type": "percent_off", "value": 5},
    },
    {"id": "visit", "kind": "store_visit", "cooldown": "1h"},
]


def ruleset(cap: int = 3) -> RuleSet:
    return parse_rules("test", {"defaults": {"frequency_cap_per_day": cap}, "rules": RULES})


STOCK = RecordedStock().at_end()  # every coupon here passes the stock guard without stock


def nearby_stock() -> RecordedStock:
    return RecordedStock([StockChange("COAT", "ST1", "SH", 9, 0, T0 - DAY, "m", 9, "store")])


def ev(
    customer: str, n: int, kind: str, ts: int, sku: str | None = None, **more: Any
) -> CustomerEvent:
    return CustomerEvent(f"{customer}-e{n}", kind, ts, customer, "SH", sku, **more)


def buy(
    customer: str, n: int, ts: int, *skus: str, every: dict[str, int] | None = None
) -> CustomerEvent:
    days = tuple((every or {}).items())
    return ev(customer, n, "order_placed", ts, skus=skus, is_purchase=True, repurchase_days=days)


def history(customer: str, shift: int) -> CustomerTriggers:
    """A customer with something in every part of the state: views, a cart, a coupon held
    for quiet hours, coupons within their conversion window, a consent, lifecycle timers."""
    rules = ruleset()
    triggers = CustomerTriggers()
    stock = nearby_stock().at_end()
    events = [
        buy(customer, 1, T0 + shift, "SOAP", every={"SOAP": 20}),
        ev(customer, 2, "product_view", T0 + shift + HOUR, "COAT"),
        ev(customer, 3, "product_view", T0 + shift + HOUR + MIN, "COAT"),  # browse coupon
        ev(customer, 4, "consent", T0 + shift + 90 * MIN, consent=True),
        ev(customer, 5, "add_to_cart", T0 + shift + 2 * HOUR, "HAT"),  # still open
    ]
    for e in events:
        triggers.on_event(e, rules, stock)
    # An offer inside the quiet hours (20:00–23:00 UTC): held.
    evening = (T0 + shift) // DAY * DAY + 21 * HOUR
    triggers.on_offer(
        Offer("overstock", customer, "SKU9", "ST1", "cover", (f"{customer}-x",), evening),
        rules,
        stock,
    )
    return triggers


def test_a_rich_state_has_something_in_every_part() -> None:
    state = history("a", 0).state
    assert state.views and state.carts and state.carted_at and state.held and state.open_triggers
    assert state.ledger.last_fired and state.ledger.coupons_per_day
    assert state.consent_ms is not None and state.lapses and state.repurchases
    assert isinstance(state.held[0], CouponDecision) and state.held[0].held_until_ms is not None


def test_the_state_round_trips_through_json_exactly() -> None:
    for state in (
        history("a", 0).state,
        absorb(history("a", 0).state, history("b", MIN).state),
        CustomerState(),
    ):
        raw = state_to_json(state)
        assert isinstance(raw, bytes)
        back = state_from_json(raw)
        assert back == state
        assert state_to_json(back) == raw
    # Held decisions come back as the frozen records they were (tuples, not lists).
    held = state_from_json(state_to_json(history("a", 0).state)).held[0]
    assert isinstance(held.evidence, tuple) and held.code == history("a", 0).state.held[0].code


def test_the_json_is_plain_data_no_pickle() -> None:
    doc = orjson.loads(state_to_json(history("a", 0).state))
    assert doc["v"] == 1 and doc["marketing"] is True
    assert doc["repurchases"] == [["repurchase", "SOAP", T0 + 20 * DAY, T0, "a-e1", 20]]


def test_absorb_is_commutative_and_changes_neither_input() -> None:
    a, b = history("a", 0).state, history("b", 5 * MIN).state
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    assert absorb(a, b) == absorb(b, a)
    assert a == a0 and b == b0
    assert absorb(a, CustomerState()) == absorb(CustomerState(), a)


def later_outcomes(state: CustomerState, customer: str) -> list[Outcome]:
    rules = ruleset()
    triggers = CustomerTriggers(customer, state)
    out: list[Outcome] = []
    for e in [
        ev(customer, 10, "product_view", T0 + 2 * DAY, "COAT"),
        ev(customer, 11, "store_checkin", T0 + 2 * DAY + HOUR, store_id="ST1"),
        buy(customer, 12, T0 + 3 * DAY, "HAT"),
    ]:
        out += triggers.on_event(e, rules, STOCK)
    return out + triggers.finish(T0 + 90 * DAY, rules, STOCK)


def test_either_order_fires_the_same_later_outcomes() -> None:
    a, b = history("a", 0).state, history("b", 5 * MIN).state
    one = later_outcomes(absorb(a, b), "a")
    other = later_outcomes(absorb(b, a), "a")
    assert one == other and one  # and something fires
    travelled = later_outcomes(state_from_json(state_to_json(absorb(a, b))), "a")
    assert travelled == one


def test_the_cap_counts_both_ids_coupons() -> None:
    rules = ruleset(cap=2)
    a = CustomerTriggers()
    a.on_offer(Offer("overstock", "a", "SKU1", "ST1", "cover", ("x1",), T0), rules, STOCK)
    b = CustomerTriggers()
    b.on_offer(Offer("overstock", "b", "SKU2", "ST1", "cover", ("x2",), T0 + MIN), rules, STOCK)
    merged = CustomerTriggers("a", absorb(a.state, b.state))
    assert merged.state.ledger.coupons_per_day == {T0 // DAY: 2}
    merged.on_event(ev("a", 1, "add_to_cart", T0 + 2 * MIN, "HAT"), rules, STOCK)
    assert merged.fire_due(T0 + HOUR, rules, STOCK) == [CouponSuppressed("cart", "cap", "default")]


def test_cooldowns_keep_each_rule_s_latest_firing() -> None:
    a, b = CustomerState(), CustomerState()
    a.ledger.last_fired.update({"cart": T0, "browse": T0 + 5})
    b.ledger.last_fired.update({"cart": T0 + 9, "lapsed": T0 + 1})
    assert absorb(a, b).ledger.last_fired == {"cart": T0 + 9, "browse": T0 + 5, "lapsed": T0 + 1}


def test_carts_views_held_and_open_coupons_are_the_union() -> None:
    held = CouponDecision("overstock", "a", "default", "S", "ST1", "r", ("x",), T0, T0 + HOUR)
    other = CouponDecision("overstock", "b", "default", "S", "ST1", "r", ("y",), T0, T0 + HOUR)
    a = CustomerState(
        views={"COAT": (T0, "v1", T0 + 2, "v2")},
        carts={"HAT": (T0 + 30 * MIN, "c1"), "SOCK": (T0 + 40 * MIN, "c3")},
        carted_at={"HAT": T0},
        held=[held],
        open_triggers=[OpenTrigger("cart", "default", "OS1", T0)],
    )
    b = CustomerState(
        views={"COAT": (T0 + 2, "v2", T0 + 3, "v3"), "HAT": (T0 + 1, "v4")},
        carts={"HAT": (T0 + 50 * MIN, "c2")},  # the later add of the same sku
        carted_at={"HAT": T0 + 20 * MIN},
        held=[held, other],
        open_triggers=[
            OpenTrigger("cart", "default", "OS1", T0),
            OpenTrigger("browse", "x", "OS2", T0 + 1),
        ],
    )
    merged = absorb(a, b)
    assert merged.views == {
        "COAT": (T0, "v1", T0 + 2, "v2", T0 + 3, "v3"),
        "HAT": (T0 + 1, "v4"),
    }
    assert merged.carts == {"HAT": (T0 + 50 * MIN, "c2"), "SOCK": (T0 + 40 * MIN, "c3")}
    assert merged.carted_at == {"HAT": T0 + 20 * MIN}
    assert sorted(d.code for d in merged.held) == sorted({held.code, other.code})
    assert [t.code for t in merged.open_triggers] == ["OS1", "OS2"]
    assert next_deadline(merged) == T0 + 40 * MIN


def test_the_latest_consent_wins_whichever_id_gave_it() -> None:
    withdrew = CustomerState(consent_ms=T0, marketing=False)
    consented = CustomerState(consent_ms=T0 + 1, marketing=True)
    assert absorb(withdrew, consented).marketing is True
    assert absorb(consented, withdrew).marketing is True
    never = CustomerState()
    assert absorb(never, withdrew).marketing is False  # the one that was asked decides
    tie = CustomerState(consent_ms=T0, marketing=True)
    assert absorb(tie, withdrew).marketing is False and absorb(withdrew, tie).marketing is False


def test_the_latest_purchase_sets_the_lapse_and_each_sku_s_repurchase() -> None:
    a = CustomerState(
        last_purchase_ms=T0,
        lapses={"lapsed": LifecycleTimer(T0 + 30 * DAY, T0, "a1", 30)},
        repurchases={
            ("repurchase", "SOAP"): LifecycleTimer(T0 + 20 * DAY, T0, "a1", 20),
            ("repurchase", "TEA"): LifecycleTimer(T0 + 5 * DAY, T0, "a1", 5),
        },
    )
    b = CustomerState(
        last_purchase_ms=T0 + DAY,
        lapses={},  # b's own lapse has fired; a's was armed by an older purchase
        repurchases={("repurchase", "SOAP"): LifecycleTimer(T0 + 21 * DAY, T0 + DAY, "b1", 20)},
    )
    merged = absorb(a, b)
    assert merged.last_purchase_ms == T0 + DAY
    assert merged.lapses == {}  # armed by a purchase older than the customer's last one
    assert merged.repurchases == {
        ("repurchase", "SOAP"): LifecycleTimer(T0 + 21 * DAY, T0 + DAY, "b1", 20),
        ("repurchase", "TEA"): LifecycleTimer(T0 + 5 * DAY, T0, "a1", 5),
    }
    b.lapses = {"lapsed": LifecycleTimer(T0 + 31 * DAY, T0 + DAY, "b1", 30)}
    assert absorb(a, b).lapses == {"lapsed": b.lapses["lapsed"]}
    assert absorb(b, a) == absorb(a, b)


def test_one_lapse_coupon_for_the_person_after_a_merge() -> None:
    """Each id bought once; merged, the person lapses once, from the later purchase."""
    rules = ruleset()
    a, b = CustomerTriggers(), CustomerTriggers()
    a.on_event(buy("a", 1, T0, "HAT"), rules, STOCK)
    b.on_event(buy("b", 1, T0 + 2 * DAY, "HAT"), rules, STOCK)
    merged = CustomerTriggers("a", absorb(a.state, b.state))
    out = merged.finish(T0 + 90 * DAY, rules, STOCK)
    lapses = [o for o in out if isinstance(o, CouponDecision) and o.rule_id == "lapsed"]
    assert [(d.event_time_ms, d.evidence) for d in lapses] == [(T0 + 32 * DAY, ("b-e1",))]
