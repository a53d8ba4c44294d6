"""``omnistream rules backtest``: run a rules file over recorded events, offline.

Ops test a rule change before deploying it: what would fire, per rule and variant, what the
cooldowns, the frequency cap and the control groups would hold back, and what would convert.
Nothing is written to a live topic or to Redis.

The input is what rule_triggers reads — ``events.resolved`` records, ``stock.changes``
CloudEvents and ``wms.movements`` events — from a JSON-lines file (one record per line, in
any mix) or from the topics themselves (read from the beginning to their end). The records
go through the flow's own trigger engine exactly as ``run rule_triggers --until-idle``
replays them (``domain.trigger_replay``): each key's records in their order on the topics
(in a file: in the file's order), timers on the key's next record and at the end of the
input, clearance offers and campaign counts at the end.

What the rules look up in the stock pool (stores near a browsing customer, the source of a
transfer, the store selling fastest, a store's stock for campaign_prep) comes from the
``stock.changes`` of the recording (``--stock``):

- ``recorded`` (the default): the stock as of the event time of each lookup — what a live
  run looked up, give or take stock_pool's lag;
- ``end``: the stock at the end of the recording — what a replay reads from Redis behind a
  stock_pool that has caught up with the same input. With it, the backtest publishes
  exactly the ids and payloads (but ``fired_at``) of that replay
  (``tests/unit/test_backtest_equals_replay.py``).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from base import topics
from base.config import Config
from connectors.kafka_clients import read_topic
from connectors.reference_files import load_reference
from connectors.rules_file import load_rules
from connectors.trigger_inputs import DECODERS, Skipped
from connectors.triggers import (
    coupon_data,
    coupon_id,
    insight_data,
    insight_id,
    replenishment_data,
    replenishment_id,
)
from domain.customer_rules import CouponConversion, CouponDecision, CouponSuppressed
from domain.events import MOVEMENT_EVENT_TYPES, Origin, Rejection
from domain.redemption_review import RedemptionInsight
from domain.reference import ReferenceData
from domain.rules import RulesError, RuleSet
from domain.stock_rules import StockChange, StockDecision, StockTriggerSuppressed
from domain.stock_view import RecordedStock
from domain.trigger_replay import Record, TriggerReplay, replay_order
from state.coupon_store import MemoryCouponStore

#: ``--stock``: the recorded stock as of each lookup, or at the end of the recording.
STOCK_MODES = ("recorded", "end")


def classify(record: dict[str, Any]) -> str | None:
    """Which input topic a recorded JSON object belongs to (None: not one of ours)."""
    if record.get("type") == "omnistream.stock.changed":
        return topics.STOCK_CHANGES
    if "customer_id" in record:
        return topics.EVENTS_RESOLVED
    if record.get("event_type") in MOVEMENT_EVENT_TYPES:
        return topics.WMS_MOVEMENTS
    return None


@dataclass
class Tally:
    fired: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # rule, kind, variant
    suppressed: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # + reason
    conversions: Counter[tuple[str, str]] = field(default_factory=Counter)
    unusable: Counter[str] = field(default_factory=Counter)
    records: int = 0
    #: every would-be trigger: the topic, the id and the payload the flow would publish
    #: (``fired_at`` is the event time it would fire at: a backtest has no wall clock)
    triggers: list[dict[str, Any]] = field(default_factory=list)


class Backtest:
    """A rules file over a recording: ``TriggerReplay`` on the recorded stock, tallied."""

    def __init__(self, rules: RuleSet, reference: ReferenceData, grace_ms: int = 500) -> None:
        self.rules = rules
        self.reference = reference
        self.grace_ms = grace_ms
        self.tally = Tally()

    def run(self, records: Iterable[Record], stock_mode: str = "recorded") -> Tally:
        """Replay ``records`` (in their recorded order) and tally what the rules did."""
        if stock_mode not in STOCK_MODES:
            raise ValueError(f"stock mode must be one of {', '.join(STOCK_MODES)}: {stock_mode}")
        ordered = replay_order(records)
        shipping = [loc.location_id for loc in self.reference.locations.values() if loc.ships]
        stock = RecordedStock((r for r in ordered if isinstance(r, StockChange)), shipping=shipping)
        view = stock.at_end() if stock_mode == "end" else stock.as_recorded()
        replay = TriggerReplay(self.rules, self.reference, view, MemoryCouponStore(), self.grace_ms)
        for record in ordered:
            self.tally.records += 1
            outcomes = replay.feed(record)
            if outcomes is None:
                self.tally.unusable["no_customer"] += 1
                continue
            self._tally(outcomes)
        self._tally(replay.finish())
        return self.tally

    def _tally(self, outcomes: Iterable[object]) -> None:
        tally = self.tally
        for item in outcomes:
            if isinstance(item, CouponDecision):
                self._coupon(item)
            elif isinstance(item, StockDecision):
                tally.fired[(item.rule_id, item.kind, "default")] += 1
                data = replenishment_data(item, item.event_time_ms)
                tally.triggers.append(
                    {"topic": topics.TRIGGERS_REPLENISHMENT, "id": replenishment_id(item), **data}
                )
            elif isinstance(item, CouponSuppressed):
                tally.suppressed[(item.rule_id, item.variant, item.reason)] += 1
            elif isinstance(item, StockTriggerSuppressed):
                tally.suppressed[(item.rule_id, "default", item.reason)] += 1
            elif isinstance(item, CouponConversion):
                tally.conversions[(item.rule_id, item.variant)] += 1
            elif isinstance(item, RedemptionInsight):
                data = insight_data(item, item.event_time_ms)
                tally.triggers.append(
                    {"topic": topics.TRIGGERS_INSIGHTS, "id": insight_id(item), **data}
                )

    def _coupon(self, decision: CouponDecision) -> None:
        rule = self.rules.by_id.get(decision.rule_id)
        kind = rule.kind if rule else "?"
        data = coupon_data(decision, self.rules, decision.sent_at_ms)
        if decision.holdout:
            self.tally.suppressed[(decision.rule_id, decision.variant, "control")] += 1
            topic = topics.TRIGGERS_HOLDOUT
        else:
            self.tally.fired[(decision.rule_id, kind, decision.variant)] += 1
            topic = topics.TRIGGERS_COUPON
        self.tally.triggers.append({"topic": topic, "id": coupon_id(decision), **data})


def decode_records(
    raw_records: Iterable[tuple[str, bytes]], reference: ReferenceData, tally: Tally
) -> Iterator[Record]:
    for index, (topic, raw) in enumerate(raw_records):
        record = DECODERS[topic](raw, Origin(topic, 0, index, None), reference)
        if isinstance(record, Skipped | Rejection):
            tally.unusable[record.reason] += 1
            continue
        yield record  # type: ignore[misc]


def file_records(path: Path, tally: Tally) -> Iterator[tuple[str, bytes]]:
    with path.open("rb") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                topic = classify(orjson.loads(line))
            except orjson.JSONDecodeError:
                topic = None
            if topic is None:
                tally.unusable["not_an_input_record"] += 1
                continue
            yield topic, line


def print_report(tally: Tally, rules: RuleSet, out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout
    print(f"{tally.records} records replayed with {rules.source}", file=out)
    if tally.unusable:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(tally.unusable.items()))
        print(f"not used: {skipped}", file=out)
    header = f"{'rule':<22} {'kind':<20} {'variant':<14} {'fired':>7} {'conv.':>6}"
    print("\nwould fire\n" + header, file=out)
    converted = tally.conversions
    for (rule, kind, variant), n in sorted(tally.fired.items()):
        print(
            f"{rule:<22} {kind:<20} {variant:<14} {n:>7} {converted[(rule, variant)]:>6}", file=out
        )
    if not tally.fired:
        print("  (nothing)", file=out)
    print(
        f"\nheld back\n{'rule':<22} {'variant':<14} {'reason':<10} {'count':>7} {'conv.':>6}",
        file=out,
    )
    for (rule, variant, reason), n in sorted(tally.suppressed.items()):
        conv = str(converted[(rule, variant)]) if reason == "control" else ""
        print(f"{rule:<22} {variant:<14} {reason:<10} {n:>7} {conv:>6}", file=out)
    if not tally.suppressed:
        print("  (nothing)", file=out)


def run_backtest(
    config: Config,
    rules_path: str,
    events: Path | None,
    from_topics: bool,
    triggers: Path | None,
    stock_mode: str = "recorded",
) -> int:
    try:
        rules = load_rules(rules_path)
    except RulesError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    reference = load_reference(config)
    engine = Backtest(rules, reference, int(config.rules.timer_grace_seconds * 1000))
    raw: Iterable[tuple[str, bytes]]
    if events is not None:
        if not events.is_file():
            print(f"{events}: no such file", file=sys.stderr)
            return 2
        raw = file_records(events, engine.tally)
    else:
        raw = (
            (name, message.value() or b"")
            for name in (topics.EVENTS_RESOLVED, topics.STOCK_CHANGES, topics.WMS_MOVEMENTS)
            for message in read_topic(config, name, timeout_s=120)
        )
        print(f"reading {config.kafka.bootstrap} (prefix {config.kafka.topic_prefix!r}) …")
    tally = engine.run(decode_records(raw, reference, engine.tally), stock_mode)
    print_report(tally, rules)
    print(f"\nstock looked up: {stock_mode} (--stock)")
    if triggers is not None:
        with triggers.open("wb") as out:
            for trigger in tally.triggers:
                out.write(orjson.dumps(trigger) + b"\n")
        print(f"\n{len(tally.triggers)} would-be triggers written to {triggers}")
    return 0
