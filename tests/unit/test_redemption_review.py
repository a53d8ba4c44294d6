"""redemption_review: each day's coupons of a rule × variant, judged once their window has
passed, against a brute-force count of the same coupons and redemptions."""

from __future__ import annotations

import random

import pytest

from base.units import DAY_MS, HOUR_MS
from domain.customer_rules import (
    CouponConversion,
    CouponDecision,
    CouponRedeemed,
    CustomerEvent,
    on_event,
    on_time,
)
from domain.redemption_review import (
    GRACE_MS,
    RedemptionInsight,
    RedemptionReviews,
    ReviewItem,
    review_key,
    reviewed,
)
from domain.rules import RuleSet, parse_rules
from tests.rule_samples import CART

T0 = 20_000 * DAY_MS  # a UTC midnight
WINDOW_D = 3


def rules(threshold: float = 0.3, min_sent: int = 10, window: str = f"{WINDOW_D}d") -> RuleSet:
    review = {
        "id": "review",
        "kind": "redemption_review",
        "cooldown": "0s",
        "params": {"threshold": threshold, "window": window, "min_sent": min_sent},
    }
    return parse_rules("test", {"rules": [CART, review]})


def coupon(code: str, sent_ms: int, variant: str = "amount_15") -> CouponDecision:
    """A coupon sent at ``sent_ms``; its code derives from ``code`` (the evidence)."""
    return CouponDecision("cart", f"cust-{code}", variant, "SKU-1", None, "cart", (code,), sent_ms)


def redeemed(item: CouponDecision, after_ms: int) -> CouponRedeemed:
    return CouponRedeemed(
        item.rule_id, item.variant, item.code, item.sent_at_ms, item.sent_at_ms + after_ms
    )


def traffic(seed: int, days: int = 6) -> list[ReviewItem]:
    """Coupons over ``days`` days, each redeemed with a day's own probability (some of them
    after the window), and a last coupon far enough on to make every day due."""
    rng = random.Random(seed)
    items: list[ReviewItem] = []
    for day in range(days):
        share = rng.choice([0.05, 0.2, 0.5, 0.8])
        for n in range(rng.randint(5, 40)):
            sent = coupon(f"d{day}-{n}", T0 + day * DAY_MS + rng.randrange(DAY_MS))
            items.append(sent)
            if rng.random() < share:
                items.append(redeemed(sent, rng.randrange((WINDOW_D + 1) * DAY_MS)))
    items.append(coupon("late", T0 + (days + WINDOW_D + 2) * DAY_MS))
    return items


def event_time(item: ReviewItem) -> int:
    return item.sent_at_ms if isinstance(item, CouponDecision) else item.ts_ms


def brute_force(items: list[ReviewItem], rule_set: RuleSet) -> list[tuple[int, int, int]]:
    """(day, sent, redeemed) of the days the review reports, counted directly."""
    review = rule_set.by_id["review"]
    window_ms = review.params["window"] * 1000
    latest = max(map(event_time, items))
    sent_on: dict[int, set[str]] = {}
    for item in items:
        if isinstance(item, CouponDecision):
            sent_on.setdefault(item.sent_at_ms // DAY_MS * DAY_MS, set()).add(item.code)
    quick = {
        i.code for i in items if isinstance(i, CouponRedeemed) and i.ts_ms - i.sent_ms <= window_ms
    }
    out = []
    for day, codes in sorted(sent_on.items()):
        if latest < day + DAY_MS + window_ms + GRACE_MS or len(codes) < review.params["min_sent"]:
            continue
        hits = len(codes & quick)
        if hits / len(codes) < review.params["threshold"]:
            out.append((day, len(codes), hits))
    return out


def figures(insights: list[RedemptionInsight]) -> list[tuple[int, int, int]]:
    return sorted((i.cohort_day_ms, i.sent, i.redeemed) for i in insights)


@pytest.mark.parametrize("seed", range(8))
def test_live_in_event_time_order_and_a_replay_in_any_order_equal_the_brute_force(
    seed: int,
) -> None:
    rule_set = rules()
    items = traffic(seed)
    expected = brute_force(items, rule_set)
    assert expected, "the traffic must make some day fall under the threshold"
    in_order = sorted(
        items, key=lambda i: i.sent_at_ms if isinstance(i, CouponDecision) else i.ts_ms
    )
    live = RedemptionReviews()
    insights = [x for item in in_order for x in live.add(item, rule_set)]
    assert figures(insights) == expected
    assert all(i.rate < 0.3 and i.rule_id == "cart" and i.variant == "amount_15" for i in insights)

    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    replay = RedemptionReviews()
    for item in shuffled:
        replay.hold(item)
    assert figures(replay.finish(rule_set)) == expected


def test_a_day_is_judged_once_only_after_its_window_and_the_grace() -> None:
    rule_set = rules(min_sent=2)
    review = RedemptionReviews()
    first, second = coupon("a", T0 + HOUR_MS), coupon("b", T0 + 2 * HOUR_MS)
    assert review.add(first, rule_set) == [] and review.add(second, rule_set) == []
    deadline = T0 + DAY_MS + WINDOW_D * DAY_MS + GRACE_MS
    assert review.add(coupon("c", deadline - 1), rule_set) == []  # not yet
    (insight,) = review.add(coupon("d", deadline), rule_set)
    assert (insight.sent, insight.redeemed, insight.event_time_ms) == (2, 0, deadline - GRACE_MS)
    assert insight.review_id == "review" and insight.window_s == WINDOW_D * 86400
    assert review.add(coupon("e", deadline + DAY_MS), rule_set) == []  # judged once


def test_redeemed_at_or_above_the_threshold_or_too_few_coupons_say_nothing() -> None:
    sent = [coupon(str(n), T0 + n * 1000) for n in range(10)]
    three_of_ten = [redeemed(s, HOUR_MS) for s in sent[:3]]
    later = coupon("later", T0 + (WINDOW_D + 2) * DAY_MS)
    for threshold, min_sent, fires in [(0.3, 10, False), (0.31, 10, True), (0.31, 11, False)]:
        review = RedemptionReviews()
        out = [
            x
            for i in [*sent, *three_of_ten, later]
            for x in review.add(i, rules(threshold, min_sent))
        ]
        assert bool(out) is fires, (threshold, min_sent)


def test_a_redemption_after_the_window_does_not_count() -> None:
    sent = [coupon(str(n), T0 + n * 1000) for n in range(10)]
    late = [redeemed(s, WINDOW_D * DAY_MS + 1) for s in sent]
    review = RedemptionReviews()
    out = [x for i in [*sent, *late, coupon("z", T0 + 9 * DAY_MS)] for x in review.add(i, rules())]
    assert [(i.sent, i.redeemed) for i in out] == [(10, 0)]


def test_holdouts_are_not_reviewed_and_keys_are_rule_by_variant() -> None:
    holdout = CouponDecision("cart", "c", "control", "SKU-1", None, "cart", ("x",), T0)
    assert not reviewed(holdout) and reviewed(coupon("a", T0))
    assert review_key(coupon("a", T0, "free_shipping")) == "cart:free_shipping"


def test_a_till_scanning_an_open_coupon_reports_its_redemption_converted_or_not() -> None:
    """The customer rules report each open coupon a till scanned, whether the purchase
    converts it or an earlier one did; a code of no coupon of the customer is no one's."""
    rule_set = rules()
    cart = CustomerEvent("e1", "add_to_cart", T0, "cust", "SH", "SKU-1")
    state, _ = on_event(None, cart, rule_set, no_stores)
    (sent,) = [o for o in on_time(state, "cust", T0 + 2 * HOUR_MS, rule_set) if reviewed(o)]
    assert isinstance(sent, CouponDecision)
    order = CustomerEvent("e2", "order_placed", T0 + 3 * HOUR_MS, "cust", "SH", "SKU-1",
                          ("SKU-1",), True)  # fmt: skip
    state, out = on_event(state, order, rule_set, no_stores)
    assert any(isinstance(o, CouponConversion) for o in out)  # converted by the order
    at = T0 + 5 * HOUR_MS
    sale = CustomerEvent("e3", "pos_sale", at, "cust", "SH", None, ("SKU-1",), True,
                         (sent.code, "C-OTHER-1"))  # fmt: skip
    state, out = on_event(state, sale, rule_set, no_stores)
    assert [o for o in out if isinstance(o, CouponRedeemed)] == [
        CouponRedeemed("cart", sent.variant, sent.code, sent.sent_at_ms, at)
    ]
    stranger = CustomerEvent("e4", "pos_sale", at, "cust", "SH", None, ("SKU-1",), True,
                             ("C-OTHER-2",))  # fmt: skip
    _, out = on_event(state, stranger, rule_set, no_stores)
    assert not any(isinstance(o, CouponRedeemed) for o in out)


def no_stores(region: str, sku: str, minimum: int) -> list[tuple[str, int]]:
    return []
