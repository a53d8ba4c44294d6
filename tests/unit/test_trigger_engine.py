"""The trigger engine's keys as the flow and the backtest drive them: what a replay does at
the end of the input, and the cases where the order two topics are read in must not matter.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from domain.clearance_rules import ClearanceSignal
from domain.customer_key import ABSORBED, ERASED, MERGED, IdentityNotice
from domain.customer_rules import CouponDecision, CouponSuppressed, CustomerEvent, Offer
from domain.reference import Location, Product, ReferenceData
from domain.rules import RuleSet, parse_rules
from domain.stock_rules import (
    ExpiryBatch,
    StockChange,
    StockDecision,
    StockTriggerSuppressed,
    history_ms,
)
from domain.stock_view import RecordedStock
from domain.trigger_engine import (
    AudienceTriggers,
    CampaignTriggers,
    CustomerTriggers,
    LocationTriggers,
    campaign_key,
    claim_redemption,
    redeemed_codes,
    view_of,
)
from domain.trigger_replay import TriggerReplay
from state.coupon_store import MemoryCouponStore
from tests.rule_samples import CART, OVERSTOCK

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
CST = timezone(timedelta(hours=8))
T0 = int(datetime(2026, 11, 18, 12, tzinfo=CST).timestamp() * 1000)  # noon: no quiet hours
REFERENCE = ReferenceData(
    locations={
        "S1": Location("S1", "store", "SH"),
        "S2": Location("S2", "store", "SH"),
    },
    products={"MILK": Product("MILK", "dairy", 4.5, 10, 1, 3)},
)
EXPIRING = {
    "id": "expiring",
    "kind": "expiring_stock",
    "cooldown": "1h",
    "params": {"within_days": 4, "viewed_within": "3d"},
    "coupon": {"type": "percent_off", "value": 30},
}
PREP = {"id": "prep", "kind": "campaign_prep", "cooldown": "1d", "params": {"triggers": 2}}


def ruleset(*rules: dict, cap: int = 3) -> RuleSet:
    return parse_rules("test", {"defaults": {"frequency_cap_per_day": cap}, "rules": list(rules)})


def event(n: int, kind: str, ts: int, sku: str | None = None) -> CustomerEvent:
    return CustomerEvent(
        f"e{n}", kind, ts, "c1", region="SH", sku=sku, category="dairy" if sku else None
    )


def change(on_hand: int, ts: int, cause: str, location: str = "S1", sold: int = 1) -> StockChange:
    return StockChange("MILK", location, "SH", on_hand, sold, ts, cause, on_hand)


def coupons(out: Sequence[object]) -> list[CouponDecision]:
    return [o for o in out if isinstance(o, CouponDecision)]


# --- customers ----------------------------------------------------------------------------------


def test_a_replay_gives_offers_after_the_timers_due_before_them() -> None:
    """At the end of a replay a customer's held offers and the timers still due fire in
    event-time order: a cart due before the offer takes the day's last coupon of the cap,
    whatever order the offer and the cart came in (live, the cart fires first too)."""
    rules = ruleset(CART, OVERSTOCK, cap=1)
    offer = Offer("overstock", "c1", "MILK", "S1", "S1: idle", ("sig",), T0 + HOUR)
    customer = CustomerTriggers()
    customer.on_event(event(1, "add_to_cart", T0, "MILK"), rules, RecordedStock().at_end())
    customer.hold_offer(offer)
    out = customer.finish(T0 + 2 * HOUR, rules)
    assert [c.rule_id for c in coupons(out)] == ["cart"]
    assert [o for o in out if isinstance(o, CouponSuppressed)] == [
        CouponSuppressed("overstock", "cap")
    ]
    assert customer.held_offers == ()


def test_a_replay_ends_the_timers_at_the_end_of_the_input() -> None:
    rules = ruleset(CART)
    customer = CustomerTriggers()
    customer.on_event(event(1, "add_to_cart", T0, "MILK"), rules, RecordedStock().at_end())
    assert customer.finish(T0 + 29 * MIN, rules) == []  # not due yet when the input ends
    assert [c.event_time_ms for c in coupons(customer.finish(T0 + 30 * MIN, rules))] == [
        T0 + 30 * MIN
    ]


def test_browsing_asks_the_stock_view_as_of_the_view() -> None:
    rules = ruleset(
        {
            "id": "browse",
            "kind": "browse_nearby_stock",
            "cooldown": "1d",
            "params": {"views": 2, "within": "30m", "min_available": 2},
            "coupon": {"type": "percent_off", "value": 10},
        }
    )
    pool = RecordedStock([change(5, T0 - HOUR, "a", "S1"), change(9, T0 + HOUR, "b", "S2")])
    customer = CustomerTriggers()
    customer.on_event(event(1, "product_view", T0, "MILK"), rules, pool.as_recorded())
    out = customer.on_event(event(2, "product_view", T0 + MIN, "MILK"), rules, pool.as_recorded())
    assert [c.store_id for c in coupons(out)] == ["S1"]  # S2's stock came an hour later


# --- locations: the two topics a sku × location hears from ------------------------------------


def _receipt_outcomes(order: list[object], rules: RuleSet) -> list[object]:
    """A receipt, the stock change it caused and later sales, in the order given; then the
    input ends."""
    pool = RecordedStock(o for o in order if isinstance(o, StockChange))
    location = LocationTriggers.of("MILK", "S1", REFERENCE)
    out: list[object] = []
    for item in order:
        if isinstance(item, ExpiryBatch):
            out += location.on_batch(item, rules, pool.at_end())
        else:
            assert isinstance(item, StockChange)
            out += location.on_change(item, rules, pool.at_end())
    return out + location.finish(T0 + DAY, rules, pool.at_end())


def test_a_receipt_is_judged_the_same_whichever_topic_is_read_first() -> None:
    """``wms.movements`` (the receipt, with its expiry) and ``stock.changes`` (the stock it
    put on hand) are read side by side: the receipt may come before its stock change, after
    it, or after later sales of the location too. Every order gives the same signal, with
    the units of the moment the batch was received."""
    rules = ruleset(EXPIRING)
    receipt = ExpiryBatch("MILK", "S1", "SH", 30, T0 + 3 * DAY, "rcv", T0)
    earlier = change(2, T0 - HOUR, "before")
    received = change(32, T0, "rcv")
    sales = [change(32 - n, T0 + n * 5 * MIN, f"sale{n}") for n in range(1, 4)]
    orders = [
        [earlier, receipt, received, *sales],  # in time
        [receipt, earlier, received, *sales],  # read ahead of the stock change before it
        [earlier, received, receipt, *sales],  # after its stock change
        [earlier, received, *sales, receipt],  # after later sales too
    ]
    results = [_receipt_outcomes(list(order), rules) for order in orders]
    assert all(r == results[0] for r in results), results
    signal, move = results[0]
    assert isinstance(signal, ClearanceSignal) and isinstance(move, StockDecision)
    assert signal.ts_ms == T0 and signal.reason == "30 units at S1 expire in 3.0 days"
    assert (move.kind, move.suggested_qty) == ("prepare", 30)


def test_a_receipt_read_days_late_is_still_judged_as_in_time() -> None:
    """A location of a perishable sku keeps its positions for the shelf life and a day: a
    replay may read one topic days ahead of the other."""
    rules = ruleset(EXPIRING)
    receipt = ExpiryBatch("MILK", "S1", "SH", 30, T0 + 3 * DAY, "rcv", T0)
    sales = [change(32 - n, T0 + n * HOUR, f"sale{n}") for n in range(1, 60)]
    in_time = _receipt_outcomes([receipt, change(32, T0, "rcv"), *sales], rules)
    late = _receipt_outcomes([change(32, T0, "rcv"), *sales, receipt], rules)
    assert late == in_time and len(in_time) == 2


def test_a_receipt_read_later_than_a_location_remembers_is_judged_from_then_on() -> None:
    """The limit: a receipt read more than the shelf life and a day after the stock changes
    that followed it meets the oldest position the location kept, not its own."""
    rules = ruleset(EXPIRING)
    receipt = ExpiryBatch("MILK", "S1", "SH", 30, T0 + 3 * DAY, "rcv", T0)
    assert history_ms(REFERENCE.products["MILK"].shelf_life_days) == 4 * DAY
    sales = [change(32 - n, T0 + n * DAY, f"sale{n}") for n in range(1, 7)]
    signal, _ = _receipt_outcomes([change(32, T0, "rcv"), *sales, receipt], rules)
    assert isinstance(signal, ClearanceSignal)
    assert signal.ts_ms == T0 + DAY  # sale1, the oldest position kept (6 days on)


def test_goods_that_do_not_perish_keep_only_their_latest_position() -> None:
    reference = ReferenceData(
        REFERENCE.locations, {"SOAP": Product("SOAP", "home", 2.0, 5, 1, None)}
    )
    location = LocationTriggers.of("SOAP", "S1", reference)
    pool = RecordedStock().at_end()
    for n in range(5):
        location.on_change(
            StockChange("SOAP", "S1", "SH", 9, 1, T0 + n * DAY, f"c{n}", 9), ruleset(CART), pool
        )
    assert [c.cause for c in location.state.history] == ["c4"]


def test_a_receipt_read_ahead_of_its_time_does_not_take_the_older_stock() -> None:
    """First-expiring-first-out gives what is on hand to the latest-expiring batches: a
    receipt read before the stock changes that precede it must not be counted yet."""
    rules = ruleset(EXPIRING)
    old = ExpiryBatch("MILK", "S1", "SH", 5, T0 + DAY, "old", T0 - DAY)
    new = ExpiryBatch("MILK", "S1", "SH", 30, T0 + 3 * DAY, "new", T0 + HOUR)
    in_time = [old, change(5, T0 - DAY, "old"), change(5, T0, "count"), new]
    in_time += [change(35, T0 + HOUR, "new")]
    ahead = [old, new, change(5, T0 - DAY, "old"), change(5, T0, "count"), in_time[-1]]
    first, second = _receipt_outcomes(in_time, rules), _receipt_outcomes(ahead, rules)
    assert first == second
    signals = [o for o in first if isinstance(o, ClearanceSignal)]
    assert [(s.evidence, s.ts_ms) for s in signals] == [(("old",), T0 - DAY), (("new",), T0 + HOUR)]


def _replayed(order: list[object], rules: RuleSet) -> list[object]:
    """A replay's sku × location (``flows.rule_triggers``): its stock changes wait until its
    receipts are read up to them (here each receipt says so of its own time; the flow's
    reader also sends marks), and the end of the input takes what is still held."""
    pool = RecordedStock(o for o in order if isinstance(o, StockChange))
    location = LocationTriggers.of("MILK", "S1", REFERENCE)
    out: list[object] = []
    for item in order:
        if isinstance(item, ExpiryBatch):
            out += location.on_batch(item, rules, pool.at_end())
            out += location.receipts_read(item.ts_ms, rules, pool.at_end())
        else:
            assert isinstance(item, StockChange)
            out += location.hold(item, rules, pool.at_end())
    end = max(o.ts_ms for o in order if isinstance(o, StockChange))
    out += location.finish(end, rules, pool.at_end())
    assert location.held == []
    return out


def _interleavings(first: list[object], second: list[object]) -> list[list[object]]:
    """Every merge of two streams that keeps each stream's own order."""
    size = len(first) + len(second)
    merged = []
    for places in itertools.combinations(range(size), len(second)):
        a, b = iter(first), iter(second)
        merged.append([next(b) if n in places else next(a) for n in range(size)])
    return merged


def test_a_replay_judges_batches_entering_their_window_together_whatever_the_read_order() -> None:
    """On the broker, one batch of ``wms.movements`` carried a store's second receipt of
    the day after ``stock.changes`` had been read a month on: the location's timer judged
    the first batch alone at their shared window start (all its 30 units, and it fired),
    then the second at the same moment with the first pruned as long expired (8 units, not
    the 7 it had). In event time both are on hand as the window opens; first-expiring-
    first-out gives the 30 to the batch that sorts last (same expiry: by event id), and the
    one-hour cooldown lets only the first judged fire: ``rcv-a`` with 7. A replay holds the
    location's changes until its receipts are read up to them, so every read order of the
    two topics gives that, as reading them in event time (the backtest) does."""
    rules = ruleset(EXPIRING)
    expires = T0 + 6 * DAY  # the window (4 days) opens at T0 + 2 days
    topic_receipts: list[object] = [
        ExpiryBatch("MILK", "S1", "SH", 30, expires, "rcv-b", T0),
        ExpiryBatch("MILK", "S1", "SH", 8, expires, "rcv-a", T0 + 2 * HOUR),
    ]
    topic_changes: list[object] = [
        change(30, T0, "rcv-b"),
        change(29, T0 + HOUR, "sale"),
        change(37, T0 + 2 * HOUR, "rcv-a"),
        change(54, T0 + 30 * DAY, "next-month"),
        change(50, T0 + 30 * DAY + HOUR, "sale2"),
    ]
    in_event_time = sorted(
        [*topic_receipts, *topic_changes],
        key=lambda r: (r.ts_ms, isinstance(r, ExpiryBatch)),  # type: ignore[attr-defined]
    )
    expected = _receipt_outcomes(in_event_time, rules)
    decisions = [o for o in expected if isinstance(o, StockDecision)]
    assert [(d.kind, d.evidence, d.suggested_qty) for d in decisions] == [
        ("prepare", ("rcv-a",), 7)
    ]
    assert decisions[0].event_time_ms == T0 + 2 * DAY
    assert StockTriggerSuppressed("expiring", "cooldown") in expected

    orders = _interleavings(topic_changes, topic_receipts)
    assert len(orders) == 21
    for order in orders:
        assert _replayed(order, rules) == expected, [getattr(r, "cause", r) for r in order]


def test_a_replay_holds_a_perishable_change_until_its_receipts_are_read_up_to_it() -> None:
    rules = ruleset(EXPIRING)
    pool = RecordedStock().at_end()
    location = LocationTriggers.of("MILK", "S1", REFERENCE)
    first, second = change(5, T0, "a"), change(4, T0 + HOUR, "b")
    assert location.hold(first, rules, pool) == [] and location.hold(second, rules, pool) == []
    assert location.waiting_since() == T0 and location.state.position is None
    location.receipts_read(T0 - 1, rules, pool)
    assert location.state.position is None  # not read up to it yet
    location.receipts_read(T0, rules, pool)
    assert location.state.position == first and location.held == [second]
    location.receipts_read(T0 - DAY, rules, pool)  # an older mark takes nothing back
    assert location.receipts_read_ms == T0 and location.waiting_since() == T0 + HOUR
    third = change(3, T0 + 30 * MIN, "c")  # read up to T0 only: behind the held one anyway
    location.hold(third, rules, pool)
    location.finish(T0 + HOUR, rules, pool)  # the end of the input: everything was read
    assert location.state.position == third and location.held == []


def test_goods_that_do_not_perish_are_never_held_for_receipts() -> None:
    reference = ReferenceData(
        REFERENCE.locations, {"SOAP": Product("SOAP", "home", 2.0, 5, 1, None)}
    )
    location = LocationTriggers.of("SOAP", "S1", reference)
    soap = StockChange("SOAP", "S1", "SH", 9, 1, T0, "c", 9)
    location.hold(soap, ruleset(EXPIRING), RecordedStock().at_end())
    assert location.state.position == soap and location.waiting_since() is None


# --- audience and campaigns ---------------------------------------------------------------------


def test_the_audience_releases_every_signal_at_the_end_of_a_replay() -> None:
    rules = ruleset(OVERSTOCK)
    audience = AudienceTriggers()
    signal = ClearanceSignal(
        "overstock", "overstock", "MILK", "dairy", "S1", "SH", "S1: idle", ("c",), T0
    )
    audience.add_signal(signal)
    viewed = view_of(event(1, "product_view", T0 - HOUR, "MILK"))
    assert viewed is not None and viewed[0] == "SH"
    audience.add_view(viewed[1], rules)
    assert audience.next_release() == T0
    assert audience.release(T0 - 1, rules) == []  # live: the views are not there yet
    (offer,) = audience.finish(rules)
    assert (offer.customer_id, offer.store_id, offer.ts_ms) == ("c1", "S1", T0)
    assert audience.next_release() is None


def _decision(n: int, sent_ms: int) -> CouponDecision:
    return CouponDecision("cart", f"c{n}", "default", "MILK", "S1", "r", (f"e{n}",), sent_ms)


def test_a_replay_counts_campaign_coupons_in_event_time_order() -> None:
    rules = ruleset(PREP)
    decisions = [_decision(n, T0 + n * MIN) for n in range(4)]
    results = []
    for arrival in itertools.permutations(decisions):
        campaign = CampaignTriggers()
        for decision in arrival:
            campaign.hold(decision)
        results.append(campaign.finish(rules, REFERENCE, RecordedStock().at_end()))
    assert all(r == results[0] for r in results)
    (prepare, suppressed) = results[0]
    assert isinstance(prepare, StockDecision) and prepare.event_time_ms == T0 + 2 * MIN
    assert prepare.evidence == tuple(d.code for d in decisions[:3])
    assert suppressed.reason == "cooldown"  # type: ignore[union-attr]


def test_coupons_prepare_a_campaign_only_when_sent_to_a_known_store_and_sku() -> None:
    decision = _decision(1, T0)
    assert campaign_key(decision, REFERENCE) == "S1:MILK"
    holdout = CouponDecision("cart", "c1", "control", "MILK", "S1", "r", ("e",), T0)
    assert campaign_key(holdout, REFERENCE) is None
    elsewhere = CouponDecision("cart", "c1", "default", "MILK", "S9", "r", ("e",), T0)
    assert campaign_key(elsewhere, REFERENCE) is None


def test_a_receipt_without_a_loyalty_card_goes_to_the_owner_of_its_code() -> None:
    receipt = CustomerEvent(
        "r1", "sale", T0, "", skus=("MILK",), is_purchase=True, coupon_codes=("X", "OS1")
    )
    assert redeemed_codes([receipt, event(1, "page_view", T0)]) == ["OS1", "X"]
    claimed = claim_redemption(receipt, {"OS1": "c7"})
    assert claimed is not None and claimed.customer_id == "c7"
    assert claim_redemption(receipt, {}) is None


# --- the replay of rules backtest ---------------------------------------------------------------


def test_the_replay_routes_signals_offers_and_coupons_between_keys() -> None:
    """Stock side → audience → customers → campaigns, at the end of the input."""
    rules = ruleset(OVERSTOCK, PREP)
    pool = RecordedStock([change(500, T0, "big", sold=1)])
    replay = TriggerReplay(rules, REFERENCE, pool.at_end(), MemoryCouponStore(), 500)
    views = [
        CustomerEvent(f"v{n}", "product_view", T0 - HOUR, f"c{n}", "SH", "MILK", category="dairy")
        for n in range(3)
    ]
    for view in views:
        assert replay.feed(view) == []
    assert replay.feed(change(500, T0, "big", sold=1)) == []  # the signal waits for the end
    out = replay.finish()
    assert sorted(c.customer_id for c in coupons(out)) == ["c0", "c1", "c2"]
    (prepare,) = [o for o in out if isinstance(o, StockDecision)]
    assert (prepare.kind, prepare.location_id) == ("prepare", "S1")  # 3 coupons name S1
    assert replay.audiences["SH"].state.by_sku["MILK"] == {f"c{n}": (T0 - HOUR,) for n in range(3)}


def test_clearance_offers_follow_merges_and_erasures() -> None:
    """c0 (a device) merges into c1: one coupon, to c1. c2 is erased: none. a → b → c with
    b never browsing in the region: one coupon, to c (nothing to a or b). A region no
    location is in keeps no audience."""
    rules = ruleset(OVERSTOCK, cap=10)
    pool = RecordedStock([change(500, T0, "big", sold=1)])
    replay = TriggerReplay(rules, REFERENCE, pool.at_end(), MemoryCouponStore(), 500)

    def view(n: int, customer: str, region: str = "SH") -> CustomerEvent:
        return CustomerEvent(
            f"v{n}", "product_view", T0 - HOUR + n, customer, region, "MILK", category="dairy"
        )

    def merge(n: int, merged: str, survivor: str) -> list[IdentityNotice]:
        ts = T0 - 30 * MIN + n
        return [
            IdentityNotice(MERGED, merged, survivor, ts, f"m{n}"),
            IdentityNotice(ABSORBED, survivor, merged, ts, f"m{n}"),
        ]

    records: list[object] = [view(0, "c0"), view(1, "c1"), view(2, "c2"), view(3, "a")]
    records += [CustomerEvent("p4", "page_view", T0 - HOUR, "b", "SH"), view(5, "nowhere", "XX")]
    records += [*merge(6, "c0", "c1"), IdentityNotice(ERASED, "c2", None, T0 - MIN, "f7")]
    records += [*merge(8, "a", "b"), *merge(9, "b", "c")]
    for record in records:
        replay.feed(record)  # type: ignore[arg-type]
    replay.feed(change(500, T0, "big", sold=1))
    out = replay.finish()
    assert sorted(c.customer_id for c in coupons(out)) == ["c", "c1"]
    assert set(replay.audiences) == {"SH"}
    assert "c2" not in repr(replay.audiences["SH"].state)
