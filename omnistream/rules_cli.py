"""``omnistream rules check FILE``: validate a rules file before it goes live."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from flows.logic.rules import RulesError, RuleSet, parse_rules


def load_rules(path: str) -> RuleSet:
    """Read and validate a rules file; ``RulesError`` lists every problem found."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError([f"{path}: cannot read the rules file: {exc.strerror}"]) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_rules(path, doc)


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
