"""stock_pool end to end: generated traffic → real broker → flow process → Redis and topics.

The expected stock is computed here by a plain fold over the generated events, written
without the project's domain code (CONTRACT §2 read literally), and compared with every
``omni:stock:*`` hash and with the last ``stock.changes`` event of every sku × location.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import redis

from base.config import Config, dump_config
from connectors.decode import MAX_MESSAGE_BYTES
from connectors.generator import GeneratedEvent, TrafficModel, produce
from connectors.reference_files import load_reference
from domain.events import CLICK_EVENT_TYPES
from omnistream.processes import start_flow
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

HOUR = 3_600_000
ON_HAND_SIGN = {"receipt": 1, "transfer_in": 1, "adjustment": 1, "shipment": -1, "transfer_out": -1}


def event_ms(ts: object) -> int:
    if isinstance(ts, int):
        return ts
    assert isinstance(ts, str)
    return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Expected:
    """Plain bookkeeping of one sku × location."""

    deltas: list[tuple[int, int]] = field(default_factory=list)  # (ts, on_hand change)
    counts: list[tuple[int, str, int]] = field(default_factory=list)  # (ts, event_id, qty)
    reserved: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    consumed: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    released: set[str] = field(default_factory=set)
    sales: list[tuple[int, int]] = field(default_factory=list)
    times: list[int] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        if self.counts:
            count_ts, _, qty = max(self.counts)
            on_hand = qty + sum(d for ts, d in self.deltas if ts >= count_ts)
        else:
            on_hand = sum(d for _, d in self.deltas)
        reserved = sum(
            0 if order in self.released else max(0, units - self.consumed[order])
            for order, units in self.reserved.items()
        )
        now = max(self.times)
        sold_1h = sum(q for ts, q in self.sales if now - HOUR < ts <= now)
        sold_24h = sum(q for ts, q in self.sales if now - 24 * HOUR < ts <= now)
        available = on_hand - reserved
        return {
            "on_hand": on_hand,
            "reserved": reserved,
            "available": available,
            "sold_1h": sold_1h,
            "sold_24h": sold_24h,
            "days_of_cover": round(available / sold_24h, 3) if sold_24h else None,
        }


def expected_stock(events: Iterable[GeneratedEvent]) -> dict[str, dict[str, object]]:
    book: dict[str, Expected] = collections.defaultdict(Expected)
    seen: set[str] = set()
    placed: dict[str, dict] = {}
    cancels: list[dict] = []
    for generated in events:
        if generated.bad_reason is not None:
            continue
        e = json.loads(generated.value)
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        ts = event_ms(e["ts"])
        kind = e["event_type"]
        if generated.topic == "wms.movements":
            cell = book[f"{e['sku']}:{e['location_id']}"]
            cell.times.append(ts)
            if kind == "stock_count":
                cell.counts.append((ts, e["event_id"], e["qty"]))
                continue
            cell.deltas.append((ts, ON_HAND_SIGN[kind] * e["qty"]))
            if kind == "shipment" and e.get("order_id"):
                cell.consumed[e["order_id"]] += e["qty"]
                cell.sales.append((ts, e["qty"]))
        elif generated.topic == "pos.sales":
            for line in e["lines"]:
                cell = book[f"{line['sku']}:{e['store_id']}"]
                cell.times.append(ts)
                sign = -1 if kind == "sale" else 1
                cell.deltas.append((ts, sign * line["qty"]))
                if kind == "sale":
                    cell.sales.append((ts, line["qty"]))
                    if e.get("order_id"):
                        cell.consumed[e["order_id"]] += line["qty"]
        elif kind == "order_placed":
            placed[e["order_id"]] = e
            location = e["fulfillment"]["location_id"]
            for line in e["lines"]:
                cell = book[f"{line['sku']}:{location}"]
                cell.times.append(ts)
                cell.reserved[e["order_id"]] += line["qty"]
        elif kind == "order_cancelled":
            cancels.append(e)
    for cancel in cancels:  # a cancellation releases whatever its placement reserved
        order = placed.get(cancel["order_id"])
        if order is None:
            continue
        location = order["fulfillment"]["location_id"]
        for sku in {line["sku"] for line in order["lines"]}:
            cell = book[f"{sku}:{location}"]
            cell.times.append(event_ms(cancel["ts"]))
            cell.released.add(cancel["order_id"])
    return {key: cell.figures() for key, cell in book.items()}


#: Clickstream event types stock_pool does not decode beyond their type (it uses orders only).
STOCK_POOL_SKIPS = CLICK_EVENT_TYPES - {"order_placed", "order_cancelled"}


def _sound_text(value: object, max_chars: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_chars and not value.isspace()


def stock_pool_decodes(topic: str, payload: bytes) -> bool:
    """Whether stock_pool decodes (and so dead-letters the faults of) this message: all of
    them except a clickstream event whose head (size, JSON, id, type, ts) is sound and whose
    type is not an order — its body is identity_stitch's to refuse."""
    if topic != "clickstream" or len(payload) > MAX_MESSAGE_BYTES:
        return True
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True
    return not (
        isinstance(doc, dict)
        and _sound_text(doc.get("event_id"), 128)
        and _sound_text(doc.get("event_type"), 64)
        and doc.get("ts") is not None
        and doc["event_type"] in STOCK_POOL_SKIPS
    )


def redis_figures(row: dict[bytes, bytes]) -> dict[str, object]:
    text = {k.decode(): v.decode() for k, v in row.items()}
    figures: dict[str, object] = {
        name: int(text[name])
        for name in ("on_hand", "reserved", "available", "sold_1h", "sold_24h")
    }
    figures["days_of_cover"] = float(text["days_of_cover"]) if "days_of_cover" in text else None
    return figures


def run_until_idle(config: Config, tmp_path: Path, timeout_s: float = 600) -> float:
    config_path = tmp_path / "omnistream.yaml"
    dump_config(config, config_path)
    started = time.monotonic()
    with (tmp_path / "flow.log").open("wb") as log:
        process = start_flow("stock_pool", config_path, until_idle=True, log=log)
        try:
            code = process.wait(timeout=timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.monotonic() - started
    assert code == 0, (tmp_path / "flow.log").read_text(errors="replace")[-3000:]
    return elapsed


def test_flow_matches_independent_fold_on_10k_events(omni_config: Config, tmp_path: Path) -> None:
    reference = load_reference(omni_config)
    events = list(TrafficModel(reference, seed=11, bad_ratio=0.03).events(12_000))
    stats = produce(omni_config, events, progress=False)
    assert sum(stats.produced.values()) == len(events)

    elapsed = run_until_idle(omni_config, tmp_path)
    print(
        f"\nstock_pool: {len(events)} events in {elapsed:.1f} s "
        f"(process start included) = {len(events) / elapsed:.0f} events/s"
    )

    expected = expected_stock(events)
    client = redis.Redis.from_url(omni_config.redis.url)
    try:
        prefix = omni_config.redis.key_prefix
        pattern = f"{prefix}stock:*"
        keys = sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
        assert sorted(f"{prefix}stock:{key}" for key in expected) == keys
        pipe = client.pipeline(transaction=False)
        for key in expected:
            pipe.hgetall(f"{prefix}stock:{key}")
        actual = {
            key: redis_figures(row) for key, row in zip(expected, pipe.execute(), strict=True)
        }
    finally:
        client.close()
    mismatches = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not mismatches, list(mismatches.items())[:5]
    assert sum(1 for f in expected.values() if f["reserved"]) > 10  # the scenario reserves
    assert sum(1 for f in expected.values() if f["sold_24h"]) > 100  # and sells

    # stock.changes: the last event per sku × location carries the same final values.
    last: dict[str, dict] = {}
    for message in read_topic(omni_config, "stock.changes", timeout_s=60):
        envelope = json.loads(message.value())
        assert envelope["specversion"] == "1.0"
        assert envelope["type"] == "omnistream.stock.changed"
        last[message.key().decode()] = envelope["data"]
    assert set(last) == set(expected)
    for key, data in last.items():
        figures = {name: data[name] for name in expected[key]}
        assert figures == expected[key], key

    # Every malformed event is in deadletter with its reason code; duplicates are not errors.
    wanted = collections.Counter(
        e.bad_reason for e in events if e.bad_reason and stock_pool_decodes(e.topic, e.value)
    )
    letters = [json.loads(m.value()) for m in read_topic(omni_config, "deadletter", timeout_s=60)]
    assert collections.Counter(letter["reason"] for letter in letters) == wanted
    print("dead letters by reason:", dict(sorted(wanted.items())))
    assert all(
        {"topic", "partition", "offset", "reason", "error", "raw"} <= set(letter)
        for letter in letters
    )

    # `omnistream stock <sku>` prints what Redis holds, per location and in total.
    busiest = max(expected, key=lambda key: expected[key]["sold_24h"])  # type: ignore[arg-type]
    sku, location_id = busiest.split(":")
    reply = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnistream.cli",
            "stock",
            sku,
            "--config",
            str(tmp_path / "omnistream.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    row = next(line for line in reply.stdout.splitlines() if line.startswith(location_id))
    cells = row.split()
    assert cells[3:6] == [
        str(expected[busiest][name]) for name in ("on_hand", "reserved", "available")
    ]
    network_on_hand = sum(
        f["on_hand"]
        for key, f in expected.items()  # type: ignore[misc]
        if key.startswith(f"{sku}:")
    )
    total_row = next(line for line in reply.stdout.splitlines() if line.startswith("[total]"))
    assert total_row.split()[3] == str(network_on_hand)
