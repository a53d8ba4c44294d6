"""rule_triggers: coupon and replenishment triggers within seconds (CONTRACT §3).

Wiring only: the rules are the trigger engine's (``domain.trigger_engine``); each stateful
step below is a thin adapter that hands a key's records, timers and snapshots to it.

    events.resolved ─► key by customer ─► customers (carts, browsing, win-back, offers,
                   │                        quiet hours, conversions; timers)
                   │                        ─► triggers.coupon / triggers.holdout
                   └─► product views ─► key by region ─► audience ─► offers ─┘
    stock.changes, wms.movements (perishable receipts)
                   ─► key by sku × location ─► skus (low stock, stockout, overstock,
                        expiring; timers) ─► triggers.replenishment; clearance signals ─► audience
    coupons naming a store ─► key by store:sku ─► campaigns ─► triggers.replenishment

Rules that compare keys read the stock pool (Redis, ``state.stock_view.PoolStockView``). The
rules file is re-read while the flow runs (``connectors.live_rules``). Step ids are part of
the recovery snapshots: keep them stable.

Two clock policies, one adapter each step: live (tailing), timers follow each worker's
event-time clocks (``connectors.event_clock``) and fire from Bytewax's notifications; in a
replay (``--until-idle``), a key's timers fire on its next record and at the end of the
input, which is also when the audience releases its signals, customers take their offers
and campaigns count their coupons (``domain.trigger_engine``). ``rules backtest`` replays
the same engine the same way (``domain.trigger_replay``).

In a replay a perishable sku × location also takes its stock changes in event-time order
with its receipts: a change waits (``LocationTriggers.hold``) until the location's
``wms.movements`` partition has been read up to it. The worker reading that partition says
so after each of its batches with a ``ReceiptsRead`` mark to every key waiting there
(``connectors.event_clock.ReceiptWaits``), sent on the path the batch's receipts took, so it
never overtakes one of them; a key's own receipt says as much, and the end of the input
releases everything. (A receipt is read when its Kafka batch is; the stock changes it
caused come on another topic, which a replay may read months of event time ahead: one batch
of a partition close to its end does not hold the others back.)

What a replay holds for the end fires against the latest event time read of its input by the
whole flow. The processes of a Bytewax cluster share no memory, so the ``read_marks`` step
folds every batch's marks (one key per input) and puts them in a store at the end of the
input (``state.read_marks``); the stateful steps that need them take them from their input
too, so their own end comes after it, whichever process read what.

Everything a replay holds for the end must be in the snapshots, or a run killed after the
last snapshot before the end loses it on resume (issue 14): each key's snapshot carries the
clock marks of its input group (``ClockMarks``: the clocks are outside Bytewax's state), and
the customers and campaigns what they hold for the end. Snapshots of the state classes from
before the trigger engine (issue 15) do not resume: start such a flow without them.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic

from base import topics
from base.config import Config, load_config
from base.flow_names import RULE_TRIGGERS
from base.metrics import (
    COUPON_REDEMPTIONS,
    CUSTOMERS_BY_SEGMENT,
    PROCESSING_LAG,
    RULE_STATE_HANDOVERS,
    TRIGGER_CONVERSIONS,
    TRIGGER_INPUTS_SKIPPED,
    TRIGGERS_SUPPRESSED,
)
from connectors.customer_io import visit_message, visit_prunes, visit_writes, visits_of_erased
from connectors.decode import Invalid, event_time, load_object
from connectors.envelopes import OutMessage
from connectors.event_clock import ClockMarks, EventClock, InputMarks, ReceiptWaits, WorkerClocks
from connectors.live_rules import LiveRules
from connectors.operators import (
    BatchedLogic,
    Decoded,
    FlowIO,
    dead_letters,
    decode,
    keyed_state,
    output,
    read,
    rejections,
    stateful_batches,
)
from connectors.reference_files import load_reference
from connectors.streams import BatchSink, KafkaIO
from connectors.trigger_inputs import DECODERS, Skipped
from connectors.triggers import (
    coupon_message,
    insight_message,
    replenishment_id,
    replenishment_message,
)
from connectors.worker_local import WorkerLocal
from domain.clearance_rules import ClearanceSignal, View
from domain.customer_key import (
    ERASED,
    CustomerErased,
    CustomerKey,
    HandOver,
    IdentityNotice,
    ProfileRetired,
    ProfileWrite,
    audience_notice,
    reaches_audiences,
)
from domain.customer_rules import (
    CouponConversion,
    CouponDecision,
    CouponRedeemed,
    CouponSuppressed,
    CustomerEvent,
    Offer,
    VisitTask,
)
from domain.events import Origin
from domain.profile import ProfileSettings
from domain.progress import END_OF_INPUT
from domain.redemption_review import (
    RedemptionInsight,
    RedemptionReviews,
    ReviewItem,
    review_key,
    reviewed,
)
from domain.reference import ReferenceData
from domain.stock_arms import ShelfFigures
from domain.stock_rules import ExpiryBatch, StockChange, StockDecision, StockTriggerSuppressed
from domain.stock_view import StockView
from domain.trigger_engine import (
    AudienceTriggers,
    CampaignTriggers,
    LocationTriggers,
    ReceiptsRead,
    audience_regions,
    campaign_key,
    claim_redemption,
    location_key,
    redeemed_codes,
    remembered_codes,
    view_of,
)
from domain.trigger_replay import RESOLVED, STOCK
from state.coupon_store import CouponStore, RedisCouponStore
from state.experiment_store import ExperimentStore, RedisExperimentStore
from state.handover_store import HandoverStore, LocalHandovers, RedisHandoverStore
from state.interfaces import StockReader, StoreFactory, TaskStore, TaskWrite
from state.profile_store import ProfileStore, RedisProfileStore
from state.read_marks import ReadMarkStore, RedisReadMarkStore
from state.stock_store import StockStore
from state.stock_view import PoolStockView

log = logging.getLogger(__name__)

INPUTS = (topics.EVENTS_RESOLVED, topics.STOCK_CHANGES, topics.WMS_MOVEMENTS)
#: The audience's clock (its streams are the partitions of ``events.resolved``).
VIEWS = "views"


@dataclass(frozen=True, slots=True)
class MovementSeen:
    """A ``wms.movements`` event that is no perishable receipt: the rules skip it, but its
    time says how far its partition has been read and its location where the location's
    receipts are read (``ReceiptWaits``). It goes no further than the batch step."""

    location_id: str | None
    ts_ms: int
    partition: int


class _Context:
    """What every stateful step of one built flow shares: config, reference data, the live
    rules, the clock policy, and a stock view and coupon store per worker thread."""

    def __init__(
        self,
        config: Config,
        reference: ReferenceData,
        *,
        until_idle: bool,
        stock_store: StoreFactory[StockReader],
        coupon_store: StoreFactory[CouponStore],
        handover_store: StoreFactory[HandoverStore],
        read_mark_store: StoreFactory[ReadMarkStore] | None = None,
    ) -> None:
        self.config = config
        self.reference = reference
        self.rules = LiveRules(config.rules.file, config.rules.reload_seconds)
        if not until_idle:
            self.rules.watch()
        #: a replay to the end of the input (``--until-idle``), not live
        self.replay = until_idle
        self.grace_ms = int(config.rules.timer_grace_seconds * 1000)
        idle_ms = None if until_idle else int(config.rules.idle_advance_seconds * 1000)
        self.clocks = WorkerClocks(self.grace_ms, idle_ms)
        self.read = InputMarks()
        #: a replay's sku × locations waiting for their location's receipts
        self.receipts = ReceiptWaits()
        self._open_stock = stock_store
        #: opens the coupon codes' store (a worker's claims, the sink of each worker)
        self.open_coupons = coupon_store
        #: opens the handover store (a worker's keys, the sink of each worker)
        self.open_handovers = handover_store
        #: the states this process's keys handed over, for survivors on its own workers
        self.local_handovers = LocalHandovers()
        #: opens the store of the whole flow's read marks (None: this process's reads)
        self.open_read_marks = read_mark_store
        self.profile_settings = ProfileSettings.from_config(config.profile)
        #: the locations that ship online (where a coupon without a store sends a customer)
        self.shipping = sorted(loc.location_id for loc in reference.locations.values() if loc.ships)
        self._local = WorkerLocal()

    def clock(self, group: str) -> EventClock:
        return self.clocks.clock(group)

    def waiting_keys(self) -> dict[str, CustomerLogic]:
        """This worker's customer keys that wait for a merged customer's state, by customer
        id, until their ``on_eof`` (``CustomerLogic._drive_others``)."""
        if not hasattr(self._local, "waiting"):
            self._local.waiting = {}
        return self._local.waiting  # type: ignore[no-any-return]

    def stock(self) -> StockView:
        if not hasattr(self._local, "stock"):
            # Live, an answer is reused for STOCK_ANSWER_MAX_AGE_S (``PoolStockView``); a
            # replay asks every time, so it reads the pool exactly as a backtest of it does.
            self._local.stock = PoolStockView(
                self._open_stock(),
                RULE_TRIGGERS,
                shipping=self.shipping,
                max_age_s=0.0 if self.replay else STOCK_ANSWER_MAX_AGE_S,
            )
        return self._local.stock  # type: ignore[no-any-return]

    def coupons(self) -> CouponStore:
        if not hasattr(self._local, "coupons"):
            self._local.coupons = self.open_coupons()
        return self._local.coupons  # type: ignore[no-any-return]

    def handovers(self) -> HandoverStore:
        if not hasattr(self._local, "handovers"):
            self._local.handovers = self.open_handovers()
        return self._local.handovers  # type: ignore[no-any-return]

    def end_of_input(self, group: str) -> int | None:
        """The latest event time read of ``group`` by the whole flow: by any process (the
        ``read_marks`` step stored them before any key's end of input), by any worker of
        this process, or by this worker's own keys (another process's reads, after a
        resume)."""
        read, own = self.read.latest(group), self.clock(group).latest()
        everywhere = self._read_everywhere().get(group)
        return max((m for m in (read, own, everywhere) if m is not None), default=None)

    def _read_everywhere(self) -> dict[str, int]:
        """The stored read marks, asked once per worker (they are complete by the first
        key's end of input and do not change after)."""
        if not hasattr(self._local, "read_everywhere"):
            marks: dict[str, int] = {}
            if self.open_read_marks is not None:
                store = self.open_read_marks()
                try:
                    marks = store.get()
                finally:
                    store.close()
            self._local.read_everywhere = marks
        return self._local.read_everywhere  # type: ignore[no-any-return]

    def marks(self, group: str) -> ClockMarks:
        return ClockMarks(self.clock(group).marks(group), self.read.latest(group))

    def restore(self, group: str, marks: ClockMarks) -> None:
        self.clock(group).restore(marks.streams)
        self.read.note(group, marks.read)


class ReadMarkLogic(StatefulLogic[tuple[str, int], Any, tuple[str, int]]):
    """One input group's latest event time read by the whole flow in a replay (items and
    snapshot: ``(group, epoch ms)``), put in the read-mark store at the end of the input
    (see the module docstring). A resumed replay's end counts what was read before."""

    def __init__(self, ctx: _Context, resume: tuple[str, int] | None) -> None:
        self.ctx = ctx
        self.latest = resume

    def on_item(self, value: tuple[str, int]) -> tuple[list[Any], bool]:
        if self.latest is None or value[1] > self.latest[1]:
            self.latest = value
        return [], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        open_store = self.ctx.open_read_marks
        if self.ctx.replay and self.latest is not None and open_store is not None:
            store = open_store()
            try:
                store.put(dict([self.latest]))
            finally:
                store.close()
        return [], StatefulLogic.RETAIN

    def snapshot(self) -> tuple[str, int]:
        assert self.latest is not None  # Bytewax snapshots keys that had an item
        return self.latest


#: How long (wall clock) a live rule reuses an answer about the stock pool.
STOCK_ANSWER_MAX_AGE_S = 0.1

#: the customer's key, its partition of ``events.resolved``, the clocks
CustomerSnapshot = tuple[CustomerKey, int, ClockMarks]

#: How often a survivor waiting for a merged customer's state looks for it at hand, and
#: first asks the handover store again (wall clock); how long the end of a replay waits
#: for it at most.
HANDOVER_POLL_S = 0.05
#: The store is asked half as often after each miss, down to once per this: most states
#: come at hand (the merged key is on this process, only behind on its partition), and a
#: store asked every 50 ms by each of thousands of waiting keys costs more than the rules.
HANDOVER_STORE_POLL_MAX_S = 1.0
#: How often (wall clock) the visit writer looks through a store's tasks for expired visits.
VISIT_PRUNE_S = 60.0
HANDOVER_EOF_WAIT_S = 120.0


class CustomerLogic(BatchedLogic[Any, Any, CustomerSnapshot]):
    """One customer (``domain.customer_key.CustomerKey``). Live, timers follow the clock of
    the ``events.resolved`` partition that carries the customer's events. A merged customer
    hands its state over and is discarded: the state goes to this process's
    ``LocalHandovers`` at once and to the handover store through the customer sink. Its
    survivor looks for it at hand on every item and every ``HANDOVER_POLL_S`` while it
    waits, and asks the store from every ``HANDOVER_POLL_S`` down to every
    ``HANDOVER_STORE_POLL_MAX_S`` (at the end of a replay every ``HANDOVER_POLL_S``). A
    survivor still waiting at the end of the input blocks its worker, sink included, so
    while it waits it moves the worker's other waiting keys on and writes what this process
    handed over to the store itself (``_drive_others``).
    (Bytewax gives a builder no key: the customer id comes with the first item and is kept
    in the engine.)"""

    def __init__(self, ctx: _Context, resume: Any) -> None:
        self.ctx = ctx
        self.key, self.partition = CustomerKey(), 0
        #: when (monotonic) this key last asked the handover store (or began to wait), and
        #: how long it waits before asking again (not in the snapshot: a resumed key that
        #: waits asks at once)
        self._asked_at, self._ask_every = float("-inf"), HANDOVER_POLL_S
        #: merged customer → their state, found in the store by a round of asks (this
        #: key's or another waiting key's, ``_ask_store``), until this key takes it (None
        #: until the first: most of a flow's customers never wait)
        self._from_store: dict[str, bytes] | None = None
        #: what this key emitted while another key's end-of-input wait moved it on, and
        #: whether its own ``on_eof`` has run (after it, nothing it emits is sent); a tuple,
        #: not a list: nearly always empty, and the empty tuple is shared by every key
        self._driven: tuple[Any, ...] = ()
        self._ended = False
        if resume is not None:
            held, self.partition, marks = resume
            # Snapshots from before merges were followed hold the rule engine alone.
            self.key = held if isinstance(held, CustomerKey) else CustomerKey(held)
            # The partition may have nothing left to read: without its mark, the timers
            # due at the end of a replay would never fire.
            ctx.restore(RESOLVED, marks)
            self._note_waiting()

    def _stream(self) -> tuple[str, int]:
        return (RESOLVED, self.partition)

    def _done(self, out: list[Any]) -> tuple[list[Any], bool]:
        """Keep what the key handed over at hand (the sink writes it to the store); a key
        merged away or erased is discarded."""
        self._keep_at_hand(out)
        for item in out:
            if isinstance(item, HandOver):
                RULE_STATE_HANDOVERS.labels(RULE_TRIGGERS, "merged").inc()
        self._note_waiting()
        return out, StatefulLogic.DISCARD if self.key.gone else StatefulLogic.RETAIN

    def _note_waiting(self) -> None:
        waiting, customer_id = self.ctx.waiting_keys(), self.key.customer_id
        if self.key.waiting and not self.key.gone and not self._ended:
            waiting[customer_id] = self
        elif waiting.get(customer_id) is self:
            del waiting[customer_id]

    def _keep_at_hand(self, out: list[Any]) -> None:
        for item in out:
            if isinstance(item, HandOver):
                self.ctx.local_handovers.keep(item.survivor, item.merged, item.payload)
            elif isinstance(item, CustomerErased):
                self.ctx.local_handovers.drop(item.customer_id)

    def _collect(self, *, ask_store: bool = False) -> list[Any]:
        """The merged customers' states the key waits for that have arrived: at hand, or in
        the store when it is time to ask it again (``ask_store``: now)."""
        ctx, out = self.ctx, []
        # Taking what was held may meet the next merge's notice: wait on for that one.
        while self.key.waiting and not self.key.gone:
            merged = self.key.waiting[0]
            payload = ctx.local_handovers.take(self.key.customer_id, merged)
            # (a copy found in the store as well goes with it)
            stored = self._from_store.pop(merged, None) if self._from_store else None
            if payload is None:
                payload = stored
            if payload is None:
                now = time.monotonic()
                if not ask_store and now < self._asked_at + self._ask_every:
                    break
                self._ask_store(now)
                payload = self._from_store.pop(merged, None) if self._from_store else None
            if payload is None:
                break  # taken in the order of the notices
            self._asked_at, self._ask_every = time.monotonic(), HANDOVER_POLL_S
            RULE_STATE_HANDOVERS.labels(RULE_TRIGGERS, "absorbed").inc()
            out += self.key.absorb(
                merged,
                payload,
                ctx.rules.current(),
                ctx.stock(),
                ctx.profile_settings,
                replay=ctx.replay,
            )
        return out

    def _ask_store(self, now: float, *, everyone: bool = False) -> None:
        """Ask the store, in one round trip, for the state this key waits for and for that
        of every other waiting key of the worker due to ask within ``HANDOVER_POLL_S``
        (``everyone``: all of them). Keys asking one GET each cost the flow a round trip
        every few events while merges were frequent; what is found waits in each key's
        ``_from_store`` for its next look (every ``HANDOVER_POLL_S`` while it waits)."""
        horizon = now + HANDOVER_POLL_S
        askers = [self]
        for other in self.ctx.waiting_keys().values():
            if (
                other is not self
                and other.key.waiting
                and not other.key.gone
                and (everyone or other._asked_at + other._ask_every <= horizon)
                and not (other._from_store and other.key.waiting[0] in other._from_store)
            ):
                askers.append(other)
        pairs = [(asker.key.customer_id, asker.key.waiting[0]) for asker in askers]
        found = self.ctx.handovers().take_many(pairs)
        for asker, (_, merged), payload in zip(askers, pairs, found, strict=True):
            asker._asked_at = now
            if payload is None:
                asker._ask_every = min(2 * asker._ask_every, HANDOVER_STORE_POLL_MAX_S)
            else:
                if asker._from_store is None:
                    asker._from_store = {}
                asker._from_store[merged] = payload

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        ctx = self.ctx
        if not isinstance(value, Offer):
            self.partition = value.source_partition
            ctx.clock(RESOLVED).observe(self._stream(), value.ts_ms)
        was_waiting = bool(self.key.waiting)
        out = self.key.take(
            value, ctx.rules.current(), ctx.stock(), ctx.profile_settings, replay=ctx.replay
        )
        if isinstance(value, IdentityNotice) and value.kind == ERASED:
            RULE_STATE_HANDOVERS.labels(RULE_TRIGGERS, "erased").inc()
        if self.key.waiting:
            if not was_waiting:
                # A wait begins: the state is seldom in the store yet (its key is on this
                # process, or another's hands it over as this one is told): ask it later.
                self._asked_at, self._ask_every = time.monotonic(), HANDOVER_POLL_S
            out += self._collect()
        return self._done(out)

    def end_batch(self, outcomes: list[Any]) -> list[Any]:
        """The batch's one profile write (``CustomerKey.settle``)."""
        return self.key.settle(outcomes, self.ctx.profile_settings)

    def on_notify(self) -> tuple[list[Any], bool]:
        """Live: carts, lifecycle timers and quiet hours due by the clock of the customer's
        partition; a survivor asks for the state it waits for."""
        if self.key.waiting:
            return self._settled(self._collect())
        if self.ctx.replay:
            return [], StatefulLogic.RETAIN
        mark = self.ctx.clock(RESOLVED).watermark(self._stream())
        rules = self.ctx.rules.current()
        fired = self.key.fire_due(mark, rules, self.ctx.stock(), self.ctx.profile_settings)
        return self._settled(fired)

    def _settled(self, out: list[Any]) -> tuple[list[Any], bool]:
        sent, discard = self._done(out)
        return self.end_batch(sent), discard

    def _drive_others(self) -> None:
        """While this key blocks its worker at the end of the input, let the worker's other
        waiting keys take what has arrived for them, and write what this process handed
        over to the store. Without it a chain of merges deadlocked: B waits for A's state
        while A, merged into B, still waits for the state of a customer merged into it, and
        A's ``on_eof`` comes only after B's; and the sink that writes hand-overs for other
        processes runs only after every key's ``on_eof``. What a driven key emits waits in
        it (``_driven``) for its own ``on_eof``; what it hands over is at hand at once."""
        if self.key.waiting and not self.key.gone:
            self._ask_store(time.monotonic(), everyone=True)
        for other in list(self.ctx.waiting_keys().values()):
            if other is not self and other.key.waiting and not other.key.gone:
                driven = other._collect()
                other._keep_at_hand(driven)
                other._driven = (*other._driven, *driven)
        unwritten = self.ctx.local_handovers.unwritten()
        if unwritten:
            self.ctx.handovers().put_many(unwritten)

    def on_eof(self) -> tuple[list[Any], bool]:
        # The merged customers' keys have been given their notices (the input is over);
        # they may still be writing on another worker, or waiting themselves on this one:
        # their ``on_eof`` comes after this, so this wait moves them on (``_drive_others``).
        out: list[Any] = list(self._driven)
        self._driven, self._ended = (), True
        self._note_waiting()
        waited_until = time.monotonic() + HANDOVER_EOF_WAIT_S
        while self.key.waiting and time.monotonic() < waited_until:
            out += self._collect(ask_store=True)
            if self.key.waiting:
                self._drive_others()
                time.sleep(HANDOVER_POLL_S)
        if self.key.waiting:
            log.warning(
                "rule_triggers: customer %s gave up waiting for the state of %s after %.0f s "
                "at the end of the input",
                self.key.customer_id,
                ", ".join(self.key.waiting),
                HANDOVER_EOF_WAIT_S,
            )
        if self.key.gone:  # merged away while another key's wait moved it on
            return self._settled(out)
        ctx = self.ctx
        if not ctx.replay:
            mark = ctx.clock(RESOLVED).watermark(self._stream())
            out += self.key.fire_due(mark, ctx.rules.current(), ctx.stock(), ctx.profile_settings)
            return self._settled(out)
        end = ctx.end_of_input(RESOLVED)
        end = None if end is None else end - ctx.grace_ms
        out += self.key.finish(end, ctx.rules.current(), ctx.stock(), ctx.profile_settings)
        return self._settled(out)

    def notify_at(self) -> datetime | None:
        if self.key.waiting:
            return datetime.now(UTC) + timedelta(seconds=HANDOVER_POLL_S)
        if self.ctx.replay:
            return None  # a replay fires timers on the customer's next event or at the end
        deadline = self.key.next_deadline(self.ctx.profile_settings)
        return self.ctx.clock(RESOLVED).wake_at(self._stream(), deadline)

    def snapshot(self) -> CustomerSnapshot:
        return copy.deepcopy(self.key), self.partition, self.ctx.marks(RESOLVED)


#: the sku × location's engine, the clocks of the stock partitions
LocationSnapshot = tuple[LocationTriggers, ClockMarks]


class LocationLogic(StatefulLogic[Any, Any, LocationSnapshot]):
    """One sku × location (``LocationTriggers``), the key of ``stock.changes``, so its
    changes arrive in the order stock_pool made them. Live, timers (idle shelves, expiring
    batches) run at their deadline's event time once every stock partition has passed it.
    In a replay a perishable sku's changes wait for the location's receipts (``hold``), and
    the key asks the reader of those for a ``ReceiptsRead`` mark while any is held."""

    def __init__(self, ctx: _Context, resume: LocationSnapshot | None) -> None:
        self.ctx = ctx
        self.triggers: LocationTriggers | None = None
        #: the wait last registered with ``ctx.receipts`` (asked once, not per change)
        self._asked: int | None = None
        if resume is not None:
            triggers, marks = resume
            self.triggers = triggers.refresh(ctx.reference)
            ctx.restore(STOCK, marks)
            self._await_receipts()  # a new process: its readers know no wait of before

    def _clock(self) -> EventClock:
        return self.ctx.clock(STOCK)

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        if self.triggers is None:
            self.triggers = LocationTriggers.of(value.sku, value.location_id, self.ctx.reference)
        triggers, rules, stock = self.triggers, self.ctx.rules.current(), self.ctx.stock()
        if isinstance(value, ReceiptsRead):
            self._asked = None  # the mark answered the wait registered
            out = triggers.receipts_read(value.read_ms, rules, stock)
        elif isinstance(value, ExpiryBatch):
            out = triggers.on_batch(value, rules, stock)
            if self.ctx.replay:
                # This receipt's partition has been read up to it (less the grace for
                # events produced a little out of order).
                read_ms = value.ts_ms - self.ctx.grace_ms
                out += triggers.receipts_read(read_ms, rules, stock)
        else:
            self._clock().observe((STOCK, value.source_partition), value.ts_ms)
            if not self.ctx.replay:
                return triggers.on_change(value, rules, stock), StatefulLogic.RETAIN
            out = triggers.hold(value, rules, stock)
        self._await_receipts()
        return out, StatefulLogic.RETAIN

    def _await_receipts(self) -> None:
        """Ask the reader of the location's receipts for a mark while changes are held."""
        triggers = self.triggers
        since = triggers.waiting_since() if triggers is not None else None
        if triggers is not None and since is not None and since != self._asked:
            self.ctx.receipts.wait(triggers.sku, triggers.location_id, since)
        self._asked = since

    def _fire_due(self, mark: int | None) -> tuple[list[Any], bool]:
        if self.triggers is None:
            return [], StatefulLogic.RETAIN
        out = self.triggers.fire_due(mark, self.ctx.rules.current(), self.ctx.stock())
        return out, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Any], bool]:
        return self._fire_due(self._clock().low_watermark(STOCK))

    def on_eof(self) -> tuple[list[Any], bool]:
        if not self.ctx.replay:
            return self._fire_due(self._clock().low_watermark(STOCK))
        if self.triggers is None:
            return [], StatefulLogic.RETAIN
        # Every receipt has been read: the changes still held, then the last timers.
        ctx = self.ctx
        end = ctx.end_of_input(STOCK)
        return self.triggers.finish(end, ctx.rules.current(), ctx.stock()), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.ctx.replay or self.triggers is None:
            return None
        deadline = self.triggers.next_deadline(self.ctx.rules.current())
        return self._clock().wake_at(STOCK, deadline, group=True)

    def snapshot(self) -> LocationSnapshot:
        assert self.triggers is not None  # Bytewax snapshots keys that had an item
        return copy.deepcopy(self.triggers), self.ctx.marks(STOCK)


class CampaignLogic(StatefulLogic[CouponDecision, Any, CampaignTriggers]):
    """Coupons naming one store for one sku (``CampaignTriggers``). Live, each coupon counts
    as it comes; in a replay they are counted in event-time order at the end, since coupons
    of different customers arrive in no fixed order — so the coupons held for the end are
    part of the snapshot: a resumed replay would otherwise count only those read after it."""

    def __init__(self, ctx: _Context, resume: CampaignTriggers | None) -> None:
        self.ctx = ctx
        self.triggers = resume if resume is not None else CampaignTriggers()

    def on_item(self, value: CouponDecision) -> tuple[list[Any], bool]:
        if self.ctx.replay:
            self.triggers.hold(value)
            return [], StatefulLogic.RETAIN
        ctx = self.ctx
        out = self.triggers.count(value, ctx.rules.current(), ctx.reference, ctx.stock())
        return out, StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        ctx = self.ctx
        out = self.triggers.finish(ctx.rules.current(), ctx.reference, ctx.stock())
        return out, StatefulLogic.RETAIN

    def snapshot(self) -> CampaignTriggers:
        return copy.deepcopy(self.triggers)


class ReviewLogic(StatefulLogic[ReviewItem, RedemptionInsight, RedemptionReviews]):
    """One coupon rule × variant's redemption reviews (``domain.redemption_review``). Live,
    each coupon and redemption is folded in as it comes; a replay holds them for the end,
    as campaigns do, since the coupons of different customers come in no fixed order."""

    def __init__(self, ctx: _Context, resume: RedemptionReviews | None) -> None:
        self.ctx = ctx
        self.reviews = resume if resume is not None else RedemptionReviews()

    def on_item(self, value: ReviewItem) -> tuple[list[RedemptionInsight], bool]:
        if self.ctx.replay:
            self.reviews.hold(value)
            return [], StatefulLogic.RETAIN
        return self.reviews.add(value, self.ctx.rules.current()), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[RedemptionInsight], bool]:
        return self.reviews.finish(self.ctx.rules.current()), StatefulLogic.RETAIN

    def snapshot(self) -> RedemptionReviews:
        return copy.deepcopy(self.reviews)


#: the region's engine, the clocks of the view partitions
AudienceSnapshot = tuple[AudienceTriggers, ClockMarks]


class AudienceLogic(StatefulLogic[Any, Offer, AudienceSnapshot]):
    """One region's audience (``AudienceTriggers``). Live, a clearance signal turns into
    offers once the region's views have caught up with its event time; in a replay, at the
    end of the input, when every view is known."""

    def __init__(self, ctx: _Context, resume: AudienceSnapshot | None) -> None:
        self.ctx = ctx
        self.triggers = AudienceTriggers()
        if resume is not None:
            self.triggers, marks = resume
            ctx.restore(VIEWS, marks)

    def _release(self) -> list[Offer]:
        if self.ctx.replay:
            return []
        mark = self.ctx.clock(VIEWS).low_watermark(VIEWS)
        return self.triggers.release(mark, self.ctx.rules.current())

    def on_item(self, value: Any) -> tuple[list[Offer], bool]:
        if isinstance(value, View):
            self.ctx.clock(VIEWS).observe((VIEWS, value.source_partition), value.ts_ms)
            self.triggers.add_view(value, self.ctx.rules.current())
        elif isinstance(value, IdentityNotice):
            audience_notice(self.triggers, value, self.ctx.rules.current())
        else:
            self.triggers.add_signal(value)
        return self._release(), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Offer], bool]:
        return self._release(), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Offer], bool]:
        # The inputs are drained: every view that exists has been seen.
        return self.triggers.finish(self.ctx.rules.current()), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.ctx.replay:
            return None
        pending = self.triggers.next_release()
        return self.ctx.clock(VIEWS).wake_at(VIEWS, pending, group=True)

    def snapshot(self) -> AudienceSnapshot:
        return copy.deepcopy(self.triggers), self.ctx.marks(VIEWS)


def movement_seen(raw: bytes, origin: Origin) -> MovementSeen | None:
    """The location and time of a movement the decoder found valid and skipped."""
    try:
        record = load_object(raw)
        ts_ms = event_time(record, "ts")
    except Invalid:
        return None
    location = record.get("location_id")
    return MovementSeen(location if isinstance(location, str) else None, ts_ms, origin.partition)


def _count_outcome(item: Any) -> None:
    if isinstance(item, CouponSuppressed):
        TRIGGERS_SUPPRESSED.labels(item.rule_id, item.variant, item.reason).inc()
    elif isinstance(item, StockTriggerSuppressed):
        TRIGGERS_SUPPRESSED.labels(item.rule_id, "default", item.reason).inc()
    elif isinstance(item, CouponConversion):
        TRIGGER_CONVERSIONS.labels(item.rule_id, item.variant, item.via).inc()
    elif isinstance(item, CouponRedeemed):
        COUPON_REDEMPTIONS.labels(item.rule_id, item.variant).inc()


def build(
    config: Config,
    *,
    until_idle: bool = False,
    reference: ReferenceData | None = None,
    io: FlowIO | None = None,
    stock_store: StoreFactory[StockReader] | None = None,
    coupon_store: StoreFactory[CouponStore] | None = None,
    handover_store: StoreFactory[HandoverStore] | None = None,
    profile_store: StoreFactory[ProfileStore] | None = None,
    task_store: StoreFactory[TaskStore] | None = None,
    experiment_store: StoreFactory[ExperimentStore] | None = None,
    read_mark_store: StoreFactory[ReadMarkStore] | None = None,
    snapshots: bool = True,
) -> Dataflow:
    """The rule_triggers dataflow; refuses to build on an invalid rules file.

    ``io`` is where it reads and writes: Kafka by default (``until_idle`` replays its inputs
    to their end and stops), ``tests.inprocess.MemoryIO`` in the tests. ``stock_store`` opens
    the stock pool's read side and ``coupon_store`` the codes of coupons sent, once per
    worker thread: Redis by default (``state.stock_store.StockStore``,
    ``state.coupon_store.RedisCouponStore``). ``snapshots=False``: a run without recovery,
    whose keys are never snapshotted (``connectors.operators.keyed_state``)."""
    reference = reference if reference is not None else load_reference(config)
    io = io if io is not None else KafkaIO(config, until_idle=until_idle)
    ctx = _Context(
        config,
        reference,
        until_idle=until_idle,
        stock_store=(
            stock_store
            if stock_store is not None
            else functools.partial(StockStore.from_config, config, reference)
        ),
        coupon_store=(
            coupon_store
            if coupon_store is not None
            else functools.partial(RedisCouponStore.from_config, config)
        ),
        handover_store=(
            handover_store
            if handover_store is not None
            else functools.partial(RedisHandoverStore.from_config, config)
        ),
        read_mark_store=(
            read_mark_store
            if read_mark_store is not None
            else functools.partial(RedisReadMarkStore.from_config, config, RULE_TRIGGERS)
        ),
    )
    open_tasks: StoreFactory[TaskStore] = (
        task_store
        if task_store is not None
        else functools.partial(StockStore.from_config, config, reference)
    )
    open_profiles = (
        profile_store
        if profile_store is not None
        else functools.partial(RedisProfileStore.from_config, config)
    )
    open_experiments = (
        experiment_store
        if experiment_store is not None
        else functools.partial(RedisExperimentStore.from_config, config)
    )

    def decoder(name: str, raw: bytes, origin: Origin) -> Any:
        record = DECODERS[name](raw, origin, reference)
        if name == topics.WMS_MOVEMENTS and isinstance(record, Skipped):
            return movement_seen(raw, origin) or record
        return record

    def usable(batch: Decoded[Any]) -> tuple[list[Any], list[tuple[str, int]]]:
        """Once per Kafka batch: count what the rules skip, find the customers of anonymous
        coupon redemptions (one lookup), note how far the batch read each input, and in a
        replay tell the locations waiting for the receipts this batch read (after its
        records, on their path). Returns the records and, in a replay, the read marks for
        the ``read_marks`` step."""
        kept = []
        anonymous = False
        movements_seen = 0
        for item in batch.records:
            if isinstance(item, MovementSeen):
                movements_seen += 1
                if item.location_id is not None:
                    ctx.receipts.located(item.location_id, item.partition)
                continue
            if isinstance(item, Skipped):
                TRIGGER_INPUTS_SKIPPED.labels(item.reason).inc()
                continue
            if isinstance(item, ExpiryBatch):
                ctx.receipts.located(item.location_id, item.source_partition, item.sku)
            anonymous = anonymous or (isinstance(item, CustomerEvent) and not item.customer_id)
            kept.append(item)
        if movements_seen:
            TRIGGER_INPUTS_SKIPPED.labels("not_perishable_receipt").inc(movements_seen)
        if anonymous:
            kept = claim_redeemers(kept)
        resolved_ms = stock_ms = None
        for item in kept:
            if isinstance(item, CustomerEvent | IdentityNotice):
                if resolved_ms is None or item.ts_ms > resolved_ms:
                    resolved_ms = item.ts_ms
            elif isinstance(item, StockChange) and (stock_ms is None or item.ts_ms > stock_ms):
                stock_ms = item.ts_ms
        ctx.read.note(RESOLVED, resolved_ms)
        ctx.read.note(STOCK, stock_ms)
        if not ctx.replay:
            return kept, []
        kept += receipts_read_marks(batch)
        latest = ((RESOLVED, resolved_ms), (STOCK, stock_ms))
        return kept, [(group, ms) for group, ms in latest if ms is not None]

    def receipts_read_marks(batch: Decoded[Any]) -> list[ReceiptsRead]:
        marks = []
        for report in batch.reports:
            if report.topic != topics.WMS_MOVEMENTS:
                continue
            if report.at_end:  # a replay's partition ends once: everything has been read
                read_ms = END_OF_INPUT
            elif report.latest_ms is not None:
                read_ms = report.latest_ms - ctx.grace_ms
            else:
                continue
            due = ctx.receipts.due(report.partition, read_ms, at_end=report.at_end)
            marks += [ReceiptsRead(sku, location, read_ms) for sku, location in due]
        return marks

    def claim_redeemers(batch: list[Any]) -> list[Any]:
        """Receipts that redeemed a coupon without a loyalty card belong to the coupon's
        customer; without a known code they have no customer and are skipped."""
        events = [x for x in batch if isinstance(x, CustomerEvent)]
        owners = ctx.coupons().owners(redeemed_codes(events))
        out = []
        for item in batch:
            if isinstance(item, CustomerEvent) and not item.customer_id:
                claimed = claim_redemption(item, owners)
                if claimed is None:
                    TRIGGER_INPUTS_SKIPPED.labels("no_customer").inc()
                    continue
                item = claimed
            out.append(item)
        return out

    flow = Dataflow(RULE_TRIGGERS)
    batches = decode(
        "decode", read("inputs", flow, io, INPUTS), config, RULE_TRIGGERS, INPUTS, decoder
    )
    usable_batches = op.map("usable_inputs", batches, usable)
    inputs = op.flat_map("usable_records", usable_batches, lambda pair: pair[0])
    # A replay's read marks of the whole flow (the module docstring); its end comes before
    # that of the steps merging its (empty) output into their input.
    read_marks = keyed_state(
        "read_marks",
        op.key_on(
            "key_read_marks",
            op.flat_map("batch_read_marks", usable_batches, lambda pair: pair[1]),
            lambda mark: mark[0],
        ),
        lambda resume: ReadMarkLogic(ctx, resume),
        snapshots=snapshots,
    )
    split = op.branch(
        "customer_or_stock", inputs, lambda x: isinstance(x, CustomerEvent | IdentityNotice)
    )
    customer_events = split.trues
    stock_events = split.falses

    # Stock side: per sku × location.
    sku_out = keyed_state(
        "skus",
        op.merge(
            "sku_inputs",
            op.key_on("key_by_sku_location", stock_events, location_key),
            read_marks,
        ),
        lambda resume: LocationLogic(ctx, resume),
        snapshots=snapshots,
    )
    sku_items = op.map("sku_items", sku_out, lambda kv: kv[1])
    signals = op.filter("clearance_signals", sku_items, lambda x: isinstance(x, ClearanceSignal))

    # Audience: per region.
    regions = sorted(audience_regions(reference))

    def audience_items(item: CustomerEvent | IdentityNotice) -> list[tuple[str, Any]]:
        """A product view for its region's audience, a merge or an erasure for every
        region's. One step and one exchange for both, so a region takes a customer's views
        and notices in the order of the customer's partition (a merge is kept at once for a
        customer with views there: ``domain.clearance_rules``)."""
        if isinstance(item, CustomerEvent):
            viewed = view_of(item, regions)
            return [] if viewed is None else [viewed]
        return [(region, item) for region in regions] if reaches_audiences(item) else []

    audience_in = op.merge(
        "audience_inputs",
        op.key_on(
            "key_views", op.flat_map("views", customer_events, audience_items), lambda rv: rv[0]
        ),
        op.key_on(
            "key_signals",
            op.map("signal_values", signals, lambda s: (s.region, s)),
            lambda rs: rs[0],
        ),
    )
    offers = op.map(
        "offer_values",
        keyed_state(
            "audience",
            op.map_value("audience_value", audience_in, lambda pair: pair[1]),
            lambda resume: AudienceLogic(ctx, resume),
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )

    # Customers.
    customer_in = op.merge(
        "customer_inputs",
        op.key_on("key_by_customer", customer_events, lambda e: e.customer_id),
        op.key_on("key_offers", offers, lambda o: o.customer_id),
        read_marks,
    )
    customer_out = stateful_batches(
        "customers", customer_in, lambda resume: CustomerLogic(ctx, resume), snapshots=snapshots
    )
    # Profiles (the batch's latest per customer is written), hand-overs and erasures go to
    # their own sink at once: a profile write follows nearly every event, and sent down the outcome
    # steps each one would pass half a dozen filters that all let it by.
    customer_split = op.branch(
        "customer_records_or_outcomes",
        op.map("customer_items", customer_out, lambda kv: kv[1]),
        lambda x: isinstance(x, ProfileWrite | ProfileRetired | CustomerErased | HandOver),
    )
    customer_records = customer_split.trues
    customer_items = customer_split.falses

    # Campaign preparation: coupons naming a store, per store × sku.
    store_coupons = op.filter(
        "store_coupons",
        customer_items,
        lambda x: isinstance(x, CouponDecision) and campaign_key(x, reference) is not None,
    )
    campaign_items = op.map(
        "campaign_items",
        keyed_state(
            "campaigns",
            op.key_on(
                "key_by_store_sku", store_coupons, lambda d: campaign_key(d, reference) or ""
            ),
            lambda resume: CampaignLogic(ctx, resume),
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )

    # Outputs.
    everything = op.merge("all_outcomes", customer_items, sku_items, campaign_items)
    op.inspect("count_outcomes", everything, lambda _step, item: _count_outcome(item))
    coupons = op.filter("coupons", everything, lambda x: isinstance(x, CouponDecision))
    coupon_split = op.branch("coupon_or_holdout", coupons, lambda d: not d.holdout)

    def coupon_out(decision: CouponDecision) -> OutMessage:
        now_ms = int(time.time() * 1000)
        PROCESSING_LAG.labels(RULE_TRIGGERS).observe(
            max(0.0, (now_ms - decision.sent_at_ms) / 1000)
        )
        return coupon_message(decision, ctx.rules.current(), now_ms)

    output(
        "coupon_triggers",
        io,
        topics.TRIGGERS_COUPON,
        op.map("encode_coupons", coupon_split.trues, coupon_out),
    )

    def open_code_writer() -> tuple[Any, Any]:
        store = ctx.open_coupons()

        def write(batch: list[CouponDecision]) -> None:
            store.remember(remembered_codes(batch, ctx.rules.current()))

        return write, store.close

    op.output("coupon_codes", coupon_split.trues, BatchSink(open_code_writer))

    # Redemption reviews: per coupon rule × variant, the share of each day's coupons that
    # tills redeemed; only while a redemption_review rule is in force.
    review_items = op.filter(
        "review_items",
        everything,
        lambda x: reviewed(x) and bool(ctx.rules.current().of_kind("redemption_review")),
    )
    insights = op.map(
        "insight_items",
        keyed_state(
            "redemption_reviews",
            op.key_on("key_by_rule_variant", review_items, review_key),
            lambda resume: ReviewLogic(ctx, resume),
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )
    output(
        "insight_triggers",
        io,
        topics.TRIGGERS_INSIGHTS,
        op.map("encode_insights", insights, lambda i: insight_message(i, int(time.time() * 1000))),
    )

    # Experiments: each arm's triggers and conversions, for `experiments report`.
    arm_items = op.filter(
        "experiment_items",
        everything,
        lambda x: (
            isinstance(x, ShelfFigures)
            or (
                isinstance(x, CouponDecision | CouponConversion | StockDecision)
                and x.variant != "default"
            )
        ),
    )

    def open_experiment_writer() -> tuple[Any, Any]:
        store = open_experiments()

        def write(
            batch: list[CouponDecision | CouponConversion | ShelfFigures | StockDecision],
        ) -> None:
            sent = [
                (d.rule_id, d.variant, d.code, d.customer_id)
                for d in batch
                if isinstance(d, CouponDecision)
            ]
            converted = [
                (c.rule_id, c.variant, c.code, round(c.revenue * 100))
                for c in batch
                if isinstance(c, CouponConversion)
            ]
            store.record(sent, converted)
            shelves = [x for x in batch if isinstance(x, ShelfFigures)]
            moves = [
                (d.rule_id, d.variant, replenishment_id(d), d.kind, d.suggested_qty)
                for d in batch
                if isinstance(d, StockDecision)
            ]
            if shelves or moves:
                store.record_stock(shelves, moves)

        return write, store.close

    op.output("experiment_arms", arm_items, BatchSink(open_experiment_writer))
    output(
        "holdout_triggers",
        io,
        topics.TRIGGERS_HOLDOUT,
        op.map("encode_holdouts", coupon_split.falses, coupon_out),
    )
    # Profiles (the batch's latest per customer), hand-overs and erasures, in the order the
    # keys made them: one sink, so an erasure is never overtaken by a write of the same id.
    # A hand-over is written here, in the epoch whose snapshot drops the merged key: a
    # crash before that snapshot resumes the key, which hands over again.

    def open_customer_writer() -> tuple[Any, Any]:
        profiles, coupons, handovers = open_profiles(), ctx.open_coupons(), ctx.open_handovers()
        tasks, experiments = open_tasks(), open_experiments()
        stores = sorted(s for s, loc in reference.locations.items() if loc.type == "store")

        def write(batch: list[ProfileWrite | ProfileRetired | CustomerErased | HandOver]) -> None:
            latest: dict[str, dict[str, str]] = {}
            gone: list[str] = []
            erased: list[CustomerErased] = []
            handed: list[tuple[str, str, bytes]] = []
            for record in batch:
                if isinstance(record, ProfileWrite):
                    latest[record.customer_id] = record.fields
                    continue
                if isinstance(record, HandOver):
                    handed.append((record.survivor, record.merged, record.payload))
                    continue
                latest.pop(record.customer_id, None)
                gone.append(record.customer_id)
                if isinstance(record, CustomerErased):
                    erased.append(record)
            # Hand-overs first: an erasure later in the batch removes those of its id (no
            # merge into an erased id follows its erasure: the id is gone for good).
            if handed:
                handovers.put_many(handed)
            if latest:
                for segment, count in profiles.write(latest).items():
                    CUSTOMERS_BY_SEGMENT.labels(segment).set(count)
            if gone:
                profiles.erase(gone)
            if erased:
                coupons.forget([code for e in erased for code in e.codes])
                for e in erased:
                    handovers.erase(e.customer_id)
                ids = [e.customer_id for e in erased]
                experiments.forget(ids)
                removals = visits_of_erased(ids, stores, tasks.tasks)
                if removals:
                    tasks.write([], (), [TaskWrite(*record) for record in removals])

        def close() -> None:
            for store in (profiles, coupons, handovers, tasks, experiments):
                store.close()

        return write, close

    op.output("customer_store", customer_records, BatchSink(open_customer_writer))

    # Store visits: a customer_visit task on store.tasks and in the store's task hash.
    visits = op.filter("visits", customer_items, lambda x: isinstance(x, VisitTask))
    output(
        "visit_tasks",
        io,
        topics.STORE_TASKS,
        op.map("encode_visits", visits, lambda v: visit_message(v, int(time.time() * 1000))),
    )
    retention_ms = int(config.fulfilment.task_retention_hours * 3_600_000)

    def open_visit_writer() -> tuple[Any, Any]:
        store = open_tasks()
        pruned_at: dict[str, float] = {}

        def due(store_id: str) -> bool:
            """A store's old visits are looked for at most every ``VISIT_PRUNE_S``."""
            now = time.monotonic()
            if now - pruned_at.get(store_id, -VISIT_PRUNE_S) < VISIT_PRUNE_S:
                return False
            pruned_at[store_id] = now
            return True

        def write(batch: list[VisitTask]) -> None:
            store.write([], (), [TaskWrite(*record) for record in visit_writes(batch)])
            for store_id, before_ms in visit_prunes(batch, retention_ms, due):
                store.prune_visits(store_id, before_ms)  # by the store's visit index

        return write, store.close

    op.output("visit_store", visits, BatchSink(open_visit_writer))
    replenishments = op.filter("replenishments", everything, lambda x: isinstance(x, StockDecision))
    output(
        "replenishment_triggers",
        io,
        topics.TRIGGERS_REPLENISHMENT,
        op.map(
            "encode_replenishments",
            replenishments,
            lambda d: replenishment_message(d, int(time.time() * 1000)),
        ),
    )
    dead_letters("deadletter", io, RULE_TRIGGERS, rejections("rejections", batches))
    return flow


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.rule_triggers:flow`` builds from the environment."""
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
