"""A survivor's key across several merges: when the merged customers' states arrive never
changes what it decides.

The reference is the key that finds every handed-over state the moment it starts waiting
(the order a single in-order reader sees). The other runs let the states arrive late, after
the next merge's notice, or only at the end, as a reader of several partitions may.
"""

from __future__ import annotations

import itertools
from typing import Any

from domain.customer_key import (
    ABSORBED,
    MERGED,
    CustomerKey,
    HandOver,
    IdentityNotice,
)
from domain.customer_rules import (
    GONE_CUSTOMER,
    CouponDecision,
    CouponSuppressed,
    CustomerEvent,
    Offer,
)
from domain.profile import ProfileSettings
from domain.rules import RuleSet, parse_rules
from domain.stock_view import RecordedStock

DAY = 86_400_000
MIN = 60_000
T0 = 1_795_000_000_000
STOCK = RecordedStock().at_end()
SETTINGS = ProfileSettings()


def rules() -> RuleSet:
    return parse_rules(
        "test",
        {
            "defaults": {"frequency_cap_per_day": 5},
            "rules": [
                {
                    "id": "win-back",
                    "kind": "win_back",
                    "cooldown": "30d",
                    "params": {"inactive_days": 60},
                    "coupon": {"type": "percent_off", "value": 15},
                }
            ],
        },
    )


def event(customer: str, name: str, kind: str, ts: int, **more: Any) -> CustomerEvent:
    return CustomerEvent(name, kind, ts, customer, "SH", **more)


def sale(customer: str, name: str, ts: int) -> CustomerEvent:
    return event(customer, name, "sale", ts, skus=("HAT",), is_purchase=True, revenue=10.0)


def merge(merged: str, survivor: str, ts: int) -> tuple[IdentityNotice, IdentityNotice]:
    cause = f"m:{merged}:{survivor}"
    return (
        IdentityNotice(MERGED, merged, survivor, ts, f"{cause}:merged"),
        IdentityNotice(ABSORBED, survivor, merged, ts, f"{cause}:absorbed"),
    )


def handed_over(stream: list[Any]) -> HandOver:
    """The state a merged customer's key hands over at its ``merged`` notice."""
    key, out = CustomerKey(), []
    for item in stream:
        out += key.take(item, rules(), STOCK, SETTINGS, replay=True)
    (handover,) = [o for o in out if isinstance(o, HandOver)]
    return handover


# The survivor bought 61 days before it logs in again; a device (A) merges into it at the
# login, and later a loyalty card (C) whose till sale was read before its merge but was made
# after the login. The login is a win-back: C's sale is not yet the customer's.
LOGIN = T0 + 61 * DAY
A_AWAY, A_IN = merge("A", "B", LOGIN)
C_AWAY, C_IN = merge("C", "B", LOGIN + 30 * MIN)
HANDOVERS = {
    "A": handed_over([event("A", "a1", "page_view", LOGIN - MIN), A_AWAY]),
    "C": handed_over([sale("C", "c1", LOGIN + 50 * MIN), C_AWAY]),
}
SURVIVOR = [
    sale("B", "b1", T0),
    A_IN,
    event("B", "b2", "login", LOGIN),
    event("B", "b3", "product_view", LOGIN + 10 * MIN, sku="HAT"),
    C_IN,
    event("B", "b4", "page_view", LOGIN + 30 * MIN),
    event("B", "b5", "page_view", LOGIN + 60 * MIN),
]


def decided(arrivals: dict[str, int]) -> list[tuple[str, tuple[str, ...]]]:
    """The survivor's coupons, with ``arrivals[m]`` the number of its items taken before
    merged customer ``m``'s state can be found (len(SURVIVOR): only at the end)."""
    key, out, found = CustomerKey(), [], set()

    def collect() -> None:
        while key.waiting and key.waiting[0] in found:
            merged = key.waiting[0]
            payload = HANDOVERS[merged].payload
            out.extend(key.absorb(merged, payload, rules(), STOCK, SETTINGS, replay=True))

    for taken, item in enumerate(SURVIVOR):
        found |= {m for m, at in arrivals.items() if at <= taken}
        collect()
        out.extend(key.take(item, rules(), STOCK, SETTINGS, replay=True))
        collect()
    found |= set(arrivals)
    collect()
    assert not key.waiting and not key.held
    return [(d.rule_id, d.evidence) for d in out if isinstance(d, CouponDecision)]


def test_in_order_the_login_is_a_win_back() -> None:
    assert decided({"A": 0, "C": 0}) == [("win-back", ("b2",))]


def test_states_arriving_late_or_out_of_order_decide_the_same() -> None:
    reference = decided({"A": 0, "C": 0})
    for a, c in itertools.product(range(len(SURVIVOR) + 1), repeat=2):
        assert decided({"A": a, "C": c}) == reference, (a, c)


def test_a_merge_notice_held_while_waiting_keeps_its_place() -> None:
    """Waiting for A, the key holds C's notice among the items instead of waiting for C at
    once: the login before it is decided without C's later sale."""
    key = CustomerKey()
    for item in SURVIVOR[:6]:
        key.take(item, rules(), STOCK, SETTINGS, replay=True)
    assert key.waiting == ("A",)
    assert [getattr(i, "event_id", None) for i in key.held] == ["b2", "b3", C_IN.event_id, "b4"]
    out = key.absorb("A", HANDOVERS["A"].payload, rules(), STOCK, SETTINGS, replay=True)
    assert [d.evidence for d in out if isinstance(d, CouponDecision)] == [("b2",)]
    assert key.waiting == ("C",) and [i.event_id for i in key.held] == ["b4"]


# --- clearance offers, which reach a key on another path than its customer's own items ----------

CLEARANCE = {
    "id": "over",
    "kind": "overstock",
    "cooldown": "7d",
    # no stock guard: the test has no stock pool
    "params": {
        "cover_days": 30,
        "idle_days": 30,
        "min_on_hand": 10,
        "viewed_within": "1d",
        "min_available": 0,
    },
    "coupon": {"type": "percent_off", "value": 20},
}


def offer_rules() -> RuleSet:
    return parse_rules("test", {"defaults": {"frequency_cap_per_day": 5}, "rules": [CLEARANCE]})


def offer(customer: str) -> Offer:
    return Offer("over", customer, "HAT", "S1", "S1: idle", ("sig",), LOGIN + 20 * MIN)


def replayed(stream: list[Any]) -> tuple[list[Any], CustomerKey]:
    """A key of a replay taking ``stream`` and then its end of the input."""
    key, out = CustomerKey(), []
    for item in stream:
        out += key.take(item, offer_rules(), STOCK, SETTINGS, replay=True)
    out += key.finish(LOGIN + DAY, offer_rules(), STOCK, SETTINGS)
    return out, key


def outcomes(out: list[Any]) -> list[Any]:
    return [o for o in out if isinstance(o, CouponDecision | CouponSuppressed)]


def test_an_offer_to_a_merged_id_is_dropped_whether_it_comes_before_its_notice_or_after() -> None:
    """After the notice the key is gone (the flow discards it, and the offer finds a new key
    that only ever has offers); before it, the key holds the offer and hands over none."""
    view = event("A", "a1", "product_view", LOGIN - MIN, sku="HAT")
    before, key = replayed([view, offer("A"), A_AWAY])
    (handover,) = [o for o in before if isinstance(o, HandOver)]
    assert key.gone and outcomes(before) == [CouponSuppressed("over", GONE_CUSTOMER)]
    after, fresh = replayed([offer("A")])
    assert fresh.gone and outcomes(after) == [CouponSuppressed("over", GONE_CUSTOMER)]
    # The survivor takes A's state without the offer.
    survivor = CustomerKey()
    survivor.take(A_IN, offer_rules(), STOCK, SETTINGS, replay=True)
    taken = survivor.absorb("A", handover.payload, offer_rules(), STOCK, SETTINGS, replay=True)
    taken += survivor.finish(LOGIN + DAY, offer_rules(), STOCK, SETTINGS)
    assert outcomes(taken) == []


def test_an_offer_that_overtakes_its_customers_events_is_still_sent() -> None:
    ahead, _ = replayed([offer("B"), event("B", "b2", "login", LOGIN)])
    behind, _ = replayed([event("B", "b2", "login", LOGIN), offer("B")])
    assert [(d.customer_id, d.rule_id) for d in outcomes(ahead)] == [("B", "over")]
    assert outcomes(ahead) == outcomes(behind)


def test_an_offer_held_behind_the_keys_own_merge_notice_is_dropped() -> None:
    """B waits for A's state; its own merge into C and then an offer come meanwhile: once
    A's state is in, B is merged away and the offer is dropped, not lost unseen."""
    key = CustomerKey()
    b_away, _ = merge("B", "C", LOGIN + 40 * MIN)
    for item in (A_IN, b_away, offer("B")):
        assert key.take(item, offer_rules(), STOCK, SETTINGS, replay=True) == []
    out = key.absorb("A", HANDOVERS["A"].payload, offer_rules(), STOCK, SETTINGS, replay=True)
    assert key.gone and outcomes(out) == [CouponSuppressed("over", GONE_CUSTOMER)]
