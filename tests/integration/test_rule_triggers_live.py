"""rule_triggers running alone against live topics: a cart deadline fires within seconds when
nothing else happens, and a rules file edited under the running flow is picked up (a broken
edit is refused, logged and counted, and the old rules stay in force)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from base.config import Config, dump_config
from connectors.envelopes import cloud_event
from connectors.kafka_clients import make_producer
from omnistream.embedded import free_port
from omnistream.processes import scrape, start_flow, stop_process, total, wait_for_metrics
from tests.kafka_helpers import TopicWatcher

pytestmark = pytest.mark.integration

RULES_V1 = """
rules:
  - {id: stockout, kind: stockout, cooldown: 1h}
  - id: cart
    kind: cart_abandonment
    cooldown: 1s
    params: {within: 3s, min_available: 0}  # no stock in this pool: no stock guard
    coupon: {type: amount_off, value: 5, expires_in: 1h}
"""
BROKEN = RULES_V1.replace("cooldown: 1h", "cooldown: soon")
RULES_V3 = """
rules:
  - {id: stockout, kind: stockout, cooldown: 1h, enabled: false}
  - {id: low-stock-v3, kind: low_stock, cooldown: 1h}
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class Inputs:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.producer = make_producer(config)

    def resolved(self, customer: str, event_type: str, **fields: Any) -> str:
        event_id = f"{customer}-{event_type}-{now_ms()}"
        record = {"event_id": event_id, "event_type": event_type, "ts": now_ms()}
        record |= {"customer_id": customer, "anonymous_id": f"d-{customer}", "channel": "app"}
        record |= {"region": "SH", "source_topic": "clickstream", **fields}
        self.send("events.resolved", customer, orjson.dumps(record))
        return event_id

    def stock(self, sku: str, location: str, available: int) -> str:
        cause = f"m-{sku}-{location}-{now_ms()}"
        data = {"sku": sku, "location_id": location, "region": "SH", "on_hand": available}
        data |= {"reserved": 0, "available": available, "sold_1h": 0, "sold_24h": 1}
        data |= {"days_of_cover": None, "cause": cause}
        value = cloud_event(
            event_type="omnistream.stock.changed",
            source="stock_pool",
            subject=f"{sku}:{location}",
            event_id=cause,
            time_ms=now_ms(),
            data=data,
        )
        self.send("stock.changes", f"{sku}:{location}", value)
        return cause

    def send(self, topic: str, key: str, value: bytes) -> None:
        self.producer.produce(self.config.topic(topic), key=key.encode(), value=value)
        assert self.producer.flush(10) == 0


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


def test_sparse_cart_deadline_and_rules_edited_under_the_running_flow(
    omni_config: Config, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rewrite(rules, RULES_V1)
    port = free_port()
    config = omni_config.with_overrides(
        rules={"file": str(rules), "reload_seconds": 0.5}, metrics={"port": port}
    )
    config_path = tmp_path / "config.yaml"
    dump_config(config, config_path)
    log_path = tmp_path / "rule_triggers.log"
    with log_path.open("wb") as log:
        flow = start_flow("rule_triggers", config_path, log=log)
    coupons = TopicWatcher(config, "triggers.coupon")
    replenishments = TopicWatcher(config, "triggers.replenishment")
    inputs = Inputs(config)
    try:
        wait_for_metrics(port, flow)
        # A lone cart, then silence: the coupon comes a few seconds after the deadline.
        cause = inputs.resolved("c-live", "add_to_cart", sku="SKU-10009", qty=1, price=9.9)
        sent = time.monotonic()
        coupons.wait_for(lambda c: c["data"]["evidence"] == [cause], timeout_s=30)
        waited = time.monotonic() - sent
        (coupon,) = [c for c in coupons.values if c["data"]["evidence"] == [cause]]
        print(f"\ncart coupon {waited:.1f} s after the add_to_cart (deadline 3 s)")
        assert waited >= 3.0  # not before its deadline

        # A broken edit: refused, counted, logged; the old stockout rule still fires.
        rewrite(rules, BROKEN)
        deadline = time.monotonic() + 20
        while total(scrape(port), "omnistream_rules_reloads_total", outcome="invalid") < 1:
            assert time.monotonic() < deadline, "the broken rules file was not noticed"
            time.sleep(0.2)
        out_cause = inputs.stock("SKU-10009", "ST-SH-01", 0)
        replenishments.wait_for(lambda r: r["data"]["evidence"] == [out_cause])
        assert "cooldown" in log_path.read_text() and "invalid" in log_path.read_text()

        # A valid edit: stockout disabled, a new low-stock rule in force.
        rewrite(rules, RULES_V3)
        deadline = time.monotonic() + 20
        while total(scrape(port), "omnistream_rules_reloads_total", outcome="ok") < 1:
            assert time.monotonic() < deadline, "the new rules file was not picked up"
            time.sleep(0.2)
        zero = inputs.stock("SKU-10009", "ST-SH-02", 0)
        replenishments.wait_for(lambda r: r["data"]["evidence"][0] == zero)
        time.sleep(2)
        replenishments.poll(1)
        fired = [r["data"]["rule_id"] for r in replenishments.values]
        assert fired == ["stockout", "low-stock-v3"]
        assert total(scrape(port), "omnistream_rules_active") == 1
    finally:
        coupons.close()
        replenishments.close()
        assert stop_process(flow) == 0
    assert coupon["data"]["rule_id"] == "cart" and coupon["data"]["customer_id"] == "c-live"
