"""The experiment report's statistics (``domain.experiments``): the Wald test of two
proportions against its textbook formula, its coverage on simulated arms with a known true
uplift, and the verdicts."""

from __future__ import annotations

import math
import random

import pytest

from domain.experiments import ArmTally, as_json, compare, report


def arm(variant: str, assigned: int, converted: int, rule: str = "cart") -> ArmTally:
    return ArmTally(rule, variant, assigned, assigned, converted, converted, converted * 20.0)


def textbook_wald(a: ArmTally, c: ArmTally) -> tuple[float, float, float, float]:
    """The unpooled Wald interval and two-sided test of p_a − p_c, written out from the
    formula (independent of statsmodels): the reference for ``compare``."""
    pa, pc = a.converted / a.assigned, c.converted / c.assigned
    se = math.sqrt(pa * (1 - pa) / a.assigned + pc * (1 - pc) / c.assigned)
    z = (pa - pc) / se
    p_value = math.erfc(abs(z) / math.sqrt(2))
    return pa - pc, pa - pc - 1.959964 * se, pa - pc + 1.959964 * se, p_value


@pytest.mark.parametrize(
    ("variant", "control"),
    [
        (arm("a", 1000, 150), arm("control", 1000, 100)),
        (arm("a", 480, 31), arm("control", 120, 9)),
        (arm("a", 50, 40), arm("control", 5000, 1000)),
    ],
)
def test_compare_is_the_wald_test_of_two_proportions(variant: ArmTally, control: ArmTally) -> None:
    got = compare(variant, control)
    expected = textbook_wald(variant, control)
    assert got == pytest.approx(expected, rel=1e-5)


def test_arms_that_cannot_vary_give_an_exact_difference() -> None:
    assert compare(arm("a", 30, 0), arm("control", 30, 0)) == (0.0, 0.0, 0.0, 1.0)
    assert compare(arm("a", 30, 30), arm("control", 30, 0)) == (1.0, 1.0, 1.0, 0.0)


def simulate(true_rate_control: float, uplift: float, n: int, seed: int) -> list[ArmTally]:
    rng = random.Random(seed)
    control = sum(rng.random() < true_rate_control for _ in range(n))
    variant = sum(rng.random() < true_rate_control + uplift for _ in range(n))
    return [arm("control", n, control), arm("a", n, variant)]


def test_the_interval_covers_the_true_uplift_about_95_times_in_100() -> None:
    """400 simulated experiments of 2,000 customers per arm, true uplift +3 points on 10 %:
    a 95 % interval must contain +0.03 in close to 95 % of them (binomial spread of 400
    draws at 0.95: ±2.2 points at 2 sd; the bounds below are ±3.5 sd)."""
    runs = [report(simulate(0.10, 0.03, 2000, seed))[1] for seed in range(400)]
    covered = sum(r.ci_low is not None and r.ci_low <= 0.03 <= r.ci_high for r in runs)  # type: ignore[operator]
    assert 0.91 <= covered / len(runs) <= 0.99
    # Power: se = √(.1·.9/2000 + .13·.87/2000) = 0.0101, z = 2.98, P(Z > 1.96 − 2.98) = 0.85.
    assert 0.78 <= sum(r.verdict == "significant" for r in runs) / len(runs) <= 0.91


def test_no_true_uplift_is_called_significant_about_5_times_in_100() -> None:
    runs = [report(simulate(0.10, 0.0, 2000, seed))[1] for seed in range(400)]
    false_alarms = sum(r.verdict == "significant" for r in runs) / len(runs)
    assert 0.01 <= false_alarms <= 0.09


def test_a_small_sample_is_said_to_be_too_small() -> None:
    (control, variant) = report([arm("control", 40, 2), arm("a", 40, 12)])
    assert control.verdict == "control" and control.uplift is None
    assert variant.verdict == "too small"  # the control has 2 conversions (< 10)
    assert variant.uplift == pytest.approx(0.25)
    assert variant.p_value is not None  # the figures are still shown


def test_every_variant_is_compared_with_its_own_rules_control() -> None:
    reports = report(
        [
            arm("b", 1000, 130),
            arm("control", 1000, 100),
            arm("a", 1000, 100),
            arm("control", 500, 250, rule="lapsed"),
            arm("x", 500, 300, rule="lapsed"),
            arm("y", 100, 30, rule="win-back"),
        ]
    )
    rows = {(r.tally.rule_id, r.tally.variant): r for r in reports}
    assert [(r.tally.rule_id, r.tally.variant) for r in reports] == [
        ("cart", "control"),
        ("cart", "a"),
        ("cart", "b"),
        ("lapsed", "control"),
        ("lapsed", "x"),
        ("win-back", "y"),
    ]
    assert rows["cart", "a"].uplift == 0 and rows["cart", "a"].verdict == "not significant"
    assert rows["cart", "b"].uplift == pytest.approx(0.03)
    assert rows["lapsed", "x"].uplift == pytest.approx(0.1)
    assert rows["lapsed", "x"].verdict == "significant"
    assert rows["win-back", "y"].verdict == "no control" and rows["win-back", "y"].uplift is None


def test_the_json_document_has_the_contract_fields_and_no_nan() -> None:
    document = as_json(report([arm("control", 0, 0), arm("a", 200, 30)]))
    (control, variant) = document["experiments"]
    assert set(control) >= {
        "rule_id",
        "variant",
        "assigned",
        "sent",
        "conversions",
        "conversion_rate",
        "revenue_per_customer",
        "uplift",
        "ci_low",
        "ci_high",
        "p_value",
    }
    assert control["conversion_rate"] is None and variant["uplift"] is None
    assert variant["verdict"] == "no control"
    assert variant["conversion_rate"] == 0.15 and variant["revenue_per_customer"] == 3.0


def test_the_printed_table_shows_each_arm_and_its_verdict() -> None:
    from omnistream.experiments_report import format_report

    text = format_report(report([arm("control", 1000, 100), arm("free_ship", 1000, 150)]))
    lines = text.splitlines()
    assert lines[0] == "cart"
    control = next(line for line in lines if line.strip().startswith("control"))
    variant = next(line for line in lines if line.strip().startswith("free_ship"))
    assert "10.00%" in control and control.rstrip().endswith("control")
    assert "+5.00%" in variant and variant.rstrip().endswith("significant")
    _, low, high, _ = textbook_wald(arm("free_ship", 1000, 150), arm("control", 1000, 100))
    assert f"[{low:+.2%}, {high:+.2%}]" in variant
    assert format_report([]) == "no experiment has sent or held out a trigger yet"
