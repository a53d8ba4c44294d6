"""Reading an experiment (CONTRACT §12): per rule × variant, the uplift of its conversion
rate over the control's, with a 95 % confidence interval and a p-value. Pure.

The outcome is per customer: a customer drawn into an arm (sent a coupon, or held out as
control) either converted within the window or did not, so each arm is a binomial sample
and the question is the difference of two proportions. The test is the standard Wald test
of that difference — unpooled variance, normal approximation — with the matching Wald
interval, both computed by statsmodels (``test_proportions_2indep`` and
``confint_proportions_2indep``, ``method="wald"``) rather than by hand, so the figures are
the ones an analyst re-running them in a notebook gets.

The normal approximation holds only when each arm has enough of both outcomes; the usual
rule is at least 10 converted and 10 not converted customers per arm (n·p ≥ 10 and
n·(1 − p) ≥ 10). Below that the report still prints the figures but says ``too small``
instead of a verdict: a marketer reading "p = 0.03" on 12 customers would act on noise.

Counting customers rather than coupons matters: a customer may be sent one rule's coupon
again after its cooldown, and counting coupons would weigh the keen repeat buyers more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from domain.trigger_policy import CONTROL

#: 95 % intervals, and "significant" at p < 0.05.
ALPHA = 0.05
#: Converted and not-converted customers each arm needs before the Wald approximation is
#: trusted (module doc).
MIN_OUTCOMES = 10


@dataclass(frozen=True, slots=True)
class ArmTally:
    """What one arm of one rule's experiment has seen."""

    rule_id: str
    variant: str
    #: customers drawn into the arm (sent its coupon, or held out for the control)
    assigned: int
    #: coupons sent (or, for the control, held out)
    sent: int
    #: of the assigned customers, those with at least one conversion
    converted: int
    #: conversions (one per purchase, CONTRACT §12); may exceed ``converted``
    conversions: int
    #: revenue of those conversions
    revenue: float


@dataclass(frozen=True, slots=True)
class ArmReport:
    tally: ArmTally
    conversion_rate: float | None
    revenue_per_customer: float | None
    #: conversion rate − the control's (absolute); None on the control and without one
    uplift: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    #: ``control``, ``significant``, ``not significant``, ``too small`` or ``no control``
    verdict: str


def _rate(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def too_small(tally: ArmTally, min_outcomes: int = MIN_OUTCOMES) -> bool:
    """Too few converted or not-converted customers for the normal approximation."""
    return min(tally.converted, tally.assigned - tally.converted) < min_outcomes


def compare(
    arm: ArmTally, control: ArmTally, alpha: float = ALPHA
) -> tuple[float, float, float, float]:
    """(uplift, ci_low, ci_high, p_value) of ``arm`` against ``control``: the Wald test and
    interval of the difference of the two conversion rates. Both arms need customers.

    When both arms converted everyone or no one the variance is zero: the difference is
    exact (an interval of one point) and the p-value is 1 when they agree."""
    # Imported here, not at the top: statsmodels takes 1.5 s to import, and every command
    # line invocation (whose parser knows the demo, which prints a report) would pay it.
    import numpy as np
    from statsmodels.stats.proportion import (  # type: ignore[import-untyped]
        confint_proportions_2indep,
        test_proportions_2indep,
    )

    p_arm = arm.converted / arm.assigned
    p_control = control.converted / control.assigned
    uplift = p_arm - p_control
    variance = p_arm * (1 - p_arm) / arm.assigned + p_control * (1 - p_control) / control.assigned
    if variance == 0:
        return uplift, uplift, uplift, 1.0 if uplift == 0 else 0.0
    counts = (arm.converted, arm.assigned, control.converted, control.assigned)
    low, high = confint_proportions_2indep(*counts, method="wald", compare="diff", alpha=alpha)
    # statsmodels also works out the ratio and odds ratio alongside, which divide by zero
    # when the control converted no one; only the difference is used here.
    with np.errstate(divide="ignore", invalid="ignore"):
        result = test_proportions_2indep(*counts, method="wald", compare="diff")
    return uplift, float(low), float(high), float(result.pvalue)


def report(
    tallies: Iterable[ArmTally], alpha: float = ALPHA, min_outcomes: int = MIN_OUTCOMES
) -> list[ArmReport]:
    """Every arm, sorted by rule then variant (control first), each variant compared with
    its rule's control."""
    arms = sorted(tallies, key=lambda t: (t.rule_id, t.variant != CONTROL, t.variant))
    controls = {t.rule_id: t for t in arms if t.variant == CONTROL}
    out = []
    for tally in arms:
        rate = _rate(tally.converted, tally.assigned)
        per_customer = _rate(tally.revenue, tally.assigned)
        control = controls.get(tally.rule_id)
        if tally.variant == CONTROL:
            out.append(ArmReport(tally, rate, per_customer, None, None, None, None, CONTROL))
            continue
        if control is None or control.assigned == 0 or tally.assigned == 0:
            out.append(ArmReport(tally, rate, per_customer, None, None, None, None, "no control"))
            continue
        uplift, low, high, p_value = compare(tally, control, alpha)
        if too_small(tally, min_outcomes) or too_small(control, min_outcomes):
            verdict = "too small"
        elif p_value < alpha:
            verdict = "significant"
        else:
            verdict = "not significant"
        out.append(ArmReport(tally, rate, per_customer, uplift, low, high, p_value, verdict))
    return out


def as_json(reports: Iterable[ArmReport]) -> dict[str, list[dict[str, object]]]:
    """The ``--json`` document of CONTRACT §12 (with ``verdict`` and ``converted`` added);
    NaN never reaches it (rates without customers are null)."""

    def number(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else round(value, 6)

    return {
        "experiments": [
            {
                "rule_id": r.tally.rule_id,
                "variant": r.tally.variant,
                "assigned": r.tally.assigned,
                "sent": r.tally.sent,
                "converted": r.tally.converted,
                "conversions": r.tally.conversions,
                "conversion_rate": number(r.conversion_rate),
                "revenue_per_customer": number(r.revenue_per_customer),
                "uplift": number(r.uplift),
                "ci_low": number(r.ci_low),
                "ci_high": number(r.ci_high),
                "p_value": number(r.p_value),
                "verdict": r.verdict,
            }
            for r in reports
        ]
    }
