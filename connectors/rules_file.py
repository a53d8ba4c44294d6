"""Reading a rules file from disk: the YAML is parsed here, the rules are validated by
``domain.rules.parse_rules``."""

from __future__ import annotations

from pathlib import Path

import yaml

from domain.rules import RulesError, RuleSet, parse_rules


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
