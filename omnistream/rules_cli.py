"""``omnistream rules check FILE``: validate a rules file before it goes live."""

from __future__ import annotations

import sys

from connectors.rules_file import load_rules
from domain.rules import RulesError


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
                f"variants {', '.join(rule.experiment.variants)}"
            )
        if rule.quiet_hours:
            extras.append("quiet hours")
        if not rule.enabled:
            extras.append("disabled")
        print(
            f"  {rule.rule_id:<20} {rule.kind:<20} cooldown {format_duration(rule.cooldown_s)}"
            + (f"  [{'; '.join(extras)}]" if extras else "")
        )
    return 0


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
