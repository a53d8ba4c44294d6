"""redemption_review in the real rule_triggers dataflow (in-process, as a replay, on 1 and 2
workers): twenty cart coupons sent on one day, four of them redeemed at a till within the
review's window and one after it; a coupon five days on makes the day due. The review
publishes one insight on triggers.insights: 4 of 20 redeemed, under the 30 % threshold."""

from __future__ import annotations

from pathlib import Path

import pytest

from base import topics
from base.config import Config
from connectors.reference_files import load_reference
from domain.customer_rules import coupon_code
from domain.redemption_review import GRACE_MS
from flows import rule_triggers
from state.coupon_store import MemoryCouponStore
from state.memory_stock import MemoryStockStore
from tests.inprocess import CustomerStores, run
from tests.unit.test_rule_triggers_inprocess import CONDENSED, DAY, HOUR, MIN, T0, Script, iso

RULES = """
defaults: {frequency_cap_per_day: 5, conversion_window: 7d}
rules:
  - id: cart
    kind: cart_abandonment
    cooldown: 1d
    params: {within: 10m, min_available: 0}
    coupon: {type: amount_off, value: 5, expires_in: 7d}
  - id: review
    kind: redemption_review
    cooldown: 0s
    params: {threshold: 0.3, window: 3d, min_sent: 10}
"""
SHOPPERS = 20
TILL = {"store_id": "ST-SH-01", "lines": [{"sku": CONDENSED, "qty": 1}]}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return Config().with_overrides(rules={"file": str(rules)})


def week(config: Config) -> Script:
    s = Script(config)
    for n in range(SHOPPERS):
        customer = f"c-{n}"
        cart = s.event(customer, "add_to_cart", T0 + n * MIN, sku=CONDENSED)
        code = coupon_code("cart", customer, CONDENSED, (cart,))
        if n < 4:  # redeemed the next day
            s.event(customer, "sale", T0 + DAY, coupon_codes=[code], **TILL)
        elif n == 4:  # after the 3-day window: not counted
            s.event(customer, "sale", T0 + 3 * DAY + 5 * HOUR, coupon_codes=[code], **TILL)
    s.event("c-later", "add_to_cart", T0 + 5 * DAY, sku=CONDENSED)
    s.event("c-last", "page_view", T0 + 5 * DAY + HOUR)  # the input runs past its deadline
    return s


@pytest.mark.parametrize("workers", [1, 2])
def test_a_day_redeemed_under_the_threshold_publishes_one_insight(
    config: Config, workers: int
) -> None:
    script = week(config)
    flow = rule_triggers.build(
        config,
        until_idle=True,
        io=script.io,
        stock_store=lambda: MemoryStockStore(load_reference(config)),
        coupon_store=MemoryCouponStore,
        **CustomerStores(load_reference(config)).build_args(),
    )
    run(flow, workers)
    coupons = script.io.values(topics.TRIGGERS_COUPON)
    assert len(coupons) == SHOPPERS + 1
    (insight,) = script.io.values(topics.TRIGGERS_INSIGHTS)
    assert insight["type"] == "omnistream.trigger.insight" and insight["subject"] == "cart"
    data = insight["data"]
    day = T0 - T0 % DAY  # T0 is noon in Shanghai: 04:00 UTC of the same day
    assert {k: data[k] for k in ("rule_id", "variant", "kind", "sent", "redeemed")} == {
        "rule_id": "cart",
        "variant": "default",
        "kind": "low_redemption",
        "sent": SHOPPERS,
        "redeemed": 4,
    }
    assert data["rate"] == 0.2 and data["threshold"] == 0.3 and data["window"] == "3d"
    assert data["event_time"] == iso(day + DAY + 3 * DAY)
    assert data["review_rule_id"] == "review" and data["sent_on"] == iso(day)[:10]
    assert T0 + 5 * DAY >= day + 4 * DAY + GRACE_MS  # the later coupon made the day due
