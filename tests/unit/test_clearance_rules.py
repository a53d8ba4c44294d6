"""overstock, expiring_stock and the region audience, with the cases where they must not fire.

State is per sku × location, as the flow keeps it (``Sku`` below holds one sku's locations);
what a rule compares across locations comes from the stock pool those changes went to.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from domain.clearance_rules import (
    AUDIENCE_PRUNE_MS,
    PASSING_MS,
    AudienceState,
    ClearanceOutcome,
    ClearanceSignal,
    View,
    add_batch,
    add_signal,
    add_view,
    batch_units,
    clearance_deadline,
    evaluate_clearance,
    follow_merge,
    forget_viewer,
    note_change,
    release_signals,
    survivor_of,
)
from domain.customer_rules import Offer
from domain.rules import RuleSet, parse_rules
from domain.stock_rules import (
    ExpiryBatch,
    SkuRuleState,
    StockChange,
    StockDecision,
    StockTriggerSuppressed,
)
from domain.stock_view import RecordedStock
from tests.rule_samples import OVERSTOCK

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_795_000_000_000
CATEGORY = "dairy"

EXPIRING = {
    "id": "expiring",
    "kind": "expiring_stock",
    "cooldown": "1h",
    "params": {"within_days": 2, "viewed_within": "3d"},
    "coupon": {"type": "percent_off", "value": 30},
}


def ruleset(*rules: dict, max_audience: int = 1000) -> RuleSet:
    return parse_rules("test", {"defaults": {"max_audience": max_audience}, "rules": list(rules)})


def change(
    location: str,
    on_hand: int,
    sold: int = 0,
    ts: int = T0,
    region: str = "SH",
    location_type: str = "store",
    available: int | None = None,
    cause: str = "e",
) -> StockChange:
    return StockChange(
        "SKU1",
        location,
        region,
        on_hand if available is None else available,
        sold,
        ts,
        cause,
        on_hand,
        location_type,
    )


class Sku:
    """One sku's locations as the flow keeps them — a state per sku × location — and the
    stock pool their changes went to (what a rule reads of the other locations)."""

    def __init__(self) -> None:
        self.locations: dict[str, SkuRuleState] = {}
        self.pool = RecordedStock()

    def at(self, location: str) -> SkuRuleState:
        return self.locations.setdefault(location, SkuRuleState())

    def seen_ms(self) -> int:
        """The latest event time of a change or a receipt seen for the sku."""
        times = [s.position.ts_ms for s in self.locations.values() if s.position is not None]
        times += [b.ts_ms for s in self.locations.values() for b in s.batches]
        return max(times, default=0)


def apply(sku: Sku, c: StockChange, rules: RuleSet) -> list[ClearanceOutcome]:
    """What the flow does with one stock change (after stock_pool wrote it to the pool)."""
    sku.pool.record(c)
    state = sku.at(c.location_id)
    state.position = c
    note_change(state, c)
    return evaluate_clearance(state, rules, CATEGORY, c.ts_ms, sku.pool.as_recorded())


def receive(sku: Sku, b: ExpiryBatch) -> None:
    add_batch(sku.at(b.location_id), b)


def timer(sku: Sku, rules: RuleSet, now: int) -> list[ClearanceOutcome]:
    """The timer at ``now``, for every location of the sku (in location order)."""
    out: list[ClearanceOutcome] = []
    for location in sorted(sku.locations):
        state = sku.locations[location]
        out += evaluate_clearance(state, rules, CATEGORY, now, sku.pool.as_recorded(), timer=True)
    return out


def deadline(sku: Sku, rules: RuleSet) -> int | None:
    """The sku's next timer deadline (the earliest of its locations')."""
    found = [clearance_deadline(state, rules) for state in sku.locations.values()]
    return min((d for d in found if d is not None), default=None)


def kinds(outcomes: list[ClearanceOutcome]) -> list[str]:
    return [
        o.kind if not isinstance(o, StockTriggerSuppressed) else f"suppressed:{o.reason}"
        for o in outcomes
    ]


def batch(
    event_id: str, qty: int, expires: int, location: str = "S1", region: str = "SH", ts: int = T0
) -> ExpiryBatch:
    return ExpiryBatch("SKU1", location, region, qty, expires, event_id, ts)


# --- overstock by days of cover -----------------------------------------------------------------


def test_overstock_fires_on_the_cover_crossing_once_and_rearms() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    out = [
        apply(state, change("S1", 100, sold=5), rules),  # 20 days of cover
        apply(state, change("S1", 100, sold=1, ts=T0 + HOUR, cause="c2"), rules),  # 100 days
        apply(state, change("S1", 120, sold=1, ts=T0 + 2 * HOUR), rules),  # still above
        apply(state, change("S1", 100, sold=5, ts=T0 + 3 * HOUR), rules),  # re-armed
        apply(state, change("S1", 100, sold=1, ts=T0 + 2 * DAY), rules),  # crosses again
    ]
    assert [kinds(o) for o in out] == [[], ["overstock"], [], [], ["overstock"]]
    signal = out[1][0]
    assert signal == ClearanceSignal(
        "overstock",
        "overstock",
        "SKU1",
        CATEGORY,
        "S1",
        "SH",
        "S1: 100 days of cover, above 60",
        ("c2",),
        T0 + HOUR,
    )


def test_overstock_cover_at_the_threshold_does_not_fire() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    assert apply(state, change("S1", 60, sold=1), rules) == []  # exactly 60 days: not above
    assert apply(state, change("S1", 100, sold=1, available=60), rules) == []  # cover is available
    assert kinds(apply(state, change("S1", 61, sold=1, ts=T0 + 1), rules)) == ["overstock"]


def test_overstock_respects_the_cooldown_per_sku_and_location() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    assert kinds(apply(state, change("S1", 100, sold=1), rules)) == ["overstock"]
    assert apply(state, change("S1", 100, sold=5, ts=T0 + HOUR), rules) == []  # re-armed
    again = apply(state, change("S1", 100, sold=1, ts=T0 + 2 * HOUR), rules)
    assert again == [StockTriggerSuppressed("overstock", "cooldown")]
    # Suppressed counts as the firing of this crossing: not retried while it holds.
    assert apply(state, change("S1", 110, sold=1, ts=T0 + 3 * HOUR), rules) == []
    # Another store of the same sku has its own cooldown.
    assert kinds(apply(state, change("S2", 100, sold=1, ts=T0 + 2 * HOUR), rules)) == ["overstock"]
    # Another sku (its own state) too.
    assert kinds(apply(Sku(), change("S1", 100, sold=1, ts=T0 + HOUR), rules)) == ["overstock"]
    # After the cooldown, a new crossing fires.
    apply(state, change("S1", 100, sold=5, ts=T0 + DAY), rules)
    assert kinds(apply(state, change("S1", 100, sold=1, ts=T0 + DAY + HOUR), rules)) == [
        "overstock"
    ]


def test_overstock_never_fires_at_a_warehouse() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    assert apply(state, change("W1", 5000, sold=1, location_type="warehouse"), rules) == []
    assert apply(state, change("W1", 5000, sold=0, location_type="warehouse"), rules) == []
    assert timer(state, rules, T0 + 100 * DAY) == []  # nor idle
    assert deadline(state, rules) is None  # and no timer for it


def test_overstock_needs_more_than_min_on_hand() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    # 10 units with 1 sold a day would be plenty of cover, but 10 is the floor (min_on_hand).
    assert apply(state, change("S1", 10, sold=0, available=1000), rules) == []
    assert apply(state, change("S1", 10, sold=1, available=1000), rules) == []
    assert apply(state, change("S1", 11, sold=0, available=1000), rules) == []  # not idle yet
    assert kinds(apply(state, change("S1", 61, sold=1, ts=T0 + 1), rules)) == ["overstock"]


# --- overstock by idleness ----------------------------------------------------------------------


def test_idle_overstock_is_found_by_the_timer_from_the_first_sighting() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    assert apply(state, change("S1", 50, sold=0, cause="first"), rules) == []
    assert deadline(state, rules) == T0 + 30 * DAY
    assert timer(state, rules, T0 + 30 * DAY - 1) == []
    (signal,) = timer(state, rules, T0 + 30 * DAY)
    assert isinstance(signal, ClearanceSignal)
    assert signal.kind == "overstock" and signal.location_id == "S1"
    assert signal.ts_ms == T0 + 30 * DAY and signal.evidence == ("first",)
    assert signal.reason == "S1: nothing sold for 30 days with 50 on hand"
    assert timer(state, rules, T0 + 31 * DAY) == []  # once


def test_idleness_is_measured_from_the_last_change_that_sold() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    apply(state, change("S1", 50, sold=0), rules)
    assert apply(state, change("S1", 50, sold=3, ts=T0 + 10 * DAY), rules) == []  # 17 days
    assert apply(state, change("S1", 50, sold=0, ts=T0 + 11 * DAY), rules) == []
    assert deadline(state, rules) == T0 + 40 * DAY
    assert timer(state, rules, T0 + 31 * DAY) == []  # 30 days after first seen, not after sale
    assert timer(state, rules, T0 + 40 * DAY - 1) == []
    assert kinds(timer(state, rules, T0 + 40 * DAY)) == ["overstock"]


def test_idle_overstock_on_a_change_after_idle_days() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    apply(state, change("S1", 50, sold=0), rules)
    assert kinds(apply(state, change("S1", 60, sold=0, ts=T0 + 30 * DAY), rules)) == ["overstock"]


def test_idle_overstock_needs_more_than_min_on_hand_and_a_store() -> None:
    rules = ruleset(OVERSTOCK)
    state = Sku()
    apply(state, change("S1", 10, sold=0), rules)
    apply(state, change("W1", 500, sold=0, location_type="warehouse"), rules)
    assert timer(state, rules, T0 + 31 * DAY) == []


def test_idle_after_the_last_sale_is_found_by_the_timer() -> None:
    """A shelf that sold once and then nobody buys from sends no more stock changes: its
    latest change still says sold_24h > 0, yet nothing has sold for ``idle_days``."""
    rules = ruleset(OVERSTOCK)
    state = Sku()
    assert apply(state, change("S1", 50, sold=1), rules) == []  # 50 days of cover: fine
    assert deadline(state, rules) == T0 + 30 * DAY
    assert kinds(timer(state, rules, T0 + 30 * DAY)) == ["overstock"]


def _stale_deadline_states() -> dict[str, Sku]:
    rules = ruleset(OVERSTOCK, EXPIRING)
    at_floor = Sku()  # idle, but no more than min_on_hand
    apply(at_floor, change("S1", 10, sold=0), rules)
    sold_out = Sku()  # the batch has no units left
    receive(sold_out, batch("b1", 10, T0 + 5 * DAY))
    apply(sold_out, change("S1", 0, sold=0), rules)
    seen_late = Sku()  # units show up only after the batch's window has passed
    apply(seen_late, change("S1", 0, sold=0), rules)
    receive(seen_late, batch("b1", 10, T0 + 5 * DAY))
    apply(seen_late, change("S1", 5, sold=0, ts=T0 + 5 * DAY + HOUR, cause="count"), rules)
    sold_once = Sku()  # sold once, then silence
    apply(sold_once, change("S1", 50, sold=1), rules)
    return {
        "at_floor": at_floor,
        "sold_out": sold_out,
        "seen_late": seen_late,
        "sold_once": sold_once,
    }


@pytest.mark.parametrize("case", ["at_floor", "sold_out", "seen_late", "sold_once"])
def test_the_timer_deadline_moves_on_once_the_timer_has_looked(case: str) -> None:
    """``clearance_deadline`` is when the timer *may* find something. Once the timer has
    looked at that time and nothing changed since, returning the same (past) deadline again
    would wake the timer over and over for nothing."""
    rules = ruleset(OVERSTOCK, EXPIRING)
    state = _stale_deadline_states()[case]
    first = deadline(state, rules)
    if first is None:
        return
    now = max(first, state.seen_ms())
    timer(state, rules, now)
    later = deadline(state, rules)
    assert later is None or later > now, (case, first, later)


# --- expiring stock -----------------------------------------------------------------------------


def test_add_batch_keeps_batches_in_expiry_order_once_each() -> None:
    state = add_batch(None, batch("b2", 10, T0 + 9 * DAY, ts=T0 + 5))
    add_batch(state, batch("b1", 10, T0 + 5 * DAY, ts=T0 + 3))
    add_batch(state, batch("b2", 10, T0 + 9 * DAY, ts=T0 + 7))  # replayed receipt
    assert [b.event_id for b in state.batches] == ["b1", "b2"]


def test_batch_units_are_first_expiring_first_out() -> None:
    state = SkuRuleState()
    b1, b2 = batch("b1", 10, T0 + 5 * DAY), batch("b2", 10, T0 + 9 * DAY)
    add_batch(state, b2)
    add_batch(state, b1)
    assert batch_units(state) == [(b1, 0), (b2, 0)]  # no position yet
    for on_hand, units in [(30, [10, 10]), (15, [5, 10]), (8, [0, 8]), (0, [0, 0]), (-4, [0, 0])]:
        state.position = change("S1", on_hand)
        assert batch_units(state) == [(b1, units[0]), (b2, units[1])], on_hand
    assert batch_units(SkuRuleState()) == []


def test_expiring_stock_fires_once_inside_the_window() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    receive(state, batch("b1", 10, expires))
    assert apply(state, change("S1", 15, sold=1), rules) == []  # 5 days left, window is 2
    assert deadline(state, rules) == expires - 2 * DAY
    assert timer(state, rules, expires - 2 * DAY - 1) == []
    out = timer(state, rules, expires - 2 * DAY)
    assert kinds(out) == ["expiring_stock", "prepare"]
    signal = out[0]
    assert signal == ClearanceSignal(
        "expiring",
        "expiring_stock",
        "SKU1",
        CATEGORY,
        "S1",
        "SH",
        "10 units at S1 expire in 2.0 days",
        ("b1",),
        expires - 2 * DAY,
    )
    assert timer(state, rules, expires - DAY) == []  # once per batch
    assert apply(state, change("S1", 14, sold=1, ts=expires - DAY), rules) == []
    assert deadline(state, rules) is None


def test_expiring_stock_fires_on_the_change_that_enters_the_window() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    receive(state, batch("b1", 10, expires))
    out = apply(state, change("S1", 10, sold=0, ts=expires - HOUR), rules)
    assert kinds(out) == ["expiring_stock", "prepare"]


def test_expiring_stock_does_not_fire_for_a_batch_already_sold() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    e1, e2 = T0 + 5 * DAY, T0 + 9 * DAY
    receive(state, batch("b1", 10, e1))
    receive(state, batch("b2", 10, e2))
    apply(state, change("S1", 8, sold=1), rules)  # the 8 left are all from b2
    assert timer(state, rules, e1 - 2 * DAY) == []
    assert timer(state, rules, e1 - HOUR) == []
    out = timer(state, rules, e2 - 2 * DAY)
    assert kinds(out) == ["expiring_stock", "prepare"]
    signal = out[0]
    assert isinstance(signal, ClearanceSignal)
    assert signal.evidence == ("b2",) and signal.reason.startswith("8 units at S1")


def test_expiring_stock_does_not_fire_before_the_window_or_after_expiry() -> None:
    rules = ruleset(EXPIRING)
    expires = T0 + 5 * DAY
    state = Sku()
    receive(state, batch("b1", 10, expires))
    assert apply(state, change("S1", 10, sold=1, ts=expires - 2 * DAY - 1), rules) == []
    late = Sku()
    receive(late, batch("b1", 10, expires))
    assert apply(late, change("S1", 10, sold=1, ts=expires), rules) == []  # expired: write off
    assert timer(late, rules, expires + HOUR) == []


def test_expiring_stock_with_no_stock_or_no_batch_does_not_fire() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    receive(state, batch("b1", 10, T0 + DAY))
    assert apply(state, change("S1", 0, sold=1), rules) == []
    assert apply(Sku(), change("S1", 10, sold=1), rules) == []
    other = Sku()
    receive(other, batch("b1", 10, T0 + DAY, location="S2"))
    assert apply(other, change("S1", 10, sold=1), rules) == []  # the batch is at S2


def test_expiring_stock_transfers_to_the_fastest_store_of_the_region() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    apply(state, change("S2", 4, sold=3, cause="s2"), rules)
    apply(state, change("S3", 6, sold=5, available=2, cause="s3"), rules)  # fastest in SH
    apply(state, change("S9", 7, sold=50, region="HZ"), rules)  # other region
    apply(state, change("W1", 900, sold=80, location_type="warehouse"), rules)  # not a store
    receive(state, batch("b1", 20, expires))
    out = apply(state, change("S1", 15, sold=1, ts=expires - 2 * DAY), rules)
    assert kinds(out) == ["expiring_stock", "transfer"]
    move = out[1]
    assert isinstance(move, StockDecision)
    assert move.location_id == "S3" and move.source_location_id == "S1"
    assert move.region == "SH" and move.sku == "SKU1" and move.available == 2
    assert move.suggested_qty == min(15, math.ceil(5 * 2.0)) == 10
    assert move.evidence == ("b1",) and move.event_time_ms == expires - 2 * DAY
    assert move.reason == "15 units at S1 expire in 2.0 days; S3 sells 5/day"


def test_expiring_stock_transfer_takes_at_most_the_units_of_the_batch() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    apply(state, change("S2", 4, sold=40), rules)
    receive(state, batch("b1", 20, expires))
    out = apply(state, change("S1", 6, sold=1, ts=expires - DAY), rules)
    move = out[1]
    assert isinstance(move, StockDecision)
    assert move.kind == "transfer" and move.suggested_qty == 6


def test_expiring_stock_prepares_a_display_when_no_store_of_the_region_sells_faster() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    apply(state, change("S2", 4, sold=3), rules)  # as fast: not faster
    apply(state, change("S9", 7, sold=50, region="HZ"), rules)  # faster, but another region
    receive(state, batch("b1", 20, expires))
    out = apply(state, change("S1", 15, sold=3, available=12, ts=expires - DAY), rules)
    assert kinds(out) == ["expiring_stock", "prepare"]
    move = out[1]
    assert isinstance(move, StockDecision)
    assert move.location_id == "S1" and move.source_location_id is None
    assert move.region == "SH" and move.suggested_qty == 15 and move.available == 12
    assert move.reason.endswith("; prepare a clearance display")


def test_expiring_stock_cooldown_is_per_location() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    receive(state, batch("b1", 5, expires))
    receive(state, batch("b2", 5, expires + HOUR))
    receive(state, batch("b3", 5, expires, location="S2"))
    apply(state, change("S2", 5, sold=0), rules)
    out = apply(state, change("S1", 10, sold=0, ts=expires - DAY), rules)
    assert kinds(out) == ["expiring_stock", "prepare", "suppressed:cooldown"]
    assert kinds(timer(state, rules, expires - DAY + MIN)) == ["expiring_stock", "prepare"]


def test_expired_batches_are_dropped_a_day_after_expiry() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    expires = T0 + 5 * DAY
    receive(state, batch("b1", 5, expires))
    apply(state, change("S1", 5, sold=0, ts=expires - DAY), rules)
    assert ("expiring", "b1") in state.at("S1").batches_fired
    timer(state, rules, expires + DAY - 1)
    assert state.at("S1").batches != []
    timer(state, rules, expires + DAY)
    assert state.at("S1").batches == [] and state.at("S1").batches_fired == set()


def test_clearance_deadline_is_the_earliest_unfired_expiry_window() -> None:
    rules = ruleset(EXPIRING)
    state = Sku()
    e1, e2 = T0 + 5 * DAY, T0 + 9 * DAY
    receive(state, batch("b2", 10, e2))
    receive(state, batch("b1", 10, e1))
    apply(state, change("S1", 20, sold=0), rules)
    assert deadline(state, rules) == e1 - 2 * DAY
    assert kinds(timer(state, rules, e1 - 2 * DAY)) == ["expiring_stock", "prepare"]
    assert deadline(state, rules) == e2 - 2 * DAY
    assert clearance_deadline(SkuRuleState(), rules) is None
    assert deadline(Sku(), rules) is None


def test_clearance_deadline_is_the_earliest_of_expiry_and_idleness() -> None:
    rules = ruleset(OVERSTOCK, EXPIRING)
    state = Sku()
    receive(state, batch("b1", 10, T0 + 40 * DAY))
    apply(state, change("S1", 20, sold=0), rules)
    assert deadline(state, rules) == T0 + 30 * DAY  # idle before the expiry window
    only_expiry = ruleset({**OVERSTOCK, "enabled": False}, EXPIRING)
    assert deadline(state, only_expiry) == T0 + 38 * DAY


# --- region audience ----------------------------------------------------------------------------


def signal(
    ts: int, sku: str = "SKU1", rule: str = "overstock", location: str = "S1"
) -> ClearanceSignal:
    return ClearanceSignal(
        rule, "overstock", sku, CATEGORY, location, "SH", f"{location}: why", ("c",), ts
    )


def audience(views: list[View], rules: RuleSet) -> AudienceState:
    state = AudienceState()
    for v in views:
        state = add_view(state, v, rules)
    return state


def customers(offers: list[Offer]) -> list[str]:
    return [o.customer_id for o in offers]


def test_signals_wait_for_the_views_watermark() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience([View("c1", "SKU1", CATEGORY, T0 - HOUR)], rules)
    state = add_signal(state, signal(T0))
    state = add_signal(state, signal(T0 + HOUR))
    assert release_signals(state, T0 - 1, rules, 10) == []
    assert len(state.pending) == 2
    (offer,) = release_signals(state, T0, rules, 10)
    assert offer == Offer("overstock", "c1", "SKU1", "S1", "S1: why", ("c",), T0)
    assert [s.ts_ms for s in state.pending] == [T0 + HOUR]
    assert customers(release_signals(state, T0 + HOUR, rules, 10)) == ["c1"]
    assert state.pending == []
    assert release_signals(state, T0 + DAY, rules, 10) == []  # released once


def test_offers_go_to_viewers_of_the_sku_or_its_category_within_the_window_before() -> None:
    rules = ruleset(OVERSTOCK)  # viewed_within 7 days
    state = audience(
        [
            View("sku-viewer", "SKU1", CATEGORY, T0 - HOUR),
            View("category-viewer", "SKU2", CATEGORY, T0 - 6 * DAY),
            View("at-signal", "SKU1", CATEGORY, T0),
            View("too-early", "SKU1", CATEGORY, T0 - 7 * DAY),
            View("other-category", "SKU3", "bakery", T0 - HOUR),
            View("after", "SKU1", CATEGORY, T0 + MIN),
        ],
        rules,
    )
    add_signal(state, signal(T0))
    offers = release_signals(state, T0 + HOUR, rules, 10)
    assert customers(offers) == ["at-signal", "category-viewer", "sku-viewer"]
    assert {o.sku for o in offers} == {"SKU1"}


def test_a_customer_who_viewed_before_and_after_the_signal_is_offered() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience(
        [View("c1", "SKU1", CATEGORY, T0 - HOUR), View("c1", "SKU1", CATEGORY, T0 + MIN)], rules
    )
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0 + MIN, rules, 10)) == ["c1"]


def test_the_audience_does_not_depend_on_how_views_and_signals_interleave() -> None:
    """As the flow does it: every view is added, then pending signals are released up to
    the views' watermark. Views are kept a day beyond the longest window, so a signal up to
    a day late (in event time) finds the same audience; state stays bounded."""
    rules = ruleset(OVERSTOCK)  # viewed_within 7 days
    views = [
        View("early", "SKU1", CATEGORY, T0 - 6 * DAY),
        View("late", "SKU1", CATEGORY, T0 - HOUR),
        View("next", "SKU2", CATEGORY, T0 + HOUR),
        View("later", "SKU2", CATEGORY, T0 + 20 * HOUR),
    ]
    signal_first = add_signal(None, signal(T0))
    released = []
    for v in views:
        add_view(signal_first, v, rules)
        released += release_signals(signal_first, v.ts_ms, rules, 10)
    views_first = audience(views, rules)
    add_signal(views_first, signal(T0))
    late_signal = release_signals(views_first, T0 + 20 * HOUR, rules, 10)
    assert customers(released) == ["early", "late"]
    assert customers(late_signal) == ["early", "late"]
    # Three days late is beyond what is kept: the oldest viewer is gone by then.
    add_view(views_first, View("much-later", "SKU2", CATEGORY, T0 + 3 * DAY), rules)
    add_signal(views_first, signal(T0))
    assert customers(release_signals(views_first, T0 + 3 * DAY, rules, 10)) == ["late"]


def test_audience_state_is_per_region() -> None:
    rules = ruleset(OVERSTOCK)
    hangzhou = audience([View("c-hz", "SKU1", CATEGORY, T0 - HOUR)], rules)
    shanghai = audience([View("c-sh", "SKU1", CATEGORY, T0 - HOUR)], rules)
    add_signal(shanghai, signal(T0))
    assert customers(release_signals(shanghai, T0, rules, 10)) == ["c-sh"]
    assert release_signals(hangzhou, T0, rules, 10) == []


def test_at_most_max_audience_most_recent_viewers_sorted_by_customer() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience(
        [
            View("c-a", "SKU1", CATEGORY, T0 - 5 * HOUR),
            View("c-b", "SKU2", CATEGORY, T0 - 4 * HOUR),
            View("c-z", "SKU1", CATEGORY, T0 - HOUR),
            View("c-m", "SKU2", CATEGORY, T0 - 2 * HOUR),
            View("c-y", "SKU1", CATEGORY, T0 - 2 * HOUR),  # ties with c-m: id breaks it
        ],
        rules,
    )
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0, rules, 2)) == ["c-m", "c-z"]
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0, rules, 3)) == ["c-m", "c-y", "c-z"]


def test_a_customer_is_offered_once_per_signal_even_via_sku_and_category() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience(
        [View("c1", "SKU1", CATEGORY, T0 - 3 * HOUR), View("c1", "SKU2", CATEGORY, T0 - HOUR)],
        rules,
    )
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0, rules, 1)) == ["c1"]


def test_released_offers_are_in_a_deterministic_order() -> None:
    rules = ruleset(OVERSTOCK, EXPIRING)
    views = [View(f"c{n}", "SKU1" if n % 2 else "SKU2", CATEGORY, T0 - n * MIN) for n in range(6)]
    signals = [
        signal(T0, "SKU2", "overstock", "S2"),
        signal(T0, "SKU1", "expiring"),
        signal(T0 - MIN, "SKU1", "overstock"),
        signal(T0, "SKU1", "overstock", "S2"),
    ]
    results = []
    for order in (signals, list(reversed(signals))):
        state = audience(views, rules)
        for s in order:
            add_signal(state, s)
        results.append(release_signals(state, T0, rules, 3))
    assert results[0] == results[1]
    keys = [(o.ts_ms, o.rule_id, o.sku, o.store_id) for o in results[0]]
    assert keys == sorted(keys)
    assert len(results[0]) == 4 * 3


def test_expiring_signals_use_their_own_viewed_within() -> None:
    rules = ruleset(OVERSTOCK, EXPIRING)  # expiring: 3 days
    state = audience(
        [
            View("recent", "SKU1", CATEGORY, T0 - 2 * DAY),
            View("old", "SKU1", CATEGORY, T0 - 4 * DAY),
        ],
        rules,
    )
    add_signal(state, signal(T0, rule="expiring"))
    assert customers(release_signals(state, T0, rules, 10)) == ["recent"]


def test_a_removed_rule_makes_no_offers() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience([View("c1", "SKU1", CATEGORY, T0 - HOUR)], rules)
    add_signal(state, signal(T0, rule="gone"))
    assert release_signals(state, T0, rules, 10) == []
    assert state.pending == []


def test_the_views_kept_do_not_depend_on_their_arrival_order() -> None:
    """Partitions of events.resolved interleave differently in every run, and a replay
    releases its signals at the end, with the views then kept: what is kept must be a
    function of the views alone. Views over three weeks (pruned on the way), shuffled."""
    rules = ruleset(OVERSTOCK)  # viewed_within 7 days: views 8 days behind the latest go
    rng = random.Random(15)
    views = [
        View(
            f"c{rng.randrange(40)}",
            f"SKU{rng.randrange(3)}",
            CATEGORY,
            T0 + rng.randrange(21 * DAY),
        )
        for _ in range(3000)
    ]
    kept = []
    for _ in range(5):
        rng.shuffle(views)
        state = audience(views, rules)
        kept.append((state.by_sku, state.by_category))
    assert all(k == kept[0] for k in kept)
    latest = max(v.ts_ms for v in views)
    horizon = latest - latest % AUDIENCE_PRUNE_MS - 7 * DAY - DAY
    by_sku, _ = kept[0]
    # Exactly the last 8 views after the horizon, of each customer and sku.
    expected: dict[str, dict[str, tuple[int, ...]]] = {}
    for v in sorted(views, key=lambda v: v.ts_ms):
        if v.ts_ms > horizon:
            times = expected.setdefault(v.sku, {}).get(v.customer_id, ())
            expected[v.sku][v.customer_id] = tuple(sorted({*times, v.ts_ms}))[-8:]
    assert by_sku == expected


# --- the audience follows identity --------------------------------------------------------------


def test_a_merged_viewer_is_offered_under_the_survivor_once_with_the_latest_view() -> None:
    """An anonymous device browsed the sku, then logged in as a member: one offer, to the
    member, ranked by the later of the two ids' views."""
    rules = ruleset(OVERSTOCK)
    state = audience(
        [
            View("device", "SKU1", CATEGORY, T0 - HOUR),
            View("member", "SKU1", CATEGORY, T0 - 5 * HOUR),
            View("other", "SKU1", CATEGORY, T0 - 2 * HOUR),
        ],
        rules,
    )
    follow_merge(state, "device", "member", T0 - 30 * MIN, rules)
    add_signal(state, signal(T0))
    # max_audience 2: the member's latest view is the device's (1 h before), beating 'other'
    assert customers(release_signals(state, T0, rules, 2)) == ["member", "other"]
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0, rules, 1)) == ["member"]


def offered_in_both_orders(
    views: list[View], merges: list[tuple[str, str, int]]
) -> list[tuple[list[str], dict[str, tuple[str, int]]]]:
    """The audience of a signal at T0 and the merges kept, with the merges' notices taken
    in their order and in the reverse one (they come on different partitions)."""
    rules = ruleset(OVERSTOCK)
    results = []
    for order in (merges, list(reversed(merges))):
        state = audience(views, rules)
        for merged, survivor, ts in order:
            follow_merge(state, merged, survivor, ts, rules)
        add_signal(state, signal(T0))
        results.append((customers(release_signals(state, T0, rules, 10)), state.merged_into))
    return results


def test_a_chain_of_viewers_reaches_the_last_survivor_whatever_order_the_notices_come_in() -> None:
    views = [View("a", "SKU1", CATEGORY, T0 - 3 * HOUR), View("b", "SKU2", CATEGORY, T0 - HOUR)]
    merges = [("a", "b", T0 - 2 * HOUR + 1), ("b", "c", T0 - 30 * MIN)]
    assert [offered for offered, _ in offered_in_both_orders(views, merges)] == [["c"], ["c"]]


def test_a_chain_through_a_customer_with_no_views_here_reaches_the_last_survivor() -> None:
    """B never browsed in the region: A's views still count for C, in either order of the
    two notices (they come on A's and B's partitions)."""
    views = [View("a", "SKU1", CATEGORY, T0 - 3 * HOUR)]
    merges = [("a", "b", T0 - 2 * HOUR), ("b", "c", T0 - HOUR)]
    kept = {"a": ("b", T0 - 2 * HOUR), "b": ("c", T0 - HOUR)}
    assert offered_in_both_orders(views, merges) == [(["c"], kept), (["c"], kept)]


def test_a_longer_chain_ends_at_the_last_survivor_in_every_order() -> None:
    """a → b → c → d → e, only a and c with views here: e, whichever order the notices take,
    and nothing is left waiting."""
    rules = ruleset(OVERSTOCK)
    views = [View("a", "SKU1", CATEGORY, T0 - 5 * HOUR), View("c", "SKU2", CATEGORY, T0 - HOUR)]
    chain = [("a", "b", T0 - 4 * HOUR), ("b", "c", T0 - 3 * HOUR)]
    chain += [("c", "d", T0 - 2 * HOUR), ("d", "e", T0 - 30 * MIN)]
    for order in itertools.permutations(chain):
        state = audience(views, rules)
        for merged, survivor, ts in order:
            follow_merge(state, merged, survivor, ts, rules)
        add_signal(state, signal(T0))
        assert customers(release_signals(state, T0, rules, 10)) == ["e"], order
        assert state.merged_into == {m: (s, ts) for m, s, ts in chain} and state.passing == {}


def test_a_merge_of_a_customer_with_no_views_here_only_waits() -> None:
    """It waits for a merge into them (``passing``); it sends nothing to anyone."""
    rules = ruleset(OVERSTOCK)
    state = audience([View("a", "SKU1", CATEGORY, T0 - HOUR)], rules)
    follow_merge(state, "x", "a", T0 - MIN, rules)
    assert state.merged_into == {} and state.passing == {"x": ("a", T0 - MIN)}
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0, rules, 10)) == ["a"]


def test_a_waiting_merge_is_dropped_once_the_views_are_past_it() -> None:
    """One to two prune periods after it: a merge into its customer that comes later than
    that no longer reaches it (the chain ends there)."""
    rules = ruleset(OVERSTOCK)
    start = T0 - T0 % AUDIENCE_PRUNE_MS
    state = audience([View("a", "SKU1", CATEGORY, start)], rules)
    follow_merge(state, "b", "c", start + MIN, rules)
    add_view(state, View("z", "SKU1", CATEGORY, start + PASSING_MS + MIN), rules)
    assert state.passing == {"b": ("c", start + MIN)}  # one period on: kept
    add_view(state, View("z", "SKU1", CATEGORY, start + 2 * PASSING_MS + MIN), rules)
    assert state.passing == {}
    follow_merge(state, "a", "b", start + 2 * MIN, rules)
    assert survivor_of(state, "a") == "b"


def test_an_erasure_drops_the_customer_and_every_id_merged_into_them() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience(
        [
            View("device", "SKU1", CATEGORY, T0 - HOUR),
            View("member", "SKU2", CATEGORY, T0 - 2 * HOUR),
            View("neighbour", "SKU1", CATEGORY, T0 - 3 * HOUR),
        ],
        rules,
    )
    follow_merge(state, "device", "member", T0 - 30 * MIN, rules)
    forget_viewer(state, "member")
    assert "member" not in repr(state) and "device" not in repr(state)
    add_signal(state, signal(T0))
    assert customers(release_signals(state, T0, rules, 10)) == ["neighbour"]


def test_an_erasure_reaches_the_views_of_a_chain_through_a_customer_with_no_views() -> None:
    """a → b → c, b never browsing here, the notices in either order: erasing c drops a's
    views (under a's id) with c's."""
    rules = ruleset(OVERSTOCK)
    for order in ([("a", "b"), ("b", "c")], [("b", "c"), ("a", "b")]):
        state = audience(
            [View("a", "SKU1", CATEGORY, T0 - 3 * HOUR), View("n", "SKU1", CATEGORY, T0 - HOUR)],
            rules,
        )
        for merged, survivor in order:
            follow_merge(state, merged, survivor, T0 - 2 * HOUR, rules)
        forget_viewer(state, "c")
        assert not {"a", "b", "c"} & {*state.viewers, *state.by_sku["SKU1"]}, order
        assert state.merged_into == {} and state.passing == {}, order


def test_an_erasure_drops_the_merges_waiting_for_or_into_the_customer() -> None:
    rules = ruleset(OVERSTOCK)
    state = audience([View("a", "SKU1", CATEGORY, T0 - HOUR)], rules)
    follow_merge(state, "b", "gone", T0 - 20 * MIN, rules)
    follow_merge(state, "gone", "d", T0 - 10 * MIN, rules)
    forget_viewer(state, "gone")
    assert "gone" not in repr(state) and state.passing == {}


def test_viewers_and_merges_are_pruned_with_the_views() -> None:
    rules = ruleset(OVERSTOCK)  # views 8 days behind the latest (by 6-hour periods) go
    state = audience([View("a", "SKU1", CATEGORY, T0)], rules)
    follow_merge(state, "a", "b", T0 + MIN, rules)
    add_view(state, View("later", "SKU1", CATEGORY, T0 + 10 * DAY), rules)
    assert set(state.viewers) == {"later"} and state.merged_into == {}
