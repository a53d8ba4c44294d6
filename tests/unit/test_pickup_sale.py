"""The till sale that collects an online order (``order_id`` on pos.sales) is no second
purchase in rule_triggers: the order converted the coupon and set the last purchase; the
collection is a store visit on the customer's card and redeems the code scanned there.

Reference: the same customer's day worked out by hand.
"""

from __future__ import annotations

from typing import Any

from domain.customer_rules import (
    CouponConversion,
    CouponDecision,
    CouponRedeemed,
    CustomerEvent,
    VisitTask,
)
from domain.rules import RuleSet, parse_rules
from domain.stock_view import RecordedStock
from domain.trigger_engine import CustomerTriggers

MIN = 60_000
DAY = 86_400_000
T0 = 1_795_000_000_000
STOCK = RecordedStock().at_end()


def rules() -> RuleSet:
    return parse_rules(
        "test",
        {
            "defaults": {"frequency_cap_per_day": 3, "conversion_window": "7d"},
            "rules": [
                {
                    "id": "cart",
                    "kind": "cart_abandonment",
                    "cooldown": "1d",
                    "params": {"within": "30m", "min_available": 0},
                    "coupon": {"type": "amount_off", "value": 15},
                },
                {
                    "id": "win-back",
                    "kind": "win_back",
                    "cooldown": "30d",
                    "params": {"inactive_days": 60},
                    "coupon": {"type": "percent_off", "value": 15},
                },
                {"id": "visit", "kind": "store_visit", "cooldown": "1h"},
            ],
        },
    )


def event(name: str, kind: str, ts: int, **more: Any) -> CustomerEvent:
    return CustomerEvent(name, kind, ts, "C1", "SH", **more)


def test_the_pickup_sale_redeems_and_visits_but_does_not_convert_again() -> None:
    customer, rs = CustomerTriggers("C1"), rules()
    out = customer.on_event(event("e1", "add_to_cart", T0, sku="HAT"), rs, STOCK)
    out += customer.fire_due(T0 + 31 * MIN, rs, STOCK)
    (coupon,) = [o for o in out if isinstance(o, CouponDecision)]
    order = event(
        "e2",
        "order_placed",
        T0 + DAY,
        skus=("HAT",),
        is_purchase=True,
        revenue=20.0,
        fulfillment="store_pickup",
    )
    placed = customer.on_event(order, rs, STOCK)
    assert [(c.rule_id, c.via, c.revenue) for c in placed if isinstance(c, CouponConversion)] == [
        ("cart", "purchase", 20.0)
    ]
    pickup = event(
        "e3",
        "sale",
        T0 + DAY + 2 * 60 * MIN,
        skus=("HAT",),
        coupon_codes=(coupon.code,),
        store_id="ST1",
        channel="store",
        member_scan=True,
    )
    collected = customer.on_event(pickup, rs, STOCK)
    assert not [o for o in collected if isinstance(o, CouponConversion)]
    assert [(r.rule_id, r.code) for r in collected if isinstance(r, CouponRedeemed)] == [
        ("cart", coupon.code)
    ]
    assert [(v.store_id, v.evidence[0]) for v in collected if isinstance(v, VisitTask)] == [
        ("ST1", "e3")
    ]
    assert customer.state.last_purchase_ms == T0 + DAY
    # 60 days and 30 minutes after the order, 90 minutes short of 60 days after the
    # collection: a win-back only if the collection is not the last purchase.
    later = customer.on_event(event("e4", "login", T0 + 61 * DAY + 30 * MIN), rs, STOCK)
    assert [o.reason for o in later if isinstance(o, CouponDecision)] == [
        "last purchase 60 days ago"
    ]
