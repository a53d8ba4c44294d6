"""The coupon guards (CONTRACT §11): no coupon without marketing consent (``no_consent``: no
draw, both arms alike), none for a sku with too little available to sell where the coupon
sends the customer (``no_stock``: the named store, else the locations that ship online)."""

from __future__ import annotations

from typing import Any

from base.config import Config
from base.flow_names import RULE_TRIGGERS
from connectors.reference_files import load_reference
from domain.customer_rules import (
    CouponDecision,
    CouponSuppressed,
    CustomerEvent,
    CustomerState,
    Offer,
    Outcome,
    on_event,
    on_offer,
    on_time,
)
from domain.rules import RuleSet, parse_rules
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_view import RecordedStock, StockView
from domain.trigger_engine import CustomerTriggers
from domain.trigger_policy import CONTROL, draw_variant
from state.memory_stock import MemoryStockStore
from state.stock_view import PoolStockView
from tests.rule_samples import CART, OVERSTOCK

PARAMS: dict[str, Any] = dict(OVERSTOCK["params"])  # type: ignore[arg-type]
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_795_000_000_000  # 2026-11-18 ~ 07:06 UTC, outside every quiet hour used here


def ruleset(*rules: dict[str, Any], cap: int = 3) -> RuleSet:
    return parse_rules("test", {"defaults": {"frequency_cap_per_day": cap}, "rules": list(rules)})


def ev(n: int, kind: str, ts: int, sku: str | None = None, **more: object) -> CustomerEvent:
    return CustomerEvent(f"e{n}", kind, ts, str(more.pop("customer", "c1")), "SH", sku, **more)  # type: ignore[arg-type]


def consent(n: int, ts: int, marketing: bool, customer: str = "c1") -> CustomerEvent:
    return ev(n, "consent", ts, consent=marketing, customer=customer)


def none_nearby(region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
    return []


def offer(ts: int, customer: str = "c1", sku: str = "SKU1", store: str | None = "ST1") -> Offer:
    return Offer("overstock", customer, sku, store, "90 days of cover", ("chg1",), ts)


def feed(
    events: list[CustomerEvent],
    rules: RuleSet,
    state: CustomerState | None = None,
    stock: StockView | None = None,
) -> tuple[CustomerState, list[Outcome]]:
    out: list[Outcome] = []
    for e in events:
        out += on_time(state or CustomerState(), e.customer_id, e.ts_ms - 1, rules, stock)
        state, fired = on_event(state, e, rules, none_nearby, stock)
        out += fired
    assert state is not None
    return state, out


# --- consent ------------------------------------------------------------------------------------


def test_a_withdrawn_customer_gets_no_coupon_and_nothing_is_recorded() -> None:
    rules = ruleset(OVERSTOCK)
    state, _ = feed([consent(1, T0, False)], rules)
    state, out = on_offer(state, offer(T0 + MIN), rules)
    assert out == [CouponSuppressed("overstock", "no_consent", "default")]
    assert state.ledger.last_fired == {} and state.ledger.coupons_per_day == {}
    assert state.open_triggers == () and state.held == ()


def test_the_latest_consent_by_event_time_decides_not_the_last_read() -> None:
    rules = ruleset(OVERSTOCK)
    # Given yes at T0+2m, then an older "no" (T0+1m) read after it: still consented.
    state, _ = feed([consent(1, T0 + 2 * MIN, True), consent(2, T0 + MIN, False)], rules)
    _, out = on_offer(state, offer(T0 + 3 * MIN), rules)
    assert [type(o) for o in out] == [CouponDecision]
    # Withdrawn later, then consenting again: coupons come back.
    state, _ = feed([consent(3, T0 + 4 * MIN, False)], rules, state)
    state, out = on_offer(state, offer(T0 + 5 * MIN, sku="SKU2"), rules)
    assert out == [CouponSuppressed("overstock", "no_consent", "default")]
    state, _ = feed([consent(4, T0 + 6 * MIN, True)], rules, state)
    _, out = on_offer(state, offer(T0 + 2 * DAY, sku="SKU3"), rules)
    assert [type(o) for o in out] == [CouponDecision]


def test_a_customer_never_asked_has_consented() -> None:
    rules = ruleset(OVERSTOCK)
    _, out = on_offer(None, offer(T0), rules)
    assert [type(o) for o in out] == [CouponDecision]


def test_both_arms_are_held_back_alike_and_neither_is_drawn() -> None:
    """With a 50 % control share, some customers would be holdouts: withdrawn, none is
    a holdout and none a coupon, and their cooldown is not started."""
    rules = ruleset(
        {**OVERSTOCK, "experiment": {"salt": "s", "control_share": 0.5, "variants": {"a": 1}}}
    )
    rule = rules.by_id["overstock"]
    arms = {draw_variant(rule.experiment, f"c{n}", "overstock") for n in range(20)}
    assert arms == {CONTROL, "a"}  # both arms are among these customers
    for n in range(20):
        state, _ = feed([consent(1, T0, False, customer=f"c{n}")], rules)
        state, out = on_offer(state, offer(T0 + MIN, f"c{n}"), rules)
        assert out == [CouponSuppressed("overstock", "no_consent", "default")]
        assert state.ledger.last_fired == {}


def test_a_coupon_held_through_quiet_hours_is_not_sent_after_a_withdrawal() -> None:
    quiet = {"start": "00:00", "end": "23:59", "utc_offset": "+00:00"}
    rules = ruleset({**OVERSTOCK, "quiet_hours": quiet})
    state, out = on_offer(None, offer(T0), rules)
    assert out == [] and len(state.held) == 1  # held for the end of the quiet hours
    release = state.held[0].sent_at_ms
    state, _ = feed([consent(1, T0 + MIN, False)], rules, state)
    assert on_time(state, "c1", release, rules) == [
        CouponSuppressed("overstock", "no_consent", "default")
    ]
    assert state.held == () and state.open_triggers == ()


# --- stock --------------------------------------------------------------------------------------


def change(location: str, kind: str, available: int, ts: int, sku: str = "SKU1") -> StockChange:
    return StockChange(sku, location, "SH", available, 0, ts, f"m-{location}-{ts}", available, kind)


def test_a_cart_coupon_needs_the_sku_online_summed_over_shipping_locations() -> None:
    rules = ruleset({**CART, "params": {"within": "30m", "min_available": 3}})
    pool = RecordedStock(
        [
            change("WH1", "warehouse", 1, T0 - HOUR),
            change("WH2", "warehouse", 1, T0 - HOUR),
            change("ST1", "store", 50, T0 - HOUR),  # a store does not ship by default
            change("WH2", "warehouse", 2, T0 + 10 * MIN),  # 1 + 2 = 3 by the deadline
        ]
    )
    cart = [ev(1, "add_to_cart", T0, "SKU1")]
    # As of the deadline (T0 + 30m) the warehouses have 3: the coupon goes.
    state, _ = feed(cart, rules, stock=pool.as_recorded())
    out = on_time(state, "c1", T0 + HOUR, rules, pool.as_recorded())
    assert [type(o) for o in out] == [CouponDecision]
    # As of the add (a pool frozen before the refill), 2 < 3: held back, nothing recorded.
    before = RecordedStock(
        [change("WH1", "warehouse", 1, T0 - HOUR), change("WH2", "warehouse", 1, T0 - HOUR)]
    )
    state, _ = feed(cart, rules, stock=before.as_recorded())
    out = on_time(state, "c1", T0 + HOUR, rules, before.as_recorded())
    assert out == [CouponSuppressed("cart", "no_stock", "default")]
    assert state.ledger.last_fired == {}


def test_the_reference_says_which_locations_ship() -> None:
    """A store the locations file lets ship counts; a warehouse it does not, does not."""
    changes = [change("WH1", "warehouse", 4, T0), change("ST1", "store", 6, T0)]
    assert RecordedStock(changes).as_recorded().available_online("SKU1", T0) == 4
    shipping = RecordedStock(changes, shipping={"ST1"}).as_recorded()
    assert shipping.available_online("SKU1", T0) == 6
    assert shipping.available_online("SKU1", T0 - 1) == 0  # nothing recorded yet
    assert shipping.available_online("OTHER", T0) == 0


def test_a_coupon_naming_a_store_needs_the_store_s_own_stock() -> None:
    rules = ruleset({**OVERSTOCK, "params": {**PARAMS, "min_available": 2}})
    pool = RecordedStock([change("ST1", "store", 1, T0), change("WH1", "warehouse", 99, T0)])
    _, out = on_offer(None, offer(T0 + MIN), rules, pool.as_recorded())
    assert out == [CouponSuppressed("overstock", "no_stock", "default")]
    pool.record(change("ST1", "store", 2, T0 + MIN))
    _, out = on_offer(None, offer(T0 + MIN), rules, pool.as_recorded())
    assert [type(o) for o in out] == [CouponDecision]


def test_min_available_zero_turns_the_guard_off_and_sku_less_coupons_are_not_asked() -> None:
    empty = RecordedStock().as_recorded()
    rules = ruleset({**OVERSTOCK, "params": {**PARAMS, "min_available": 0}})
    _, out = on_offer(None, offer(T0), rules, empty)
    assert [type(o) for o in out] == [CouponDecision]
    lapsed = {
        "id": "lapsed",
        "kind": "lapsed",
        "cooldown": "30d",
        "params": {"inactive_days": 30},
        "coupon": {"type": "percent_off", "value": 15},
    }
    rules = ruleset(lapsed)
    state, _ = feed([ev(1, "order_placed", T0, skus=("SKU1",), is_purchase=True)], rules)
    out = on_time(state, "c1", T0 + 31 * DAY, rules, empty)  # names no sku: no stock asked
    assert [type(o) for o in out] == [CouponDecision]


def test_the_engine_applies_the_stock_guard_to_its_timers_too() -> None:
    rules = ruleset(CART)
    empty = RecordedStock().at_end()
    customer = CustomerTriggers()
    customer.on_event(ev(1, "add_to_cart", T0, "SKU1"), rules, empty)
    assert customer.fire_due(T0 + HOUR, rules, empty) == [
        CouponSuppressed("cart", "no_stock", "default")
    ]


def test_the_pool_view_sums_the_shipping_locations_as_the_recording_does() -> None:
    reference = load_reference(Config())
    sku = next(iter(reference.products))
    locations = sorted(reference.locations.values(), key=lambda loc: loc.location_id)
    pool = MemoryStockStore(reference)
    changes = []
    for n, loc in enumerate(locations[:8]):
        available = 3 + n
        pool.write(
            [
                StockPosition(
                    sku, loc.location_id, available, 0, available, 0, 0, None, T0, "m", "m#0"
                )
            ]
        )
        changes.append(
            StockChange(
                sku, loc.location_id, loc.region, available, 0, T0, "m", available, loc.type
            )
        )
    shipping = [loc.location_id for loc in reference.locations.values() if loc.ships]
    expected = sum(c.available for c in changes if reference.locations[c.location_id].ships)
    assert any(not reference.locations[c.location_id].ships for c in changes)  # a real filter
    assert PoolStockView(pool, RULE_TRIGGERS, shipping).available_online(sku, 0) == expected
    assert RecordedStock(changes, shipping=shipping).at_end().available_online(sku, 0) == expected
    by_type = RecordedStock(changes).at_end().available_online(sku, 0)
    assert PoolStockView(pool, RULE_TRIGGERS).available_online(sku, 0) == by_type
