"""rule_triggers' stateful steps resumed from their snapshots, as after a SIGKILL (issue 14).

A resumed process starts with fresh event clocks: whatever a replay leaves for the end of the
input (timers due by the end of what was read, the offers customers take at the end, the
coupons counted for campaign_prep) must come back from the snapshots, or it is lost when the
partitions have nothing left to read after the resume. Each "process" below runs in a
thread of its own, so it gets clocks of its own, as a new process (or another worker) would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from base.config import Config
from connectors.reference_files import load_reference
from domain.customer_rules import CouponDecision, CustomerEvent, Offer
from domain.stock import StockPosition
from domain.stock_rules import StockChange, StockDecision
from domain.trigger_replay import RESOLVED, STOCK
from flows.rule_triggers import CampaignLogic, CustomerLogic, LocationLogic, _Context
from state.coupon_store import MemoryCouponStore
from state.handover_store import MemoryHandoverStore
from state.memory_stock import MemoryStockStore

CONFIG = Config()
REFERENCE = load_reference(CONFIG)
CST = timezone(timedelta(hours=8))
NOON = int(datetime(2026, 11, 18, 12, tzinfo=CST).timestamp() * 1000)  # no quiet hours
HOUR = 3_600_000
T = TypeVar("T")


def in_new_process(work: Callable[[], T]) -> T:
    """Run ``work`` in a thread of its own: fresh thread-local clocks, like a new process."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def replay_context() -> _Context:
    """What ``build(..., until_idle=True)`` shares between its steps; an empty stock pool."""
    stock, coupons = MemoryStockStore(REFERENCE), MemoryCouponStore()
    # Every sku in stock at the central warehouse, so coupons pass the no_stock guard.
    stock.write(
        [
            StockPosition(sku, "WH-SH-01", 100, 0, 100, 0, 0, None, 0, "seed", "seed#0")
            for sku in REFERENCE.products
        ]
    )
    handovers = MemoryHandoverStore()
    return _Context(
        CONFIG,
        REFERENCE,
        until_idle=True,
        stock_store=lambda: stock,
        coupon_store=lambda: coupons,
        handover_store=lambda: handovers,
    )


def event(customer: str, event_type: str, ts_ms: int, sku: str | None = None) -> CustomerEvent:
    return CustomerEvent(
        event_id=f"{customer}-{event_type}-{ts_ms}",
        event_type=event_type,
        ts_ms=ts_ms,
        customer_id=customer,
        sku=sku,
        source_partition=2,
    )


def carts(outputs: list[Any]) -> list[CouponDecision]:
    return [o for o in outputs if isinstance(o, CouponDecision)]


def test_a_cart_left_for_the_end_still_fires_when_its_partition_has_nothing_left() -> None:
    """A carts, B's later event moves the partition's clock past A's deadline; the run is
    killed after both were snapshotted, so after the resume nothing of that partition is read
    again. At the end A's cart must fire as in the uninterrupted run (before the fix the
    resumed clock had never seen the partition and the coupon was silently lost)."""
    sku = next(iter(REFERENCE.products))

    def first_run() -> tuple[Any, Any, list[Any]]:
        """Snapshots as of a kill after both events were read, then the end of the input
        as an uninterrupted run reaches it."""
        ctx = replay_context()
        a, b = CustomerLogic(ctx, None), CustomerLogic(ctx, None)
        a.on_item(event("cust-a", "add_to_cart", NOON, sku))
        b.on_item(event("cust-b", "page_view", NOON + 2 * HOUR))
        snapshots = a.snapshot(), b.snapshot()
        uninterrupted, _ = a.on_eof()
        return *snapshots, uninterrupted

    snap_a, snap_b, uninterrupted = in_new_process(first_run)
    assert [d.evidence for d in carts(uninterrupted)] == [(f"cust-a-add_to_cart-{NOON}",)]

    def resumed() -> list[Any]:
        ctx = replay_context()
        # Bytewax builds every snapshotted key on resume, then calls on_eof on each.
        a, _b = CustomerLogic(ctx, snap_a), CustomerLogic(ctx, snap_b)
        out, _ = a.on_eof()
        return out

    assert carts(in_new_process(resumed)) == carts(uninterrupted)


def test_a_cart_left_for_the_end_fires_whichever_worker_read_the_end() -> None:
    """Several workers: the customer's key is on one, the event that moves the input past
    its deadline was read by another and went to a key there. The end of the replay is what
    any worker read (before, each worker's own clock decided, and the coupon fired or not
    depending on where the keys landed)."""
    sku = next(iter(REFERENCE.products))
    ctx = replay_context()
    a = CustomerLogic(ctx, None)
    in_new_process(lambda: a.on_item(event("cust-a", "add_to_cart", NOON, sku)))  # worker 1

    def worker_two() -> None:
        ctx.read.note(RESOLVED, NOON + 2 * HOUR)  # the decoding step, as it reads the batch
        CustomerLogic(ctx, None).on_item(event("cust-b", "page_view", NOON + 2 * HOUR))

    in_new_process(worker_two)
    out, _ = in_new_process(a.on_eof)  # worker 1's clock never saw NOON + 2 h
    assert [d.evidence for d in carts(out)] == [(f"cust-a-add_to_cart-{NOON}",)]


def test_offers_held_for_the_end_survive_a_resume() -> None:
    """A replay gives customers their clearance offers at the end, in event-time order; an
    offer taken in before the last snapshot must still be given after a resume."""
    sku = next(iter(REFERENCE.products))
    rule = next(r for r in replay_context().rules.current().rules if r.kind == "overstock")
    offer = Offer(rule.rule_id, "cust-a", sku, None, "overstock", ("sig",), NOON)

    def first_run() -> tuple[Any, list[Any]]:
        logic = CustomerLogic(replay_context(), None)
        logic.on_item(event("cust-a", "page_view", NOON - HOUR))
        logic.on_item(offer)
        return logic.snapshot(), logic.on_eof()[0]

    snapshot, uninterrupted = in_new_process(first_run)
    assert [d.rule_id for d in carts(uninterrupted)] == [rule.rule_id]
    resumed = in_new_process(lambda: CustomerLogic(replay_context(), snapshot).on_eof()[0])
    assert carts(resumed) == carts(uninterrupted)


def test_stock_clock_marks_come_back_with_any_location() -> None:
    sku = next(iter(REFERENCE.products))
    location = next(iter(REFERENCE.locations.values()))

    def first_run() -> Any:
        ctx = replay_context()
        logic = LocationLogic(ctx, None)
        change = StockChange(
            sku, location.location_id, location.region, 50, 1, NOON, "cause-1", 50,
            location.type, source_partition=3,
        )  # fmt: skip
        logic.on_item(change)
        return logic.snapshot()

    snapshot = in_new_process(first_run)

    def resumed() -> int | None:
        ctx = replay_context()
        LocationLogic(ctx, snapshot)
        return ctx.end_of_input(STOCK)

    assert in_new_process(resumed) == NOON


def decision(n: int, store_id: str, sku: str) -> CouponDecision:
    return CouponDecision(
        rule_id="cart-abandonment",
        customer_id=f"cust-{n}",
        variant="amount_15",
        sku=sku,
        store_id=store_id,
        reason="test",
        evidence=(f"ev-{n}",),
        event_time_ms=NOON + n * 1000,
    )


def test_coupons_held_for_campaign_prep_survive_a_resume() -> None:
    """A replay counts campaign coupons at the end: the ones read before the snapshot must
    come back with it (they were dropped, so a resumed run missed its campaign_prep trigger
    or published one with other evidence: a new id)."""
    store = next(loc for loc in REFERENCE.locations.values() if loc.type == "store")
    sku = next(iter(REFERENCE.products))
    coupons = [decision(n, store.location_id, sku) for n in range(60)]

    def run(resume: Any, items: list[CouponDecision], finish: bool) -> tuple[Any, list[Any]]:
        logic = CampaignLogic(replay_context(), resume)  # nothing in stock anywhere
        for item in items:
            logic.on_item(item)
        out = logic.on_eof()[0] if finish else []
        return logic.snapshot(), out

    _, uninterrupted = in_new_process(lambda: run(None, coupons, True))
    prepared = [o for o in uninterrupted if isinstance(o, StockDecision)]
    assert [p.kind for p in prepared] == ["prepare"]
    snapshot, _ = in_new_process(lambda: run(None, coupons[:40], False))
    _, resumed = in_new_process(lambda: run(snapshot, coupons[40:], True))
    assert resumed == uninterrupted
