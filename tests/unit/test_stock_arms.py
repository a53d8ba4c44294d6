"""Stock-rule experiments per arm: stockout hours, units sold and the moves suggested.

First the pure fold against a direct integration of each shelf's availability over event
time; then the real rule_triggers dataflow (in-process replay, 1 and 2 workers) over random
stock changes of a dozen shelves, its experiment store's report against the same
integration of the input and against the triggers it published."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from base import topics
from base.config import Config
from connectors.envelopes import cloud_event
from connectors.reference_files import load_reference
from domain.rules import parse_rules
from domain.stock_arms import (
    ShelfTally,
    StockArmTally,
    arms_of,
    figures,
    note_shelf,
    stock_report,
)
from domain.stock_rules import StockChange
from domain.trigger_policy import draw_stock_variant
from flows import rule_triggers
from state.coupon_store import MemoryCouponStore
from state.memory_stock import MemoryStockStore
from tests.inprocess import CustomerStores, MemoryIO, run

HOUR = 3_600_000
T0 = 1_795_000_000_000
RULES = """
defaults: {frequency_cap_per_day: 3, conversion_window: 7d}
rules:
  - id: low
    kind: low_stock
    cooldown: 6h
    params: {target_cover_days: 7}
    experiment:
      salt: cover-test
      control_share: 0.5
      variants: {cover_14: {params: {target_cover_days: 14}}}
  - {id: out, kind: stockout, cooldown: 1h}
"""
Step = tuple[int, int, int]  # event time, available, units sold by the change


def walk(rng: random.Random, steps: int) -> list[Step]:
    """A shelf's changes: availability wanders down to 0 and back, sales take units."""
    ts, available, out = T0, rng.randint(0, 30), []
    for _ in range(steps):
        ts += rng.randint(1, 4 * HOUR)
        sold = rng.choice([0, 0, 1, 2, 3])
        available = max(0, available - sold) if rng.random() < 0.8 else rng.randint(0, 40)
        out.append((ts, available, sold))
    return out


def integrated(steps: list[Step], until_ms: int) -> tuple[int, int]:
    """(ms with nothing available, units sold): availability holds from one change to the
    next; the last one holds until ``until_ms``."""
    out_ms = 0
    for (ts, available, _), nxt in zip(steps, [*steps[1:], (until_ms, 0, 0)], strict=True):
        if available <= 0:
            out_ms += nxt[0] - ts
    return out_ms, sum(sold for *_, sold in steps)


def change(sku: str, location: str, step: Step) -> StockChange:
    ts, available, sold = step
    return StockChange(sku, location, "SH", available, 0, ts, f"m{ts}", available, sold=sold)


@pytest.mark.parametrize("seed", range(5))
def test_the_fold_equals_the_integration_of_each_shelf(seed: int) -> None:
    rng = random.Random(seed)
    rules = parse_rules("test", {"rules": [{"id": "low", "kind": "low_stock",
        "cooldown": "1h", "experiment": {"salt": f"s{seed}", "control_share": 0.5,
        "variants": {"cover_14": {"params": {"target_cover_days": 14}}}}}]})  # fmt: skip
    shelves = {(f"SKU-{n}", "ST-1"): walk(rng, rng.randint(1, 30)) for n in range(12)}
    tallies: dict[str, list[tuple[int, int | None, int, int]]] = {}
    for (sku, location), steps in shelves.items():
        tally = ShelfTally()
        arms = arms_of(rules, sku, location)
        for step in steps:
            note_shelf(tally, change(sku, location, step))
        last = figures(tally, change(sku, location, steps[-1]), arms)
        ((_, variant),) = last.arms
        row = (last.stockout_ms, last.out_since_ms, last.sold, last.as_of_ms)
        tallies.setdefault(variant, []).append(row)
    now = max(steps[-1][0] for steps in shelves.values())
    report = {
        r.variant: r
        for r in stock_report(
            [StockArmTally("low", v, tuple(rows), ()) for v, rows in tallies.items()]
        )
    }
    for variant, r in report.items():
        mine = [
            integrated(steps, now)
            for (sku, location), steps in shelves.items()
            if draw_stock_variant(rules.by_id["low"].experiment, sku, location, "low") == variant
        ]
        assert r.shelves == len(mine)
        assert r.stockout_hours == pytest.approx(sum(ms for ms, _ in mine) / HOUR)
        assert r.units_sold == sum(sold for _, sold in mine)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return Config().with_overrides(rules={"file": str(rules)})


@pytest.mark.parametrize("workers", [1, 2])
def test_the_flow_reports_each_arms_shelves_and_moves(config: Config, workers: int) -> None:
    reference = load_reference(config)
    rng = random.Random(workers)
    stores = [loc for loc in reference.locations.values() if loc.type == "store"][:4]
    skus = sorted(reference.products)[:3]
    io = MemoryIO(config, partition_counts=dict.fromkeys(rule_triggers.INPUTS, 4))
    shelves: dict[tuple[str, str], list[Step]] = {}
    for sku in skus:
        for store in stores:
            steps = shelves[(sku, store.location_id)] = walk(rng, 25)
            for ts, available, sold in steps:
                key = f"{sku}:{store.location_id}"
                data: dict[str, object] = {"sku": sku, "location_id": store.location_id}
                data |= {"region": store.region}
                data |= {"on_hand": available, "reserved": 0, "available": available}
                data |= {"sold_1h": 0, "sold_24h": 5, "cause": f"m{ts}", "sold": sold}
                value = cloud_event(
                    event_type="omnistream.stock.changed",
                    source="stock_pool",
                    subject=key,
                    event_id=f"chg-{key}-{ts}",
                    time_ms=ts,
                    data=data,
                )
                io.add(topics.STOCK_CHANGES, [(key.encode(), value)], sum(key.encode()) % 4)
    customer_stores = CustomerStores(reference)
    flow = rule_triggers.build(
        config,
        until_idle=True,
        io=io,
        stock_store=lambda: MemoryStockStore(reference),
        coupon_store=MemoryCouponStore,
        **customer_stores.build_args(),
    )
    run(flow, workers)

    rules = parse_rules("test", yaml.safe_load(RULES))
    experiment = rules.by_id["low"].experiment
    now = max(steps[-1][0] for steps in shelves.values())
    published = [
        e["data"] for e in io.values(topics.TRIGGERS_REPLENISHMENT) if e["data"]["rule_id"] == "low"
    ]
    report = {
        (r.rule_id, r.variant): r for r in stock_report(customer_stores.experiments.stock_tallies())
    }
    assert {v for (rule, v) in report if rule == "low"} == {"control", "cover_14"}
    for (rule, variant), r in report.items():
        assert rule == "low"
        mine = {
            shelf: steps
            for shelf, steps in shelves.items()
            if draw_stock_variant(experiment, *shelf, "low") == variant
        }
        expected = [integrated(steps, now) for steps in mine.values()]
        assert r.shelves == len(mine)
        assert r.stockout_hours == pytest.approx(sum(ms for ms, _ in expected) / HOUR)
        assert r.units_sold == sum(sold for _, sold in expected)
        moves = [d for d in published if d.get("variant", "default") == variant]
        assert {(d["sku"], d["location_id"]) for d in moves} <= set(mine)
        assert r.transfers == sum(1 for d in moves if d["kind"] == "transfer")
        assert r.transfer_units == sum(d["suggested_qty"] for d in moves if d["kind"] == "transfer")
        assert r.replenishments == sum(1 for d in moves if d["kind"] == "replenish")
    assert sum(r.transfers + r.replenishments for r in report.values()) > 0
