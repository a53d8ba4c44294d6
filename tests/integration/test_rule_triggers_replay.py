"""rule_triggers replayed: the same input twice gives the same trigger ids and payloads, and a
run killed with SIGKILL and resumed from its recovery snapshots publishes no id that an
uninterrupted run did not, and misses none."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics, make_producer
from connectors.topics import ALL_TOPICS
from omnistream.config import Config, dump_config
from omnistream.processes import start_flow
from omnistream.reference import load_reference
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

INPUTS = ("events.resolved", "stock.changes", "wms.movements")
OUTPUTS = ("triggers.coupon", "triggers.holdout", "triggers.replenishment")


def run(name: str, config: Config, path: Path, kill_after_s: float | None = None) -> int:
    dump_config(config, path)
    with path.with_suffix(".log").open("ab") as log:
        process = start_flow(name, path, until_idle=True, log=log)
        try:
            return process.wait(timeout=kill_after_s or 600)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            return process.wait(timeout=30)


def copy_inputs(source: Config, target: Config) -> None:
    """The same messages, keys and partitions under another topic prefix."""
    ensure_topics(target, list(ALL_TOPICS))
    producer = make_producer(target)
    for name in INPUTS:
        for message in read_topic(source, name, timeout_s=60):
            producer.produce(
                target.topic(name),
                key=message.key(),
                value=message.value(),
                partition=message.partition(),
            )
    assert producer.flush(60) == 0


def outputs(config: Config) -> dict[str, dict[str, Any]]:
    """id → the CloudEvent without ``fired_at`` (the wall clock at sending), per topic."""
    found: dict[str, dict[str, Any]] = {}
    for name in OUTPUTS:
        for message in read_topic(config, name, timeout_s=60):
            event = orjson.loads(message.value())
            event["data"].pop("fired_at")
            assert found.setdefault(event["id"], event) == event, "one id, two payloads"
    return found


def test_replays_are_identical_and_a_crash_adds_no_new_id(
    omni_config: Config, tmp_path: Path
) -> None:
    config = omni_config.with_overrides(pii={"key": "replay-secret"})
    events = TrafficModel(load_reference(config), seed=23, customers=3000).events(30_000)
    produce(config, events, progress=False)
    dump_config(config, tmp_path / "pipeline.yaml")
    processes = [
        start_flow(name, tmp_path / "pipeline.yaml", until_idle=True)
        for name in ("stock_pool", "identity_stitch")
    ]
    assert [p.wait(timeout=600) for p in processes] == [0, 0]

    def elsewhere(tag: str, **overrides: Any) -> Config:
        # Same Redis (the stock the nearby-store lookup reads), other topics.
        other = config.with_overrides(
            kafka={"topic_prefix": config.kafka.topic_prefix + tag + "."}, **overrides
        )
        copy_inputs(config, other)
        return other

    again = elsewhere("again")
    crashed = elsewhere(
        "crash",
        recovery={
            "dir": str(tmp_path / "recovery"),
            "snapshot_seconds": 0.3,
            "backup_seconds": 0.0001,
        },
    )

    started = time.monotonic()
    assert run("rule_triggers", config, tmp_path / "first.yaml") == 0
    first_s = time.monotonic() - started
    assert run("rule_triggers", again, tmp_path / "again.yaml") == 0
    first, second = outputs(config), outputs(again)
    kinds = {(e["type"], e["data"]["rule_id"]) for e in first.values()}
    print(f"\n{len(first)} triggers of {len(kinds)} rule × type pairs in {first_s:.1f} s")
    assert len(kinds) >= 5, kinds  # the stream exercises most rules
    assert first == second

    kill_at = random.Random().uniform(0.5, 0.8) * first_s
    code = run("rule_triggers", crashed, tmp_path / "crashed.yaml", kill_after_s=kill_at)
    assert code == -signal.SIGKILL, "the run finished before the kill"
    assert run("rule_triggers", crashed, tmp_path / "crashed.yaml") == 0
    after_crash = outputs(crashed)
    print(f"killed after {kill_at:.1f} s; {len(after_crash)} distinct ids after the restart")
    assert set(after_crash) - set(first) == set()  # no new id
    assert set(after_crash) == set(first)  # and none lost
