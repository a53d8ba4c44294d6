"""Alert rules parse (promtool check), each one fires and stays silent when it should, and
each links its runbook section.

``runbook_url`` is ``<base>#<anchor>``: the base is the Prometheus external label
``runbook_base`` (monitoring/prometheus.yml), ``docs/runbook.md`` without it (as promtool's
tests render it); the anchor must be a heading of docs/runbook.md, as GitHub and most
Markdown renderers make anchors of headings.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "omnistream.rules.yml"
RULE_TESTS = sorted((ROOT / "monitoring" / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = re.compile(
    r'^\{\{ or \$externalLabels\.runbook_base "docs/runbook\.md" \}\}#([a-z0-9-]+)$'
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown file's headings: lower case, punctuation but ``-`` and
    ``_`` dropped, spaces to ``-`` (GitHub's rule)."""
    anchors = set()
    for title in re.findall(r"^#{1,6} (.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", ""))
        anchors.add(slug.replace(" ", "-"))
    return anchors


def test_rules_are_valid() -> None:
    reply = promtool("check", "rules", str(RULES))
    assert reply.returncode == 0, reply.stdout + reply.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    reply = promtool("test", "rules", *map(str, RULE_TESTS))
    assert reply.returncode == 0, reply.stdout + reply.stderr


def test_every_alert_has_a_test_that_sees_it_fire() -> None:
    firing = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    missing = {rule["alert"] for rule in alert_rules()} - firing
    assert not missing, f"no promtool test expects these to fire: {sorted(missing)}"


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = heading_anchors(RUNBOOK.read_text())
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert "runbook" not in annotations, f"{rule['alert']}: a relative `runbook`"
        match = RUNBOOK_URL.match(annotations.get("runbook_url", ""))
        assert match, f"{rule['alert']}: runbook_url {annotations.get('runbook_url')!r}"
        assert match.group(1) == rule["alert"].lower(), rule["alert"]
        assert match.group(1) in anchors, f"{rule['alert']}: no section #{match.group(1)}"


def test_the_anchor_check_reads_headings_as_renderers_do() -> None:
    anchors = heading_anchors("# Runbook\n## OmnistreamFlowDown\n### Kafka `fetch.max.wait.ms`\n")
    assert anchors == {"runbook", "omnistreamflowdown", "kafka-fetchmaxwaitms"}
    assert "omnistreamflowdown" not in heading_anchors("OmnistreamFlowDown\n#OmnistreamFlowDown\n")
