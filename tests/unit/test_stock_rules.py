"""low_stock and stockout: crossings, re-arming, transfers, cooldowns.

State is per sku × location, as the flow keeps it; the other locations of a region come from
the stock pool (here the recorded changes, as stock_pool wrote them before each one is read).
"""

from __future__ import annotations

from domain.rules import Experiment, Rule
from domain.stock_rules import (
    SkuRuleState,
    StockChange,
    StockDecision,
    StockTriggerSuppressed,
    evaluate_stock_rules,
    target_level,
)
from domain.stock_view import RecordedStock
from domain.trigger_policy import draw_stock_variant

LOW = Rule("low-stock", "low_stock", 3600.0, {"target_cover_days": 2.0})
OUT = Rule("stockout", "stockout", 3600.0, {})
RULES = [LOW, OUT]
T0 = 1_795_000_000_000
REORDER = 10


def change(
    location: str, available: int, ts: int = T0, region: str = "SH", sold: int = 6, cause: str = "e"
) -> StockChange:
    return StockChange("SKU1", location, region, available, sold, ts, cause)


def run(
    changes: list[StockChange], rules: list[Rule] = RULES
) -> tuple[dict[str, SkuRuleState], list[list[StockDecision | StockTriggerSuppressed]]]:
    """Each change through its location's state, the region looked up in the pool."""
    pool = RecordedStock()
    states: dict[str, SkuRuleState] = {}
    outputs = []
    for c in changes:
        pool.record(c)
        state, out = evaluate_stock_rules(
            states.get(c.location_id), c, rules, REORDER, pool.as_recorded()
        )
        states[c.location_id] = state
        outputs.append(out)
    return states, outputs


def test_low_stock_fires_on_the_crossing_only_and_rearms_above_the_threshold() -> None:
    _, out = run(
        [
            change("S1", 12),
            change("S1", 9, T0 + 1),
            change("S1", 8, T0 + 2),
            change("S1", 11, T0 + 3),
            change("S1", 9, T0 + 2 * 3_600_000),
        ]
    )
    fired = [[d.kind for d in o if isinstance(d, StockDecision)] for o in out]
    assert fired == [[], ["replenish"], [], [], ["replenish"]]


def test_hovering_inside_the_cooldown_is_suppressed() -> None:
    _, out = run([change("S1", 9), change("S1", 11, T0 + 1), change("S1", 9, T0 + 2)])
    assert isinstance(out[2][0], StockTriggerSuppressed) and out[2][0].reason == "cooldown"


def test_transfer_from_the_largest_surplus_in_the_same_region() -> None:
    _, out = run(
        [
            change("S2", 25, cause="s2"),
            change("S3", 40, cause="s3"),
            change("S4", 90, region="HZ"),
            change("S1", 3, T0 + 5, cause="s1"),
        ]
    )
    (decision,) = out[-1]
    assert isinstance(decision, StockDecision)
    assert decision.kind == "transfer" and decision.source_location_id == "S3"
    assert decision.suggested_qty == target_level(REORDER, 6, 2.0) - 3 == 9
    assert decision.evidence == ("s1", "s3")


def test_transfer_never_takes_more_than_the_surplus() -> None:
    _, out = run([change("S2", 12), change("S1", 0, T0 + 5, sold=50)])
    low = next(d for d in out[-1] if isinstance(d, StockDecision) and d.rule_id == "low-stock")
    assert low.kind == "transfer" and low.suggested_qty == 2


def test_a_location_crossing_does_not_disarm_another() -> None:
    """Each sku × location has its own crossing and cooldown."""
    states, out = run([change("S1", 9), change("S2", 9, T0 + 1), change("S1", 8, T0 + 2)])
    fired = [[d.location_id for d in o if isinstance(d, StockDecision)] for o in out]
    assert fired == [["S1"], ["S2"], []]
    assert states["S1"].fired == {"low-stock"} and states["S2"].fired == {"low-stock"}


def test_the_transfer_source_is_the_pool_as_of_the_change() -> None:
    """The source of a transfer is looked up when the rule fires, in the stock view given:
    here the pool as recorded at the change, so a surplus recorded later is not used."""
    pool = RecordedStock([change("S2", 40, T0 + 10, cause="later")])
    _, out = evaluate_stock_rules(None, change("S1", 3, T0), RULES, REORDER, pool.as_recorded())
    assert [d.kind for d in out if isinstance(d, StockDecision)] == ["replenish"]
    _, out = evaluate_stock_rules(None, change("S1", 3, T0), RULES, REORDER, pool.at_end())
    (decision,) = out
    assert isinstance(decision, StockDecision)
    assert decision.kind == "transfer" and decision.evidence == ("e", "later")


def test_no_surplus_in_region_means_replenish() -> None:
    _, out = run([change("S2", 10), change("S9", 80, region="HZ"), change("S1", 4, T0 + 5)])
    (decision,) = out[-1]
    assert isinstance(decision, StockDecision)
    assert decision.kind == "replenish" and decision.source_location_id is None


def test_stockout_fires_at_zero_and_rearms_above() -> None:
    _, out = run(
        [
            change("S1", 5),
            change("S1", 0, T0 + 1),
            change("S1", -2, T0 + 2),
            change("S1", 1, T0 + 3),
            change("S1", 0, T0 + 2 * 3_600_000),
        ],
        [OUT],
    )
    fired = [[d.kind for d in o if isinstance(d, StockDecision)] for o in out]
    assert fired == [[], ["stockout"], [], [], ["stockout"]]


def test_campaign_prep_fires_past_the_threshold_once_per_cooldown() -> None:
    from domain.stock_rules import evaluate_campaign_prep

    prep = Rule("campaign-prep", "campaign_prep", 3600.0, {"triggers": 3, "window": 600})
    state = None
    kinds = []
    for n in range(6):
        state, out = evaluate_campaign_prep(
            state,
            "S1",
            "SH",
            "SKU1",
            f"t{n}",
            T0 + n * 1000,
            [prep],
            available=2,
            reorder_point=REORDER,
        )
        kinds.append([type(o).__name__ for o in out])
    assert kinds == [
        [],
        [],
        [],
        ["StockDecision"],
        ["StockTriggerSuppressed"],
        ["StockTriggerSuppressed"],
    ]
    state, out = evaluate_campaign_prep(None, "S1", "SH", "SKU1", "x", T0, [prep], 2, REORDER)
    assert out == []  # one coupon is not a campaign


def test_low_stock_counts_what_is_in_transit_as_coming() -> None:
    """Units on their way by transfer need no second order: below the reorder point with
    them in transit is not low; when they fall short, the suggestion is net of them."""
    covered = StockChange("SKU1", "S1", "SH", 4, 6, T0, "e1", in_transit=6)  # 4 + 6 ≥ 10
    state, out = evaluate_stock_rules(None, covered, [LOW], REORDER, RecordedStock().as_recorded())
    assert out == []
    short = StockChange("SKU1", "S1", "SH", 4, 6, T0 + 1, "e2", in_transit=3)  # 4 + 3 < 10
    _, out = evaluate_stock_rules(state, short, [LOW], REORDER, RecordedStock().as_recorded())
    (decision,) = out
    assert isinstance(decision, StockDecision) and decision.kind == "replenish"
    target = target_level(REORDER, 6, 2.0)
    assert decision.suggested_qty == target - 4 - 3


def test_a_stock_experiment_runs_each_shelfs_arm_with_its_params() -> None:
    """Two replenishment policies (2 and 5 days of cover) drawn per sku × location: each
    location keeps its arm on every firing, the quantity follows the arm's params, and a
    location drawn into control still gets its replenishment (the rule's own params)."""
    experiment = Experiment(
        "cover-test",
        0.3,
        {"cover_2": 1.0, "cover_5": 1.0},
        params={"cover_5": {"target_cover_days": 5.0}},
    )
    rule = Rule("low-stock", "low_stock", 3600.0, {"target_cover_days": 2.0}, None, experiment)
    locations = [f"S{n}" for n in range(60)]
    arms: dict[str, str] = {}
    for location in locations:
        _, out = run([change(location, 4, sold=6)], [rule])
        (decision,) = out[0]
        assert isinstance(decision, StockDecision) and decision.kind == "replenish"
        arm = draw_stock_variant(experiment, "SKU1", location, "low-stock")
        assert decision.variant == arm
        cover = 5.0 if arm == "cover_5" else 2.0  # control runs the rule's params
        assert decision.suggested_qty == target_level(REORDER, 6, cover) - 4
        arms[location] = arm
    assert set(arms.values()) == {"control", "cover_2", "cover_5"}
    # The arm is the shelf's, not the event's: a second crossing draws the same.
    _, again = run([change("S7", 12), change("S7", 3, T0 + 2 * 3_600_000)], [rule])
    (decision,) = again[1]
    assert isinstance(decision, StockDecision) and decision.variant == arms["S7"]
    # And without an experiment nothing changes.
    _, plain = run([change("S1", 4)], [LOW])
    (decision,) = plain[0]
    assert isinstance(decision, StockDecision) and decision.variant == "default"
