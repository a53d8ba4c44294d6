"""The customer profile fold (``domain.profile``), checked against a reference that
recomputes every public field straight from the list of events, and for the merge laws:
any merge tree over any split of a customer's events gives the profile of the whole."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from decimal import Decimal

import pytest

from base.config import ProfileConfig
from base.units import DAY_MS, HOUR_MS
from domain.customer_rules import CustomerEvent
from domain.profile import (
    PROFILE_FIELDS,
    SEGMENTS,
    CustomerProfile,
    ProfileDecodeError,
    ProfileSettings,
    merge,
    next_segment_change_ms,
    observe,
    profile_fields,
    profile_from_json,
    profile_to_json,
    prune,
    segment_of,
)
from domain.timeparse import format_event_time

T0 = 1_790_000_000_000  # 2026-09-21, a Monday morning UTC
#: Small bounds, so the random histories cross every window and cap.
TIGHT = ProfileSettings(
    new_days=20,
    active_days=30,
    loyal_purchases=3,
    loyal_window_days=90,
    lapsed_days=60,
    interest_window_days=10,
    max_categories=5,
    dedup_hours=48,
    max_event_ids=15,
)
DEFAULT = ProfileSettings()
CATEGORIES = ("dairy", "bakery", "produce", "snacks", "frozen", "drinks", "household")
CHANNELS = ("app", "web", "mini_program", "live_stream")
STORES = ("S1", "S2", "S3")


def event(
    n: int | str,
    kind: str,
    ts: int,
    *,
    category: str | None = None,
    categories: tuple[str, ...] = (),
    channel: str | None = None,
    store: str | None = None,
    fulfillment: str | None = None,
    revenue: float = 0.0,
    consent: bool | None = None,
) -> CustomerEvent:
    return CustomerEvent(
        event_id=f"e{n}",
        event_type=kind,
        ts_ms=ts,
        customer_id="c1",
        sku="SKU" if category else None,
        skus=tuple(f"SKU{i}" for i in range(len(categories))),
        is_purchase=kind in ("order_placed", "sale"),
        category=category,
        channel=channel,
        store_id=store,
        fulfillment=fulfillment,
        revenue=revenue,
        categories=categories,
        consent=consent,
    )


def random_event(rnd: random.Random, n: int, span_days: int = 200) -> CustomerEvent:
    ts = T0 + rnd.randrange(span_days * DAY_MS)
    kind = rnd.choice(
        ["product_view"] * 5
        + ["add_to_cart"] * 2
        + ["order_placed", "sale", "store_checkin", "consent", "page_view"]
    )
    if kind in ("product_view", "add_to_cart"):
        return event(
            n, kind, ts, category=rnd.choice([*CATEGORIES, None]), channel=rnd.choice(CHANNELS)
        )
    if kind == "order_placed":
        return event(
            n,
            kind,
            ts,
            categories=tuple(rnd.choices(CATEGORIES, k=rnd.randint(1, 3))),
            channel=rnd.choice(CHANNELS),
            fulfillment=rnd.choice(["delivery", "store_pickup", None]),
            revenue=rnd.randrange(1, 50_000) / 100,
        )
    if kind == "sale":
        return event(
            n,
            kind,
            ts,
            categories=tuple(rnd.choices(CATEGORIES, k=rnd.randint(1, 3))),
            channel="store",
            store=rnd.choice(STORES),
            revenue=rnd.randrange(1, 50_000) / 100,
        )
    if kind == "store_checkin":
        return event(n, kind, ts, channel="app", store=rnd.choice(STORES))
    if kind == "consent":
        return event(n, kind, ts, channel=rnd.choice(CHANNELS), consent=rnd.random() < 0.5)
    return event(n, kind, ts, channel=rnd.choice(CHANNELS))


def fold(events: list[CustomerEvent], settings: ProfileSettings = TIGHT) -> CustomerProfile:
    profile: CustomerProfile | None = None
    for e in events:
        profile = observe(profile, e, settings)
    assert profile is not None
    return profile


# ---------------------------------------------------------------- the independent reference


def reference_segment(events: list[CustomerEvent], now: int, s: ProfileSettings) -> str:
    """The module doc's definitions, from the raw purchase times."""
    bought = sorted(e.ts_ms for e in events if e.is_purchase)
    if not bought:
        last_seen = max(e.ts_ms for e in events)
        return "new" if now - last_seen < s.lapsed_days * DAY_MS else "lapsed"
    if len(bought) == 1 and now - bought[0] < s.new_days * DAY_MS:
        return "new"
    age = now - bought[-1]
    if age < s.active_days * DAY_MS:
        recent = [t for t in bought if now - t < s.loyal_window_days * DAY_MS]
        return "loyal" if len(recent) >= s.loyal_purchases else "active"
    return "at_risk" if age < s.lapsed_days * DAY_MS else "lapsed"


def reference_fields(events: list[CustomerEvent], now: int, s: ProfileSettings) -> dict[str, str]:
    purchases = [e for e in events if e.is_purchase]
    orders = [e for e in events if e.event_type == "order_placed"]
    pickups = [e for e in orders if e.fulfillment == "store_pickup"]
    revenue = sum((Decimal(str(e.revenue)) for e in purchases), Decimal(0))
    channels = Counter(e.channel for e in events if e.channel)
    stores = Counter(e.store_id for e in events if e.store_id)
    interest: Counter[str] = Counter()
    first_day = now // DAY_MS - s.interest_window_days + 1
    for e in events:
        if e.ts_ms // DAY_MS < first_day:
            continue
        if e.is_purchase:
            for category in set(e.categories):
                interest[category] += 5
        elif e.category and e.event_type == "product_view":
            interest[e.category] += 1
        elif e.category and e.event_type == "add_to_cart":
            interest[e.category] += 3
    top = sorted(interest, key=lambda c: (-interest[c], c))[: s.max_categories]
    consents = sorted((e.ts_ms, e.event_id, e.consent) for e in events if e.consent is not None)

    def favourite(counts: Counter[str]) -> str:
        return sorted(counts, key=lambda k: (-counts[k], k))[0] if counts else ""

    return {
        "first_seen": format_event_time(min(e.ts_ms for e in events)),
        "last_seen": format_event_time(max(e.ts_ms for e in events)),
        "last_purchase_at": format_event_time(max(e.ts_ms for e in purchases)) if purchases else "",
        "purchases": str(len(purchases)),
        "revenue": str(revenue.quantize(Decimal("0.01"))),
        "preferred_channel": favourite(channels),
        "preferred_store": favourite(stores),
        "pickup_share": str(round(Decimal(len(pickups)) / len(orders), 3)) if orders else "0",
        "segment": reference_segment(events, now, s),
        "top_categories": json.dumps(top),
        "consent_marketing": "0" if consents and consents[-1][2] is False else "1",
        "updated_at": format_event_time(now),
    }


@pytest.mark.parametrize("seed", range(12))
def test_fields_equal_the_reference_computed_from_all_events(seed: int) -> None:
    rnd = random.Random(seed)
    events = [random_event(rnd, n) for n in range(rnd.randint(1, 120))]
    rnd.shuffle(events)  # arrival order is not event-time order
    profile = fold(events)
    latest = max(e.ts_ms for e in events)
    for now in (latest, latest + 5 * DAY_MS, latest + 45 * DAY_MS, latest + 400 * DAY_MS):
        expected = reference_fields(events, now, TIGHT)
        got = profile_fields(profile, now, TIGHT)
        assert list(got) == list(PROFILE_FIELDS)
        # The reference's JSON has spaces; compare the arrays, then the rest as text.
        assert json.loads(got.pop("top_categories")) == json.loads(expected.pop("top_categories"))
        assert got == expected


# ---------------------------------------------------------------- order, duplicates, merges


@pytest.mark.parametrize("seed", range(8))
def test_arrival_order_and_replayed_duplicates_change_nothing(seed: int) -> None:
    rnd = random.Random(100 + seed)
    events = [random_event(rnd, n, span_days=120) for n in range(150)]
    reference = fold(sorted(events, key=lambda e: e.ts_ms))
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert fold(shuffled) == reference
    # A replay re-sends each event again shortly after it (well inside the dedup window).
    replayed: list[CustomerEvent] = []
    for e in sorted(events, key=lambda e: e.ts_ms):
        replayed.append(e)
        if rnd.random() < 0.5:
            replayed.append(e)
    assert fold(replayed) == reference


def random_merge(rnd: random.Random, parts: list[CustomerProfile]) -> CustomerProfile:
    """Merge in a random binary tree with random operand order."""
    pool = [copy.deepcopy(p) for p in parts]
    while len(pool) > 1:
        a = pool.pop(rnd.randrange(len(pool)))
        b = pool.pop(rnd.randrange(len(pool)))
        pool.append(merge(a, b, TIGHT) if rnd.random() < 0.5 else merge(b, a, TIGHT))
    return pool[0]


@pytest.mark.parametrize("seed", range(15))
def test_any_merge_tree_of_any_split_equals_folding_everything(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    events = [random_event(rnd, n) for n in range(rnd.randint(2, 200))]
    whole = fold(events)
    k = rnd.randint(2, 6)
    split: list[list[CustomerEvent]] = [[] for _ in range(k)]
    for e in events:
        split[rnd.randrange(k)].append(e)
    parts = [fold(p) for p in split if p]
    for _ in range(4):
        assert random_merge(rnd, parts) == whole
    # A part before merging is left as it was.
    before = [copy.deepcopy(p) for p in parts]
    random_merge(rnd, parts)
    assert parts == before


@pytest.mark.parametrize("seed", range(10))
def test_merge_is_commutative_and_associative(seed: int) -> None:
    rnd = random.Random(5000 + seed)
    a, b, c = (
        fold([random_event(rnd, f"{name}{n}") for n in range(rnd.randint(1, 60))]) for name in "abc"
    )
    assert merge(a, b, TIGHT) == merge(b, a, TIGHT)
    left = merge(merge(a, b, TIGHT), c, TIGHT)
    right = merge(a, merge(b, c, TIGHT), TIGHT)
    assert left == right


def test_a_duplicate_reaching_the_survivor_after_a_merge_changes_nothing() -> None:
    view = event(1, "product_view", T0, category="dairy", channel="app")
    sale = event(2, "sale", T0 + HOUR_MS, categories=("dairy",), store="S1", revenue=9.5)
    merged = merge(fold([view]), fold([sale]), TIGHT)
    again = observe(copy.deepcopy(merged), view, TIGHT)
    again = observe(again, sale, TIGHT)
    assert again == merged


# ---------------------------------------------------------------- bounds


def test_state_stays_bounded_over_a_long_busy_history() -> None:
    rnd = random.Random(3)
    profile = fold([random_event(rnd, n, span_days=365) for n in range(3000)])
    latest = profile.last_seen_ms
    assert latest is not None
    assert len(profile.seen) <= TIGHT.max_event_ids
    assert all(latest - ts < TIGHT.dedup_ms for ts in profile.seen.values())
    assert len(profile.recent_purchases) == TIGHT.loyal_purchases
    window_days = {day for days in profile.engagement.values() for day in days[::2]}
    assert window_days and min(window_days) > latest // DAY_MS - TIGHT.interest_window_days
    assert profile.purchases > 300  # the totals still count everything


def test_prune_at_a_later_time_drops_the_interest_but_keeps_the_totals() -> None:
    profile = fold(
        [
            event(1, "product_view", T0, category="dairy", channel="app"),
            event(2, "sale", T0 + 1, categories=("bakery",), store="S1", revenue=3),
        ]
    )
    prune(profile, T0 + 40 * DAY_MS, TIGHT)
    assert profile.engagement == {} and profile.seen == {}
    fields = profile_fields(profile, T0 + 40 * DAY_MS, TIGHT)
    assert fields["top_categories"] == "[]"
    assert fields["purchases"] == "1" and fields["revenue"] == "3.00"


# ---------------------------------------------------------------- segments and timers


def purchases_at(*days: float) -> CustomerProfile:
    return fold(
        [
            event(n, "order_placed", T0 + round(d * DAY_MS), fulfillment="delivery", revenue=10)
            for n, d in enumerate(days)
        ],
        DEFAULT,
    )


@pytest.mark.parametrize(
    ("days", "now_day", "segment"),
    [
        ((0,), 0, "new"),
        ((0,), 29.9, "new"),
        ((0,), 30, "at_risk"),  # one purchase, a month ago: no longer new, no longer active
        ((0, 1), 1, "active"),
        ((0, 1, 2), 2, "loyal"),
        ((0, 1, 2), 31.9, "loyal"),
        ((0, 1, 2), 32, "at_risk"),
        ((0, 100, 170, 185), 186, "loyal"),  # three within 180 days
        ((0, 5, 181, 185), 186, "active"),  # only two within 180 days
        ((0, 1), 60.9, "at_risk"),
        ((0, 1), 61, "lapsed"),
    ],
)
def test_segments_follow_the_configured_thresholds(
    days: tuple[float, ...], now_day: float, segment: str
) -> None:
    assert segment_of(purchases_at(*days), T0 + round(now_day * DAY_MS), DEFAULT) == segment


def test_a_browser_who_never_bought_is_new_until_quiet_for_lapsed_days() -> None:
    profile = fold([event(1, "product_view", T0, category="dairy", channel="web")], DEFAULT)
    assert segment_of(profile, T0 + 59 * DAY_MS, DEFAULT) == "new"
    assert segment_of(profile, T0 + 60 * DAY_MS, DEFAULT) == "lapsed"
    assert next_segment_change_ms(profile, DEFAULT) == T0 + 60 * DAY_MS
    assert segment_of(CustomerProfile(), T0, DEFAULT) == "new"
    assert next_segment_change_ms(CustomerProfile(), DEFAULT) is None


def test_segment_timers_walk_active_to_at_risk_to_lapsed() -> None:
    profile = purchases_at(0, 1)
    last = T0 + DAY_MS
    assert next_segment_change_ms(profile, DEFAULT) == last + 30 * DAY_MS
    assert next_segment_change_ms(profile, DEFAULT, last + 30 * DAY_MS) == last + 60 * DAY_MS
    assert next_segment_change_ms(profile, DEFAULT, last + 60 * DAY_MS) is None


@pytest.mark.parametrize("seed", range(20))
def test_the_next_change_is_exactly_where_the_segment_first_differs(seed: int) -> None:
    rnd = random.Random(7000 + seed)
    events = [random_event(rnd, n, span_days=150) for n in range(rnd.randint(1, 40))]
    profile = fold(events)
    after = max(e.ts_ms for e in events) + rnd.randrange(0, 90 * DAY_MS)
    current = segment_of(profile, after, TIGHT)
    change = next_segment_change_ms(profile, TIGHT, after)
    # Scan hour by hour (an independent search) for the first differing segment.
    scan = after + 1
    limit = after + 400 * DAY_MS
    while scan < limit and segment_of(profile, scan, TIGHT) == current:
        scan = min(scan + HOUR_MS, change if change is not None and change > scan else limit)
    if change is None:
        assert scan >= limit
        assert segment_of(profile, after + 10_000 * DAY_MS, TIGHT) == current
    else:
        assert scan == change
        assert segment_of(profile, change - 1, TIGHT) == current
        assert segment_of(profile, change, TIGHT) != current
        assert segment_of(profile, change, TIGHT) in SEGMENTS


# ---------------------------------------------------------------- the public fields


def test_fields_of_an_omnichannel_customer() -> None:
    profile = fold(
        [
            event(1, "product_view", T0, category="dairy", channel="app"),
            event(2, "product_view", T0 + 1, category="bakery", channel="web"),
            event(3, "add_to_cart", T0 + 2, category="bakery", channel="web"),
            event(4, "order_placed", T0 + 3, categories=("bakery", "bakery"), channel="web",
                  fulfillment="store_pickup", revenue=19.99),
            event(5, "order_placed", T0 + 4, categories=("dairy",), channel="app",
                  fulfillment="delivery", revenue=5.01),
            event(6, "order_placed", T0 + 5, categories=("snacks",), channel="app",
                  fulfillment="delivery", revenue=0.1),
            event(7, "sale", T0 + 6, categories=("produce",), channel="store", store="S2",
                  revenue=7),
            event(8, "store_checkin", T0 + 7, channel="app", store="S1"),
            event(9, "store_checkin", T0 + 8, channel="app", store="S2"),
            event(10, "store_checkin", T0 + 9, channel="app", store="S1"),
        ],
        DEFAULT,
    )  # fmt: skip
    fields = profile_fields(profile, T0 + DAY_MS, DEFAULT)
    assert fields == {
        "first_seen": format_event_time(T0),
        "last_seen": format_event_time(T0 + 9),
        "last_purchase_at": format_event_time(T0 + 6),
        "purchases": "4",
        "revenue": "32.10",
        "preferred_channel": "app",  # app 6, web 3, store 1
        "preferred_store": "S1",  # S1 and S2 twice each: ties go by name
        "pickup_share": "0.333",
        "segment": "loyal",
        # bakery 1 + 3 + 5 (once per order), dairy 1 + 5, produce 5, snacks 5
        "top_categories": '["bakery","dairy","produce","snacks"]',
        "consent_marketing": "1",
        "updated_at": format_event_time(T0 + DAY_MS),
    }


def test_the_latest_consent_wins_whatever_the_arrival_order() -> None:
    yes = event(1, "consent", T0 + 10, consent=True)
    no = event(2, "consent", T0 + 20, consent=False)
    for order in ([yes, no], [no, yes]):
        assert profile_fields(fold(order), T0 + 30, TIGHT)["consent_marketing"] == "0"
    later_yes = event(3, "consent", T0 + 30, consent=True)
    assert profile_fields(fold([no, later_yes, yes]), T0 + 30, TIGHT)["consent_marketing"] == "1"


def test_at_most_max_categories_most_engaged_first() -> None:
    events = [
        event(f"{c}{i}", "product_view", T0 + i, category=c)
        for n, c in enumerate(CATEGORIES)
        for i in range(n + 1)
    ]
    fields = profile_fields(fold(events, DEFAULT), T0, DEFAULT)
    assert json.loads(fields["top_categories"]) == list(reversed(CATEGORIES))[:5]


def test_settings_come_from_the_profile_config() -> None:
    settings = ProfileSettings.from_config(ProfileConfig(loyal_purchases=5, lapsed_days=90))
    assert settings.loyal_purchases == 5 and settings.lapsed_ms == 90 * DAY_MS
    assert ProfileSettings.from_config(ProfileConfig()) == DEFAULT


# ---------------------------------------------------------------- hand-over and snapshots


@pytest.mark.parametrize("seed", range(6))
def test_json_round_trip_is_exact(seed: int) -> None:
    rnd = random.Random(900 + seed)
    profile = fold([random_event(rnd, n) for n in range(rnd.randint(1, 80))])
    raw = profile_to_json(profile)
    assert profile_from_json(raw) == profile
    assert profile_to_json(profile_from_json(raw)) == raw
    assert profile_from_json(profile_to_json(CustomerProfile())) == CustomerProfile()


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b'{"v": 2}', b'{"v": 1}', b"\xff", b'{"v":1,"purchases":"3"}']
)
def test_bytes_that_are_no_profile_are_refused(raw: bytes) -> None:
    with pytest.raises(ProfileDecodeError):
        profile_from_json(raw)


def test_deepcopy_is_equal_and_independent() -> None:
    rnd = random.Random(11)
    profile = fold([random_event(rnd, n, span_days=5) for n in range(60)])
    snapshot = copy.deepcopy(profile)
    assert snapshot == profile
    observe(profile, event("late", "product_view", T0 + 4 * DAY_MS, category="dairy"), TIGHT)
    observe(profile, event("buy", "sale", T0 + 4 * DAY_MS, categories=("x",), store="S9"), TIGHT)
    assert snapshot != profile
    assert "S9" not in snapshot.stores and "ebuy" not in snapshot.seen
    assert all("x" != c for c in snapshot.engagement)
