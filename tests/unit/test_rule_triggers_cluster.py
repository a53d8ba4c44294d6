"""rule_triggers replayed as a cluster of processes: the end of the replay is what the whole
flow read, not what the key's own process read. Two ``_Context`` objects stand for two
processes (they share nothing but the stores, as processes share Redis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from base.config import Config
from connectors.reference_files import load_reference
from domain.customer_rules import CouponDecision, CustomerEvent
from domain.stock import StockPosition
from domain.trigger_replay import RESOLVED
from flows.rule_triggers import CustomerLogic, ReadMarkLogic, _Context
from state.coupon_store import MemoryCouponStore
from state.handover_store import MemoryHandoverStore
from state.memory_stock import MemoryStockStore
from state.read_marks import MemoryReadMarkStore, ReadMarkStore
from tests.unit.test_rule_triggers_resume import in_new_process

CONFIG = Config()
REFERENCE = load_reference(CONFIG)
NOON = int(datetime(2026, 11, 18, 12, tzinfo=timezone(timedelta(hours=8))).timestamp() * 1000)
HOUR = 3_600_000
SKU = next(iter(REFERENCE.products))


def process(read_marks: ReadMarkStore | None) -> _Context:
    """What one process of a replay shares between its steps (an empty pool but for stock
    of every sku at the central warehouse, so coupons pass the no_stock guard)."""
    stock = MemoryStockStore(REFERENCE)
    stock.write(
        [
            StockPosition(sku, "WH-SH-01", 100, 0, 100, 0, 0, None, 0, "seed", "seed#0")
            for sku in REFERENCE.products
        ]
    )
    coupons, handovers = MemoryCouponStore(), MemoryHandoverStore()
    return _Context(
        CONFIG,
        REFERENCE,
        until_idle=True,
        stock_store=lambda: stock,
        coupon_store=lambda: coupons,
        handover_store=lambda: handovers,
        read_mark_store=None if read_marks is None else (lambda: read_marks),
    )


def event(customer: str, event_type: str, ts_ms: int, sku: str | None = None) -> CustomerEvent:
    return CustomerEvent(
        event_id=f"{customer}-{event_type}-{ts_ms}",
        event_type=event_type,
        ts_ms=ts_ms,
        customer_id=customer,
        sku=sku,
        source_partition=1,
    )


def carts_at_the_end(read_marks: ReadMarkStore | None) -> list[Any]:
    """Customer A carts on process 1; process 2 reads an event two hours later (its
    ``read_marks`` key is there too); then the end of the input, A's key last, as Bytewax
    orders it (downstream of ``read_marks``)."""
    one, two = process(read_marks), process(read_marks)
    a = CustomerLogic(one, None)
    in_new_process(lambda: a.on_item(event("cust-a", "add_to_cart", NOON, SKU)))

    def process_two() -> None:
        two.read.note(RESOLVED, NOON + 2 * HOUR)  # its decoding step
        CustomerLogic(two, None).on_item(event("cust-b", "page_view", NOON + 2 * HOUR))
        marks = ReadMarkLogic(two, None)
        marks.on_item((RESOLVED, NOON + 2 * HOUR))
        marks.on_eof()

    in_new_process(process_two)
    out, _ = in_new_process(a.on_eof)
    return [o for o in out if isinstance(o, CouponDecision)]


def test_a_cart_fires_at_the_end_when_another_process_read_the_end() -> None:
    fired = carts_at_the_end(MemoryReadMarkStore())
    assert [d.evidence for d in fired] == [(f"cust-a-add_to_cart-{NOON}",)]


def test_without_the_flow_wide_marks_the_cart_was_lost() -> None:
    """What each process alone knows (the flow before the ``read_marks`` step)."""
    assert carts_at_the_end(None) == []


def test_the_read_marks_resume_from_their_snapshot() -> None:
    store = MemoryReadMarkStore()
    marks = ReadMarkLogic(process(store), None)
    marks.on_item((RESOLVED, NOON))
    marks.on_item((RESOLVED, NOON - HOUR))  # out of order: the latest stays
    resumed = ReadMarkLogic(process(store), marks.snapshot())
    resumed.on_eof()
    assert store.get() == {RESOLVED: NOON}


def test_a_live_flow_stores_no_marks() -> None:
    store = MemoryReadMarkStore()
    ctx = process(store)
    ctx.replay = False  # as built without --until-idle (without its rules-file watcher)
    marks = ReadMarkLogic(ctx, None)
    marks.on_item((RESOLVED, NOON))
    marks.on_eof()
    assert store.get() == {}
