"""``omnistream rules check FILE``: validate a rules file before it goes live."""

from __future__ import annotations

import sys

from connectors.rules_file import load_rules
from domain.rules import Rule, RulesError, duration_text


def check_rules(path: str) -> int:
    try:
        rules = load_rules(path)
    except RulesError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(error.problems)} problem(s); nothing would be loaded", file=sys.stderr)
        return 1
    print(
        f"{path}: {len(rules.rules)} rules OK "
        f"(frequency cap {rules.frequency_cap_per_day}/customer/day)"
    )
    for rule in rules.rules:
        extras = []
        if rule.experiment:
            extras.append(
                f"experiment control {rule.experiment.control_share:.0%}, "
                f"variants {', '.join(variant_text(rule, v) for v in rule.experiment.variants)}"
            )
        if rule.quiet_hours:
            extras.append("quiet hours")
        if not rule.enabled:
            extras.append("disabled")
        print(
            f"  {rule.rule_id:<20} {rule.kind:<20} cooldown {duration_text(rule.cooldown_s)}"
            + (f"  [{'; '.join(extras)}]" if extras else "")
        )
    return 0


def variant_text(rule: Rule, variant: str) -> str:
    """A variant and what it offers, so a reviewer sees the arms differ
    (``free_shipping (free_shipping 0, 1d)``; ``params`` it changes after the coupon)."""
    parts = []
    offer = rule.coupon_of(variant)
    if offer is not None:
        parts.append(f"{offer.type} {offer.value:g}, {duration_text(offer.expires_in_s)}")
    assert rule.experiment is not None
    for name, value in sorted(rule.experiment.params.get(variant, {}).items()):
        parts.append(f"{name}={value:g}")
    return f"{variant} ({'; '.join(parts)})" if parts else variant
