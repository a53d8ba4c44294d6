"""An independent fold of generated traffic into the stock pool (CONTRACT §2, §9, §10 read
literally), shared by the in-process and the integration tests of stock_pool: written
without the project's domain code (its own great-circle distance, its own brute-force
sourcing), so it can tell the flow is wrong.

Every good event is applied once, in (event time, movement id) order — a movement's id is
``<event_id>#<line>`` (``#transit`` for the destination's side of a transfer), an order's its
event id — which is the order CONTRACT §10 decides orders in.

- ``expected_stock``: the final figures of every sku × location;
- ``event_time_sequences``: every position each sku × location goes through (what
  ``stock.changes`` carries);
- ``expected_fulfilment``: every sourcing decision and pickup task kind;
- ``stock_pool_decodes``: whether stock_pool decodes a message at all (and so dead-letters
  its faults), the rest of the clickstream being identity_stitch's to refuse.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from base.config import Config
from connectors.decode import MAX_MESSAGE_BYTES
from connectors.generator import GeneratedEvent
from connectors.reference_files import load_reference
from domain.events import CLICK_EVENT_TYPES
from domain.reference import Location, ReferenceData

HOUR = 3_600_000
ON_HAND_SIGN = {"receipt": 1, "transfer_in": 1, "adjustment": 1, "shipment": -1, "transfer_out": -1}


def event_ms(ts: object) -> int:
    if isinstance(ts, int):
        return ts
    assert isinstance(ts, str)
    return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


#: On-hand sign of every movement kind, till receipts included.
MOVEMENT_SIGN = {**ON_HAND_SIGN, "return": 1, "sale": -1}


EARTH_KM = 6371.0088


def great_circle_km(a: Location, lat: float, lon: float) -> float:
    """Angle between unit vectors (not the haversine formula the code uses)."""
    assert a.lat is not None and a.lon is not None

    def unit(la: float, lo: float) -> tuple[float, float, float]:
        la, lo = math.radians(la), math.radians(lo)
        return (math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la))

    u, v = unit(a.lat, a.lon), unit(lat, lon)
    chord = math.dist(u, v)
    return 2 * EARTH_KM * math.asin(min(1.0, chord / 2))


def ships(loc: Location) -> bool:
    return loc.ships_online if loc.ships_online is not None else loc.type != "store"


def offers_pickup(loc: Location) -> bool:
    return loc.pickup if loc.pickup is not None else loc.type == "store"


@dataclass
class Position:
    """One sku × location folded in event-time order, keeping every published figure."""

    on_hand: int = 0
    count_ts: int | None = None
    deltas: list[tuple[int, int]] = field(default_factory=list)
    reserved: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    consumed: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    released: set[str] = field(default_factory=set)
    sent: dict[str, int] = field(default_factory=dict)  # transfer id -> units on the way
    arrived: set[str] = field(default_factory=set)
    sales: list[tuple[int, int]] = field(default_factory=list)
    latest_ts: int = 0
    published: list[tuple[str, int, int]] = field(default_factory=list)

    def held(self) -> int:
        return sum(
            0 if o in self.released else max(0, units - self.consumed[o])
            for o, units in self.reserved.items()
        )

    def in_transit(self) -> int:
        return sum(units for t, units in self.sent.items() if t not in self.arrived)

    def to_sell(self, safety: int) -> int:
        return max(0, self.on_hand - self.held() - safety)

    def apply(
        self,
        event_id: str,
        kind: str,
        ts: int,
        qty: int,
        order: str | None,
        transfer: str | None = None,
    ) -> None:
        self.latest_ts = max(self.latest_ts, ts)
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
        elif kind == "transit":
            assert transfer is not None
            self.sent[transfer] = self.sent.get(transfer, 0) + qty
        else:
            delta = MOVEMENT_SIGN[kind] * qty
            if self.count_ts is None or ts >= self.count_ts:
                self.on_hand += delta
            self.deltas.append((ts, delta))
            if order is not None and kind in {"sale", "shipment"}:
                self.consumed[order] += qty
            if kind == "sale" or (kind == "shipment" and order is not None):
                self.sales.append((ts, qty))
            if kind == "transfer_in" and transfer is not None:
                self.arrived.add(transfer)
        self.published.append((event_id, self.on_hand, self.held()))

    def figures(self, safety: int) -> dict[str, object]:
        now = self.latest_ts
        sold_1h = sum(q for ts, q in self.sales if now - HOUR < ts <= now)
        sold_24h = sum(q for ts, q in self.sales if now - 24 * HOUR < ts <= now)
        available = self.on_hand - self.held()
        return {
            "on_hand": self.on_hand,
            "reserved": self.held(),
            "available": available,
            "sold_1h": sold_1h,
            "sold_24h": sold_24h,
            "days_of_cover": round(available / sold_24h, 3) if sold_24h else None,
            "safety_stock": safety,
            "in_transit": self.in_transit(),
            "available_to_sell": max(0, available - safety),
        }


@dataclass
class Fold:
    """The whole pool after the fold, and what its orders decided."""

    positions: dict[str, Position]
    #: order id -> (status, location id) for delivery orders without a location
    sourced: dict[str, tuple[str, str | None]]
    #: order id -> (task kind, alternative location id) for pickup orders
    tasks: dict[str, tuple[str, str | None]]
    #: order ids whose pickup task the till closed
    collected: set[str]


def _nearest(
    demand: dict[str, int],
    candidates: list[Location],
    to_sell: Any,
    lat: float | None,
    lon: float | None,
    region: str | None,
) -> Location | None:
    """CONTRACT §10 by brute force: every candidate covering every sku, the least of an
    explicit key (distance, then the larger smallest spare, then the id)."""
    best: tuple[tuple[object, ...], Location] | None = None
    for loc in candidates:
        spares = [to_sell(sku, loc.location_id) - qty for sku, qty in demand.items()]
        if min(spares) < 0:
            continue
        if lat is not None and lon is not None:
            if loc.lat is None or loc.lon is None:
                key: tuple[object, ...] = (1, 0.0, -min(spares), loc.location_id)
            else:
                # nearest as published (0.1 km): equal published distances are a tie
                distance = round(great_circle_km(loc, lat, lon), 1)
                key = (0, distance, -min(spares), loc.location_id)
        else:
            key = (0 if region is not None and loc.region == region else 1, -min(spares),
                   loc.location_id)  # fmt: skip
        if best is None or key < best[0]:
            best = (key, loc)
    return best[1] if best else None


def fold_pool(events: Iterable[GeneratedEvent], reference: ReferenceData | None = None) -> Fold:
    reference = reference if reference is not None else load_reference(Config())
    items: list[tuple[int, str, str, dict[str, Any], int]] = []
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
            items.append((ts, f"{eid}#0", "wms", e, 0))
            if kind == "transfer_out" and e.get("to_location_id"):
                items.append((ts, f"{eid}#transit", "transit", e, 0))
        elif generated.topic == "pos.sales":
            for i in range(len(e["lines"])):
                items.append((ts, f"{eid}#{i}", "pos", e, i))
        elif kind in {"order_placed", "order_cancelled"}:
            items.append((ts, eid, "order", e, 0))
    positions: dict[str, Position] = collections.defaultdict(Position)
    safety = {sku: p.safety_stock for sku, p in reference.products.items()}
    locations = [reference.locations[k] for k in sorted(reference.locations)]

    def to_sell(sku: str, location_id: str) -> int:
        key = f"{sku}:{location_id}"
        return positions[key].to_sell(safety[sku]) if key in positions else 0

    where: dict[str, str | None] = {}
    placed_lines: dict[str, list[str]] = {}
    cancelled: set[str] = set()
    fold = Fold(positions, {}, {}, set())
    for ts, _, source, e, line_no in sorted(items, key=lambda item: (item[0], item[1])):
        eid = e["event_id"]
        if source == "wms":
            positions[f"{e['sku']}:{e['location_id']}"].apply(
                eid, e["event_type"], ts, e["qty"], e.get("order_id"), e.get("transfer_id")
            )
        elif source == "transit":
            positions[f"{e['sku']}:{e['to_location_id']}"].apply(
                eid, "transit", ts, e["qty"], None, e.get("transfer_id")
            )
        elif source == "pos":
            line = e["lines"][line_no]
            positions[f"{line['sku']}:{e['store_id']}"].apply(
                eid, e["event_type"], ts, line["qty"], e.get("order_id")
            )
            order = e.get("order_id")
            if e["event_type"] == "sale" and order in fold.tasks and order not in cancelled:
                fold.collected.add(order)
        elif e["event_type"] == "order_placed":
            order = e["order_id"]
            demand: dict[str, int] = collections.Counter()
            for line in e["lines"]:
                demand[line["sku"]] += line["qty"]
            f = e["fulfillment"]
            location = f.get("location_id")
            if f["type"] == "store_pickup":
                store = reference.locations[location]
                covered = all(to_sell(sku, location) >= qty for sku, qty in demand.items())
                alternative = None
                if not covered:
                    others = [x for x in locations if offers_pickup(x) and x != store]
                    alt = _nearest(demand, others, to_sell, store.lat, store.lon, store.region)
                    alternative = alt.location_id if alt else None
                fold.tasks[order] = (
                    "pickup_prep" if covered else "pickup_exception",
                    alternative,
                )
            elif location is None:
                chosen = _nearest(
                    demand,
                    [x for x in locations if ships(x)],
                    to_sell,
                    f.get("lat"),
                    f.get("lon"),
                    f.get("region"),
                )
                location = chosen.location_id if chosen else None
                fold.sourced[order] = ("sourced", location) if location else ("unfulfillable", None)
            where[order] = location
            placed_lines[order] = list(dict.fromkeys(line["sku"] for line in e["lines"]))
            if location is not None:
                for line in e["lines"]:
                    positions[f"{line['sku']}:{location}"].apply(
                        eid, "reserve", ts, line["qty"], order
                    )
        else:  # order_cancelled: releases whatever its placement reserved
            order = e["order_id"]
            cancelled.add(order)
            location = where.get(order)
            if location is None:
                continue
            for sku in placed_lines[order]:
                positions[f"{sku}:{location}"].apply(eid, "release", ts, 0, order)
    return fold


def expected_stock(
    events: Iterable[GeneratedEvent], reference: ReferenceData | None = None
) -> dict[str, dict[str, object]]:
    reference = reference if reference is not None else load_reference(Config())
    fold = fold_pool(events, reference)
    return {
        key: p.figures(reference.products[key.split(":")[0]].safety_stock)
        for key, p in fold.positions.items()
    }


def event_time_sequences(
    events: Iterable[GeneratedEvent], reference: ReferenceData | None = None
) -> dict[str, list[tuple[str, int, int]]]:
    """Per sku × location: (cause, on_hand, reserved) after each movement."""
    return {key: p.published for key, p in fold_pool(events, reference).positions.items()}


def expected_fulfilment(
    events: Iterable[GeneratedEvent], reference: ReferenceData | None = None
) -> Fold:
    return fold_pool(events, reference)


def stored_figures(row: dict[str, str]) -> dict[str, object]:
    """The figures of a stored ``stock:<sku>:<location>`` hash (CONTRACT §5), as
    ``expected_stock`` gives them."""
    figures: dict[str, object] = {
        name: int(row[name])
        for name in (
            "on_hand",
            "reserved",
            "available",
            "sold_1h",
            "sold_24h",
            "safety_stock",
            "in_transit",
            "available_to_sell",
        )
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
