"""The stock a backtest's rules look up: ``stock.changes`` folded, as of a lookup's event
time or at the end of the recording — and the same answers the pool in Redis (here its
memory twin, written by the same code) gives once stock_pool has caught up."""

from __future__ import annotations

from base.config import Config
from base.flow_names import RULE_TRIGGERS
from connectors.reference_files import load_reference
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_view import RecordedStock
from state.memory_stock import MemoryStockStore
from state.stock_view import PoolStockView

T0 = 1_795_000_000_000
REFERENCE = load_reference(Config())
SH_STORES = sorted(
    loc.location_id
    for loc in REFERENCE.locations.values()
    if loc.region == "SH" and loc.type == "store"
)
SH_WAREHOUSE = next(
    loc.location_id
    for loc in REFERENCE.locations.values()
    if loc.region == "SH" and loc.type != "store"
)
SKU = next(iter(REFERENCE.products))


def change(location: str, available: int, ts: int, cause: str, partition: int = 0) -> StockChange:
    kind = REFERENCE.locations[location].type
    return StockChange(
        SKU,
        location,
        "SH",
        available,
        3,
        ts,
        cause,
        available + 1,
        kind,
        source_partition=partition,
    )


def test_as_recorded_answers_with_the_latest_change_at_or_before_the_lookup() -> None:
    a, b = SH_STORES[:2]
    stock = RecordedStock(
        [change(a, 5, T0, "a1"), change(b, 9, T0 + 10, "b1"), change(a, 1, T0 + 20, "a2")]
    )
    view = stock.as_recorded()
    assert view.available(SKU, a, T0 - 1) == 0  # nothing recorded yet
    assert view.available(SKU, a, T0 + 19) == 5
    assert view.available(SKU, a, T0 + 20) == 1
    assert view.stores_with_stock("SH", SKU, 2, T0 + 15) == [(b, 9), (a, 5)]
    assert view.stores_with_stock("SH", SKU, 2, T0 + 25) == [(b, 9)]
    assert [p.cause for p in view.region_positions(SKU, "SH", T0 + 15)] == ["a1", "b1"]
    assert view.region_positions(SKU, "HZ", T0 + 15) == []


def test_at_end_answers_with_the_last_change_whatever_the_lookup_time() -> None:
    a = SH_STORES[0]
    stock = RecordedStock([change(a, 5, T0, "a1"), change(a, 1, T0 + 20, "a2")])
    assert stock.at_end().available(SKU, a, T0) == 1
    # Changes of equal event time: the later recorded wins, as in the pool.
    stock.record(change(a, 7, T0 + 20, "a3"))
    assert stock.at_end().available(SKU, a, T0) == 7
    assert stock.as_recorded().available(SKU, a, T0 + 20) == 7


def test_a_change_recorded_out_of_time_order_takes_its_place_in_time() -> None:
    a = SH_STORES[0]
    stock = RecordedStock([change(a, 5, T0 + 20, "late-recorded"), change(a, 2, T0, "early")])
    assert stock.as_recorded().available(SKU, a, T0 + 10) == 2
    assert stock.at_end().available(SKU, a, 0) == 5


def test_the_recorded_pool_at_the_end_answers_as_the_pool_stock_pool_wrote() -> None:
    """``--stock end`` must see what a replay reads from the pool: the same stores in the
    same order, the same positions (no input partition), the same available."""
    changes = [
        change(SH_STORES[0], 12, T0, "s0", partition=3),
        change(SH_STORES[1], 30, T0 + 5, "s1", partition=1),
        change(SH_STORES[2], 12, T0 + 9, "s2", partition=2),
        change(SH_WAREHOUSE, 400, T0 + 9, "w", partition=0),
        change(SH_STORES[1], 1, T0 + 30, "s1b", partition=1),
    ]
    pool = MemoryStockStore(REFERENCE)
    pool.write(
        [
            StockPosition(
                c.sku, c.location_id, c.on_hand, c.on_hand - c.available, c.available, 0,
                c.sold_24h, None, c.ts_ms, c.cause, f"{c.cause}#0",
            )
            for c in changes
        ]
    )  # fmt: skip
    redis_like = PoolStockView(pool, RULE_TRIGGERS)
    recorded = RecordedStock(changes).at_end()
    for minimum in (1, 12, 13):
        assert recorded.stores_with_stock("SH", SKU, minimum, 0) == redis_like.stores_with_stock(
            "SH", SKU, minimum, 0
        )
    assert recorded.region_positions(SKU, "SH", 0) == redis_like.region_positions(SKU, "SH", 0)
    for location in [*SH_STORES, SH_WAREHOUSE]:
        assert recorded.available(SKU, location, 0) == redis_like.available(SKU, location, 0)


def _position(location: str, available: int, ts: int) -> StockPosition:
    return StockPosition(
        SKU, location, available, 0, available, 0, 0, None, ts, "receipt", f"r{ts}#0"
    )


def test_a_live_view_reuses_an_answer_for_max_age_then_reads_the_pool_again() -> None:
    """Written stock shows after at most ``max_age_s``; every question keeps its own answer
    (the other questions of the same moment are not served a wrong one)."""
    now = [100.0]
    pool = MemoryStockStore(REFERENCE)
    pool.write([_position(SH_WAREHOUSE, 5, T0)])
    view = PoolStockView(pool, RULE_TRIGGERS, max_age_s=0.1, clock=lambda: now[0])
    fresh = PoolStockView(pool, RULE_TRIGGERS)
    assert view.available(SKU, SH_WAREHOUSE, 0) == 5
    assert view.available(SKU, SH_STORES[0], 0) == 0
    pool.write([_position(SH_WAREHOUSE, 0, T0 + 1), _position(SH_STORES[0], 7, T0 + 1)])
    now[0] += 0.05
    assert view.available(SKU, SH_WAREHOUSE, 0) == 5  # within max_age: the earlier answer
    assert view.available(SKU, SH_STORES[1], 0) == 0  # a new question is asked
    assert view.stores_with_stock("SH", SKU, 1, 0) == fresh.stores_with_stock("SH", SKU, 1, 0)
    now[0] += 0.06
    assert view.available(SKU, SH_WAREHOUSE, 0) == 0
    assert view.available(SKU, SH_STORES[0], 0) == 7
    assert view.region_positions(SKU, "SH", 0) == fresh.region_positions(SKU, "SH", 0)


def test_without_max_age_every_question_reads_the_pool() -> None:
    pool = MemoryStockStore(REFERENCE)
    pool.write([_position(SH_WAREHOUSE, 5, T0)])
    view = PoolStockView(pool, RULE_TRIGGERS)
    assert view.available(SKU, SH_WAREHOUSE, 0) == 5
    pool.write([_position(SH_WAREHOUSE, 2, T0 + 1)])
    assert view.available(SKU, SH_WAREHOUSE, 0) == 2
