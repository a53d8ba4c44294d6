"""rule_triggers replayed: the same input twice gives the same trigger ids and payloads, and a
run killed with SIGKILL and resumed from its recovery snapshots publishes exactly the ids an
uninterrupted run publishes — no new one, none missing — wherever it was killed:

- at its first read, before any snapshot;
- at a random point of the input;
- late, when three of the four partitions of ``events.resolved`` have been read to their end
  and snapshotted: after the resume nothing of them is read again, yet the timers left for
  the end of the replay on them (cart deadlines, quiet hours) must fire. Before the fix the
  resumed process had never seen those partitions' clocks and dropped every such coupon
  (issue 14: 130 of 2,279 ids missing on a fresh clone; 124-508 of 2,973 at late kills).
  The last partition gets a tail of records the rules skip (no customer), so that window is
  wide and every run lands in it, instead of the few hundred milliseconds it is otherwise.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import make_producer
from connectors.reference_files import load_reference
from omnistream.processes import start_flow
from tests.crash_helpers import Kill, copy_inputs, run_flow
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

INPUTS = ("events.resolved", "stock.changes", "wms.movements")
OUTPUTS = ("triggers.coupon", "triggers.holdout", "triggers.replenishment")
#: Records without a customer at the end of one partition of events.resolved (see above).
TAIL = 25_000
TAIL_PARTITION = 0


def add_skipped_tail(config: Config) -> None:
    """Anonymous page views (the rules skip them: no customer) at the end of one partition,
    stamped with that partition's latest event time so event time does not move."""
    latest = max(
        orjson.loads(m.value() or b"{}")["ts"]
        for m in read_topic(config, "events.resolved", timeout_s=60)
        if m.partition() == TAIL_PARTITION
    )
    producer = make_producer(config)
    topic = config.topic("events.resolved")
    for n in range(TAIL):
        record = {"event_id": f"tail-{n}", "event_type": "page_view", "ts": latest}
        record |= {"anonymous_id": "tail", "customer_id": None, "source_topic": "clickstream"}
        producer.produce(topic, value=orjson.dumps(record), partition=TAIL_PARTITION)
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def outputs(config: Config) -> dict[str, dict[str, Any]]:
    """id → the CloudEvent without ``fired_at`` (the wall clock at sending), per topic."""
    found: dict[str, dict[str, Any]] = {}
    for name in OUTPUTS:
        for message in read_topic(config, name, timeout_s=60):
            event = orjson.loads(message.value() or b"{}")
            if event["source"] != "omnistream/rule_triggers":
                continue  # stock_pool's transfers for pickup exceptions share the topic
            event["data"].pop("fired_at")
            assert found.setdefault(event["id"], event) == event, "one id, two payloads"
    return found


def test_replays_are_identical_and_a_crash_adds_no_new_id_and_loses_none(
    omni_config: Config, tmp_path: Path
) -> None:
    config = omni_config.with_overrides(pii={"key": "replay-secret"})
    events = TrafficModel(load_reference(config), seed=23, customers=1500).events(15_000)
    produce(config, events, progress=False)
    dump_config(config, tmp_path / "pipeline.yaml")
    processes = [
        start_flow(name, tmp_path / "pipeline.yaml", until_idle=True)
        for name in ("stock_pool", "identity_stitch")
    ]
    assert [p.wait(timeout=600) for p in processes] == [0, 0]
    add_skipped_tail(config)

    def elsewhere(tag: str, **overrides: Any) -> tuple[Config, int]:
        # Same Redis (the stock the nearby-store lookup reads), other topics.
        other = config.with_overrides(
            kafka={"topic_prefix": config.kafka.topic_prefix + tag + "."}, **overrides
        )
        return other, copy_inputs(config, other, INPUTS)

    again, messages = elsewhere("again")
    started = time.monotonic()
    assert run_flow("rule_triggers", config, tmp_path / "first.yaml").code == 0
    first_s = time.monotonic() - started
    assert run_flow("rule_triggers", again, tmp_path / "again.yaml").code == 0
    first, second = outputs(config), outputs(again)
    kinds = {(e["type"], e["data"]["rule_id"]) for e in first.values()}
    print(f"\n{len(first)} triggers of {len(kinds)} rule × type pairs in {first_s:.1f} s")
    assert len(kinds) >= 5, kinds  # the stream exercises most rules
    assert first == second

    real = messages - TAIL
    rng = random.Random()
    crashes = [
        # A snapshot interval longer than the killed run: nothing is recorded yet.
        ("early", Kill.first_read(), 60.0),
        ("random", Kill.at_fraction(rng.uniform(0.05, 0.95) * real / messages, messages), 0.3),
        # Within the tail: the other partitions are done and in the snapshots by then.
        ("late", Kill.at_fraction((real + rng.uniform(0.4, 0.9) * TAIL) / messages, messages), 0.2),
    ]
    for tag, kill, snapshot_s in crashes:
        recovery = {"dir": str(tmp_path / tag), "snapshot_seconds": snapshot_s}
        crashed, _ = elsewhere(tag, recovery={**recovery, "backup_seconds": 0.0001})
        path = tmp_path / f"{tag}.yaml"
        killed = run_flow("rule_triggers", crashed, path, kill)
        assert killed.killed, f"{tag}: the run finished before the kill ({kill.label})"
        resumed = run_flow("rule_triggers", crashed, path)
        assert resumed.code == 0, path.with_suffix(".log").read_text(errors="replace")[-3000:]
        after = outputs(crashed)
        missing, new = set(first) - set(after), set(after) - set(first)
        print(
            f"{tag}: killed {kill.label} ({killed.consumed:.0f} of {messages} messages read, "
            f"{killed.seconds:.1f} s), resumed in {resumed.seconds:.1f} s: {len(after)} ids, "
            f"{len(missing)} missing, {len(new)} new"
        )
        assert not new, f"{tag}: {len(new)} new ids"
        assert not missing, (
            f"{tag}: {len(missing)} ids missing, by rule: "
            f"{sorted({first[i]['data']['rule_id'] for i in missing})}"
        )
        assert after == first  # same ids, same payloads
