"""Rebuilding from history gives the results of event-time order, whatever the read order.

A replay reads the partitions of the three input topics at very different speeds: the small
topics are read to their end in the first round of polls while the clickstream is still at
its first hours. These tests replay such histories (``run --until-idle`` from offset 0) and
check the flow against an independent fold in event-time order:

- 30 days of generated history, with a small ``stock.dedup_hours``: every position, and the
  whole sequence of positions each sku × location published on ``stock.changes``, equals
  applying the events in event-time order; the dead letters are exactly the malformed events;
- a store's opening receipts on ``wms.movements`` behind a long backlog, and its later till
  sales on ``pos.sales`` read long before them: ``low_stock`` fires exactly for the positions
  that fell below their reorder point in event time.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from base.config import Config, dump_config
from connectors.generator import GeneratedEvent, TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.processes import start_flow
from tests.integration.test_stock_pool_flow import redis_figures, run_until_idle
from tests.kafka_helpers import read_topic
from tests.stock_fold import (
    event_ms,
    event_time_sequences,
    expected_stock,
    stock_pool_decodes,
)

pytestmark = pytest.mark.integration

HOUR = 3_600_000
DAY = 24 * HOUR
SPAN_DAYS = 30
DEDUP_HOURS = 6


def stretched_history(config: Config, count: int, seed: int) -> list[GeneratedEvent]:
    """Generated traffic spread over ``SPAN_DAYS`` of event time (the generator's own clock
    covers a few hours), with epoch-millisecond timestamps.

    Duplicates stay only where they follow their original within half the dedup horizon on
    their topic: an older one cannot be told from a replayed duplicate and is refused as too
    late whatever the read order, which this test does not predict.
    """
    events = list(TrafficModel(load_reference(config), seed=seed, bad_ratio=0.02).events(count))
    good_ts = [event_ms(json.loads(e.value)["ts"]) for e in events if e.bad_reason is None]
    start, end = min(good_ts), max(good_ts)
    factor = SPAN_DAYS * DAY / (end - start)
    latest_on_topic: dict[str, int] = {}
    out: list[GeneratedEvent] = []
    for event in events:
        if event.bad_reason is not None:
            out.append(event)
            continue
        doc = json.loads(event.value)
        doc["ts"] = start + round((event_ms(doc["ts"]) - start) * factor)
        latest = latest_on_topic.get(event.topic, doc["ts"])
        if event.duplicate and latest - doc["ts"] >= DEDUP_HOURS * HOUR / 2:
            continue
        latest_on_topic[event.topic] = max(latest, doc["ts"])
        out.append(
            GeneratedEvent(
                event.topic,
                event.key,
                orjson.dumps(doc),
                event.event_id,
                None,
                event.duplicate,
            )
        )
    return out


def produce_topic_by_topic(config: Config, events: list[GeneratedEvent]) -> None:
    """Each input topic produced entirely before the next (warehouse, tills, clickstream)."""
    for topic in ("wms.movements", "pos.sales", "clickstream"):
        produce(config, [e for e in events if e.topic == topic], progress=False)


@pytest.mark.parametrize("alignment_seconds", [600.0, 10 * 365 * 86400.0])
def test_skewed_30_day_replay_equals_event_time_order(
    omni_config: Config, tmp_path: Path, alignment_seconds: float
) -> None:
    """With the sources aligned (default) and without alignment (ten years: the small topics
    are read to their end first), the result is the same: the order comes from the reports,
    alignment only bounds what waits."""
    config = omni_config.with_overrides(
        # Orders live longer than the history, so no reservation expires inside it.
        stock={"dedup_hours": DEDUP_HOURS, "late_window_hours": 12, "order_ttl_days": 60},
        flow={"alignment_seconds": alignment_seconds},
        kafka={"batch_size": 500},
    )
    events = stretched_history(config, 16_000, seed=29)
    produce_topic_by_topic(config, events)
    run_until_idle(config, tmp_path)

    # Final positions: every omni:stock:* hash equals the independent fold.
    expected = expected_stock(events)
    client = redis.Redis.from_url(config.redis.url)
    try:
        prefix = config.redis.key_prefix
        pipe = client.pipeline(transaction=False)
        for key in expected:
            pipe.hgetall(f"{prefix}stock:{key}")
        actual = {k: redis_figures(row) for k, row in zip(expected, pipe.execute(), strict=True)}
    finally:
        client.close()
    wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not wrong, (len(wrong), len(expected), list(wrong.items())[:3])

    # Every published position is one of event-time order, in that order.
    sequences = event_time_sequences(events)
    published: dict[str, list[tuple[str, int, int]]] = collections.defaultdict(list)
    for message in read_topic(config, "stock.changes", timeout_s=60):
        data = orjson.loads(message.value())["data"]
        published[message.key().decode()].append((data["cause"], data["on_hand"], data["reserved"]))
    assert set(published) == set(sequences)
    differ = [k for k in sequences if published[k] != sequences[k]]
    assert not differ, (len(differ), differ[:3])
    assert sum(len(s) for s in sequences.values()) > 5_000

    # The dead letters are exactly the deliberately malformed events: nothing too late.
    letters = [orjson.loads(m.value()) for m in read_topic(config, "deadletter", timeout_s=60)]
    wanted = collections.Counter(
        e.bad_reason for e in events if e.bad_reason and stock_pool_decodes(e.topic, e.value)
    )
    assert collections.Counter(letter["reason"] for letter in letters) == wanted
    assert sum(1 for e in events if e.duplicate) >= 5  # duplicates were dropped, not refused


OPENING = 1_796_000_000_000  # a store opens: receipts at this time, sales in the hours after
LOW_STOCK_RULES = """
version: 1
rules:
  - {id: low-stock, kind: low_stock, cooldown: 6h, params: {target_cover_days: 7}}
"""


def opening_day(config: Config) -> tuple[list[GeneratedEvent], set[str]]:
    """Receipts for every sku of one store at opening, behind a day of backlog at the
    warehouse on the same topic; till sales after opening on the other topic. Half the skus
    sell below their reorder point, half stay above it. Returns the events and the
    positions that cross in event time."""
    reference = load_reference(config)
    store = sorted(loc.location_id for loc in reference.locations.values() if loc.type == "store")[
        0
    ]
    warehouse = sorted(
        loc.location_id for loc in reference.locations.values() if loc.type == "warehouse"
    )[0]
    products = sorted(reference.products.values(), key=lambda p: p.sku)[:20]
    events: list[GeneratedEvent] = []

    def emit(topic: str, key: str, doc: dict[str, Any]) -> None:
        events.append(GeneratedEvent(topic, key.encode(), orjson.dumps(doc), doc["event_id"], None))

    for i in range(6000):  # the warehouse's backlog of the day before, read first
        sku = products[i % len(products)].sku
        ts = OPENING - DAY + i * 10_000
        emit("wms.movements", warehouse, {"event_id": f"bk{i}", "event_type": "adjustment",
             "ts": ts, "location_id": warehouse, "sku": sku, "qty": 1})  # fmt: skip
    crossing: set[str] = set()
    for n, product in enumerate(products):
        # the rules judge available-to-sell: the product's safety stock is held back
        stock = product.reorder_point + product.safety_stock + 5
        # Keyed by the warehouse: the store's receipts queue behind the backlog's partition.
        emit("wms.movements", warehouse, {"event_id": f"rc{n}", "event_type": "receipt",
             "ts": OPENING + n, "location_id": store, "sku": product.sku,
             "qty": stock})  # fmt: skip
        sell = 8 if n % 2 == 0 else 3  # 8 crosses the reorder point, 3 does not
        for s in range(sell):
            emit("pos.sales", store, {"event_id": f"sl{n}-{s}", "event_type": "sale",
                 "ts": OPENING + HOUR + n * 60_000 + s * 1000, "store_id": store,
                 "receipt_id": f"r{n}-{s}", "total": 1.0,
                 "lines": [{"sku": product.sku, "qty": 1, "unit_price": 1.0}]})  # fmt: skip
        if stock - product.safety_stock - sell < product.reorder_point:
            crossing.add(f"{product.sku}:{store}")
    return events, crossing


def test_low_stock_fires_for_event_time_crossings_only(omni_config: Config, tmp_path: Path) -> None:
    """Without ordering, the sales (a small topic, read to its end at once) were applied
    before the receipts behind the backlog: stock went negative at every sku and low_stock
    fired for positions that never fell below their reorder point."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(LOW_STOCK_RULES)
    config = omni_config.with_overrides(
        rules={"file": str(rules)}, flow={"alignment_seconds": 10 * 365 * 86400.0}
    )
    events, crossing = opening_day(config)
    produce(config, events, progress=False)
    run_until_idle(config, tmp_path)

    # No published position is one that never happened (negative stock at the store).
    positions = [
        orjson.loads(m.value())["data"] for m in read_topic(config, "stock.changes", timeout_s=60)
    ]
    assert min(p["available"] for p in positions) >= 0

    config_path = tmp_path / "rules-flow.yaml"
    dump_config(config, config_path)
    with (tmp_path / "rules.log").open("wb") as log:
        process = start_flow("rule_triggers", config_path, until_idle=True, log=log)
        try:
            assert process.wait(timeout=300) == 0, (tmp_path / "rules.log").read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    fired = [
        orjson.loads(m.value())["data"]
        for m in read_topic(config, "triggers.replenishment", timeout_s=60)
    ]
    (store,) = {key.split(":")[1] for key in crossing}
    low = {
        f"{t['sku']}:{t['location_id']}"
        for t in fired
        if t["rule_id"] == "low-stock" and t["location_id"] == store  # the backlog is elsewhere
    }
    assert len(crossing) == 10
    assert low == crossing
