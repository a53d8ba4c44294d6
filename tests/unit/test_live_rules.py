"""The live rules file of rule_triggers: reload on change, refusal of invalid edits, metrics."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from connectors.live_rules import LiveRules
from domain.rules import RulesError

RELOAD_S = 5.0

RULES_V1 = """\
version: 1
defaults:
  frequency_cap_per_day: 3
rules:
  - id: low-stock
    kind: low_stock
    cooldown: 6h
    params: {target_cover_days: 7}
  - id: win-back
    kind: win_back
    cooldown: 30d
    coupon: {type: percent_off, value: 15, expires_in: 7d}
"""

RULES_V2 = """\
version: 1
defaults:
  frequency_cap_per_day: 2
rules:
  - id: stockout
    kind: stockout
    cooldown: 1h
  - id: cart-abandonment
    kind: cart_abandonment
    cooldown: 1d
    params: {within: 1h}
    coupon: {type: amount_off, value: 15, expires_in: 24h}
  - id: win-back
    kind: win_back
    cooldown: 30d
    enabled: false
    coupon: {type: percent_off, value: 15, expires_in: 7d}
"""

#: Valid YAML, but a rule of an unknown kind and another whose cooldown is not a duration.
RULES_INVALID = """\
version: 1
rules:
  - id: low-stock
    kind: low_stock_please
    cooldown: 6h
  - id: stockout
    kind: stockout
    cooldown: soon
"""


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reloads(outcome: str) -> float:
    value = REGISTRY.get_sample_value("omnistream_rules_reloads_total", {"outcome": outcome})
    return value or 0.0


def active() -> float | None:
    return REGISTRY.get_sample_value("omnistream_rules_active")


_mtime_ns = 1_700_000_000_000_000_000


def write(path: Path, text: str) -> None:
    """Rewrite the file and give it a modification time no earlier write had."""
    global _mtime_ns
    path.write_text(text, encoding="utf-8")
    _mtime_ns += 10_000_000_000
    os.utime(path, ns=(_mtime_ns, _mtime_ns))


def touch(path: Path) -> None:
    global _mtime_ns
    _mtime_ns += 10_000_000_000
    os.utime(path, ns=(_mtime_ns, _mtime_ns))


def ids(live: LiveRules) -> list[str]:
    return [rule.rule_id for rule in live.current().rules]


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    write(path, RULES_V1)
    return path


def test_an_invalid_file_at_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    write(path, RULES_INVALID)
    with pytest.raises(RulesError) as error:
        LiveRules(str(path), RELOAD_S, clock=FakeMonotonic())
    assert any("low_stock_please" in problem for problem in error.value.problems)
    assert any("`cooldown`" in problem and "soon" in problem for problem in error.value.problems)


def test_a_missing_or_unparsable_file_at_start_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError):
        LiveRules(str(tmp_path / "absent.yaml"), RELOAD_S, clock=FakeMonotonic())
    broken = tmp_path / "broken.yaml"
    write(broken, "rules: [unclosed\n")
    with pytest.raises(RulesError):
        LiveRules(str(broken), RELOAD_S, clock=FakeMonotonic())


def test_a_valid_change_is_in_force_only_after_reload_seconds(rules_file: Path) -> None:
    clock = FakeMonotonic()
    live = LiveRules(str(rules_file), RELOAD_S, clock=clock)
    assert ids(live) == ["low-stock", "win-back"]
    ok_before = reloads("ok")
    write(rules_file, RULES_V2)
    clock.now += RELOAD_S - 0.1
    assert ids(live) == ["low-stock", "win-back"]  # not looked at yet
    assert live.current().frequency_cap_per_day == 3
    clock.now += 0.1
    assert ids(live) == ["stockout", "cart-abandonment", "win-back"]
    assert live.current().frequency_cap_per_day == 2
    assert reloads("ok") - ok_before == 1


def test_a_change_is_looked_at_no_more_often_than_reload_seconds(rules_file: Path) -> None:
    clock = FakeMonotonic()
    live = LiveRules(str(rules_file), RELOAD_S, clock=clock)
    clock.now += RELOAD_S
    assert ids(live) == ["low-stock", "win-back"]  # looked: nothing changed
    write(rules_file, RULES_V2)
    clock.now += RELOAD_S - 0.1  # within reload_seconds of the last look
    assert ids(live) == ["low-stock", "win-back"]
    clock.now += 0.1
    assert ids(live) == ["stockout", "cart-abandonment", "win-back"]


def test_an_invalid_change_keeps_the_old_rules_until_fixed(
    rules_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeMonotonic()
    live = LiveRules(str(rules_file), RELOAD_S, clock=clock)
    old = live.current()
    invalid_before, ok_before = reloads("invalid"), reloads("ok")

    write(rules_file, RULES_INVALID)
    clock.now += RELOAD_S
    with caplog.at_level(logging.ERROR, logger="connectors.live_rules"):
        assert live.current() is old
    assert reloads("invalid") - invalid_before == 1
    assert reloads("ok") - ok_before == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert str(rules_file) in message
    assert "low_stock_please" in message and "soon" in message  # every problem is logged

    clock.now += RELOAD_S  # looked at again, unchanged: not counted twice
    assert live.current() is old
    assert reloads("invalid") - invalid_before == 1

    write(rules_file, RULES_V2)
    clock.now += RELOAD_S
    assert ids(live) == ["stockout", "cart-abandonment", "win-back"]
    assert reloads("ok") - ok_before == 1
    assert reloads("invalid") - invalid_before == 1


def test_touching_the_file_without_changing_it_is_not_a_reload(rules_file: Path) -> None:
    clock = FakeMonotonic()
    live = LiveRules(str(rules_file), RELOAD_S, clock=clock)
    old = live.current()
    invalid_before, ok_before = reloads("invalid"), reloads("ok")
    touch(rules_file)
    clock.now += RELOAD_S
    assert live.current() is old
    write(rules_file, RULES_V1)  # rewritten with the same content
    clock.now += RELOAD_S
    assert live.current() is old
    assert reloads("ok") - ok_before == 0
    assert reloads("invalid") - invalid_before == 0


def test_the_active_gauge_counts_enabled_rules(rules_file: Path) -> None:
    clock = FakeMonotonic()
    live = LiveRules(str(rules_file), RELOAD_S, clock=clock)
    assert active() == 2
    write(rules_file, RULES_V2)  # three rules, one disabled
    clock.now += RELOAD_S
    assert len(live.current().rules) == 3
    assert active() == 2
    write(rules_file, RULES_V2.replace("    enabled: false\n", ""))
    clock.now += RELOAD_S
    live.current()
    assert active() == 3
    write(rules_file, RULES_INVALID)  # refused: the gauge keeps the rules in force
    clock.now += RELOAD_S
    live.current()
    assert active() == 3


def refused() -> float | None:
    return REGISTRY.get_sample_value("omnistream_rules_file_refused")


def test_the_refused_gauge_holds_while_the_file_on_disk_is_refused(rules_file: Path) -> None:
    """What OmnistreamRulesReloadRefused alerts on: 1 from a refused change until a valid
    file is in force, however often the refused file is looked at; both reload outcomes
    exist from the start (at 0), so ``increase()`` sees the first refusal."""
    clock = FakeMonotonic()
    live = LiveRules(str(rules_file), RELOAD_S, clock=clock)
    assert refused() == 0
    for outcome in ("ok", "invalid"):
        labels = {"outcome": outcome}
        assert REGISTRY.get_sample_value("omnistream_rules_reloads_total", labels) is not None

    write(rules_file, RULES_INVALID)
    clock.now += RELOAD_S
    live.current()
    assert refused() == 1
    clock.now += RELOAD_S
    live.current()
    assert refused() == 1  # still the refused file on disk
    write(rules_file, RULES_V2)
    clock.now += RELOAD_S
    live.current()
    assert refused() == 0
