"""The stock pool store's contract, one suite over both backends: the in-memory one (fast
tier) and Redis on the session's embedded stack (marked ``integration``).

What stock_pool writes and rule_triggers and ``omnistream stock`` read back
(``state.interfaces.StockPoolStore``), checked against figures written out by hand here:
the CONTRACT §5 hash of a position, field by field and as text; values are absolute (a
later write replaces, a batch keeps only its last position per key, ``days_of_cover``
disappears when nothing sold); the sku's network and region totals; the stores of a region
that can serve a quantity, most first; a region's positions as the stock rules read them;
what a second handle (another worker, the CLI after the flow) sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from domain.reference import Location, Product, ReferenceData
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_totals import Figures, SkuTotals
from state.interfaces import StockPoolStore, TaskWrite
from state.memory_stock import MemoryStockStore
from state.redis_io import connect
from state.stock_store import StockStore
from tests.store_backends import BACKENDS, handles

T0 = 1_793_500_000_000
FLOW = "contract"
#: Region North: a warehouse and three stores; region South: one store and a forward DC.
REFERENCE = ReferenceData(
    locations={
        loc.location_id: loc
        for loc in (
            Location("WH-N", "warehouse", "N"),
            Location("ST-N1", "store", "N"),
            Location("ST-N2", "store", "N"),
            Location("ST-N3", "store", "N"),
            Location("ST-S1", "store", "S"),
            Location("FW-S", "forward_warehouse", "S"),
        )
    },
    products={
        p.sku: p
        for p in (
            Product("SKU-A", "grocery", 2.5, 5, 2, None),
            Product("SKU-B", "grocery", 4.0, 3, 2, None),
        )
    },
)

#: Opens another handle on the same pool (a second worker, a reader after the flow).
Reopen = Callable[[], StockPoolStore]


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> Iterator[Reopen]:
    yield from handles(
        request,
        lambda: MemoryStockStore(REFERENCE),
        lambda config: StockStore(connect(config), config.redis.key_prefix, REFERENCE),
    )


def position(
    location_id: str,
    on_hand: int,
    reserved: int = 0,
    *,
    sku: str = "SKU-A",
    sold_24h: int = 0,
    sold_1h: int = 0,
    ts: int = T0,
    cause: str = "e1",
    safety_stock: int = 0,
    in_transit: int = 0,
) -> StockPosition:
    available = on_hand - reserved
    cover = round(available / sold_24h, 3) if sold_24h else None
    return StockPosition(
        sku, location_id, on_hand, reserved, available, sold_1h, sold_24h, cover, ts, cause,
        f"{cause}#0", safety_stock, in_transit,
    )  # fmt: skip


def rfc3339(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def test_a_position_is_stored_as_the_contract_hash(stores: Reopen) -> None:
    store = stores()
    written = position("ST-N1", 12, 2, sold_24h=4, sold_1h=1, ts=T0 + 250, safety_stock=3)
    written.in_transit = 5
    assert store.write([written]) == 1
    rows, total, regions = stores().read_sku("SKU-A")
    assert rows == [
        {
            "location_id": "ST-N1",
            "on_hand": "12",
            "reserved": "2",
            "available": "10",
            "safety_stock": "3",
            "in_transit": "5",
            "available_to_sell": "7",
            "sold_1h": "1",
            "sold_24h": "4",
            "days_of_cover": "2.5",
            "updated_at": rfc3339(T0 + 250),
            "updated_at_ms": str(T0 + 250),
            "region": "N",
            "location_type": "store",
            "cause": "e1",
        }
    ]
    assert rfc3339(T0 + 250).endswith(".250Z")
    assert (total, regions) == ({}, {})  # no totals were written


def test_available_to_sell_holds_back_the_safety_stock_and_never_goes_negative(
    stores: Reopen,
) -> None:
    store = stores()
    store.write([position("ST-N1", 4, 3, safety_stock=2), position("ST-N2", 9, safety_stock=2)])
    rows = {row["location_id"]: row for row in stores().read_sku("SKU-A")[0]}
    assert (rows["ST-N1"]["available"], rows["ST-N1"]["available_to_sell"]) == ("1", "0")
    assert rows["ST-N2"]["available_to_sell"] == "7"
    # what the rules read is what may be sold
    assert stores().available("SKU-A", "ST-N2", "test") == 7
    assert stores().stores_with_stock("N", "SKU-A", 1, "test") == [("ST-N2", 7)]


def test_store_tasks_are_set_replaced_and_removed_per_store(stores: Reopen) -> None:
    store = stores()
    store.write(
        [],
        tasks=[
            TaskWrite("ST-N1", "pickup:o1", b'{"status":"open"}'),
            TaskWrite("ST-N1", "pickup:o2", b'{"status":"open"}'),
            TaskWrite("ST-N2", "pickup:o3", b'{"status":"open"}'),
            TaskWrite("ST-N1", "pickup:o1", b'{"status":"done"}'),  # the latest wins
        ],
    )
    assert stores().tasks("ST-N1") == {
        "pickup:o1": '{"status":"done"}',
        "pickup:o2": '{"status":"open"}',
    }
    store.write([], tasks=[TaskWrite("ST-N1", "pickup:o2", None)])
    assert stores().tasks("ST-N1") == {"pickup:o1": '{"status":"done"}'}
    assert stores().tasks("ST-N2") == {"pickup:o3": '{"status":"open"}'}
    assert stores().tasks("ST-S1") == {}


def test_visits_are_pruned_by_their_index_and_other_tasks_stay(stores: Reopen) -> None:
    """rule_triggers' visits in a store's task hash: ``prune_visits`` removes those indexed
    before a time (and only visits: stock_pool's pickups are not indexed); a visit rewritten
    later is indexed by its new time; a visit removed leaves the index too."""
    store = stores()
    store.write(
        [],
        tasks=[
            TaskWrite("ST-N1", "visit-old", b'{"v":1}', T0),
            TaskWrite("ST-N1", "visit-again", b'{"v":1}', T0),
            TaskWrite("ST-N1", "visit-new", b'{"v":1}', T0 + 10),
            TaskWrite("ST-N1", "pickup:o1", b'{"status":"open"}'),
            TaskWrite("ST-N2", "visit-elsewhere", b'{"v":1}', T0),
            TaskWrite("ST-N1", "visit-again", b'{"v":2}', T0 + 20),  # the latest wins
        ],
    )
    assert stores().prune_visits("ST-N1", T0 + 10) == 1  # strictly before
    assert stores().tasks("ST-N1") == {
        "visit-again": '{"v":2}',
        "visit-new": '{"v":1}',
        "pickup:o1": '{"status":"open"}',
    }
    assert stores().tasks("ST-N2") == {"visit-elsewhere": '{"v":1}'}
    store.write([], tasks=[TaskWrite("ST-N1", "visit-new", None, 0)])  # as an erasure does
    store.write([], tasks=[TaskWrite("ST-N1", "visit-new", b'{"v":1}')])  # not a visit now
    assert stores().prune_visits("ST-N1", T0 + 1_000) == 1
    assert stores().tasks("ST-N1") == {"visit-new": '{"v":1}', "pickup:o1": '{"status":"open"}'}
    assert stores().prune_visits("ST-N1", T0 + 1_000) == 0
    assert stores().prune_visits("ST-S1", T0) == 0  # a store without visits


def test_values_are_absolute_and_a_batch_keeps_its_last_position_per_key(stores: Reopen) -> None:
    store = stores()
    written = store.write(
        [
            position("ST-N1", 12, sold_24h=4, cause="e1"),
            position("ST-N2", 3, cause="e2"),
            position("ST-N1", 9, 1, sold_24h=0, ts=T0 + 5, cause="e3"),  # supersedes e1
        ]
    )
    assert written == 2
    store.write([position("ST-N2", 7, cause="e4")])  # a later batch replaces …
    store.write([position("ST-N2", 7, cause="e4")])  # … and a replay writes the same again
    rows = {row["location_id"]: row for row in stores().read_sku("SKU-A")[0]}
    assert set(rows) == {"ST-N1", "ST-N2"}
    assert (rows["ST-N1"]["on_hand"], rows["ST-N1"]["available"]) == ("9", "8")
    assert rows["ST-N1"]["cause"] == "e3"
    assert "days_of_cover" not in rows["ST-N1"]  # nothing sold any more: no cover
    assert (rows["ST-N2"]["on_hand"], rows["ST-N2"]["cause"]) == ("7", "e4")


def test_days_of_cover_goes_when_sales_stop_and_comes_back(stores: Reopen) -> None:
    store = stores()
    store.write([position("WH-N", 30, sold_24h=8)])
    assert store.read_sku("SKU-A")[0][0]["days_of_cover"] == "3.75"
    store.write([position("WH-N", 30)])
    assert "days_of_cover" not in store.read_sku("SKU-A")[0][0]
    store.write([position("WH-N", 10, sold_24h=3)])
    assert store.read_sku("SKU-A")[0][0]["days_of_cover"] == "3.333"


def test_network_and_region_totals_are_stored_beside_the_positions(stores: Reopen) -> None:
    north = Figures(on_hand=15, reserved=2, available=13, sold_1h=1, sold_24h=5, locations=2)
    south = Figures(on_hand=4, reserved=0, available=4, sold_1h=0, sold_24h=0, locations=1)
    network = Figures(
        on_hand=19,
        reserved=2,
        available=17,
        sold_1h=1,
        sold_24h=5,
        locations=3,
        available_to_sell=15,
        in_transit=6,
    )
    store = stores()
    store.write(
        [position("ST-N1", 10, 2), position("WH-N", 5), position("ST-S1", 4)],
        [SkuTotals("SKU-A", network, {"N": north, "S": south}, T0 + 9)],
    )
    _, total, regions = stores().read_sku("SKU-A")
    assert total == {
        "on_hand": "19",
        "reserved": "2",
        "available": "17",
        "available_to_sell": "15",
        "in_transit": "6",
        "sold_1h": "1",
        "sold_24h": "5",
        "locations": "3",
        "days_of_cover": "3.4",
        "updated_at": rfc3339(T0 + 9),
        "updated_at_ms": str(T0 + 9),
    }
    assert set(regions) == {"N", "S"}
    assert (regions["N"]["available"], regions["N"]["days_of_cover"]) == ("13", "2.6")
    assert (regions["S"]["locations"], "days_of_cover" in regions["S"]) == ("1", False)
    # Totals too are replaced, not added to; the last of a batch wins.
    fewer = Figures(on_hand=1, available=1, locations=1)
    store.write(
        [], [SkuTotals("SKU-A", network, {}, T0 + 10), SkuTotals("SKU-A", fewer, {}, T0 + 11)]
    )
    _, total, regions = stores().read_sku("SKU-A")
    assert (total["on_hand"], total["locations"], total["updated_at_ms"]) == (
        "1",
        "1",
        str(T0 + 11),
    )
    assert "days_of_cover" not in total
    assert regions["N"]["available"] == "13"  # a region not in the new totals stays


def test_stores_with_stock_are_the_regions_stores_holding_enough_most_first(
    stores: Reopen,
) -> None:
    store = stores()
    store.write(
        [
            position("ST-N1", 4),
            position("ST-N2", 9, 2),  # 7 available
            position("ST-N3", 7),  # 7 available: a tie, broken by store id
            position("WH-N", 500),  # a warehouse is not a store
            position("ST-S1", 50),  # another region
            position("ST-N1", 3, sku="SKU-B"),  # another sku
        ]
    )
    reader = stores()
    assert reader.stores_with_stock("N", "SKU-A", 4, FLOW) == [
        ("ST-N2", 7),
        ("ST-N3", 7),
        ("ST-N1", 4),
    ]
    assert reader.stores_with_stock("N", "SKU-A", 5, FLOW) == [("ST-N2", 7), ("ST-N3", 7)]
    assert reader.stores_with_stock("N", "SKU-A", 8, FLOW) == []
    assert reader.stores_with_stock("N", "SKU-B", 1, FLOW) == [("ST-N1", 3)]
    assert reader.stores_with_stock("S", "SKU-A", 1, FLOW) == [("ST-S1", 50)]
    assert reader.stores_with_stock("nowhere", "SKU-A", 1, FLOW) == []


def test_an_oversold_store_has_nothing_to_sell(stores: Reopen) -> None:
    """The rules read available-to-sell (CONTRACT §9): an oversold store (available −3) has
    0 to sell, like an empty one, and neither is offered for a unit."""
    store = stores()
    store.write([position("ST-N1", 2, 5), position("ST-N2", 0), position("ST-N3", 1)])
    assert store.stores_with_stock("N", "SKU-A", 1, FLOW) == [("ST-N3", 1)]
    assert store.available("SKU-A", "ST-N1", FLOW) == 0


def test_region_positions_are_what_the_stock_rules_read(stores: Reopen) -> None:
    store = stores()
    store.write(
        [
            position("WH-N", 40, 5, sold_24h=6, ts=T0 + 1, cause="w1"),
            position("ST-N2", 3, sold_24h=2, ts=T0 + 2, cause="s1"),
            position("ST-S1", 8, cause="x"),
        ]
    )
    assert stores().region_positions("SKU-A", "N", FLOW) == [
        StockChange("SKU-A", "ST-N2", "N", 3, 2, T0 + 2, "s1", on_hand=3, location_type="store"),
        StockChange(
            "SKU-A", "WH-N", "N", 35, 6, T0 + 1, "w1", on_hand=40, location_type="warehouse"
        ),
    ]
    assert stores().region_positions("SKU-B", "N", FLOW) == []


def test_available_is_zero_where_nothing_was_recorded(stores: Reopen) -> None:
    store = stores()
    store.write([position("ST-S1", 6, 1)])
    assert store.available("SKU-A", "ST-S1", FLOW) == 5
    assert store.available("SKU-A", "ST-N1", FLOW) == 0
    assert store.available("SKU-B", "ST-S1", FLOW) == 0
    assert store.read_sku("SKU-B") == ([], {}, {})


def test_random_batches_from_two_writers_end_with_each_keys_last_position(
    stores: Reopen,
) -> None:
    """Two workers write disjoint keys (a key belongs to one stock shard) in interleaved
    batches; a reader sees each key's last position and ranks the stores from them."""
    rnd = random.Random(5)
    writers = (stores(), stores())
    keys = [(sku, loc) for sku in REFERENCE.products for loc in REFERENCE.locations]
    last: dict[tuple[str, str], StockPosition] = {}
    for n in range(60):
        batch = []
        owned = [k for i, k in enumerate(keys) if i % 2 == n % 2]
        for _ in range(rnd.randint(0, 6)):
            sku, loc = rnd.choice(owned)
            p = position(loc, rnd.randint(-3, 40), rnd.randint(0, 5), sku=sku,
                         sold_24h=rnd.choice((0, 0, 3, 7)), ts=T0 + n, cause=f"e{n}")  # fmt: skip
            batch.append(p)
            last[(sku, loc)] = p
        writers[n % 2].write(batch)
    reader = stores()
    for (sku, loc), p in last.items():
        assert reader.available(sku, loc, FLOW) == max(0, p.available - p.safety_stock)
    for sku in REFERENCE.products:
        rows = reader.read_sku(sku)[0]
        assert [row["location_id"] for row in rows] == sorted(loc for s, loc in last if s == sku)
        for row in rows:
            p = last[(sku, row["location_id"])]
            assert (int(row["on_hand"]), int(row["reserved"])) == (p.on_hand, p.reserved)
            assert ("days_of_cover" in row) == (p.sold_24h > 0)
        for region in ("N", "S"):
            held = [
                (loc, p.available)
                for (s, loc), p in last.items()
                if s == sku and REFERENCE.locations[loc].region == region
                and REFERENCE.locations[loc].type == "store" and p.available >= 2
            ]  # fmt: skip
            held.sort(key=lambda item: (-item[1], item[0]))
            assert reader.stores_with_stock(region, sku, 2, FLOW) == held
