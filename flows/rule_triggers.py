"""rule_triggers: coupon and replenishment triggers within seconds (CONTRACT §3).

Wiring only; the rules are in ``domain.customer_rules``, ``domain.stock_rules``,
``domain.clearance_rules`` and ``domain.trigger_policy``.

    events.resolved ─► key by customer ─► customers (carts, browsing, win-back, offers,
                   │                        quiet hours, conversions; timers)
                   │                        ─► triggers.coupon / triggers.holdout
                   └─► product views ─► key by region ─► audience ─► offers ─┘
    stock.changes, wms.movements (perishable receipts)
                   ─► key by sku ─► skus (low stock, stockout, overstock, expiring; timers)
                        ─► triggers.replenishment; clearance signals ─► audience
    coupons naming a store ─► key by store:sku ─► campaigns ─► triggers.replenishment

Timers follow event time (``connectors.event_clock``). The rules file is re-read while the
flow runs (``connectors.live_rules``). Step ids are part of the recovery snapshots: keep them
stable.

Everything a replay holds for the end must be in the snapshots, or a run killed after the
last snapshot before the end loses it on resume (issue 14): each key's snapshot carries the
clock marks of its streams (the clocks are per thread, outside Bytewax's state), and the
campaign step its coupons waiting for the end. Snapshots written before that (shorter
tuples, a bare state) still resume.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic

from base import topics
from base.config import Config, load_config
from base.flow_names import RULE_TRIGGERS
from base.metrics import (
    PROCESSING_LAG,
    TRIGGER_CONVERSIONS,
    TRIGGER_INPUTS_SKIPPED,
    TRIGGERS_SUPPRESSED,
)
from connectors.envelopes import OutMessage
from connectors.event_clock import EventClock, clocks
from connectors.live_rules import LiveRules
from connectors.reference_files import load_reference
from connectors.streams import BatchSink, deadletter_output, kafka_events, kafka_output
from connectors.trigger_inputs import DECODERS, Skipped
from connectors.triggers import coupon_message, replenishment_message
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
from domain.events import Origin
from domain.progress import PartitionReport
from domain.reference import ReferenceData
from domain.rules import RuleSet
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
from state.coupon_store import CouponStore
from state.stock_store import StockStore

INPUTS = (topics.EVENTS_RESOLVED, topics.STOCK_CHANGES, topics.WMS_MOVEMENTS)
NEVER = 2**62  # "every pending timer is due" at the end of a replay


class _Context:
    """What every stateful step of one process shares: config, reference data, the live
    rules, and one Redis client and one set of clocks per worker thread."""

    def __init__(self, config: Config, reference: ReferenceData, until_idle: bool) -> None:
        self.config = config
        self.reference = reference
        self.rules = LiveRules(config.rules.file, config.rules.reload_seconds)
        if not until_idle:
            self.rules.watch()
        self.grace_ms = int(config.rules.timer_grace_seconds * 1000)
        self.idle_ms = None if until_idle else int(config.rules.idle_advance_seconds * 1000)
        self._local = threading.local()

    @property
    def live(self) -> bool:
        """Tailing live topics (timers also follow the wall clock), or replaying to the end."""
        return self.idle_ms is not None

    def clock(self, name: str) -> EventClock:
        return clocks(name, self.grace_ms, self.idle_ms)

    def store(self) -> StockStore:
        if not hasattr(self._local, "store"):
            self._local.store = StockStore.from_config(self.config, self.reference)
        return self._local.store  # type: ignore[no-any-return]

    def coupons(self) -> CouponStore:
        if not hasattr(self._local, "coupons"):
            self._local.coupons = CouponStore.from_config(self.config)
        return self._local.coupons  # type: ignore[no-any-return]

    def nearby(self, region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
        return self.store().stores_with_stock(region, sku, minimum, RULE_TRIGGERS)

    def region_stock(self, sku: str, region: str) -> list[StockChange]:
        return self.store().region_positions(sku, region, RULE_TRIGGERS)


#: customer id, state, partition of ``events.resolved``, and that partition's clock mark
CustomerSnapshot = tuple[str, CustomerState, int, int | None]


class CustomerLogic(StatefulLogic[Any, Any, CustomerSnapshot]):
    """One customer's rules. Timers follow the clock of the ``events.resolved`` partition
    that carries the customer's events. (Bytewax gives a builder no key: the customer id
    comes with the first item and is kept in the snapshot.)"""

    def __init__(self, ctx: _Context, resume: CustomerSnapshot | None) -> None:
        self.ctx = ctx
        self.customer_id, self.state, self.partition = "", CustomerState(), 0
        if resume is not None:
            self.customer_id, self.state, self.partition = resume[:3]
            mark = resume[3] if len(resume) > 3 else None
            if mark is not None:
                # The partition may have nothing left to read: without its mark, the timers
                # due at the end of a replay would never fire.
                self.ctx.clock("customers").restore({self._stream(): mark})

    def _stream(self) -> tuple[str, int]:
        return ("resolved", self.partition)

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        rules = self.ctx.rules.current()
        self.customer_id = value.customer_id
        if isinstance(value, Offer):
            self.state, out = on_offer(self.state, value, rules)
            return out, StatefulLogic.RETAIN
        event: CustomerEvent = value
        self.partition = event.source_partition
        self.ctx.clock("customers").observe(self._stream(), event.ts_ms)
        # Deadlines before this event have passed: the customer's own events are ordered.
        due = on_time(self.state, self.customer_id, event.ts_ms - 1, rules)
        self.state, fired = on_event(self.state, event, rules, self.ctx.nearby)
        return [*due, *fired], StatefulLogic.RETAIN

    def _fire_due(self) -> tuple[list[Any], bool]:
        """Timers (carts, quiet hours) due by the clock of the customer's partition."""
        mark = self.ctx.clock("customers").watermark(self._stream())
        if mark is None:
            return [], StatefulLogic.RETAIN
        out = on_time(self.state, self.customer_id, mark, self.ctx.rules.current())
        return out, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Any], bool]:
        return self._fire_due()

    def on_eof(self) -> tuple[list[Any], bool]:
        return self._fire_due()

    def notify_at(self) -> datetime | None:
        if not self.ctx.live:
            return None  # a replay fires timers on the customer's next event or at the end
        return self.ctx.clock("customers").wake_at(self._stream(), next_deadline(self.state))

    def snapshot(self) -> CustomerSnapshot:
        mark = self.ctx.clock("customers").mark(self._stream())
        return self.customer_id, copy.deepcopy(self.state), self.partition, mark


#: sku, state, and the clock marks of the stock partitions
LocationSnapshot = tuple[str, SkuRuleState, dict[Any, int]]


class LocationLogic(StatefulLogic[Any, Any, LocationSnapshot]):
    """The stock rules of one sku × location (the key of ``stock.changes``, so its changes
    arrive in the order stock_pool made them). A rule that compares locations (the source
    of a transfer, the store that sells fastest) reads the region's current stock from Redis
    when it fires. Timer checks (idle shelves, expiring batches) run at their deadline's
    event time: live, when every stock partition has passed it; in a replay, when this
    location's next change or the end of the input passes it."""

    def __init__(self, ctx: _Context, resume: LocationSnapshot | None) -> None:
        self.ctx = ctx
        self.sku, self.state = "", SkuRuleState()
        if resume is not None:
            self.sku, self.state = resume[0], resume[1]
            if len(resume) > 2:
                self._clock().restore(resume[2])
        self._product()

    def _product(self) -> None:
        product = self.ctx.reference.products.get(self.sku)
        self.category = product.category if product else ""
        self.reorder_point = product.reorder_point if product else 0

    def _clock(self) -> EventClock:
        return self.ctx.clock("stock")

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        if value.sku != self.sku:
            self.sku = value.sku
            self._product()
        rules = self.ctx.rules.current()
        lookup = self.ctx.region_stock
        if isinstance(value, ExpiryBatch):
            self.state = add_batch(self.state, value)
            out = evaluate_clearance(
                self.state, rules, self.category, value.ts_ms, value.location_id, lookup
            )
            return out, StatefulLogic.RETAIN
        change: StockChange = value
        self._clock().observe(("stock", change.source_partition), change.ts_ms)
        out = self._timers(rules, change.ts_ms - 1)
        stock_rules = rules.of_kind("low_stock") + rules.of_kind("stockout")
        self.state, fired = evaluate_stock_rules(
            self.state, change, stock_rules, self.reorder_point, lookup
        )
        note_change(self.state, change)
        out += fired
        out += evaluate_clearance(
            self.state, rules, self.category, change.ts_ms, change.location_id, lookup
        )
        return out, StatefulLogic.RETAIN

    def _timers(self, rules: RuleSet, mark: int | None) -> list[Any]:
        """Idleness and expiry checks due by ``mark``, each at its own deadline."""
        out: list[Any] = []
        if mark is None:
            return out
        for deadline in clearance_deadlines(self.state, rules):
            if deadline > mark:
                break
            out += evaluate_clearance(
                self.state, rules, self.category, deadline, None, self.ctx.region_stock
            )
        return out

    def on_notify(self) -> tuple[list[Any], bool]:
        mark = self._clock().low_watermark("stock")
        return self._timers(self.ctx.rules.current(), mark), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        mark = self._clock().latest()
        return self._timers(self.ctx.rules.current(), mark), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.ctx.live:
            return None
        deadline = clearance_deadline(self.state, self.ctx.rules.current())
        return self._clock().wake_at("stock", deadline, group=True)

    def snapshot(self) -> LocationSnapshot:
        return self.sku, copy.deepcopy(self.state), self._clock().marks("stock")


#: counts so far, and the coupons a replay holds for the end
CampaignSnapshot = tuple[CampaignState, list[CouponDecision]]


class CampaignLogic(StatefulLogic[CouponDecision, Any, CampaignSnapshot]):
    """Coupons naming one store for one sku (``campaign_prep``). Live, each coupon counts as
    it comes; in a replay they are counted in event-time order at the end, since coupons of
    different customers arrive in no fixed order — so the coupons held for the end are part
    of the snapshot: a resumed replay would otherwise count only those read after it."""

    def __init__(self, ctx: _Context, resume: CampaignSnapshot | CampaignState | None) -> None:
        self.ctx = ctx
        self.state: CampaignState | None = None
        self.pending: list[CouponDecision] = []
        if isinstance(resume, tuple):
            self.state, pending = resume
            self.pending = list(pending)
        else:
            self.state = resume

    def _count(self, decision: CouponDecision) -> list[Any]:
        assert decision.store_id is not None and decision.sku is not None
        rules = self.ctx.rules.current().of_kind("campaign_prep")
        product = self.ctx.reference.products[decision.sku]
        available = (
            self.ctx.store().available(decision.sku, decision.store_id, RULE_TRIGGERS)
            if rules
            else 0
        )
        self.state, out = evaluate_campaign_prep(
            self.state,
            decision.store_id,
            self.ctx.reference.locations[decision.store_id].region,
            decision.sku,
            decision.code,
            decision.sent_at_ms,
            rules,
            available,
            product.reorder_point,
        )
        return list(out)

    def on_item(self, value: CouponDecision) -> tuple[list[Any], bool]:
        if not self.ctx.live:
            self.pending.append(value)
            return [], StatefulLogic.RETAIN
        return self._count(value), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        for decision in sorted(self.pending, key=lambda d: (d.sent_at_ms, d.code)):
            out += self._count(decision)
        self.pending = []
        return out, StatefulLogic.RETAIN

    def snapshot(self) -> CampaignSnapshot:
        state = copy.deepcopy(self.state) if self.state is not None else CampaignState()
        return state, list(self.pending)  # decisions are frozen: a new list is a copy


#: views and pending signals, and the clock marks of the view partitions
AudienceSnapshot = tuple[AudienceState, dict[Any, int]]


class AudienceLogic(StatefulLogic[Any, Offer, AudienceSnapshot]):
    """One region's recent product views; turns clearance signals into offers once the
    views have caught up with the signal's event time."""

    def __init__(self, ctx: _Context, resume: AudienceSnapshot | AudienceState | None) -> None:
        self.ctx = ctx
        self.state = AudienceState()
        if isinstance(resume, tuple):
            self.state, marks = resume
            self.ctx.clock("views").restore(marks)
        elif resume is not None:
            self.state = resume

    def _release(self, mark: int | None) -> list[Offer]:
        if mark is None or not self.state.pending:
            return []
        if not self.ctx.live and mark != NEVER:
            return []  # a replay releases at the end, when every view is known
        rules = self.ctx.rules.current()
        return release_signals(self.state, mark, rules, rules.max_audience)

    def on_item(self, value: Any) -> tuple[list[Offer], bool]:
        rules = self.ctx.rules.current()
        if isinstance(value, View):
            self.ctx.clock("views").observe(("views", value.source_partition), value.ts_ms)
            self.state = add_view(self.state, value, rules)
        else:
            self.state = add_signal(self.state, value)
        return self._release(self._mark()), StatefulLogic.RETAIN

    def _mark(self) -> int | None:
        return self.ctx.clock("views").low_watermark("views")

    def on_notify(self) -> tuple[list[Offer], bool]:
        return self._release(self._mark()), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Offer], bool]:
        # The inputs are drained (a replay): every view that exists has been seen.
        return self._release(NEVER), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.ctx.live:
            return None
        pending = min((s.ts_ms for s in self.state.pending), default=None)
        return self.ctx.clock("views").wake_at("views", pending, group=True)

    def snapshot(self) -> AudienceSnapshot:
        return copy.deepcopy(self.state), self.ctx.clock("views").marks("views")


def _view_of(event: CustomerEvent) -> tuple[str, View] | None:
    if event.event_type != "product_view" or not (event.region and event.sku and event.category):
        return None
    return event.region, View(
        event.customer_id, event.sku, event.category, event.ts_ms, event.source_partition
    )


def _count_suppressed(item: Any) -> None:
    if isinstance(item, CustomerSuppressed):
        TRIGGERS_SUPPRESSED.labels(item.rule_id, item.variant, item.reason).inc()
    elif isinstance(item, StockSuppressed):
        TRIGGERS_SUPPRESSED.labels(item.rule_id, "default", item.reason).inc()
    elif isinstance(item, Conversion):
        TRIGGER_CONVERSIONS.labels(item.rule_id, item.variant, item.via).inc()


def build(
    config: Config, *, until_idle: bool = False, reference: ReferenceData | None = None
) -> Dataflow:
    """The rule_triggers dataflow; refuses to build on an invalid rules file."""
    reference = reference if reference is not None else load_reference(config)
    ctx = _Context(config, reference, until_idle)

    def decode(name: str, raw: bytes, origin: Origin) -> Any:
        return DECODERS[name](raw, origin, reference)

    flow = Dataflow(RULE_TRIGGERS)

    def claim_redeemers(batch: list[Any]) -> list[Any]:
        """Receipts that redeemed a coupon without a loyalty card belong to the coupon's
        customer; without a known code they have no customer and are skipped."""
        anonymous = [x for x in batch if isinstance(x, CustomerEvent) and not x.customer_id]
        if not anonymous:
            return batch
        owners = ctx.coupons().owners(sorted({c for x in anonymous for c in x.coupon_codes}))
        out = []
        for item in batch:
            if isinstance(item, CustomerEvent) and not item.customer_id:
                owner = next((owners[c] for c in item.coupon_codes if c in owners), None)
                if owner is None:
                    TRIGGER_INPUTS_SKIPPED.labels("no_customer").inc()
                    continue
                item = dataclasses.replace(item, customer_id=owner)
            out.append(item)
        return out

    def usable(records: list[Any], reports: list[PartitionReport]) -> list[Any]:
        """Count what the rules skip and find the customers of anonymous coupon
        redemptions, once per Kafka batch, inside the decoding step."""
        kept = []
        for item in records:
            if isinstance(item, Skipped):
                TRIGGER_INPUTS_SKIPPED.labels(item.reason).inc()
            else:
                kept.append(item)
        return claim_redeemers(kept)

    inputs = kafka_events(
        "inputs",
        flow,
        config,
        RULE_TRIGGERS,
        INPUTS,
        reference,
        until_idle=until_idle,
        decoder=decode,
        per_batch=usable,
    )
    split = op.branch("customer_or_stock", inputs.oks, lambda x: isinstance(x, CustomerEvent))
    customer_events = split.trues
    stock_events = split.falses

    # Stock side: per sku.
    sku_out = op.stateful(
        "skus",
        op.key_on("key_by_sku_location", stock_events, lambda x: f"{x.sku}:{x.location_id}"),
        lambda resume: LocationLogic(ctx, resume),
    )
    sku_items = op.map("sku_items", sku_out, lambda kv: kv[1])
    signals = op.filter("clearance_signals", sku_items, lambda x: isinstance(x, ClearanceSignal))

    # Audience: per region.
    views = op.filter_map("views", customer_events, _view_of)
    audience_in = op.merge(
        "audience_inputs",
        op.key_on("key_views", views, lambda rv: rv[0]),
        op.key_on(
            "key_signals",
            op.map("signal_values", signals, lambda s: (s.region, s)),
            lambda rs: rs[0],
        ),
    )
    offers = op.map(
        "offer_values",
        op.stateful(
            "audience",
            op.map_value("audience_value", audience_in, lambda pair: pair[1]),
            lambda resume: AudienceLogic(ctx, resume),
        ),
        lambda kv: kv[1],
    )

    # Customers.
    customer_in = op.merge(
        "customer_inputs",
        op.key_on("key_by_customer", customer_events, lambda e: e.customer_id),
        op.key_on("key_offers", offers, lambda o: o.customer_id),
    )
    customer_out = op.stateful("customers", customer_in, lambda resume: CustomerLogic(ctx, resume))
    customer_items = op.map("customer_items", customer_out, lambda kv: kv[1])

    # Campaign preparation: coupons naming a store, per store × sku.
    store_coupons = op.filter(
        "store_coupons",
        customer_items,
        lambda x: (
            isinstance(x, CouponDecision)
            and not x.holdout
            and x.store_id in reference.locations
            and x.sku in reference.products
        ),
    )
    campaign_items = op.map(
        "campaign_items",
        op.stateful(
            "campaigns",
            op.key_on("key_by_store_sku", store_coupons, lambda d: f"{d.store_id}:{d.sku}"),
            lambda resume: CampaignLogic(ctx, resume),
        ),
        lambda kv: kv[1],
    )

    # Outputs.
    everything = op.merge("all_outcomes", customer_items, sku_items, campaign_items)
    op.inspect("count_outcomes", everything, lambda _step, item: _count_suppressed(item))
    coupons = op.filter("coupons", everything, lambda x: isinstance(x, CouponDecision))
    coupon_split = op.branch("coupon_or_holdout", coupons, lambda d: not d.holdout)

    def coupon_out(decision: CouponDecision) -> OutMessage:
        now_ms = int(time.time() * 1000)
        PROCESSING_LAG.labels(RULE_TRIGGERS).observe(
            max(0.0, (now_ms - decision.sent_at_ms) / 1000)
        )
        return coupon_message(decision, ctx.rules.current(), now_ms)

    kafka_output(
        "coupon_triggers",
        config,
        topics.TRIGGERS_COUPON,
        op.map("encode_coupons", coupon_split.trues, coupon_out),
    )

    def open_code_writer() -> tuple[Any, Any]:
        store = CouponStore.from_config(config)

        def write(batch: list[CouponDecision]) -> None:
            rules = ctx.rules.current()
            keep_s = int(rules.conversion_window_s)
            rows = []
            for decision in batch:
                rule = rules.by_id.get(decision.rule_id)
                expires_s = int(rule.coupon.expires_in_s) if rule and rule.coupon else 0
                rows.append((decision.code, decision.customer_id, expires_s + keep_s))
            store.remember(rows)

        return write, store.close

    op.output("coupon_codes", coupon_split.trues, BatchSink(open_code_writer))
    kafka_output(
        "holdout_triggers",
        config,
        topics.TRIGGERS_HOLDOUT,
        op.map("encode_holdouts", coupon_split.falses, coupon_out),
    )
    replenishments = op.filter("replenishments", everything, lambda x: isinstance(x, StockDecision))
    kafka_output(
        "replenishment_triggers",
        config,
        topics.TRIGGERS_REPLENISHMENT,
        op.map(
            "encode_replenishments",
            replenishments,
            lambda d: replenishment_message(d, int(time.time() * 1000)),
        ),
    )
    deadletter_output("deadletter", config, RULE_TRIGGERS, inputs.errs)
    return flow


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.rule_triggers:flow`` builds from the environment."""
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
