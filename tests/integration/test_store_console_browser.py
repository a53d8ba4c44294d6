"""The store console in a real browser (Debian's headless Chromium through Selenium).

A store associate keeps ``/stores/<id>`` open all day: a pickup task written into Redis must
appear within 3 s without a reload, turn "collected" when the flow marks it done, and an
open task whose due time passes turns overdue on the browser's clock alone. A screenshot of
every run is kept in the test's output directory (pytest's ``tmp_path``; the project has no
``test-output/`` directory convention to copy it to).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from base.config import Config
from connectors.customer_io import visit_record, visit_task_id
from domain.customer_rules import VisitTask
from omnistream.embedded import EmbeddedStack
from tests.integration.test_service import ThreadedService, put_task, service_config, task

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: How fast a new task must reach an open console.
APPEARS_WITHIN_S = 3.0


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def row(driver: webdriver.Chrome, task_id: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'li.task[data-task-id="{task_id}"]')


def wait(driver: webdriver.Chrome, timeout_s: float) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(
        driver,
        timeout_s,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def streams_become(service: ThreadedService, count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while service.app.state.console_streams != count:
        assert time.monotonic() < deadline, (
            f"{service.app.state.console_streams} console streams open, expected {count}"
        )
        time.sleep(0.05)


def test_a_pickup_appears_live_and_turns_collected(
    stack: EmbeddedStack, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    config: Config = service_config(stack, tmp_path)
    client = redis.Redis.from_url(config.redis.url)
    now = datetime.now(UTC)
    late = task("ST-1", "o-late", due_at=rfc3339(now - timedelta(minutes=25)), pickup_code="771204")
    exception = task(
        "ST-1",
        "o-short",
        kind="pickup_exception",
        alternative_location_id="ST-2",
        pickup_code="310998",
        due_at=rfc3339(now + timedelta(minutes=90)),
        reason="ST-1 is short of SKU-A; ST-2 covers every line",
    )
    put_task(client, config, late)
    put_task(client, config, exception)
    try:
        with ThreadedService(config) as service:
            browser.get(f"{service.url}/stores/ST-1")
            wait(browser, 10).until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )
            browser.execute_script("window.__sameDocument = true;")  # gone if the page reloads

            # what was there before the page opened: overdue highlighted, exception with its
            # alternative store
            overdue = row(browser, late["task_id"])
            assert overdue.get_attribute("data-overdue") == "true"
            assert "overdue" in (overdue.get_attribute("class") or "")
            assert "771204" in overdue.text and "overdue by" in overdue.text
            short = row(browser, exception["task_id"])
            assert short.find_element(By.XPATH, "..").get_attribute("id") == "exceptions"
            assert "ST-2" in short.text

            # a new pickup, due in two hours: it appears without a reload
            fresh = task(
                "ST-1",
                "o-live",
                due_at=rfc3339(now + timedelta(hours=2)),
                pickup_code="058311",
                lines=[{"sku": "SKU-B", "qty": 3}],
            )
            written = time.monotonic()
            put_task(client, config, fresh)
            appeared = wait(browser, APPEARS_WITHIN_S).until(lambda d: row(d, fresh["task_id"]))
            print(f"new task shown {time.monotonic() - written:.2f} s after the write")
            assert appeared.get_attribute("data-status") == "open"
            assert appeared.get_attribute("data-overdue") == "false"
            assert "058311" in appeared.text and "3 × SKU-B" in appeared.text
            assert appeared.find_element(By.XPATH, "..").get_attribute("id") == "pickups"

            # a member checks in after browsing: rule_triggers' visit record, as it writes it
            visit = VisitTask(
                "store-visit",
                "cust-77",
                "ST-1",
                (("SKU-B", int(now.timestamp() * 1000) - 60_000), ("SKU-A", 0)),
                "checked in at ST-1",
                ("checkin-1", "view-2", "view-1"),
                int(now.timestamp() * 1000),
            )
            client.hset(
                f"{config.redis.key_prefix}tasks:ST-1", visit_task_id(visit), visit_record(visit)
            )
            visiting = wait(browser, APPEARS_WITHIN_S).until(lambda d: row(d, visit_task_id(visit)))
            assert visiting.find_element(By.XPATH, "..").get_attribute("id") == "visits"
            assert "cust-77" in visiting.text and "in store" in visiting.text.lower()
            assert "Recently viewed: SKU-B, SKU-A" in visiting.text

            # the till sale came: the flow marks it done, the row shows it collected
            put_task(client, config, fresh | {"status": "done", "done_at": rfc3339(now)})
            wait(browser, APPEARS_WITHIN_S).until(
                lambda d: row(d, fresh["task_id"]).get_attribute("data-status") == "done"
            )
            collected = row(browser, fresh["task_id"])
            assert "collected" in collected.text.lower()
            assert collected.find_element(By.XPATH, "..").get_attribute("id") == "closed"

            # due in two seconds and nothing written after: overdue by the wall clock alone
            soon = task("ST-1", "o-soon", due_at=rfc3339(datetime.now(UTC) + timedelta(seconds=2)))
            put_task(client, config, soon)
            wait(browser, APPEARS_WITHIN_S).until(
                lambda d: row(d, soon["task_id"]).get_attribute("data-overdue") == "false"
            )
            wait(browser, 6).until(
                lambda d: row(d, soon["task_id"]).get_attribute("data-overdue") == "true"
            )

            assert browser.execute_script("return window.__sameDocument === true;")
            shot = tmp_path / "console.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            print(f"console screenshot: {shot}")
            problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not problems, problems

            # the associate leaves the page: its event stream ends on the server (also while
            # the page sits in the back-forward cache), and coming back subscribes again
            browser.get("about:blank")
            streams_become(service, 0)
            browser.back()
            wait(browser, 10).until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )
            assert row(browser, fresh["task_id"]).get_attribute("data-status") == "done"
            streams_become(service, 1)
            browser.get("about:blank")
            streams_become(service, 0)
    finally:
        client.close()
