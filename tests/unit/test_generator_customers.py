"""The generator's customer traffic (CONTRACT §8, §11): store check-ins after online views,
consent withdrawals and re-grants, repurchase items and lapsing members.

Every expectation is computed here from the published events themselves (and the reference
data), the way a subscriber that saw only the stream would judge it: who viewed what before
checking in, when a repurchase reminder or a lapse comes due, whether a lapsing member ever
shows up again.
"""

from __future__ import annotations

import argparse
from collections import Counter
from itertools import pairwise
from typing import Any

import orjson
import pytest

from base.config import load_config
from connectors.decode import decode_message
from connectors.generator import DEFAULT_START_MS, GeneratedEvent, TrafficModel
from connectors.generator.simulation import Simulation, customer_base
from connectors.generator.traffic import DEFAULT_CUSTOMERS
from connectors.reference_files import load_reference
from domain.events import ClickEvent, Origin, PosEvent, Rejection
from domain.timeparse import parse_event_time
from omnistream.generate_cli import add_generate_arguments

CONFIG = load_config(env={})
REFERENCE = load_reference(CONFIG)
DAY_MS = 86_400_000
MINUTE_MS = 60_000
#: The sample ``lapsed`` rule's ``inactive_days`` the generator dates its lapses for.
INACTIVE_DAYS = 30
EVENTS = 20_000


@pytest.fixture(scope="module")
def stream() -> list[GeneratedEvent]:
    return list(TrafficModel(REFERENCE, seed=7).events(EVENTS))


@pytest.fixture(scope="module")
def good(stream: list[GeneratedEvent]) -> list[dict[str, Any]]:
    """The good events (no duplicates) as JSON, each with its event time as ``_ts``."""
    payloads = []
    for event in stream:
        if event.duplicate or event.bad_reason is not None:
            continue
        payload = orjson.loads(event.value)
        payload["_ts"] = parse_event_time(payload["ts"])
        payload["_topic"] = event.topic
        payloads.append(payload)
    return payloads


@pytest.fixture(scope="module")
def stream_end(good: list[dict[str, Any]]) -> int:
    return max(p["_ts"] for p in good)


def decode(event: GeneratedEvent, index: int = 0) -> object:
    origin = Origin(event.topic, 0, index, event.key)
    return decode_message(event.topic, event.value, origin, REFERENCE, hasher=lambda k, v: "h")


def member_sales(good: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """member_code → its till events (sales and returns), in stream order."""
    by_member: dict[str, list[dict[str, Any]]] = {}
    for p in good:
        if p["_topic"] == "pos.sales" and "member_code" in p:
            by_member.setdefault(p["member_code"], []).append(p)
    return by_member


# --- every event is valid --------------------------------------------------------------------


def test_every_good_event_decodes_and_the_new_types_carry_their_fields(
    stream: list[GeneratedEvent],
) -> None:
    kinds: Counter[str] = Counter()
    for index, event in enumerate(stream):
        if event.bad_reason is not None:
            continue
        decoded = decode(event, index)
        assert not isinstance(decoded, Rejection), (decoded, event.value)
        if isinstance(decoded, ClickEvent) and decoded.event_type == "store_checkin":
            assert decoded.store_id is not None
            assert REFERENCE.locations[decoded.store_id].type == "store"
            kinds["store_checkin"] += 1
        if isinstance(decoded, ClickEvent) and decoded.event_type == "consent":
            assert isinstance(decoded.marketing, bool)
            kinds[f"consent:{decoded.marketing}"] += 1
    assert kinds["store_checkin"] > 100
    assert kinds["consent:False"] > 10 and kinds["consent:True"] > 0


def test_the_stream_with_malformations_dead_letters_exactly_the_intended_events() -> None:
    """Good events of every type decode; each malformed one (check-ins and consent settings
    among them) gets exactly the reason it was built for."""
    noisy = list(TrafficModel(REFERENCE, seed=11, bad_ratio=0.1).events(EVENTS))
    new_kinds: Counter[tuple[str, str]] = Counter()
    for index, event in enumerate(noisy):
        decoded = decode(event, index)
        if event.bad_reason is None:
            assert not isinstance(decoded, Rejection), (decoded, event.value)
            continue
        assert isinstance(decoded, Rejection) and decoded.reason == event.bad_reason
        try:
            event_type = orjson.loads(event.value).get("event_type")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if event_type in ("store_checkin", "consent"):
            new_kinds[(event_type, event.bad_reason)] += 1
    expected = {
        ("store_checkin", "missing_field"),
        ("store_checkin", "bad_type"),
        ("store_checkin", "bad_value"),
        ("store_checkin", "unknown_location"),
        ("consent", "missing_field"),
        ("consent", "bad_type"),
    }
    assert expected <= set(new_kinds), new_kinds


# --- store check-ins -------------------------------------------------------------------------


def test_members_check_in_at_stores_of_their_region_often_after_viewing_products(
    good: list[dict[str, Any]],
) -> None:
    checkins = [p for p in good if p["event_type"] == "store_checkin"]
    assert len(checkins) > 100
    for p in checkins:
        store = REFERENCE.locations[p["store_id"]]
        assert store.type == "store" and p["region"] == store.region
        assert "user_id" in p and p["channel"] == "app"
    views: dict[str, list[int]] = {}
    for p in good:
        if p["event_type"] == "product_view" and "user_id" in p:
            views.setdefault(p["user_id"], []).append(p["_ts"])
    after_views = [
        p
        for p in checkins
        if any(p["_ts"] - 65 * MINUTE_MS <= t < p["_ts"] for t in views.get(p["user_id"], []))
    ]
    # Most check-ins follow an online visit (minutes after its last view); some do not.
    assert 0.55 * len(checkins) < len(after_views) < len(checkins)
    members = Counter(p["user_id"] for p in checkins)
    assert len(members) > 0.7 * len(checkins)  # many members, not one member many times


def test_a_checked_in_card_holder_often_buys_at_that_store_soon_after(
    good: list[dict[str, Any]],
) -> None:
    # user_id → member_code, as the shopper's own events show them together: a check-in's
    # user and the card rung up at that store within 26 minutes.
    sales_at: dict[str, list[dict[str, Any]]] = {}
    for p in good:
        if p["_topic"] == "pos.sales" and p["event_type"] == "sale" and "member_code" in p:
            sales_at.setdefault(p["store_id"], []).append(p)
    checkins = [p for p in good if p["event_type"] == "store_checkin"]
    followed = 0
    for p in checkins:
        if any(
            0 < s["_ts"] - p["_ts"] <= 26 * MINUTE_MS and "order_id" not in s
            for s in sales_at.get(p["store_id"], [])
        ):
            followed += 1
    assert followed > 0.25 * len(checkins)


# --- consent ---------------------------------------------------------------------------------


def test_some_members_withdraw_marketing_consent_and_a_few_grant_it_again(
    good: list[dict[str, Any]],
) -> None:
    consents = [p for p in good if p["event_type"] == "consent"]
    assert all(isinstance(p["marketing"], bool) and "user_id" in p for p in consents)
    state: dict[str, bool] = {}
    withdrawn_at: dict[str, int] = {}
    regrants = 0
    for p in consents:
        user, marketing = p["user_id"], p["marketing"]
        # A change of setting each time: no withdrawal twice in a row, no re-grant without
        # a withdrawal before it (a customer without a consent event has consented).
        assert state.get(user, True) is not marketing, p
        state[user] = marketing
        if marketing:
            regrants += 1
            waited = p["_ts"] - withdrawn_at[user]
            assert 20 * MINUTE_MS <= waited <= 91 * MINUTE_MS
        else:
            withdrawn_at[user] = p["_ts"]
    withdrawals = len(consents) - regrants
    assert withdrawals >= 15 and 0 < regrants < withdrawals
    # Withdrawn members keep shopping online afterwards (so a coupon can be held back).
    later = {
        p["user_id"]
        for p in good
        if p["_topic"] == "clickstream"
        and p["event_type"] != "consent"
        and p.get("user_id") in withdrawn_at
        and p["_ts"] > withdrawn_at[p["user_id"]]
    }
    assert later


def test_the_withdrawal_share_is_an_option() -> None:
    def consents(share: float) -> int:
        model = TrafficModel(REFERENCE, seed=5, consent_withdrawal_share=share)
        return sum(1 for e in model.events(8_000) if b'"consent"' in e.value)

    assert consents(0.0) == 0
    assert consents(0.3) > 2 * consents(0.06) > 0
    with pytest.raises(ValueError, match="consent_withdrawal_share"):
        TrafficModel(REFERENCE, consent_withdrawal_share=1.5)


# --- the history: repurchase items and lapsing members ---------------------------------------


def test_the_stream_opens_with_a_backdated_history_in_event_time_order(
    good: list[dict[str, Any]],
) -> None:
    history = [p for p in good if p["_ts"] < DEFAULT_START_MS - 10_000]
    assert history and good[: len(history)] == history  # published first
    assert all(b["_ts"] > a["_ts"] - 5_000 for a, b in pairwise(history))
    assert {p["event_type"] for p in history} == {"receipt", "sale"}
    # Stock was there: every sku × store it sells got its one opening receipt before.
    on_hand: Counter[tuple[str, str]] = Counter()
    opening: Counter[tuple[str, str]] = Counter()
    for p in good:
        if p["event_type"] == "receipt" and p.get("reason") == "opening stock":
            opening[(p["sku"], p["location_id"])] += 1
    for p in history:
        if p["event_type"] == "receipt":
            assert p["reason"] == "opening stock" and "expiry_date" not in p
            on_hand[(p["sku"], p["location_id"])] += p["qty"]
            continue
        assert "member_code" in p and "order_id" not in p
        for line in p["lines"]:
            key = (line["sku"], p["store_id"])
            assert REFERENCE.products[line["sku"]].shelf_life_days is None
            on_hand[key] -= line["qty"]
            assert on_hand[key] >= 0, key
    assert all(opening[key] == 1 for key in on_hand)
    assert all(count == 1 for count in opening.values())


def test_repurchase_reminders_come_due_inside_the_stream(
    good: list[dict[str, Any]], stream_end: int
) -> None:
    """A member bought a repurchase item its ``repurchase_days`` before a moment of the
    stream's first hours, and has not bought it again by then."""
    due_inside = 0
    for p in good:
        if p["event_type"] != "sale" or p["_ts"] >= DEFAULT_START_MS:
            continue
        for line in p["lines"]:
            days = REFERENCE.products[line["sku"]].repurchase_days
            if days is None:
                continue
            due = p["_ts"] + days * DAY_MS
            if DEFAULT_START_MS - 61 * MINUTE_MS <= due <= stream_end:
                due_inside += 1
    assert due_inside >= 25  # 2 % of 2,000 members, a few without a repurchase item at home


def test_lapsing_members_bought_once_long_ago_and_never_come_back(
    good: list[dict[str, Any]], stream_end: int
) -> None:
    """Members with one purchase, weeks before the stream, and nothing since: their lapse
    (``inactive_days`` without a purchase) comes due before or during the stream's first
    hours, so a ``lapsed`` rule fires on its timer inside the stream."""
    once = {
        code: sales[0]["_ts"]
        for code, sales in member_sales(good).items()
        if len(sales) == 1 and sales[0]["_ts"] < DEFAULT_START_MS - 20 * DAY_MS
    }
    window = (DEFAULT_START_MS - 61 * MINUTE_MS, DEFAULT_START_MS + 91 * MINUTE_MS)
    lapse_due = [
        ts + INACTIVE_DAYS * DAY_MS
        for ts in once.values()
        if window[0] <= ts + INACTIVE_DAYS * DAY_MS <= window[1]
    ]
    assert len(lapse_due) >= 15  # about 1 % of 2,000 customers
    assert window[1] <= stream_end  # the stream outlasts every lapse it sets up
    # Some are overdue when the stream opens, some come due while it runs.
    assert any(t <= DEFAULT_START_MS for t in lapse_due)
    assert any(t > DEFAULT_START_MS for t in lapse_due)


def test_lapsing_customers_are_silent_on_every_channel(stream: list[GeneratedEvent]) -> None:
    """Their devices, accounts and phones appear in no event from the start on either: the
    lapse timer must fire without new activity (CONTRACT §11)."""
    base = customer_base(REFERENCE, DEFAULT_CUSTOMERS)
    simulation = Simulation(REFERENCE, 7, base, DEFAULT_START_MS)
    lapsing = [c for c in base if c.number in simulation.lapsing]
    assert 15 <= len(lapsing) <= 25
    marks = set()
    for customer in lapsing:
        marks.update(customer.devices)
        marks.update(x for x in (customer.user_id, customer.member_code) if x)
    shared = {d for c in base if c.number not in simulation.lapsing for d in c.devices}
    marks -= shared  # a family tablet also used by someone who does shop
    for event in stream:
        if event.bad_reason is not None:
            continue
        payload = orjson.loads(event.value)
        if parse_event_time(payload["ts"]) < DEFAULT_START_MS:
            continue
        named = {payload.get(k) for k in ("anonymous_id", "user_id", "member_code")}
        assert not named & marks, payload


def test_history_follows_the_options_and_the_seed() -> None:
    def history(**options: Any) -> list[bytes]:
        events = TrafficModel(REFERENCE, seed=3, **options).events(400)
        return [
            e.value
            for e in events
            if parse_event_time(orjson.loads(e.value)["ts"]) < DEFAULT_START_MS
        ]

    assert history() == history()  # deterministic per seed
    assert history() != [
        e.value
        for e in TrafficModel(REFERENCE, seed=4).events(400)
        if parse_event_time(orjson.loads(e.value)["ts"]) < DEFAULT_START_MS
    ]
    sales_by_days: dict[int, list[int]] = {}
    for days in (30, 45):
        sales = []
        for raw in history(inactive_days=days, lapsing_share=0.05):
            p = orjson.loads(raw)
            if p["event_type"] == "sale":
                sales.append(parse_event_time(p["ts"]))
        sales_by_days[days] = sales
    # With more inactive days, the lapsing members' purchases lie further back.
    assert min(sales_by_days[45]) < DEFAULT_START_MS - 44 * DAY_MS
    assert min(sales_by_days[30]) > DEFAULT_START_MS - 46 * DAY_MS  # repurchase items: ≤ 45 d
    no_lapse = [orjson.loads(raw) for raw in history(lapsing_share=0.0)]
    with_lapse = [orjson.loads(raw) for raw in history(lapsing_share=0.05)]
    assert len([p for p in with_lapse if p["event_type"] == "sale"]) > len(
        [p for p in no_lapse if p["event_type"] == "sale"]
    )
    with pytest.raises(ValueError, match="lapsing_share"):
        TrafficModel(REFERENCE, lapsing_share=-0.1)
    with pytest.raises(ValueError, match="inactive_days"):
        TrafficModel(REFERENCE, inactive_days=0)


def test_a_tiny_customer_base_keeps_a_shopper() -> None:
    """Even when the share would make every member lapse, someone shops in the stream."""
    events = list(TrafficModel(REFERENCE, seed=2, customers=3, lapsing_share=1.0).events(3_000))
    assert sum(1 for e in events if e.topic == "clickstream") > 100
    assert all(not isinstance(decode(e), Rejection) for e in events)


def test_the_generate_command_has_the_options() -> None:
    parser = argparse.ArgumentParser(prog="omnistream generate")
    add_generate_arguments(parser)
    args = parser.parse_args([])
    assert (args.consent_withdrawal_share, args.lapsing_share, args.inactive_days) == (
        0.06,
        0.01,
        30,
    )
    args = parser.parse_args(
        ["--consent-withdrawal-share", "0.2", "--lapsing-share", "0", "--inactive-days", "45"]
    )
    assert (args.consent_withdrawal_share, args.lapsing_share, args.inactive_days) == (0.2, 0, 45)
    for bad in (
        ["--lapsing-share", "2"],
        ["--inactive-days", "0"],
        ["--consent-withdrawal-share", "x"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_decoded_history_sales_are_member_purchases(stream: list[GeneratedEvent]) -> None:
    """The backdated sales resolve like any till sale with a card (a known customer)."""
    decoded = [decode(e) for e in stream[:400] if e.topic == "pos.sales"]
    history = [d for d in decoded if isinstance(d, PosEvent) and d.ts_ms < DEFAULT_START_MS]
    assert history and all(d.member_code for d in history)
