"""``omnistream rules backtest`` over a recorded JSON-lines file: what would fire, what would be
held back, what would convert — offline, as a replay of the flow runs it, with the recorded
stock as of each lookup or at the end of the recording."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from base.config import Config
from connectors.envelopes import cloud_event
from connectors.reference_files import load_reference
from connectors.rules_file import load_rules
from domain.trigger_policy import draw_variant
from omnistream.backtest import Backtest, Tally, decode_records, file_records
from omnistream.cli import main

MIN = 60_000
T0 = 1_793_500_000_000  # 2026-11-01T10:26:40+08:00: outside quiet hours
RULES = """
defaults: {frequency_cap_per_day: 5, conversion_window: 1d}
rules:
  - {id: low, kind: low_stock, cooldown: 6h, params: {target_cover_days: 7}}
  - id: cart
    kind: cart_abandonment
    cooldown: 1d
    params: {within: 10m}
    coupon: {type: amount_off, value: 5}
    experiment: {salt: bt, control_share: 0.5, variants: {a: 1}}
  - id: browse
    kind: browse_nearby_stock
    cooldown: 1d
    params: {views: 2, within: 30m, min_available: 3}
    coupon: {type: percent_off, value: 10}
"""


def resolved(customer: str, n: int, event_type: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{customer}-{n}",
        "event_type": event_type,
        "ts": ts,
        "customer_id": customer,
        "anonymous_id": f"d-{customer}",
        "channel": "app",
        "region": "SH",
        **fields,
    }


def stock(
    location: str, available: int, ts: int, cause: str, sku: str = "SKU-10009"
) -> dict[str, Any]:
    data = {"sku": sku, "location_id": location, "region": "SH", "on_hand": available}
    data |= {"reserved": 0, "available": available, "sold_1h": 0, "sold_24h": 2, "cause": cause}
    return orjson.loads(
        cloud_event(
            event_type="omnistream.stock.changed",
            source="stock_pool",
            subject=f"{sku}:{location}",
            event_id=cause,
            time_ms=ts,
            data=data,
        )
    )


def customer_in(arm: str) -> str:
    from domain.rules import Experiment

    experiment = Experiment("bt", 0.5, {"a": 1.0})
    for n in range(100):
        if (draw_variant(experiment, f"cust-{n}", "cart") == "control") == (arm == "control"):
            return f"cust-{n}"
    raise AssertionError


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    buyer, holdout, late = customer_in("a"), customer_in("control"), "cust-late"
    records = [
        # The recorded stock: plenty in Jing'an, little in Lujiazui, then Lujiazui runs low,
        # and at last Jing'an too (reorder point 22).
        stock("ST-SH-02", 10, T0 + 40 * MIN, "s3"),
        stock("ST-SH-01", 5, T0 + 50 * MIN, "s4"),
        resolved(buyer, 1, "add_to_cart", T0, sku="SKU-10012"),
        # Keys out of time order on purpose: each key's records are taken in their order,
        # the keys are interleaved by event time.
        stock("ST-SH-01", 50, T0 - 60 * MIN, "s1"),
        stock("ST-SH-02", 30, T0 - 50 * MIN, "s2"),
        # The carted sku ships from the warehouse (a cart coupon needs it online).
        stock("WH-SH-01", 500, T0 - 70 * MIN, "w1", sku="SKU-10012"),
        resolved(buyer, 2, "order_placed", T0 + 30 * MIN, lines=[{"sku": "SKU-10012"}]),
        resolved(holdout, 1, "add_to_cart", T0, sku="SKU-10012"),
        resolved(holdout, 2, "order_placed", T0 + 50 * MIN, lines=[{"sku": "SKU-10012"}]),
        resolved(late, 1, "add_to_cart", T0, sku="SKU-10010"),
        resolved(late, 2, "order_placed", T0 + 5 * MIN, lines=[{"sku": "SKU-10010"}]),
        resolved("viewer", 1, "product_view", T0 + MIN, sku="SKU-10009"),
        resolved("viewer", 2, "product_view", T0 + 2 * MIN, sku="SKU-10009"),
        {"event_id": "x", "event_type": "page_view", "ts": T0, "customer_id": None},
    ]
    events = tmp_path / "recorded.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\nnot json\n")
    return rules, events, {"buyer": buyer, "holdout": holdout}


def backtest(events: Path, rules_path: Path, stock: str = "recorded") -> Tally:
    reference = load_reference(Config())
    engine = Backtest(load_rules(str(rules_path)), reference)
    return engine.run(
        decode_records(file_records(events, engine.tally), reference, engine.tally), stock
    )


def test_backtest_replays_in_event_time_with_the_recorded_stock(
    recording: tuple[Path, Path, dict[str, str]],
) -> None:
    rules_path, events, who = recording
    tally = backtest(events, rules_path)
    assert tally.records == 13
    assert dict(tally.unusable) == {"no_customer": 1, "not_an_input_record": 1}
    assert dict(tally.fired) == {
        ("cart", "cart_abandonment", "a"): 1,  # the buyer; `late` ordered in time
        ("browse", "browse_nearby_stock", "default"): 1,
        ("low", "transfer", "default"): 1,  # Lujiazui, from Jing'an as it was then
        ("low", "replenish", "default"): 1,  # Jing'an, when Lujiazui had no surplus either
    }
    assert dict(tally.suppressed) == {("cart", "control", "control"): 1}
    # Both arms converted: the buyer and the held-out customer ordered within a day.
    assert dict(tally.conversions) == {("cart", "a"): 1, ("cart", "control"): 1}
    by_topic = {(t["topic"], t.get("rule_id")): t for t in tally.triggers}
    browse = by_topic[("triggers.coupon", "browse")]
    assert browse["coupon"]["store_id"] == "ST-SH-01"  # the store with the most, back then
    transfer = next(t for t in tally.triggers if t.get("kind") == "transfer")
    assert (transfer["location_id"], transfer["source_location_id"]) == ("ST-SH-02", "ST-SH-01")
    assert transfer["evidence"] == ["s3", "s1"]
    assert by_topic[("triggers.holdout", "cart")]["customer_id"] == who["holdout"]
    assert by_topic[("triggers.coupon", "cart")]["event_time"].startswith("2026-11-01T02:36:40")
    # Every trigger carries the payload the flow publishes, fired at its event time.
    assert all(t["fired_at"] == t["event_time"] or "held_until" in t for t in tally.triggers)


def test_backtest_with_the_stock_at_the_end_reads_what_a_replay_reads_in_redis(
    recording: tuple[Path, Path, dict[str, str]],
) -> None:
    """A replay behind a stock_pool that has caught up reads the pool of the end of the
    input: by then Jing'an is down to 5, Lujiazui has 10."""
    rules_path, events, _ = recording
    tally = backtest(events, rules_path, stock="end")
    assert dict(tally.fired) == {
        ("cart", "cart_abandonment", "a"): 1,
        ("browse", "browse_nearby_stock", "default"): 1,
        ("low", "replenish", "default"): 2,  # no surplus anywhere at the end
    }
    browse = next(t for t in tally.triggers if t.get("rule_id") == "browse")
    assert browse["coupon"]["store_id"] == "ST-SH-02"
    assert browse["reason"] == "viewed 2 times; ST-SH-02 has 10"


def test_each_customers_records_are_taken_in_their_recorded_order(tmp_path: Path) -> None:
    """As the flow reads them (a customer's events are in one partition): an order
    recorded before the cart it would have closed does not close it, and a purchase that
    comes before a coupon does not convert it."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    buyer = customer_in("a")
    events = tmp_path / "recorded.jsonl"
    records = [
        resolved(buyer, 2, "order_placed", T0 + 5 * MIN, lines=[{"sku": "SKU-10012"}]),
        resolved(buyer, 1, "add_to_cart", T0, sku="SKU-10012"),  # due at T0 + 10 min
        resolved("someone", 1, "page_view", T0 + 30 * MIN),  # the input goes on past it
        stock("WH-SH-01", 500, T0 - 70 * MIN, "w1", sku="SKU-10012"),  # it ships online
    ]
    events.write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    tally = backtest(events, rules)
    assert dict(tally.fired) == {("cart", "cart_abandonment", "a"): 1}
    assert dict(tally.conversions) == {}


def test_backtest_command_prints_the_table_and_writes_triggers(
    recording: tuple[Path, Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules_path, events, _ = recording
    out = tmp_path / "triggers.jsonl"
    code = main(
        ["rules", "backtest", str(rules_path), "--events", str(events), "--triggers", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "would fire" in printed and "held back" in printed
    assert "cart_abandonment" in printed and "control" in printed
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == 5 and all(line["id"] for line in lines)
    assert "stock looked up: recorded" in printed


def test_backtest_refuses_an_invalid_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules: [{id: x, kind: nope, cooldown: 1h}]")
    events = tmp_path / "e.jsonl"
    events.write_text("")
    assert main(["rules", "backtest", str(rules), "--events", str(events)]) == 1
    assert "kind" in capsys.readouterr().err


def test_rule_triggers_refuses_to_start_on_an_invalid_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {id: cart, kind: cart_abandonment, cooldown: soon}\n")
    monkeypatch.setenv("OMNI_RULES", str(rules))
    monkeypatch.setenv("OMNI_PII_KEY", "unit-test-secret")
    assert main(["run", "rule_triggers", "--until-idle"]) == 2
    error = capsys.readouterr().err
    assert "rule `cart` (#1)" in error and "cooldown" in error
