"""``omnistream rules backtest``: run a rules file over recorded events, offline.

Ops test a rule change before deploying it: what would fire, per rule and variant, what the
cooldowns, the frequency cap and the control groups would hold back, and what would convert.
Nothing is written to a live topic or to Redis.

The input is what rule_triggers reads — ``events.resolved`` records, ``stock.changes``
CloudEvents and ``wms.movements`` events — from a JSON-lines file (one record per line, in
any order and mix) or from the topics themselves (read from the beginning to their end).
Records are replayed in event-time order through the same rule logic as the flow; timers
fire at their deadlines in between. Where the flow looks up the stock pool in Redis (stores
near a browsing customer, the source of a transfer), the backtest uses the stock as of that
moment of the recording, from the ``stock.changes`` it has replayed so far.
"""

from __future__ import annotations

import heapq
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
from connectors.triggers import coupon_data, coupon_id, replenishment_id
from domain.clearance_rules import (
    AudienceState,
    ClearanceSignal,
    View,
    add_batch,
    add_signal,
    add_view,
    clearance_deadline,
    clearance_deadlines,
    evaluate_clearance,
    note_change,
    release_signals,
)
from domain.customer_rules import (
    Conversion,
    CouponDecision,
    CustomerEvent,
    CustomerState,
    Offer,
    next_deadline,
    on_event,
    on_offer,
    on_time,
)
from domain.customer_rules import Suppressed as CustomerSuppressed
from domain.events import MOVEMENT_EVENT_TYPES, Origin, Rejection
from domain.reference import ReferenceData
from domain.rules import RulesError, RuleSet
from domain.stock_rules import (
    CampaignState,
    ExpiryBatch,
    SkuRuleState,
    StockChange,
    StockDecision,
    evaluate_campaign_prep,
    evaluate_stock_rules,
)
from domain.stock_rules import Suppressed as StockSuppressed

Record = CustomerEvent | StockChange | ExpiryBatch


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
    triggers: list[dict[str, Any]] = field(default_factory=list)


class Backtest:
    """The flow's steps as plain dictionaries of state, driven in event-time order."""

    def __init__(self, rules: RuleSet, reference: ReferenceData) -> None:
        self.rules = rules
        self.reference = reference
        self.tally = Tally()
        self.customers: dict[str, CustomerState] = {}
        self.locations: dict[str, SkuRuleState] = {}
        self.audiences: dict[str, AudienceState] = {}
        self.campaigns: dict[str, CampaignState] = {}
        #: the stock pool as replayed so far: (sku, location) → latest change
        self.stock: dict[tuple[str, str], StockChange] = {}
        self._customer_timers: list[tuple[int, str]] = []
        self._location_timers: list[tuple[int, str]] = []

    # --- lookups the flow makes in Redis ------------------------------------------------------

    def nearby(self, region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
        found = [
            (loc, change.available)
            for (s, loc), change in self.stock.items()
            if s == sku
            and change.region == region
            and change.location_type == "store"
            and change.available >= minimum
        ]
        return sorted(found, key=lambda item: (-item[1], item[0]))

    def region_stock(self, sku: str, region: str) -> list[StockChange]:
        return [c for (s, _), c in sorted(self.stock.items()) if s == sku and c.region == region]

    # --- driving -----------------------------------------------------------------------------

    def run(self, records: Iterable[Record]) -> Tally:
        ordered = sorted(records, key=lambda r: r.ts_ms)
        for record in ordered:
            self._timers(record.ts_ms - 1)
            self.tally.records += 1
            if isinstance(record, CustomerEvent):
                self._customer_event(record)
            elif isinstance(record, StockChange):
                self._stock_change(record)
            else:
                self._batch(record)
        if ordered:
            self._timers(ordered[-1].ts_ms)
        return self.tally

    def _timers(self, until_ms: int) -> None:
        while self._customer_timers and self._customer_timers[0][0] <= until_ms:
            _, customer = heapq.heappop(self._customer_timers)
            state = self.customers[customer]
            due = next_deadline(state)
            if due is None or due > until_ms:
                self._customer_timer(customer, state)
                continue
            self._outcomes(on_time(state, customer, due, self.rules))
            self._customer_timer(customer, state)
        while self._location_timers and self._location_timers[0][0] <= until_ms:
            _, key = heapq.heappop(self._location_timers)
            location = self.locations[key]
            for due_ms in clearance_deadlines(location, self.rules):
                if due_ms > until_ms:
                    break
                self._outcomes(
                    evaluate_clearance(
                        location, self.rules, self._category(key), due_ms, None, self.region_stock
                    )
                )
            self._location_timer(key, location)

    def _customer_timer(self, customer: str, state: CustomerState) -> None:
        due = next_deadline(state)
        if due is not None:
            heapq.heappush(self._customer_timers, (due, customer))

    def _location_timer(self, key: str, state: SkuRuleState) -> None:
        due = clearance_deadline(state, self.rules)
        if due is not None:
            heapq.heappush(self._location_timers, (due, key))

    def _category(self, key: str) -> str:
        product = self.reference.products.get(key.split(":", 1)[0])
        return product.category if product else ""

    def _customer_event(self, event: CustomerEvent) -> None:
        state = self.customers.get(event.customer_id)
        state, out = on_event(state, event, self.rules, self.nearby)
        self.customers[event.customer_id] = state
        self._outcomes(out)
        self._customer_timer(event.customer_id, state)
        if event.event_type == "product_view" and event.region and event.sku and event.category:
            view = View(event.customer_id, event.sku, event.category, event.ts_ms)
            self.audiences[event.region] = add_view(
                self.audiences.get(event.region), view, self.rules
            )

    def _stock_change(self, change: StockChange) -> None:
        self.stock[(change.sku, change.location_id)] = change
        key = f"{change.sku}:{change.location_id}"
        product = self.reference.products.get(change.sku)
        reorder_point = product.reorder_point if product else 0
        stock_rules = self.rules.of_kind("low_stock") + self.rules.of_kind("stockout")
        state, out = evaluate_stock_rules(
            self.locations.get(key), change, stock_rules, reorder_point, self.region_stock
        )
        self.locations[key] = state
        note_change(state, change)
        self._outcomes(out)
        self._outcomes(
            evaluate_clearance(
                state,
                self.rules,
                self._category(key),
                change.ts_ms,
                change.location_id,
                self.region_stock,
            )
        )
        self._location_timer(key, state)

    def _batch(self, batch: ExpiryBatch) -> None:
        key = f"{batch.sku}:{batch.location_id}"
        state = add_batch(self.locations.get(key), batch)
        self.locations[key] = state
        self._outcomes(
            evaluate_clearance(
                state,
                self.rules,
                self._category(key),
                batch.ts_ms,
                batch.location_id,
                self.region_stock,
            )
        )
        self._location_timer(key, state)

    def _outcomes(self, outcomes: Iterable[object]) -> None:
        for item in outcomes:
            if isinstance(item, CouponDecision):
                self._coupon(item)
            elif isinstance(item, StockDecision):
                self.tally.fired[(item.rule_id, item.kind, "default")] += 1
                self.tally.triggers.append(
                    {
                        "topic": "triggers.replenishment",
                        "id": replenishment_id(item),
                        **vars_of(item),
                    }
                )
            elif isinstance(item, CustomerSuppressed):
                self.tally.suppressed[(item.rule_id, item.variant, item.reason)] += 1
            elif isinstance(item, StockSuppressed):
                self.tally.suppressed[(item.rule_id, "default", item.reason)] += 1
            elif isinstance(item, Conversion):
                self.tally.conversions[(item.rule_id, item.variant)] += 1
            elif isinstance(item, ClearanceSignal):
                self._signal(item)

    def _coupon(self, decision: CouponDecision) -> None:
        rule = self.rules.by_id.get(decision.rule_id)
        kind = rule.kind if rule else "?"
        data = coupon_data(decision, self.rules, decision.sent_at_ms)
        if decision.holdout:
            self.tally.suppressed[(decision.rule_id, decision.variant, "control")] += 1
            self.tally.triggers.append(
                {"topic": "triggers.holdout", "id": coupon_id(decision), **data}
            )
            return
        self.tally.fired[(decision.rule_id, kind, decision.variant)] += 1
        self.tally.triggers.append({"topic": "triggers.coupon", "id": coupon_id(decision), **data})
        if (
            decision.store_id in self.reference.locations
            and decision.sku in self.reference.products
        ):
            assert decision.store_id is not None and decision.sku is not None
            key = f"{decision.store_id}:{decision.sku}"
            stock = self.stock.get((decision.sku, decision.store_id))
            state, out = evaluate_campaign_prep(
                self.campaigns.get(key),
                decision.store_id,
                self.reference.locations[decision.store_id].region,
                decision.sku,
                decision.code,
                decision.sent_at_ms,
                self.rules.of_kind("campaign_prep"),
                stock.available if stock else 0,
                self.reference.products[decision.sku].reorder_point,
            )
            self.campaigns[key] = state
            self._outcomes(out)

    def _signal(self, signal: ClearanceSignal) -> None:
        # Records are replayed in time order, so every view up to the signal is known.
        state = add_signal(self.audiences.get(signal.region), signal)
        self.audiences[signal.region] = state
        for offer in release_signals(state, signal.ts_ms, self.rules, self.rules.max_audience):
            self._offer(offer)

    def _offer(self, offer: Offer) -> None:
        state, out = on_offer(self.customers.get(offer.customer_id), offer, self.rules)
        self.customers[offer.customer_id] = state
        self._outcomes(out)
        self._customer_timer(offer.customer_id, state)


def vars_of(decision: StockDecision) -> dict[str, Any]:
    return {name: getattr(decision, name) for name in decision.__slots__}  # type: ignore[attr-defined]


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
    config: Config, rules_path: str, events: Path | None, from_topics: bool, triggers: Path | None
) -> int:
    try:
        rules = load_rules(rules_path)
    except RulesError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    reference = load_reference(config)
    engine = Backtest(rules, reference)
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
    tally = engine.run(decode_records(raw, reference, engine.tally))
    print_report(tally, rules)
    if triggers is not None:
        with triggers.open("wb") as out:
            for trigger in tally.triggers:
                out.write(orjson.dumps(trigger) + b"\n")
        print(f"\n{len(tally.triggers)} would-be triggers written to {triggers}")
    return 0
