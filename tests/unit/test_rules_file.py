"""The rules file: the shipped default is valid; every problem names rule, key, expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from base.config import load_config
from connectors.rules_file import load_rules
from domain.rules import RULE_KINDS, Coupon, RulesError, parse_duration, parse_rules


def test_shipped_default_rules_are_valid_and_cover_every_kind() -> None:
    rules = load_rules(load_config(env={}).rules.file)
    assert {rule.kind for rule in rules.rules} == set(RULE_KINDS)
    browse = rules.by_id["browse-nearby"]
    assert browse.params == {"views": 3, "within": 1800, "min_available": 2}
    assert browse.experiment is not None and browse.experiment.control_share == 0.1
    assert browse.quiet_hours is not None and browse.quiet_hours.offset_minutes == 480


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("6h", 21600), ("7d", 604800), (45, 45), ("1.5h", 5400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-5m", -1, True, "5 weeks"])
def test_bad_durations(bad: object) -> None:
    assert parse_duration(bad) is None


def rule(**over: object) -> dict:
    base = {
        "id": "cart",
        "kind": "cart_abandonment",
        "cooldown": "1d",
        "params": {"within": "1h"},
        "coupon": {"type": "amount_off", "value": 5},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([rule(kind="teleport")], "rule `cart` (#1): key `kind`: expected one of"),
        ([rule(cooldown="soon")], "rule `cart` (#1): key `cooldown`: expected a duration"),
        ([rule(cooldown=None)], "rule `cart` (#1): key `cooldown`: expected a duration"),
        ([rule(params={"within": "1h", "extra": 1})], "key `params.extra`: unknown key"),
        (
            [rule(kind="browse_nearby_stock", params={"views": 0})],
            "key `params.views`: expected an integer ≥ 1, got 0",
        ),
        (
            [rule(kind="browse_nearby_stock", params={"views": 2.5})],
            "key `params.views`: expected an integer",
        ),
        (
            [rule(coupon={"type": "percent_off", "value": 150})],
            "key `coupon.value`: expected a percentage in (0, 100], got 150",
        ),
        ([rule(coupon=None)], "key `coupon`: expected a mapping"),
        ([rule(kind="stockout", params=None)], "key `coupon`: expected no coupon on a stock rule"),
        (
            [rule(experiment={"salt": "s", "control_share": 1.2})],
            "key `experiment.control_share`: expected a share in [0, 1)",
        ),
        (
            [rule(experiment={"salt": "s", "variants": {"control": 1}})],
            "key `experiment.variants`: expected a mapping of variant name (a lower-case id, "
            "not `control`)",
        ),
        (
            [rule(quiet_hours={"start": "25:00", "end": "08:00"})],
            "key `quiet_hours.start`: expected a time HH:MM",
        ),
        (
            [rule(quiet_hours={"start": "22:00", "end": "08:00", "utc_offset": "8"})],
            "key `quiet_hours.utc_offset`: expected an offset like +08:00",
        ),
        (
            [rule(), rule()],
            "rule `cart` (#2): key `id`: expected a unique id (also used by rule #1)",
        ),
        ([rule(id="Not OK")], "rule #1: key `id`: expected a lower-case id"),
        (
            [rule(experiment={"salt": "s", "variants": {"a": 1, "b": 2}})],
            "key `experiment.variants.b`: expected an offer that differs from variant `a`'s "
            "(both send amount_off 5 expiring in 3d with the same params)",
        ),
        (
            [
                rule(
                    experiment={
                        "salt": "s",
                        "variants": {"a": {"coupon": {"type": "amount_off", "value": 5}}, "b": 1},
                    }
                )
            ],
            "key `experiment.variants.b`: expected an offer that differs from variant `a`'s",
        ),
        (
            [rule(experiment={"salt": "s", "variants": {"a": 1, "b": {"weight": 0}}})],
            "key `experiment.variants.b.weight`: expected a weight > 0, got 0",
        ),
        (
            [rule(experiment={"salt": "s", "variants": {"a": 1, "b": -1}})],
            "key `experiment.variants.b`: expected a weight > 0, got -1",
        ),
        (
            [
                rule(
                    experiment={
                        "salt": "s",
                        "variants": {"a": 1, "b": {"coupon": {"type": "percent_off", "value": 0}}},
                    }
                )
            ],
            "key `experiment.variants.b.coupon.value`: expected a percentage in (0, 100]",
        ),
        (
            [
                rule(
                    experiment={
                        "salt": "s",
                        "variants": {"a": 1, "b": {"params": {"within": "2h"}}},
                    }
                )
            ],
            "key `experiment.variants.b.params`: expected no params on a coupon rule's variant",
        ),
        (
            [
                rule(
                    kind="low_stock",
                    coupon=None,
                    params={},
                    experiment={"salt": "s", "variants": {"a": 1, "b": {"weight": 2}}},
                )
            ],
            "key `experiment.variants.b`: expected an offer that differs from variant `a`'s "
            "(both send no coupon with the same params)",
        ),
        (
            [
                rule(
                    kind="low_stock",
                    coupon=None,
                    params={},
                    experiment={"salt": "s", "variants": {"a": {"params": {"teleport": 1}}}},
                )
            ],
            "key `experiment.variants.a.params.teleport`: unknown key",
        ),
        ([], "top level: key `rules`: expected a non-empty list of rules"),
        (
            [rule(id="review", kind="redemption_review", coupon=None, params={"threshold": 1.5})],
            "rule `review` (#1): key `params.threshold`: expected a share in [0, 1], got 1.5",
        ),
        (
            [rule(id="review", kind="redemption_review", coupon=None, params={"window": "8d"})],
            "rule `review`: key `params.window`: expected at most defaults.conversion_window "
            "(7d): a redemption is seen only while the coupon's conversion window is open, "
            "got '8d'",
        ),
        (
            [
                rule(
                    id="review",
                    kind="redemption_review",
                    coupon=None,
                    params={},
                    experiment={"salt": "s", "variants": {"a": 1}},
                )
            ],
            "key `experiment`: expected no experiment on a redemption_review rule",
        ),
    ],
)
def test_problems_name_the_rule_the_key_and_the_expectation(rules: list, message: str) -> None:
    with pytest.raises(RulesError) as error:
        parse_rules("rules.yaml", {"rules": rules})
    assert any(message in problem for problem in error.value.problems), error.value.problems
    assert all(problem.startswith("rules.yaml: ") for problem in error.value.problems)


def test_each_variant_sends_its_own_coupon_and_the_control_nothing_of_its_own() -> None:
    rules = parse_rules(
        "r.yaml",
        {
            "rules": [
                rule(
                    experiment={
                        "salt": "s",
                        "control_share": 0.2,
                        "variants": {
                            "amount_5": 1,
                            "free_ship": {
                                "weight": 3,
                                "coupon": {"type": "free_shipping", "expires_in": "1d"},
                            },
                        },
                    }
                )
            ]
        },
    )
    (cart,) = rules.rules
    assert cart.experiment is not None
    assert cart.experiment.variants == {"amount_5": 1.0, "free_ship": 3.0}
    assert cart.coupon_of("amount_5") == Coupon("amount_off", 5.0, 3 * 86400)
    assert cart.coupon_of("free_ship") == Coupon("free_shipping", 0.0, 86400)
    # A holdout record says what the rule offers; nothing is sent to the control.
    assert cart.coupon_of("control") == cart.coupon


def test_a_stock_rule_variant_changes_the_params_it_names() -> None:
    rules = parse_rules(
        "r.yaml",
        {
            "rules": [
                rule(
                    id="low",
                    kind="low_stock",
                    coupon=None,
                    params={"target_cover_days": 7},
                    experiment={
                        "salt": "s",
                        "variants": {
                            "cover_7": 1,
                            "cover_14": {"params": {"target_cover_days": 14}},
                        },
                    },
                )
            ]
        },
    )
    (low,) = rules.rules
    assert low.params_of("cover_7") == low.params
    assert low.params_of("cover_14") == {**low.params, "target_cover_days": 14.0}
    assert low.params["target_cover_days"] == 7.0


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RulesError) as error:
        parse_rules(
            "r.yaml",
            {"rules": [rule(cooldown="x", params={"within": "y"}), rule(id="other", kind="nope")]},
        )
    assert len(error.value.problems) == 3


def rules_check(path: Path) -> subprocess.CompletedProcess[str]:
    """``omnistream rules check PATH`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "omnistream.cli", "rules", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rules_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"rules": [rule()]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [rule(cooldown="soon")]}))
    ok = rules_check(good)
    assert ok.returncode == 0 and "1 rules OK" in ok.stdout
    failed = rules_check(bad)
    assert failed.returncode == 1
    assert "rule `cart` (#1): key `cooldown`" in failed.stderr


def test_rules_check_refuses_identical_variants_and_shows_each_arms_offer(tmp_path: Path) -> None:
    same = tmp_path / "same.yaml"
    same.write_text(
        yaml.safe_dump({"rules": [rule(experiment={"salt": "s", "variants": {"a": 1, "b": 1}})]})
    )
    refused = rules_check(same)
    assert refused.returncode == 1
    assert (
        "experiment.variants.b" in refused.stderr and "differs from variant `a`" in refused.stderr
    )
    assert "nothing would be loaded" in refused.stderr
    shipped = rules_check(Path("omnistream/sample_data/rules.yaml"))
    assert shipped.returncode == 0, shipped.stderr
    assert "amount_15 (amount_off 15, 1d), free_shipping (free_shipping 0, 1d)" in shipped.stdout
