"""The traffic generator: reproducible, contract-valid, realistic (no Kafka needed)."""

from __future__ import annotations

import argparse
import itertools
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from base.config import load_config
from connectors.decode import decode_message
from connectors.generator import (
    BAD_REASONS,
    CHANNELS,
    GeneratedEvent,
    TrafficModel,
    produce,
    producing,
)
from connectors.reference_files import load_reference
from domain.events import (
    CLICK_EVENT_TYPES,
    MOVEMENT_EVENT_TYPES,
    POS_EVENT_TYPES,
    Origin,
    Rejection,
)
from domain.fulfilment import source_order
from domain.timeparse import parse_event_time
from omnistream.generate_cli import add_generate_arguments

CONFIG = load_config(env={})
REFERENCE = load_reference(CONFIG)
KEY_FIELD = {"clickstream": "anonymous_id", "pos.sales": "store_id", "wms.movements": "location_id"}
TYPES = {
    "clickstream": CLICK_EVENT_TYPES,
    "pos.sales": POS_EVENT_TYPES,
    "wms.movements": MOVEMENT_EVENT_TYPES,
}
RFC3339_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+08:00$")


@pytest.fixture(scope="module")
def stream() -> list[GeneratedEvent]:
    return list(TrafficModel(REFERENCE, seed=7).events(20_000))


@pytest.fixture(scope="module")
def good(stream: list[GeneratedEvent]) -> list[tuple[GeneratedEvent, dict[str, Any]]]:
    """The good events without their duplicates, with their decoded JSON."""
    return [(e, orjson.loads(e.value)) for e in stream if not e.duplicate]


@pytest.fixture(scope="module")
def book(good: list[tuple[GeneratedEvent, dict[str, Any]]]) -> StockBook:
    folded = StockBook()
    for event, payload in good:
        folded.apply(event, payload)
    return folded


@pytest.fixture(scope="module")
def noisy() -> list[GeneratedEvent]:
    return list(TrafficModel(REFERENCE, seed=11, bad_ratio=0.1).events(20_000))


def decode(event: GeneratedEvent, index: int = 0) -> object:
    origin = Origin(event.topic, 0, index, event.key)
    return decode_message(event.topic, event.value, origin, REFERENCE, hasher=lambda k, v: "h")


def fingerprint(events: list[GeneratedEvent]) -> list[tuple[object, ...]]:
    return [(e.topic, e.key, e.value, e.event_id, e.bad_reason, e.duplicate) for e in events]


def lines_total(lines: list[dict[str, Any]]) -> float:
    return sum(line["qty"] * line["unit_price"] for line in lines)


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Spherical law of cosines (written apart from the domain's haversine)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    cos = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0088 * math.acos(min(1.0, max(-1.0, cos)))


@dataclass
class StockBook:
    """The stock every location holds, folded from the good events in publication order —
    what a shop that saw only the published events would know. The generator changes its
    own model exactly when it publishes the event that says so, so at every order this book
    is the generator's model; the tests source unsourced orders on it with
    ``domain.fulfilment.source_order`` and compare with what the generator then did."""

    on_hand: Counter[tuple[str, str]] = field(default_factory=Counter)
    reserved: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: order_id → its ``order_placed`` payload.
    placed: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: order_id → where its stock is reserved: the named location, or the one sourcing
    #: picks (None: unfulfillable).
    where: dict[str, str | None] = field(default_factory=dict)
    #: pickup order_id → (sku, missing units) its store lacked when it was placed.
    short: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    #: sku × location that had nothing left to sell after some event.
    ran_out: set[tuple[str, str]] = field(default_factory=set)

    def available(self, key: tuple[str, str]) -> int:
        return self.on_hand[key] - self.reserved[key]

    def ats(self, sku: str, location_id: str) -> int:
        safety = REFERENCE.products[sku].safety_stock
        return max(0, self.available((sku, location_id)) - safety)

    def apply(self, event: GeneratedEvent, p: dict[str, Any]) -> None:
        kind = p["event_type"]
        sign = {"receipt": 1, "transfer_in": 1, "adjustment": 1, "shipment": -1, "transfer_out": -1}
        touched: list[tuple[str, str]] = []
        if event.topic == "wms.movements":
            key = (p["sku"], p["location_id"])
            if kind == "stock_count":
                self.on_hand[key] = p["qty"]
            else:
                self.on_hand[key] += sign[kind] * p["qty"]
            if kind == "shipment":
                self.reserved[key] -= p["qty"]
            touched = [key]
        elif event.topic == "pos.sales":
            for line in p["lines"]:
                key = (line["sku"], p["store_id"])
                self.on_hand[key] += line["qty"] if kind == "return" else -line["qty"]
                if "order_id" in p:
                    self.reserved[key] -= line["qty"]
                touched.append(key)
        elif kind == "order_placed":
            touched = self._place(p)
        elif kind == "order_cancelled":
            location_id = self.where[p["order_id"]]
            if location_id is not None:
                for line in p["lines"]:
                    self.reserved[(line["sku"], location_id)] -= line["qty"]
                    touched.append((line["sku"], location_id))
        self.ran_out.update(k for k in touched if self.available(k) <= 0)

    def _place(self, p: dict[str, Any]) -> list[tuple[str, str]]:
        order_id, fulfillment = p["order_id"], p["fulfillment"]
        self.placed[order_id] = p
        location_id = fulfillment.get("location_id")
        if location_id is None:
            decision = source_order(
                [(line["sku"], line["qty"]) for line in p["lines"]],
                self.ats,
                REFERENCE.locations.values(),
                fulfillment.get("lat"),
                fulfillment.get("lon"),
                fulfillment.get("region"),
            )
            location_id = decision.location_id
        elif fulfillment["type"] == "store_pickup":
            self.short[order_id] = [
                (line["sku"], line["qty"] - self.ats(line["sku"], location_id))
                for line in p["lines"]
                if self.ats(line["sku"], location_id) < line["qty"]
            ]
        self.where[order_id] = location_id
        if location_id is None:
            return []
        for line in p["lines"]:
            self.reserved[(line["sku"], location_id)] += line["qty"]
        return [(line["sku"], location_id) for line in p["lines"]]


# --- reproducibility --------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    first = list(TrafficModel(REFERENCE, seed=3, bad_ratio=0.05).events(5_000))
    again = list(TrafficModel(REFERENCE, seed=3, bad_ratio=0.05).events(5_000))
    assert fingerprint(first) == fingerprint(again)
    model = TrafficModel(REFERENCE, seed=3, bad_ratio=0.05)
    assert fingerprint(list(model.events(5_000))) == fingerprint(list(model.events(5_000)))


def test_different_seed_gives_different_stream() -> None:
    one = list(TrafficModel(REFERENCE, seed=1).events(3_000))
    two = list(TrafficModel(REFERENCE, seed=2).events(3_000))
    assert [e.value for e in one] != [e.value for e in two]
    assert not {e.event_id for e in one} & {e.event_id for e in two}


def test_good_events_do_not_depend_on_bad_ratio() -> None:
    clean = [e.value for e in TrafficModel(REFERENCE, seed=5).events(4_000) if not e.duplicate]
    mixed = [
        e.value
        for e in TrafficModel(REFERENCE, seed=5, bad_ratio=0.3).events(4_000)
        if e.bad_reason is None and not e.duplicate
    ]
    assert len(mixed) < len(clean)
    assert mixed == clean[: len(mixed)]


def test_count_is_exact_and_none_is_endless() -> None:
    model = TrafficModel(REFERENCE, seed=1)
    assert list(model.events(0)) == []
    assert len(list(model.events(123))) == 123
    assert len(list(itertools.islice(model.events(None), 2_500))) == 2_500


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="bad_ratio"):
        TrafficModel(REFERENCE, seed=1, bad_ratio=1.5)
    with pytest.raises(ValueError, match="customers"):
        TrafficModel(REFERENCE, seed=1, customers=0)
    with pytest.raises(ValueError, match="count"):
        TrafficModel(REFERENCE, seed=1).events(-1)


# --- contract validity of the good events ------------------------------------------------------


def test_every_good_event_is_valid_per_the_decoder(stream: list[GeneratedEvent]) -> None:
    for index, event in enumerate(stream):
        assert event.bad_reason is None
        decoded = decode(event, index)
        assert not isinstance(decoded, Rejection), (decoded, event.value)
        payload = orjson.loads(event.value)
        assert payload["event_type"] in TYPES[event.topic]
        assert event.key == payload[KEY_FIELD[event.topic]].encode()
        assert event.event_id == payload["event_id"]


def test_event_ids_unique_except_intentional_duplicates(stream: list[GeneratedEvent]) -> None:
    first_seen: dict[str, bytes] = {}
    duplicates = 0
    for event in stream:
        assert event.event_id is not None
        if event.duplicate:
            duplicates += 1
            assert first_seen[event.event_id] == event.value  # an exact, earlier copy
        else:
            assert event.event_id not in first_seen
            first_seen[event.event_id] = event.value
    assert 0.003 * len(stream) < duplicates < 0.008 * len(stream)


def test_skus_locations_and_quantities_follow_the_contract(good: list) -> None:
    for event, payload in good:
        if event.topic == "wms.movements":
            assert payload["sku"] in REFERENCE.products
            assert payload["location_id"] in REFERENCE.locations
            kind, qty = payload["event_type"], payload["qty"]
            if kind == "adjustment":
                assert qty != 0 and "reason" in payload
            elif kind == "stock_count":
                assert qty >= 0
            else:
                assert qty >= 1
        for line in payload.get("lines", []):
            assert line["sku"] in REFERENCE.products
            assert line["qty"] >= 1 and line["unit_price"] >= 0
        if event.topic == "pos.sales":
            assert REFERENCE.locations[payload["store_id"]].type == "store"
            assert payload["lines"]


def test_totals_equal_the_sum_of_the_lines(good: list) -> None:
    checked = 0
    for _, payload in good:
        if "lines" in payload:
            assert payload["total"] == pytest.approx(lines_total(payload["lines"]), abs=0.005)
            assert round(payload["total"], 2) == payload["total"]
            checked += 1
    assert checked > 1_000


def test_order_follow_ups_refer_to_earlier_orders(good: list, book: StockBook) -> None:
    placed: dict[str, dict[str, Any]] = {}
    outcome: dict[str, str] = {}
    shipped: Counter[tuple[str, str]] = Counter()
    for event, payload in good:
        kind, order_id = payload["event_type"], payload.get("order_id")
        if kind == "order_placed":
            assert order_id not in placed
            fulfillment = payload["fulfillment"]
            if fulfillment["type"] == "store_pickup":
                assert REFERENCE.locations[fulfillment["location_id"]].type == "store"
            else:
                assert fulfillment["type"] == "delivery"
                if "location_id" in fulfillment:  # named, as before sourcing: a warehouse
                    location = REFERENCE.locations[fulfillment["location_id"]]
                    assert location.type in {"warehouse", "forward_warehouse"}
            placed[order_id] = payload
            continue
        if order_id is None:
            continue
        order = placed[order_id]  # KeyError: a follow-up of an order never placed
        assert parse_event_time(payload["ts"]) > parse_event_time(order["ts"])
        fulfillment = order["fulfillment"]
        if kind == "order_cancelled":
            assert order_id not in outcome
            outcome[order_id] = "cancelled"
            assert "fulfillment" not in payload
            assert payload["lines"] == order["lines"] and payload["total"] == order["total"]
            assert payload["anonymous_id"] == order["anonymous_id"]
        elif kind == "shipment":
            assert outcome.setdefault(order_id, "shipped") == "shipped"
            assert fulfillment["type"] == "delivery"
            assert payload["location_id"] == book.where[order_id]  # named or sourced there
            assert REFERENCE.locations[payload["location_id"]].ships
            line = next(ln for ln in order["lines"] if ln["sku"] == payload["sku"])
            assert payload["qty"] == line["qty"]
            shipped[(order_id, payload["sku"])] += 1
        else:
            assert (event.topic, kind) == ("pos.sales", "sale")
            assert order_id not in outcome
            outcome[order_id] = "picked up"
            assert fulfillment["type"] == "store_pickup"
            assert payload["store_id"] == fulfillment["location_id"]
            assert payload["lines"] == order["lines"] and payload["total"] == order["total"]
    assert max(shipped.values()) == 1  # one shipment per line
    counts = Counter(outcome.values())
    assert counts["cancelled"] and counts["shipped"] and counts["picked up"]
    assert len(placed) > 250  # of 20,000 events, about one in seven a campaign message


def test_transfers_come_in_pairs(good: list) -> None:
    outgoing: dict[str, dict[str, Any]] = {}
    arrived: set[str] = set()
    for _, payload in good:
        if payload["event_type"] == "transfer_out":
            assert payload["transfer_id"] not in outgoing
            outgoing[payload["transfer_id"]] = payload
        elif payload["event_type"] == "transfer_in":
            sent = outgoing[payload["transfer_id"]]  # KeyError: an arrival nobody sent
            assert payload["transfer_id"] not in arrived
            arrived.add(payload["transfer_id"])
            assert (payload["sku"], payload["qty"]) == (sent["sku"], sent["qty"])
            assert payload["location_id"] != sent["location_id"]
            assert payload["location_id"] == sent["to_location_id"]  # the named destination
            assert parse_event_time(payload["ts"]) > parse_event_time(sent["ts"])
    assert len(arrived) > 50


def test_perishable_receipts_carry_their_expiry_date(good: list) -> None:
    perishable_receipts = 0
    for _, payload in good:
        if payload["event_type"] != "receipt":
            continue
        shelf_life = REFERENCE.products[payload["sku"]].shelf_life_days
        if shelf_life is None:
            assert "expiry_date" not in payload
            continue
        perishable_receipts += 1
        local_day = (parse_event_time(payload["ts"]) + 8 * 3_600_000) // 86_400_000
        # A late-arriving receipt may be stamped a few seconds before its batch was booked.
        expected = {
            (date(1970, 1, 1) + timedelta(days=local_day + shelf_life + shift)).isoformat()
            for shift in (0, 1)
        }
        assert payload["expiry_date"] in expected
    assert perishable_receipts > 100


def test_timestamps_mix_formats_arrive_slightly_out_of_order_and_span_hours(good: list) -> None:
    formats: Counter[str] = Counter()
    latest = late = 0
    times = []
    for _, payload in good:
        ts = payload["ts"]
        if isinstance(ts, int):
            formats["epoch_ms"] += 1
        else:
            assert RFC3339_LOCAL.match(ts), ts
            formats["rfc3339"] += 1
        ts_ms = parse_event_time(ts)
        assert ts_ms > latest - 5_000  # out of order by seconds, never more
        if ts_ms < latest:
            late += 1
        latest = max(latest, ts_ms)
        times.append(ts_ms)
    assert formats["epoch_ms"] > 0.2 * len(good) and formats["rfc3339"] > 0.6 * len(good)
    assert 0.01 * len(good) < late < 0.06 * len(good)
    assert times[10_000] - times[0] >= 3_600_000  # 10,000 events span an hour or more


def test_all_contract_event_types_and_traffic_features_appear(good: list) -> None:
    seen = {(event.topic, payload["event_type"]) for event, payload in good}
    for topic, types in TYPES.items():
        assert {(topic, kind) for kind in types} <= seen
    clicks = [p for e, p in good if e.topic == "clickstream"]
    assert set(CHANNELS) <= {p["channel"] for p in clicks}
    campaigns = [p["campaign"] for p in clicks if "campaign" in p]
    assert campaigns and all({"source", "medium", "campaign"} <= set(c) for c in campaigns)
    assert any("content" in c for c in campaigns) and any("content" not in c for c in campaigns)
    assert any(p["event_type"] == "ad_click" and "campaign" in p for p in clicks)
    logins = [p for p in clicks if p["event_type"] == "login"]
    assert all("user_id" in p for p in logins)
    assert any("phone" in p for p in logins) and any("email" in p for p in logins)
    assert sum("region" in p for p in clicks) > 0.7 * len(clicks)
    sales = [p for e, p in good if e.topic == "pos.sales" and p["event_type"] == "sale"]
    walk_ins = [p for p in sales if "order_id" not in p]
    for feature in ("member_code", "phone", "coupon_codes"):
        assert any(feature in p for p in walk_ins), feature
    assert any("member_code" not in p for p in walk_ins)
    mix = Counter(e.topic for e, _ in good)
    assert 0.5 < mix["clickstream"] / len(good) < 0.75
    assert 0.12 < mix["pos.sales"] / len(good) < 0.3
    assert 0.08 < mix["wms.movements"] / len(good) < 0.25


def test_stock_mostly_stays_positive_but_some_skus_run_out(book: StockBook) -> None:
    negative = sum(1 for v in book.on_hand.values() if v < 0)
    assert negative <= 0.02 * len(book.on_hand)
    assert len(book.ran_out) >= 10  # stockouts do happen
    assert min(book.reserved.values()) >= 0


# --- fulfilment: sourcing, pickup exceptions --------------------------------------------------


@pytest.fixture(scope="module")
def sourced_day() -> tuple[list[tuple[GeneratedEvent, dict[str, Any]]], StockBook]:
    """Another seeded day (a seed whose supply troubles leave a few orders unfulfillable
    and whose day sees a pickup exception collected), its good events and the stock book
    folded from them."""
    events = [
        (e, orjson.loads(e.value))
        for e in TrafficModel(REFERENCE, seed=3).events(20_000)
        if not e.duplicate
    ]
    folded = StockBook()
    for event, payload in events:
        folded.apply(event, payload)
    return events, folded


def order_outcomes(good: list[tuple[GeneratedEvent, dict[str, Any]]]) -> dict[str, list[dict]]:
    """order_id → the follow-ups that name it (shipments, the till sale, the cancellation)."""
    follow_ups: dict[str, list[dict[str, Any]]] = {}
    for _, payload in good:
        if "order_id" in payload and payload["event_type"] != "order_placed":
            follow_ups.setdefault(payload["order_id"], []).append(payload)
    return follow_ups


def test_most_delivery_orders_leave_the_location_to_sourcing(sourced_day: tuple) -> None:
    _, book = sourced_day
    deliveries = [p for p in book.placed.values() if p["fulfillment"]["type"] == "delivery"]
    unsourced = [p for p in deliveries if "location_id" not in p["fulfillment"]]
    assert len(deliveries) > 220
    assert 0.6 < len(unsourced) / len(deliveries) < 0.8  # the default share, 0.7
    addressed = [p for p in unsourced if "lat" in p["fulfillment"]]
    region_only = [p for p in unsourced if set(p["fulfillment"]) == {"type", "region"}]
    bare = [p for p in unsourced if set(p["fulfillment"]) == {"type"}]
    assert len(addressed) + len(region_only) + len(bare) == len(unsourced)
    assert len(addressed) > 0.8 * len(unsourced) and region_only and bare
    stores = [loc for loc in REFERENCE.locations.values() if loc.type == "store"]
    for p in addressed:
        f = p["fulfillment"]
        assert f["region"] in {loc.region for loc in stores}
        nearest = min(
            great_circle_km(f["lat"], f["lon"], loc.lat, loc.lon)  # type: ignore[arg-type]
            for loc in stores
            if loc.region == f["region"]
        )
        assert nearest <= 5.01  # a few km from the shopper's home store
    outcomes = Counter(
        "unfulfillable" if book.where[p["order_id"]] is None else "sourced" for p in unsourced
    )
    assert outcomes["sourced"] > 0.9 * len(unsourced) and outcomes["unfulfillable"] > 0
    sourced_to = Counter(REFERENCE.locations[w].type for w in book.where.values() if w)
    assert sourced_to["store"] and sourced_to["warehouse"] and sourced_to["forward_warehouse"]


def test_an_unsourced_delivery_ships_from_the_location_source_order_picks(
    sourced_day: tuple,
) -> None:
    """The book sources each order on the stock the published events imply; the generator
    ships it from there, and an order nothing covers is never shipped but cancelled."""
    good, book = sourced_day
    follow_ups = order_outcomes(good)
    shipped = cancelled_unfulfillable = 0
    for order_id, order in book.placed.items():
        if order["fulfillment"]["type"] != "delivery" or "location_id" in order["fulfillment"]:
            continue
        where = book.where[order_id]
        kinds = Counter(p["event_type"] for p in follow_ups.get(order_id, []))
        if where is None:
            assert "shipment" not in kinds
            if kinds:
                (cancel,) = follow_ups[order_id]
                assert cancel["event_type"] == "order_cancelled"
                waited = parse_event_time(cancel["ts"]) - parse_event_time(order["ts"])
                assert 9 * 60_000 < waited < 41 * 60_000
                cancelled_unfulfillable += 1
            continue
        shipments = [p for p in follow_ups.get(order_id, []) if p["event_type"] == "shipment"]
        assert {p["location_id"] for p in shipments} <= {where}
        if shipments:  # one per line (the last order of the stream may be cut short)
            skus = [p["sku"] for p in shipments]
            assert len(set(skus)) == len(skus) and set(skus) <= {ln["sku"] for ln in order["lines"]}
            shipped += 1
    assert shipped > 100 and cancelled_unfulfillable > 0


def test_a_few_pickups_are_placed_at_a_store_that_lacks_the_goods(sourced_day: tuple) -> None:
    """Pickup exceptions: the store is short when the order arrives; the missing units come
    in by transfer before the shopper collects (or the shop cancels the order)."""
    good, book = sourced_day
    follow_ups = order_outcomes(good)
    pickups = [o for o, p in book.placed.items() if p["fulfillment"]["type"] == "store_pickup"]
    exceptions = [o for o in pickups if book.short[o]]
    assert len(pickups) > 30
    assert 0 < len(exceptions) <= 0.25 * len(pickups)
    arrivals: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for _, p in good:
        if p["event_type"] == "transfer_in":
            key = (p["sku"], p["location_id"])
            arrivals.setdefault(key, []).append((parse_event_time(p["ts"]), p["qty"]))
    collected = 0
    for order_id in exceptions:
        order = book.placed[order_id]
        store, placed_at = order["fulfillment"]["location_id"], parse_event_time(order["ts"])
        sales = [p for p in follow_ups.get(order_id, []) if p["event_type"] == "sale"]
        if not sales:
            continue
        collected += 1
        collected_at = parse_event_time(sales[0]["ts"])
        for sku, missing in book.short[order_id]:
            assert any(
                placed_at < at < collected_at and qty == missing
                for at, qty in arrivals.get((sku, store), [])
            ), (order_id, sku, missing)
    assert collected > 0


def test_the_unsourced_share_is_configurable() -> None:
    for share, named in ((0.0, True), (1.0, False)):
        placed = [
            orjson.loads(e.value)["fulfillment"]
            for e in TrafficModel(REFERENCE, seed=4, unsourced_share=share).events(8_000)
            if b'"order_placed"' in e.value and not e.duplicate
        ]
        deliveries = [f for f in placed if f["type"] == "delivery"]
        assert len(deliveries) > 50
        assert all(("location_id" in f) is named for f in deliveries)
    with pytest.raises(ValueError, match="unsourced_share"):
        TrafficModel(REFERENCE, unsourced_share=1.2)


# --- malformed traffic -------------------------------------------------------------------------


def test_bad_ratio_gives_that_share_with_every_reason(noisy: list[GeneratedEvent]) -> None:
    reasons = Counter(e.bad_reason for e in noisy if e.bad_reason is not None)
    assert 0.09 * len(noisy) < sum(reasons.values()) < 0.11 * len(noisy)
    assert set(reasons) == set(BAD_REASONS)
    assert min(reasons.values()) > 100


def test_each_malformed_event_gets_its_reason_from_the_decoder(
    noisy: list[GeneratedEvent],
) -> None:
    for index, event in enumerate(noisy):
        decoded = decode(event, index)
        if event.bad_reason is None:
            assert not isinstance(decoded, Rejection), (decoded, event.value)
        else:
            assert isinstance(decoded, Rejection), event.value
            assert decoded.reason == event.bad_reason, (decoded.error, event.value)


def test_malformed_fulfilment_fields_are_among_the_bad_events(
    noisy: list[GeneratedEvent],
) -> None:
    """The new fields' bad forms appear, each with the reason the decoder must give."""
    seen: Counter[tuple[str, str]] = Counter()
    for event in noisy:
        if event.bad_reason is None or event.bad_reason == "malformed_json":
            continue
        payload = orjson.loads(event.value)
        fulfillment = payload.get("fulfillment")
        if isinstance(fulfillment, dict) and {"lat", "lon"} & set(fulfillment):
            seen[("coordinates", event.bad_reason)] += 1
        if "to_location_id" in payload:
            seen[("to_location_id", event.bad_reason)] += 1
    for reason in ("bad_type", "bad_value"):
        assert seen[("coordinates", reason)] > 5, reason
    for reason in ("bad_type", "bad_value", "unknown_location"):
        assert seen[("to_location_id", reason)] > 5, reason


def test_some_malformed_events_carry_raw_pii(noisy: list[GeneratedEvent]) -> None:
    bad = [e for e in noisy if e.bad_reason is not None]
    with_phone = [e for e in bad if b"phone" in e.value]
    with_email = [e for e in bad if b"@example." in e.value]
    assert len(with_phone) > 100 and len(with_email) > 50
    assert {e.bad_reason for e in with_phone} >= {"malformed_json", "bad_timestamp"}


# --- producing (a fake producer stands in for Kafka) -------------------------------------------


class FakeProducer:
    """Refuses every third message once with BufferError, like a full librdkafka queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.refusals = 0
        self.polls = 0
        self._calls = 0

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self._calls += 1
        if self._calls % 3 == 0:
            self.refusals += 1
            raise BufferError("queue full")
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    fake = FakeProducer()
    monkeypatch.setattr(producing, "make_producer", lambda config: fake)
    return fake


def test_produce_sends_everything_to_prefixed_topics(fake_producer: FakeProducer) -> None:
    config = load_config(env={"OMNI_TOPIC_PREFIX": "acme."})
    events = list(TrafficModel(REFERENCE, seed=2, bad_ratio=0.1).events(2_000))
    stats = produce(config, events, progress=False)
    assert fake_producer.refusals > 0  # retried, not dropped
    assert [(t, k, v) for t, k, v in fake_producer.sent] == [
        (f"acme.{e.topic}", e.key, e.value) for e in events
    ]
    assert stats.total == 2_000
    assert stats.produced == dict(Counter(e.topic for e in events))
    assert stats.bad == dict(Counter(e.bad_reason for e in events if e.bad_reason))
    assert stats.duplicates == sum(e.duplicate for e in events)
    assert stats.elapsed_s > 0 and not stats.interrupted


def test_produce_paces_to_the_rate_and_stops_after_the_duration(
    fake_producer: FakeProducer,
) -> None:
    started = time.monotonic()
    stats = produce(CONFIG, TrafficModel(REFERENCE, seed=2).events(60), rate=300, progress=False)
    assert stats.total == 60
    assert time.monotonic() - started >= 0.15  # 60 events at 300/s ≈ 0.2 s
    # Endless, and without the generator's own start-up inside the timed window (on a
    # loaded machine building the first events took longer than the duration: 0 produced).
    endless = itertools.cycle(list(TrafficModel(REFERENCE, seed=2).events(500)))
    stats = produce(CONFIG, endless, rate=1_000, duration_s=0.3, progress=False)
    # It stops (an endless input) once the duration is over, having produced some but never
    # more than the rate allows over the time it ran, plus the bucket's tenth of a second.
    assert stats.elapsed_s >= 0.3
    assert 1 <= stats.total <= 1_000 * stats.elapsed_s + 100


def test_produce_shows_progress_on_stderr(
    fake_producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    produce(CONFIG, TrafficModel(REFERENCE, seed=2).events(100), progress=True, total=100)
    err = capsys.readouterr().err
    assert "100/100 events (100%)" in err and "ev/s" in err
    produce(CONFIG, TrafficModel(REFERENCE, seed=2).events(100), progress=False)
    assert capsys.readouterr().err == ""


# --- command-line options ----------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omnistream generate")
    add_generate_arguments(parser)
    return parser.parse_args(argv)


def test_generate_options_and_defaults() -> None:
    args = parse()
    assert (args.seed, args.count, args.duration, args.rate) == (7, None, None, None)
    assert (args.customers, args.bad_ratio, args.progress) == (2_000, 0.0, True)
    args = parse(
        "--seed",
        "9",
        "--duration",
        "30",
        "--rate",
        "500",
        "--bad-ratio",
        "0.2",
        "--customers",
        "50",
        "--no-progress",
    )
    assert (args.seed, args.duration, args.rate, args.bad_ratio) == (9, 30.0, 500.0, 0.2)
    assert (args.customers, args.progress) == (50, False)


@pytest.mark.parametrize(
    "argv",
    [
        ("--bad-ratio", "1.5"),
        ("--bad-ratio", "-0.1"),
        ("--count", "0"),
        ("--rate", "0"),
        ("--count", "5", "--duration", "3"),
        ("--customers", "many"),
    ],
)
def test_generate_options_are_validated(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)
