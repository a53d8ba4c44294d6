"""attribution killed with SIGKILL and resumed from its recovery snapshots credits exactly the
conversions an uninterrupted run credits — killed at its first read (before any snapshot) or
at a random point of its input.

A replay (``--until-idle``) holds every customer's touches and conversions in the flow's
state until the end of the input, so all of it must come back from the snapshots: a resumed
run that lost what it held would credit those conversions to ``direct`` or not at all. The
credits themselves (which touches a conversion used) may follow the order in which merges and
conversions of one customer arrive from different topics, so the test compares the distinct
``attribution.credits`` ids (derived from the conversion ids) and dead letters, as a
subscriber dropping duplicates by id sees them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from base.config import Config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from flows.attribution import INPUTS
from tests.crash_helpers import (
    copy_inputs,
    crash_and_resume,
    crash_points,
    deadletters,
    recovering,
    run_flow,
)
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def credit_ids(config: Config) -> set[str]:
    return {
        json.loads(m.value() or b"{}")["id"]
        for m in read_topic(config, "attribution.credits", timeout_s=60)
    }


def test_attribution_sigkill_and_resume_credits_the_same_conversions(
    omni_config: Config, tmp_path: Path
) -> None:
    config = omni_config.with_overrides(pii={"key": "attribution-secret"})
    model = TrafficModel(load_reference(config), seed=31, customers=3000)
    produce(config, model.events(20_000), progress=False)
    for name in ("identity_stitch", "rule_triggers"):  # coupons sent are touches too
        assert run_flow(name, config, tmp_path / f"{name}.yaml").code == 0

    def elsewhere(tag: str, **overrides: object) -> tuple[Config, int]:
        other = config.with_overrides(
            kafka={"topic_prefix": f"{config.kafka.topic_prefix}{tag}."},
            redis={"key_prefix": f"{config.redis.key_prefix}{tag}:"},
            **overrides,  # type: ignore[arg-type]
        )
        return other, copy_inputs(config, other, INPUTS)

    steady, messages = elsewhere("steady")
    first = run_flow("attribution", steady, tmp_path / "steady.yaml")
    assert first.code == 0
    expected, expected_refused = credit_ids(steady), deadletters(steady)
    print(f"\nsteady: {len(expected)} conversions credited in {first.seconds:.1f} s")
    assert len(expected) > 1000

    for tag, kill, snapshot_s in crash_points(messages, 0.3):
        crashed = recovering(config, tag, tmp_path / tag, snapshot_s)
        copy_inputs(config, crashed, INPUTS)
        killed, resumed = crash_and_resume(
            "attribution", crashed, tmp_path / f"{tag}.yaml", tag, kill
        )
        ids = credit_ids(crashed)
        print(
            f"{tag}: killed {kill.label} ({killed.consumed:.0f} of {messages} read, "
            f"{killed.seconds:.1f} s), resumed in {resumed.seconds:.1f} s; {len(ids)} credited, "
            f"{len(ids - expected)} new, {len(expected - ids)} missing"
        )
        assert ids == expected
        assert deadletters(crashed) == expected_refused
