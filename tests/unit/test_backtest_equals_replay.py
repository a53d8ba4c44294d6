"""``rules backtest --stock end`` publishes what ``run rule_triggers --until-idle`` publishes,
trigger by trigger: the same ids, the same payloads but ``fired_at``.

The recording is made the way production makes it, in-process: two days of generated
traffic sixty-one days apart (the second brings back the first's shoppers, for win-back)
run through stock_pool and identity_stitch on ``tests.inprocess.MemoryIO`` and the memory
stores; their ``stock.changes`` and ``events.resolved``, with the ``wms.movements`` they
read, are rule_triggers' input, a partition per key as on Kafka. The flow side is the real
rule_triggers dataflow replaying that input, reading the pool stock_pool left (the end of
the recording: what ``--stock end`` reads); on 1 worker, and on 2 with every topic ×
partition a source partition of its own, read in the order Bytewax picks. The backtest side
is the command, on a JSON-lines dump of the same topics.

The rules are the shipped ones made easier to fire, so the stream exercises every kind:
a campaign needs 5 coupons, a perishable batch is expiring from its receipt on, a cart's
quiet half hour holds some coupons, and both experiments hold customers out.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from base import topics
from base.config import Config
from base.units import DAY_MS
from connectors.generator import DEFAULT_START_MS, TrafficModel
from connectors.reference_files import load_reference
from flows import identity_stitch, rule_triggers, stock_pool
from omnistream.cli import main
from state.coupon_store import MemoryCouponStore
from state.memory_identity import MemoryIdentityStore
from state.memory_stock import MemoryStockStore
from tests.inprocess import CustomerStores, MemoryIO, run

PARTITIONS = 4
EVENTS_PER_DAY = 14_000
OUTPUTS = (
    topics.TRIGGERS_COUPON,
    topics.TRIGGERS_HOLDOUT,
    topics.TRIGGERS_REPLENISHMENT,
    topics.TRIGGERS_INSIGHTS,
)
RULES = """
version: 1
defaults: {frequency_cap_per_day: 3, conversion_window: 7d, max_audience: 40}
rules:
  - {id: low-stock, kind: low_stock, cooldown: 6h, params: {target_cover_days: 7}}
  - {id: stockout, kind: stockout, cooldown: 1h}
  - id: browse-nearby
    kind: browse_nearby_stock
    cooldown: 3d
    params: {views: 2, within: 30m, min_available: 2}
    coupon: {type: percent_off, value: 10, expires_in: 48h}
    experiment: {salt: browse-test, control_share: 0.2, variants: {ten_percent: 1}}
  - id: cart-abandonment
    kind: cart_abandonment
    cooldown: 1d
    params: {within: 30m}
    coupon: {type: amount_off, value: 15, expires_in: 24h}
    experiment:
      salt: cart-test
      control_share: 0.2
      variants:
        amount_15: 1
        free_shipping: {coupon: {type: free_shipping, expires_in: 2d}}
    quiet_hours: {start: "10:00", end: "10:30", utc_offset: "+08:00"}
  - id: win-back
    kind: win_back
    cooldown: 30d
    params: {inactive_days: 60}
    coupon: {type: percent_off, value: 15, expires_in: 7d}
  - id: store-overstock
    kind: overstock
    cooldown: 7d
    params: {cover_days: 30, idle_days: 30, min_on_hand: 10, viewed_within: 7d}
    coupon: {type: percent_off, value: 20, expires_in: 72h}
  - id: expiring-fresh
    kind: expiring_stock
    cooldown: 1h
    params: {within_days: 4, viewed_within: 2d}
    coupon: {type: percent_off, value: 30, expires_in: 24h}
  - id: campaign-prep
    kind: campaign_prep
    cooldown: 12h
    params: {triggers: 5, window: 1h}
  - id: redemption-review       # generated shoppers redeem no rule's code: every full day
    kind: redemption_review     # of a rule × variant is under the threshold
    cooldown: 0s
    params: {threshold: 0.3, window: 1d, min_sent: 3}
"""


def partition_of(key: bytes | None) -> int:
    """A partition per key, as a keyed producer gives (another hash than Kafka's: any does)."""
    return zlib.crc32(key or b"") % PARTITIONS


@dataclass(frozen=True)
class Recording:
    config: Config
    #: CONTRACT topic → partition → (key, value), as rule_triggers reads them
    inputs: dict[str, dict[int, list[tuple[bytes | None, bytes]]]]
    #: the pool stock_pool wrote (what the replay reads in Redis)
    pool: MemoryStockStore
    dump: Path


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    workdir = tmp_path_factory.mktemp("recording")
    rules_path = workdir / "rules.yaml"
    rules_path.write_text(RULES)
    config = Config().with_overrides(pii={"key": "backtest-test"}, rules={"file": str(rules_path)})
    reference = load_reference(config)
    traffic = [
        *TrafficModel(reference, seed=23, customers=1500).events(EVENTS_PER_DAY),
        *TrafficModel(
            reference, seed=24, customers=1500, start_ms=DEFAULT_START_MS + 61 * DAY_MS
        ).events(EVENTS_PER_DAY),
    ]

    def upstream(flow_inputs: tuple[str, ...]) -> MemoryIO:
        io = MemoryIO(config, partition_counts=dict.fromkeys(flow_inputs, PARTITIONS))
        for event in traffic:
            if event.topic in flow_inputs:
                io.add(event.topic, [(event.key, event.value)], partition_of(event.key))
        return io

    pool = MemoryStockStore(reference)
    stock_io = upstream(stock_pool.INPUTS)
    run(stock_pool.build(config, until_idle=True, io=stock_io, stock_store=lambda: pool))
    identity_io = upstream(identity_stitch.INPUTS)
    graph = MemoryIdentityStore()
    run(
        identity_stitch.build(config, until_idle=True, io=identity_io, identity_store=lambda: graph)
    )
    produced = {
        topics.STOCK_CHANGES: stock_io.collect()[config.topic(topics.STOCK_CHANGES)],
        topics.EVENTS_RESOLVED: identity_io.collect()[config.topic(topics.EVENTS_RESOLVED)],
    }
    inputs: dict[str, dict[int, list[tuple[bytes | None, bytes]]]] = {}
    for name, messages in produced.items():
        for message in messages:
            part = inputs.setdefault(name, {}).setdefault(partition_of(message.key), [])
            part.append((message.key, message.value))
    for event in traffic:
        if event.topic == topics.WMS_MOVEMENTS:
            part = inputs.setdefault(event.topic, {}).setdefault(partition_of(event.key), [])
            part.append((event.key, event.value))
    dump = workdir / "recorded.jsonl"
    with dump.open("wb") as out:  # a dump of the topics, partition by partition
        for name in rule_triggers.INPUTS:
            for partition in sorted(inputs[name]):
                out.writelines(value + b"\n" for _, value in inputs[name][partition])
    return Recording(config, inputs, pool, dump)


def replayed(recording: Recording, workers: int) -> dict[str, dict[str, Any]]:
    """What the rule_triggers dataflow publishes replaying the recording: id → topic and
    payload without ``fired_at`` (the wall clock)."""
    io = MemoryIO(
        recording.config,
        partition_counts=dict.fromkeys(rule_triggers.INPUTS, PARTITIONS),
        partitioned=True,
    )
    for name, parts in recording.inputs.items():
        for partition, messages in parts.items():
            io.add(name, messages, partition)
    flow = rule_triggers.build(
        recording.config,
        until_idle=True,
        io=io,
        stock_store=lambda: recording.pool,
        coupon_store=MemoryCouponStore,
        **CustomerStores(load_reference(recording.config)).build_args(),
    )
    run(flow, workers)
    found: dict[str, dict[str, Any]] = {}
    for name in OUTPUTS:
        for event in io.values(name):
            data = event["data"]
            data.pop("fired_at")
            assert found.setdefault(event["id"], {"topic": name, **data}) == {
                "topic": name,
                **data,
            }, "one id, two payloads"
    return found


def backtested(recording: Recording, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    triggers = tmp_path / "triggers.jsonl"
    rules = recording.config.rules.file
    command = ["rules", "backtest", rules, "--events", str(recording.dump), "--stock", "end"]
    assert main([*command, "--triggers", str(triggers)]) == 0
    assert "stock looked up: end" in capsys.readouterr().out
    found: dict[str, dict[str, Any]] = {}
    for line in triggers.read_bytes().splitlines():
        trigger = orjson.loads(line)
        trigger.pop("fired_at")
        assert found.setdefault(trigger.pop("id"), trigger) == trigger
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_the_backtest_publishes_what_the_replay_publishes(
    recording: Recording, workers: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = replayed(recording, workers)
    backtest = backtested(recording, tmp_path, capsys)
    missing, extra = set(flow) - set(backtest), set(backtest) - set(flow)
    only_flow = Counter(flow[i]["rule_id"] for i in missing)
    only_backtest = Counter(backtest[i]["rule_id"] for i in extra)
    assert not missing and not extra, f"replay only: {only_flow}; backtest only: {only_backtest}"
    differing = [i for i in flow if flow[i] != backtest[i]]
    assert not differing, [(flow[i], backtest[i]) for i in differing[:3]]

    # The stream exercises every rule kind, both experiments' holdouts and quiet hours.
    fired = Counter((t["topic"], t["rule_id"], t.get("kind")) for t in flow.values())
    kinds = {(topic, rule) for topic, rule, _ in fired}
    for rule in ("browse-nearby", "cart-abandonment", "win-back", "store-overstock"):
        assert (topics.TRIGGERS_COUPON, rule) in kinds, rule
    assert (topics.TRIGGERS_COUPON, "expiring-fresh") in kinds  # the clearance offers
    for rule in ("browse-nearby", "cart-abandonment"):
        assert (topics.TRIGGERS_HOLDOUT, rule) in kinds, rule
    assert (topics.TRIGGERS_INSIGHTS, "cart-abandonment") in kinds  # the redemption review
    replenishments = {
        (rule, kind) for topic, rule, kind in fired if topic == topics.TRIGGERS_REPLENISHMENT
    }
    for rule_kind in (
        ("low-stock", "transfer"),
        ("low-stock", "replenish"),
        ("stockout", "stockout"),
        ("campaign-prep", "prepare"),
    ):
        assert rule_kind in replenishments, rule_kind
    assert {kind for rule, kind in replenishments if rule == "expiring-fresh"} == {
        "transfer",
        "prepare",
    }
    assert any("held_until" in t for t in flow.values())
    print(f"\n{len(flow)} triggers on {workers} worker(s): {sorted(fired.items())}")
