"""stock_pool run in-process (``tests/inprocess.MemoryIO`` and ``MemoryStockStore``): the
real dataflow on generated traffic, malformed messages included, on 1 worker and on 2. No
broker, no Redis.

Checked against the independent folds of ``tests/stock_fold.py`` (CONTRACT §2 read
literally, without the domain code): every stored position; every position each sku ×
location published on ``stock.changes``, in event-time order (the 1-worker run reads one
topic after the other, the 2-worker run each partition on its own, in an interleaving
Bytewax picks: either way a shard applies in event-time order); the sku totals the store
keeps; and exactly the malformed messages, where they were read, on ``deadletter``.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import pytest

from base.config import Config
from connectors.generator import GeneratedEvent, TrafficModel
from connectors.reference_files import load_reference
from flows.stock_pool import build
from state.memory_stock import MemoryStockStore
from tests.inprocess import MemoryIO, run
from tests.stock_fold import (
    event_time_sequences,
    expected_fulfilment,
    expected_stock,
    stock_pool_decodes,
    stored_figures,
)

PARTITIONS = 4
INPUTS = ("clickstream", "pos.sales", "wms.movements")
CONFIG = Config()
REFERENCE = load_reference(CONFIG)


@dataclass
class Run:
    store: MemoryStockStore
    io: MemoryIO


@cache
def traffic() -> tuple[GeneratedEvent, ...]:
    return tuple(TrafficModel(REFERENCE, seed=11, bad_ratio=0.03).events(8000))


def partition_of(event: GeneratedEvent) -> int:
    """By key, as a producer spreads keys over partitions: one key's events stay in order."""
    return zlib.crc32(event.key) % PARTITIONS


def memory_io(events: tuple[GeneratedEvent, ...], *, partitioned: bool) -> MemoryIO:
    io = MemoryIO(
        CONFIG, partition_counts=dict.fromkeys(INPUTS, PARTITIONS), partitioned=partitioned
    )
    for e in events:
        io.add(e.topic, [(e.key, e.value)], partition_of(e))
    return io


@cache
def flow_run(workers: int) -> Run:
    """1 worker reads one source, topic after topic; 2 workers read a source partition per
    topic × partition each, as on Kafka."""
    store = MemoryStockStore(REFERENCE)
    io = memory_io(traffic(), partitioned=workers > 1)
    run(build(CONFIG, reference=REFERENCE, io=io, stock_store=lambda: store), workers)
    return Run(store, io)


WORKERS = [1, 2]


@pytest.mark.parametrize("workers", WORKERS)
def test_every_stored_position_equals_the_independent_fold(workers: int) -> None:
    expected = expected_stock(traffic())
    stored = {key: stored_figures(row) for key, row in flow_run(workers).store.positions().items()}
    assert set(stored) == set(expected)
    wrong = {k: (expected[k], stored[k]) for k in expected if stored[k] != expected[k]}
    assert not wrong, list(wrong.items())[:3]
    assert sum(1 for f in expected.values() if f["reserved"]) > 10  # the traffic reserves
    assert sum(1 for f in expected.values() if f["sold_24h"]) > 100  # and sells


@pytest.mark.parametrize("workers", WORKERS)
def test_stock_changes_carry_every_position_in_event_time_order(workers: int) -> None:
    io = flow_run(workers).io
    published: dict[str, list[tuple[str, int, int]]] = {}
    last: dict[str, dict[str, Any]] = {}
    for message in io.collect()["stock.changes"]:
        envelope = orjson.loads(message.value)
        assert (envelope["specversion"], envelope["type"]) == ("1.0", "omnistream.stock.changed")
        data = envelope["data"]
        key = f"{data['sku']}:{data['location_id']}"
        assert message.key == key.encode() and envelope["subject"] == key
        assert data["region"] == REFERENCE.locations[data["location_id"]].region
        assert data["available"] == data["on_hand"] - data["reserved"]
        published.setdefault(key, []).append((data["cause"], data["on_hand"], data["reserved"]))
        last[key] = data
    sequences = event_time_sequences(traffic())
    assert set(published) == set(sequences)
    differ = [k for k in sequences if published[k] != sequences[k]]
    assert not differ, (len(differ), differ[:3])
    expected = expected_stock(traffic())
    assert {k: {name: d[name] for name in expected[k]} for k, d in last.items()} == expected


@pytest.mark.parametrize("workers", WORKERS)
def test_the_store_keeps_each_skus_network_and_region_totals(workers: int) -> None:
    expected = expected_stock(traffic())
    store = flow_run(workers).store
    skus = sorted({key.split(":")[0] for key in expected})
    for sku in skus[::7]:
        here = {k.split(":")[1]: f for k, f in expected.items() if k.startswith(f"{sku}:")}
        rows, total, regions = store.read_sku(sku)
        assert [row["location_id"] for row in rows] == sorted(here)
        for name in ("on_hand", "reserved", "available", "sold_24h"):
            assert int(total[name]) == sum(f[name] for f in here.values())  # type: ignore[misc]
        assert int(total["locations"]) == len(here)
        for region, figures in regions.items():
            local = [f for loc, f in here.items() if REFERENCE.locations[loc].region == region]
            assert int(figures["on_hand"]) == sum(f["on_hand"] for f in local)  # type: ignore[misc]
            assert int(figures["locations"]) == len(local)


@pytest.mark.parametrize("workers", WORKERS)
def test_exactly_the_malformed_messages_are_dead_lettered_where_they_were_read(
    workers: int,
) -> None:
    offsets: dict[tuple[str, int], int] = Counter()
    wanted: list[tuple[str, int, int, str]] = []
    for e in traffic():
        where = (e.topic, partition_of(e))
        if e.bad_reason is not None and stock_pool_decodes(e.topic, e.value):
            wanted.append((e.topic, where[1], offsets[where], e.bad_reason))
        offsets[where] += 1
    letters = [orjson.loads(m.value) for m in flow_run(workers).io.collect()["deadletter"]]
    found = [(d["topic"], d["partition"], d["offset"], d["reason"]) for d in letters]
    assert sorted(found) == sorted(wanted)
    assert len(wanted) > 100 and len(set(reason for *_, reason in wanted)) > 5
    assert all(d["flow"] == "stock_pool" and "raw" in d and d["error"] for d in letters)


@pytest.mark.parametrize("workers", WORKERS)
def test_orders_without_a_location_are_sourced_where_the_independent_fold_picks(
    workers: int,
) -> None:
    """Every delivery order without a location gets one decision on orders.sourced: the
    location (or unfulfillable) that a brute-force choice over the independently folded
    pool makes at the order's place in event-time order."""
    fold = expected_fulfilment(traffic())
    values = flow_run(workers).io.values("orders.sourced")
    decided = {}
    for envelope in values:
        assert envelope["type"] == "omnistream.order.sourced"
        data = envelope["data"]
        assert envelope["subject"] == data["order_id"]
        decided[data["order_id"]] = (data["status"], data["location_id"])
        if data["status"] == "sourced":
            assert data["distance_km"] is None or data["distance_km"] >= 0
        else:
            assert data["location_id"] is None and data["reason"]
    assert len(values) == len(decided)  # one decision per order
    assert decided == fold.sourced
    outcomes = Counter(status for status, _ in decided.values())
    assert outcomes["sourced"] > 40
    assert len({loc for _, loc in decided.values()}) > 2  # not one warehouse for everything


@pytest.mark.parametrize("workers", WORKERS)
def test_pickup_orders_become_the_store_tasks_the_independent_fold_expects(
    workers: int,
) -> None:
    """A pickup order's task is pickup_prep when its store covered every line before the
    reservation, else pickup_exception with the nearest other pickup store that covers it;
    the till sale with the order id closes it; an exception asks for a transfer."""
    fold = expected_fulfilment(traffic())
    io = flow_run(workers).io
    opened: dict[str, tuple[str, str | None]] = {}
    done: set[str] = set()
    codes: dict[str, str] = {}
    for envelope in io.values("store.tasks"):
        data = envelope["data"]
        assert data["task_id"] == f"pickup:{data['order_id']}"
        assert len(data["pickup_code"]) == 6 and data["pickup_code"].isdigit()
        assert codes.setdefault(data["order_id"], data["pickup_code"]) == data["pickup_code"]
        if data["status"] == "open":
            opened[data["order_id"]] = (data["kind"], data["alternative_location_id"])
        elif data["status"] == "done":
            done.add(data["order_id"])
    assert opened == fold.tasks
    assert done == fold.collected
    kinds = Counter(kind for kind, _ in opened.values())
    assert kinds["pickup_prep"] > 5 and kinds["pickup_exception"] > 0
    transfers = [
        v["data"] for v in io.values("triggers.replenishment") if v["data"].get("order_id")
    ]
    exceptions = {order for order, (kind, _) in opened.items() if kind == "pickup_exception"}
    assert {t["order_id"] for t in transfers} == exceptions
    assert all(t["kind"] == "transfer" and t["suggested_qty"] >= 1 for t in transfers)


def test_one_and_two_workers_agree() -> None:
    one, two = flow_run(1), flow_run(2)
    assert one.store.hashes == two.store.hashes  # totals and every field, updated_at included

    def by_key(io: MemoryIO) -> dict[bytes | None, list[bytes]]:
        found: dict[bytes | None, list[bytes]] = {}
        for m in io.collect()["stock.changes"]:
            found.setdefault(m.key, []).append(m.value)
        return found

    assert by_key(one.io) == by_key(two.io)  # the same events, ids included, in key order
    assert Counter(m.value for m in one.io.collect()["deadletter"]) == Counter(
        m.value for m in two.io.collect()["deadletter"]
    )
