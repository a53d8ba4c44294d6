"""rule_triggers keeps each customer's state compact: the profile's dedup ids and its
engagement packed (``seen_ids`` / ``seen_ts``, a flat tuple of days per category), and the
key's rarely used sequences as tuples (the empty one shared). The profile must behave exactly
as the dicts it replaced did, and snapshots pickled with the dicts and lists must resume.

``Reference`` is the dict form of before, its rules copied as they were: what is kept, what
a duplicate is, what the cap drops (the oldest by (ts, event id)), what a window move or a
merge keeps."""

from __future__ import annotations

import copy
import pickle
import random
from dataclasses import dataclass, field

import pytest

from base.units import DAY_MS, HOUR_MS
from domain.customer_key import CustomerKey
from domain.customer_rules import CustomerEvent
from domain.profile import (
    CustomerProfile,
    ProfileSettings,
    merge,
    observe,
    profile_from_json,
    profile_to_json,
    prune,
)

T0 = 1_790_000_000_000
TIGHT = ProfileSettings(interest_window_days=3, dedup_hours=30, max_event_ids=6)
CATEGORIES = ("dairy", "bakery", "produce")


@dataclass
class Reference:
    """The seen ids and engagement as the dict form kept them."""

    settings: ProfileSettings
    last_seen_ms: int | None = None
    seen: dict[str, int] = field(default_factory=dict)
    engagement: dict[str, dict[int, int]] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    stores: dict[str, int] = field(default_factory=dict)

    def cutoffs(self, latest: int) -> tuple[int, int]:
        s = self.settings
        return latest // DAY_MS - s.interest_window_days, (latest - s.dedup_ms) // HOUR_MS

    def observe(self, e: CustomerEvent) -> None:
        if e.event_id in self.seen:
            return
        previous = self.last_seen_ms
        latest = self.last_seen_ms = e.ts_ms if previous is None else max(previous, e.ts_ms)
        if e.channel:
            self.channels[e.channel] = self.channels.get(e.channel, 0) + 1
        if e.store_id:
            self.stores[e.store_id] = self.stores.get(e.store_id, 0) + 1
        day_cut, hour_cut = self.cutoffs(latest)
        day = e.ts_ms // DAY_MS
        if day > day_cut:
            for category, weight in weights(e):
                days = self.engagement.setdefault(category, {})
                days[day] = days.get(day, 0) + weight
        if e.ts_ms // HOUR_MS > hour_cut:
            self.seen[e.event_id] = e.ts_ms
        if previous is not None and self.cutoffs(previous) != (day_cut, hour_cut):
            self.prune_to(latest)
        elif len(self.seen) > self.settings.max_event_ids:
            del self.seen[min(self.seen.items(), key=lambda item: (item[1], item[0]))[0]]

    def prune_to(self, latest: int) -> None:
        day_cut, hour_cut = self.cutoffs(latest)
        for category in list(self.engagement):
            days = {d: w for d, w in self.engagement[category].items() if d > day_cut}
            if days:
                self.engagement[category] = days
            else:
                del self.engagement[category]
        seen = {i: ts for i, ts in self.seen.items() if ts // HOUR_MS > hour_cut}
        kept = sorted(seen.items(), key=lambda item: (item[1], item[0]), reverse=True)
        self.seen = dict(kept[: self.settings.max_event_ids])

    def merged(self, other: Reference) -> Reference:
        out = Reference(self.settings)
        out.last_seen_ms = max(t for t in (self.last_seen_ms, other.last_seen_ms) if t is not None)
        out.seen = {
            i: max(self.seen.get(i, ts), other.seen.get(i, ts))
            for i, ts in (self.seen | other.seen).items()
        }
        for mine, theirs, total in (
            (self.channels, other.channels, out.channels),
            (self.stores, other.stores, out.stores),
        ):
            for name in {*mine, *theirs}:
                total[name] = mine.get(name, 0) + theirs.get(name, 0)
        for source in (self.engagement, other.engagement):
            for category, days in source.items():
                into = out.engagement.setdefault(category, {})
                for day, weight in days.items():
                    into[day] = into.get(day, 0) + weight
        out.prune_to(out.last_seen_ms)
        return out


def weights(e: CustomerEvent) -> list[tuple[str, int]]:
    if e.is_purchase:
        return [(c, 5) for c in sorted(set(e.categories))]
    weight = {"product_view": 1, "add_to_cart": 3}.get(e.event_type)
    return [] if e.category is None or weight is None else [(e.category, weight)]


def engagement_of(profile: CustomerProfile) -> dict[str, dict[int, int]]:
    return {c: dict(zip(d[::2], d[1::2], strict=True)) for c, d in profile.engagement.items()}


def counts_of(flat: tuple[str | int, ...]) -> dict[str | int, str | int]:
    assert list(flat[::2]) == sorted(flat[::2])  # type: ignore[type-var]
    return dict(zip(flat[::2], flat[1::2], strict=True))


def same(profile: CustomerProfile, reference: Reference) -> bool:
    return (
        profile.seen == reference.seen
        and engagement_of(profile) == reference.engagement
        and counts_of(profile.channels) == reference.channels
        and counts_of(profile.stores) == reference.stores
    )


def random_events(rnd: random.Random, count: int, ids: int) -> list[CustomerEvent]:
    """Events of a few days, out of order, many ts shared, ids drawn from a small pool (so
    replays come, inside the window and after it)."""
    out = []
    for _ in range(count):
        kind = rnd.choice(["product_view", "add_to_cart", "sale", "page_view"])
        ts = T0 + rnd.randrange(6 * DAY_MS) // 600_000 * 600_000  # 10-minute steps: ties
        out.append(
            CustomerEvent(
                event_id=f"e{rnd.randrange(ids)}",
                event_type=kind,
                ts_ms=ts,
                customer_id="c1",
                is_purchase=kind == "sale",
                category=rnd.choice([*CATEGORIES, None]),
                categories=tuple(rnd.choices(CATEGORIES, k=2)) if kind == "sale" else (),
                channel=rnd.choice(["app", "web", "store", None]),
                store_id=rnd.choice(["S2", "S1", None]) if kind == "sale" else None,
            )
        )
    out.sort(key=lambda e: e.ts_ms + rnd.randrange(-8 * HOUR_MS, 8 * HOUR_MS))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_the_packed_state_behaves_as_the_dicts_did(seed: int) -> None:
    rnd = random.Random(seed)
    profile, reference = None, Reference(TIGHT)
    for e in random_events(rnd, 300, ids=rnd.choice([20, 200, 5000])):
        profile = observe(profile, e, TIGHT)
        reference.observe(e)
        assert same(profile, reference)
        assert profile.seen_ids == tuple(sorted(profile.seen, key=lambda i: (profile.seen[i], i)))
    assert profile is not None and reference.last_seen_ms is not None
    later = reference.last_seen_ms + rnd.randrange(3 * DAY_MS)
    prune(profile, later, TIGHT)
    reference.prune_to(later)
    assert same(profile, reference)


@pytest.mark.parametrize("seed", range(10))
def test_a_merge_keeps_what_the_dicts_kept(seed: int) -> None:
    rnd = random.Random(100 + seed)
    events = random_events(rnd, 200, ids=60)
    parts: list[tuple[CustomerProfile | None, Reference]] = []
    for half in (events[::2], events[1::2]):
        profile, reference = None, Reference(TIGHT)
        for e in half:
            profile = observe(profile, e, TIGHT)
            reference.observe(e)
        parts.append((profile, reference))
    (a, ra), (b, rb) = parts
    assert a is not None and b is not None
    merged, expected = merge(a, b, TIGHT), ra.merged(rb)
    assert same(merged, expected)
    assert merge(b, a, TIGHT) == merged
    assert profile_from_json(profile_to_json(merged)) == merged


def test_a_copy_shares_nothing_that_changes() -> None:
    profile = observe(None, random_events(random.Random(1), 1, ids=1)[0], TIGHT)
    snapshot = copy.deepcopy(profile)
    observe(profile, CustomerEvent("new", "product_view", T0, "c1", category="dairy"), TIGHT)
    assert "new" not in snapshot.seen and snapshot != profile


#: A ``CustomerKey`` pickled by the version that kept ``seen`` as a dict of id → ts and the
#: engagement as dicts of day → weight (``pickle.dumps(key, protocol=5)``): its profile had
#: folded ``OLD_EVENTS`` with ``OLD_SETTINGS``.
OLD_SNAPSHOT = bytes.fromhex(
    "80059593030000000000008c13646f6d61696e2e637573746f6d65725f6b6579948c0b437573746f6d6572"
    "4b65799493942981944e7d94288c087472696767657273948c15646f6d61696e2e747269676765725f656e"
    "67696e65948c10437573746f6d657254726967676572739493942981944e7d94288c0b637573746f6d6572"
    "5f6964948c00948c057374617465948c15646f6d61696e2e637573746f6d65725f72756c6573948c0d4375"
    "73746f6d657253746174659493942981944e7d94288c057669657773947d948c056361727473947d948c09"
    "6361727465645f6174947d948c106c6173745f70757263686173655f6d73944e8c066c6564676572948c15"
    "646f6d61696e2e747269676765725f706f6c696379948c064c65646765729493942981944e7d94288c0a6c"
    "6173745f6669726564947d948c0f636f75706f6e735f7065725f646179947d94758694628c0468656c6494"
    "5d948c0d6f70656e5f7472696767657273945d948c0a636f6e73656e745f6d73944e8c096d61726b657469"
    "6e6794888c066c6170736573947d948c0b7265707572636861736573947d94758694628c0b68656c645f6f"
    "6666657273945d94758694628c0770726f66696c65948c0e646f6d61696e2e70726f66696c65948c0f4375"
    "73746f6d657250726f66696c659493942981944e7d94288c0d66697273745f7365656e5f6d73948a06005e"
    "56eea1018c0c6c6173745f7365656e5f6d73948a0680a8b3f3a1018c1166697273745f7075726368617365"
    "5f6d73948a06003bc4eea10168198a06003bc4eea1018c09707572636861736573944b018c0d726576656e"
    "75655f63656e7473944dc2018c0d6f6e6c696e655f6f7264657273944b008c0d7069636b75705f6f726465"
    "7273944b008c086368616e6e656c73947d94288c03617070944b038c03776562944b018c0573746f726594"
    "4b01758c0673746f726573947d948c025331944b01738c0a656e676167656d656e74947d94288c05646169"
    "7279947d94284d27514b064d28514b01758c0662616b657279947d944d27514b01738c056672756974947d"
    "94284d27514b054d28514b0375758c10726563656e745f707572636861736573945d948a06003bc4eea101"
    "618c07636f6e73656e74944e8c047365656e947d94288c026534948a0680a8b3f3a1018c026533948a0600"
    "3bc4eea1018c026535948a0680a8b3f3a10175758694628c0777616974696e67945d9468255d948c04676f"
    "6e6594898c0a7772697474656e5f6d73944e758694622e"
)
OLD_T0 = 1_795_000_000_000
OLD_SETTINGS = ProfileSettings(dedup_hours=48.0, max_event_ids=3)


def old_event(n: int, ts: int, **fields: object) -> CustomerEvent:
    kind = str(fields.pop("kind", "product_view"))
    return CustomerEvent(f"e{n}", kind, ts, "C1", **fields)  # type: ignore[arg-type]


OLD_EVENTS = [
    old_event(1, OLD_T0, category="dairy", channel="app"),
    old_event(2, OLD_T0 + HOUR_MS, category="bakery", channel="web"),
    old_event(
        3,
        OLD_T0 + 2 * HOUR_MS,
        kind="sale",
        is_purchase=True,
        categories=("dairy", "fruit"),
        store_id="S1",
        revenue=4.5,
        channel="store",
    ),
    old_event(4, OLD_T0 + 25 * HOUR_MS, category="dairy", channel="app"),
    old_event(5, OLD_T0 + 25 * HOUR_MS, kind="add_to_cart", category="fruit", channel="app"),
]


def test_a_snapshot_of_the_dict_form_resumes_as_the_packed_form() -> None:
    key = pickle.loads(OLD_SNAPSHOT)
    assert isinstance(key, CustomerKey) and key.profile is not None
    folded = None
    for e in OLD_EVENTS:
        folded = observe(folded, e, OLD_SETTINGS)
    assert key.profile == folded
    assert key.profile.seen == {"e3": OLD_T0 + 2 * HOUR_MS, "e4": OLD_T0 + 25 * HOUR_MS} | {
        "e5": OLD_T0 + 25 * HOUR_MS
    }
    assert engagement_of(key.profile)["dairy"] == {
        OLD_T0 // DAY_MS: 6,
        (OLD_T0 + 25 * HOUR_MS) // DAY_MS: 1,
    }
    # and it goes on as one that never was pickled: a replay is dropped, the cap holds
    observe(key.profile, OLD_EVENTS[2], OLD_SETTINGS)
    assert key.profile == folded
    later = old_event(6, OLD_T0 + 26 * HOUR_MS, category="dairy")
    observe(key.profile, later, OLD_SETTINGS)
    observe(folded, later, OLD_SETTINGS)
    assert key.profile == folded and set(key.profile.seen) == {"e4", "e5", "e6"}
    assert pickle.loads(pickle.dumps(key)) == key


#: A ``CustomerKey`` pickled by the version that kept its rarely used sequences as lists
#: and its views as lists of (ts, event id): waiting for "A" with a view held, two views of
#: SKU3, a coupon held for quiet hours, an open trigger and an offer held for the end of a
#: replay (all of ``T0 = OLD_T0``, customer "B").
OLD_LISTS_SNAPSHOT = bytes.fromhex(
    "800595b4030000000000008c13646f6d61696e2e637573746f6d65725f6b6579948c0b437573746f6d65724b"
    "65799493942981944e7d94288c087472696767657273948c15646f6d61696e2e747269676765725f656e6769"
    "6e65948c10437573746f6d657254726967676572739493942981944e7d94288c0b637573746f6d65725f6964"
    "948c0142948c057374617465948c15646f6d61696e2e637573746f6d65725f72756c6573948c0d437573746f"
    "6d657253746174659493942981944e7d94288c057669657773947d948c04534b5533945d94288a06005e56ee"
    "a1018c0276319486948a06055e56eea1018c02763294869465738c056361727473947d948c09636172746564"
    "5f6174947d948c106c6173745f70757263686173655f6d73944e8c066c6564676572948c15646f6d61696e2e"
    "747269676765725f706f6c696379948c064c65646765729493942981944e7d94288c0a6c6173745f66697265"
    "64947d948c0f636f75706f6e735f7065725f646179947d94758694628c0468656c64945d94680e8c0e436f75"
    "706f6e4465636973696f6e9493942981945d94288c10636172742d6162616e646f6e6d656e7494680c8c0961"
    "6d6f756e745f3135948c04534b5531944e8c1f616464656420746f20636172742c206e6f206f726465722069"
    "6e2074696d65948c0265319485948a06005e56eea1018a06804c8deea1016562618c0d6f70656e5f74726967"
    "67657273945d94680e8c0b4f70656e547269676765729493942981944e7d94288c0772756c655f6964948c0d"
    "62726f7773652d6e6561726279948c0776617269616e74948c0b74656e5f70657263656e74948c04636f6465"
    "948c054f53414243948c0773656e745f6d73948a06185a56eea1018c09636f6e766572746564948975869462"
    "618c0a636f6e73656e745f6d73944e8c096d61726b6574696e6794888c066c6170736573947d948c0b726570"
    "7572636861736573947d94758694628c0b68656c645f6f6666657273945d94680e8c054f6666657294939429"
    "81945d94288c0f73746f72652d6f76657273746f636b94680c8c04534b5532948c025331948c096f76657273"
    "746f636b94681785948a06055e56eea101656261758694628c0770726f66696c65944e8c0777616974696e67"
    "945d948c01419461682b5d94680e8c0d437573746f6d65724576656e749493942981945d94288c026232948c"
    "0c70726f647563745f76696577948a060a5e56eea101680c4e68152989294e4b004e4e4e4700000000000000"
    "00294e89296562618c04676f6e6594898c0a7772697474656e5f6d73944e758694622e"
)


def test_a_snapshot_of_the_list_form_resumes_as_tuples() -> None:
    key = pickle.loads(OLD_LISTS_SNAPSHOT)
    assert isinstance(key, CustomerKey)
    state = key.triggers.state
    assert key.waiting == ("A",) and [getattr(i, "event_id", None) for i in key.held] == ["b2"]
    assert [d.code for d in state.held] == [state.held[0].code] and len(state.held) == 1
    assert [t.code for t in state.open_triggers] == ["OSABC"]
    assert [o.sku for o in key.triggers.held_offers] == ["SKU2"]
    assert state.views == {"SKU3": (OLD_T0, "v1", OLD_T0 + 5, "v2")}
    assert all(
        isinstance(s, tuple)
        for s in (key.waiting, key.held, state.held, state.open_triggers, key.triggers.held_offers)
    )
    # the next quiet-hours deadline is the held coupon's, and the key still goes on
    assert key.next_deadline(OLD_SETTINGS) == OLD_T0 + HOUR_MS
    assert copy.deepcopy(key) == key and pickle.loads(pickle.dumps(key)) == key
