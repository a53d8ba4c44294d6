"""Independent folds of generated traffic into stock (CONTRACT §2 read literally), shared by
the in-process and the integration tests of stock_pool: written without the project's
domain code, so they can tell the flow is wrong.

- ``expected_stock``: the final figures of every sku × location;
- ``event_time_sequences``: every position each sku × location goes through when the
  good events are applied once each in event-time order (what ``stock.changes`` carries);
- ``stock_pool_decodes``: whether stock_pool decodes a message at all (and so dead-letters
  its faults), the rest of the clickstream being identity_stitch's to refuse.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from connectors.decode import MAX_MESSAGE_BYTES
from connectors.generator import GeneratedEvent
from domain.events import CLICK_EVENT_TYPES

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


def stored_figures(row: dict[str, str]) -> dict[str, object]:
    """The figures of a stored ``stock:<sku>:<location>`` hash (CONTRACT §5), as
    ``expected_stock`` gives them."""
    figures: dict[str, object] = {
        name: int(row[name]) for name in ("on_hand", "reserved", "available", "sold_1h", "sold_24h")
    }
    figures["days_of_cover"] = float(row["days_of_cover"]) if "days_of_cover" in row else None
    return figures


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


#: On-hand sign of every movement kind, till receipts included.
MOVEMENT_SIGN = {**ON_HAND_SIGN, "return": 1, "sale": -1}


@dataclass
class Position:
    """One sku × location folded in event-time order, keeping every published figure."""

    on_hand: int = 0
    count_ts: int | None = None
    deltas: list[tuple[int, int]] = field(default_factory=list)
    reserved: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    consumed: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    released: set[str] = field(default_factory=set)
    published: list[tuple[str, int, int]] = field(default_factory=list)

    def apply(self, event_id: str, kind: str, ts: int, qty: int, order: str | None) -> None:
        if kind == "stock_count":
            if self.count_ts is None or ts >= self.count_ts:
                self.count_ts = ts
                self.on_hand = qty + sum(d for t, d in self.deltas if t >= ts)
        elif kind == "reserve":
            assert order is not None
            self.reserved[order] += qty
        elif kind == "release":
            assert order is not None
            self.released.add(order)
        else:
            delta = MOVEMENT_SIGN[kind] * qty
            if self.count_ts is None or ts >= self.count_ts:
                self.on_hand += delta
            self.deltas.append((ts, delta))
            if order is not None and kind in {"sale", "shipment"}:
                self.consumed[order] += qty
        held = sum(
            0 if o in self.released else max(0, units - self.consumed[o])
            for o, units in self.reserved.items()
        )
        self.published.append((event_id, self.on_hand, held))


def event_time_sequences(events: Iterable[GeneratedEvent]) -> dict[str, list[tuple[str, int, int]]]:
    """Per sku × location: (cause, on_hand, reserved) after each movement, applying every
    good event once in (event time, movement id) order — CONTRACT §2 read literally."""
    moves: list[tuple[int, str, str, str, int, str | None]] = []
    placed: dict[str, dict[str, Any]] = {}
    cancels: list[dict[str, Any]] = []
    seen: set[str] = set()
    for generated in events:
        if generated.bad_reason is not None:
            continue
        e = json.loads(generated.value)
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        ts, kind, eid = event_ms(e["ts"]), e["event_type"], e["event_id"]
        if generated.topic == "wms.movements":
            key = f"{e['sku']}:{e['location_id']}"
            moves.append((ts, f"{eid}#0", key, kind, e["qty"], e.get("order_id")))
        elif generated.topic == "pos.sales":
            for i, line in enumerate(e["lines"]):
                key = f"{line['sku']}:{e['store_id']}"
                moves.append((ts, f"{eid}#{i}", key, kind, line["qty"], e.get("order_id")))
        elif kind == "order_placed":
            placed[e["order_id"]] = e
            location = e["fulfillment"]["location_id"]
            for i, line in enumerate(e["lines"]):
                key = f"{line['sku']}:{location}"
                moves.append((ts, f"{eid}#{i}", key, "reserve", line["qty"], e["order_id"]))
        elif kind == "order_cancelled":
            cancels.append(e)
    for cancel in cancels:
        order = placed.get(cancel["order_id"])
        if order is None:
            continue
        location = order["fulfillment"]["location_id"]
        skus = list(dict.fromkeys(line["sku"] for line in order["lines"]))
        for i, sku in enumerate(skus):
            moves.append(
                (
                    event_ms(cancel["ts"]),
                    f"{cancel['event_id']}#{i}",
                    f"{sku}:{location}",
                    "release",
                    0,
                    cancel["order_id"],
                )
            )
    positions: dict[str, Position] = collections.defaultdict(Position)
    for ts, movement_id, key, kind, qty, order in sorted(moves, key=lambda m: (m[0], m[1])):
        positions[key].apply(movement_id.split("#")[0], kind, ts, qty, order)
    return {key: p.published for key, p in positions.items()}
