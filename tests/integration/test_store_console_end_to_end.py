"""A pickup order's whole way to the store console: broker → stock_pool (live) → Redis →
``omnistream serve`` → the console open in a real headless Chromium.

The associate has ``/stores/ST-SH-01`` open. An online order for pickup there is produced
into the broker: its ``pickup_prep`` task, with a six-digit code, must be on the open page
within 3 s of the produce, without a reload. The till sale with the order id is produced:
the row must turn collected within 3 s. A second order the store cannot cover shows as an
exception naming the store to send the customer to. A screenshot is kept (its path is
printed).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from base.config import Config, dump_config
from connectors.kafka_clients import make_producer
from omnistream.embedded import free_port
from omnistream.processes import start_flow, stop_process, wait_for_metrics
from tests.integration.test_service import served
from tests.integration.test_store_console_browser import (  # the browser fixture and helpers
    APPEARS_WITHIN_S,
    browser,
    row,
    wait,
)

pytestmark = pytest.mark.integration

STORE = "ST-SH-01"
SKU = "SKU-10009"
OTHER_SKU = "SKU-10010"
__all__ = ["browser"]  # a fixture used by name


def now_ms() -> int:
    return int(time.time() * 1000)


class Inputs:
    """What the connectors would produce into the input topics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.producer = make_producer(config)

    def send(self, topic: str, key: str, event: dict[str, object]) -> None:
        self.producer.produce(self.config.topic(topic), key=key.encode(), value=orjson.dumps(event))
        assert self.producer.flush(10) == 0

    def receipt(self, location: str, sku: str, qty: int) -> None:
        self.send(
            "wms.movements",
            location,
            {
                "event_id": f"r-{uuid.uuid4().hex[:8]}",
                "event_type": "receipt",
                "ts": now_ms(),
                "location_id": location,
                "sku": sku,
                "qty": qty,
            },
        )

    def pickup_order(self, order_id: str, sku: str, qty: int) -> None:
        self.send(
            "clickstream",
            "device-1",
            {
                "event_id": f"o-{order_id}",
                "event_type": "order_placed",
                "ts": now_ms(),
                "anonymous_id": "device-1",
                "channel": "app",
                "order_id": order_id,
                "lines": [{"sku": sku, "qty": qty, "unit_price": 9.9}],
                "total": 9.9 * qty,
                "fulfillment": {"type": "store_pickup", "location_id": STORE},
            },
        )

    def till_pickup(self, order_id: str, sku: str, qty: int) -> None:
        self.send(
            "pos.sales",
            STORE,
            {
                "event_id": f"s-{order_id}",
                "event_type": "sale",
                "ts": now_ms(),
                "store_id": STORE,
                "receipt_id": f"R-{order_id}",
                "lines": [{"sku": sku, "qty": qty, "unit_price": 9.9}],
                "total": 9.9 * qty,
                "order_id": order_id,
            },
        )


def test_a_pickup_order_reaches_the_open_console_and_turns_collected(
    omni_config: Config, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    port = free_port()
    config = omni_config.with_overrides(
        metrics={"port": port}, service={"console_poll_seconds": 0.1}
    )
    config_path = tmp_path / "config.yaml"
    dump_config(config, config_path)
    inputs = Inputs(config)
    inputs.receipt(STORE, SKU, 10)  # the store holds the first order's goods
    inputs.receipt("ST-SH-02", OTHER_SKU, 10)  # … and another store the second's
    log_path = tmp_path / "stock_pool.log"
    with log_path.open("wb") as log:
        flow = start_flow("stock_pool", config_path, log=log)
    try:
        wait_for_metrics(port, flow)
        with served(config, tmp_path) as service:
            browser.get(f"{service.url}/stores/{STORE}")
            wait(browser, 10).until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )
            browser.execute_script("window.__sameDocument = true;")  # gone if the page reloads

            order = f"ORD-{uuid.uuid4().hex[:8]}"
            produced = time.monotonic()
            inputs.pickup_order(order, SKU, 2)
            shown = wait(browser, APPEARS_WITHIN_S).until(lambda d: row(d, f"pickup:{order}"))
            print(f"\npickup task on the console {time.monotonic() - produced:.2f} s after produce")
            assert shown.get_attribute("data-status") == "open"
            assert shown.get_attribute("data-kind") == "pickup_prep"
            assert f"2 × {SKU}" in shown.text
            assert any(len(w) == 6 and w.isdigit() for w in shown.text.split())  # pickup code

            short = f"ORD-{uuid.uuid4().hex[:8]}"
            inputs.pickup_order(short, OTHER_SKU, 3)  # none here: the other store has them
            exception = wait(browser, APPEARS_WITHIN_S).until(lambda d: row(d, f"pickup:{short}"))
            assert exception.get_attribute("data-kind") == "pickup_exception"
            assert "ST-SH-02" in exception.text

            collected_at = time.monotonic()
            inputs.till_pickup(order, SKU, 2)
            wait(browser, APPEARS_WITHIN_S).until(
                lambda d: row(d, f"pickup:{order}").get_attribute("data-status") == "done"
            )
            print(f"collected on the console {time.monotonic() - collected_at:.2f} s after sale")
            assert "collected" in row(browser, f"pickup:{order}").text.lower()
            assert browser.execute_script("return window.__sameDocument === true;")
            shot = tmp_path / "console-end-to-end.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            print(f"console screenshot: {shot}")
            browser.get("about:blank")
    finally:
        stop_process(flow)
    assert "Traceback" not in log_path.read_text(errors="replace")
