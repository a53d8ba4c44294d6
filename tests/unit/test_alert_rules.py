"""Alert rules parse (promtool check) and each one fires and stays silent when it should."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "omnistream.rules.yml"
RULE_TESTS = ROOT / "monitoring" / "tests" / "omnistream.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_rules_are_valid() -> None:
    reply = promtool("check", "rules", str(RULES))
    assert reply.returncode == 0, reply.stdout + reply.stderr


def test_rule_unit_tests_pass() -> None:
    reply = promtool("test", "rules", str(RULE_TESTS))
    assert reply.returncode == 0, reply.stdout + reply.stderr


def test_every_alert_is_tested_and_has_a_runbook_section() -> None:
    alerts = [
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert set(alerts) <= tested
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    sections = {m.lower() for m in re.findall(r"^## (\w+)$", runbook, flags=re.MULTILINE)}
    assert {alert.lower() for alert in alerts} <= sections
