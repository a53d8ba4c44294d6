"""The traffic generator: reproducible, contract-valid, realistic (no Kafka needed)."""

from __future__ import annotations

import argparse
import itertools
import re
import time
from collections import Counter
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
def noisy() -> list[GeneratedEvent]:
    return list(TrafficModel(REFERENCE, seed=11, bad_ratio=0.1).events(20_000))


def decode(event: GeneratedEvent, index: int = 0) -> object:
    origin = Origin(event.topic, 0, index, event.key)
    return decode_message(event.topic, event.value, origin, REFERENCE, hasher=lambda k, v: "h")


def fingerprint(events: list[GeneratedEvent]) -> list[tuple[object, ...]]:
    return [(e.topic, e.key, e.value, e.event_id, e.bad_reason, e.duplicate) for e in events]


def lines_total(lines: list[dict[str, Any]]) -> float:
    return sum(line["qty"] * line["unit_price"] for line in lines)


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


def test_order_follow_ups_refer_to_earlier_orders(good: list) -> None:
    placed: dict[str, dict[str, Any]] = {}
    outcome: dict[str, str] = {}
    shipped: Counter[tuple[str, str]] = Counter()
    for event, payload in good:
        kind, order_id = payload["event_type"], payload.get("order_id")
        if kind == "order_placed":
            assert order_id not in placed
            fulfillment = payload["fulfillment"]
            location = REFERENCE.locations[fulfillment["location_id"]]
            if fulfillment["type"] == "store_pickup":
                assert location.type == "store"
            else:
                assert fulfillment["type"] == "delivery"
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
            assert payload["location_id"] == fulfillment["location_id"]
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
    assert len(placed) > 300


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


def test_stock_mostly_stays_positive_but_some_skus_run_out(good: list) -> None:
    on_hand: Counter[tuple[str, str]] = Counter()
    reserved: Counter[tuple[str, str]] = Counter()
    placed: dict[str, dict[str, Any]] = {}
    ran_out: set[tuple[str, str]] = set()
    sign = {"receipt": 1, "transfer_in": 1, "adjustment": 1, "shipment": -1, "transfer_out": -1}
    for event, p in good:
        kind = p["event_type"]
        touched: list[tuple[str, str]] = []
        if event.topic == "wms.movements":
            key = (p["sku"], p["location_id"])
            if kind == "stock_count":
                on_hand[key] = p["qty"]
            else:
                on_hand[key] += sign[kind] * p["qty"]
            if kind == "shipment":
                reserved[key] -= p["qty"]
            touched = [key]
        elif event.topic == "pos.sales":
            for line in p["lines"]:
                key = (line["sku"], p["store_id"])
                on_hand[key] += line["qty"] if kind == "return" else -line["qty"]
                if "order_id" in p:
                    reserved[key] -= line["qty"]
                touched.append(key)
        elif kind in ("order_placed", "order_cancelled"):
            order = placed.setdefault(p["order_id"], p)
            for line in p["lines"]:
                key = (line["sku"], order["fulfillment"]["location_id"])
                reserved[key] += line["qty"] if kind == "order_placed" else -line["qty"]
                touched.append(key)
        ran_out.update(k for k in touched if on_hand[k] - reserved[k] <= 0)
    negative = sum(1 for v in on_hand.values() if v < 0)
    assert negative <= 0.02 * len(on_hand)
    assert len(ran_out) >= 10  # stockouts do happen
    assert min(reserved.values()) >= 0


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
    endless = TrafficModel(REFERENCE, seed=2).events(None)
    stats = produce(CONFIG, endless, rate=1_000, duration_s=0.3, progress=False)
    assert 150 <= stats.total <= 400


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
