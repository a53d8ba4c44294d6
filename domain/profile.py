"""The customer profile of CONTRACT §11 (``omni:profile:<customer_id>``), as a pure fold.

``observe`` folds one resolved event of a customer into their ``CustomerProfile``; ``merge``
combines the profiles of two customers that identity resolution found to be one person;
``profile_fields`` renders the public hash as of an event time. Nothing here reads a clock:
``now_ms`` is always the event time the flow is at (its latest event or timer), so a replay
of last month's traffic writes the same profiles as the live run did.

What must hold, and why the state looks the way it does:

- **Merges in any order give the same profile.** ``merge`` is commutative and associative,
  and merging the profiles of two disjoint sets of events equals folding all of them into
  one profile. So every figure is kept in a form whose combination is exact: counts and
  sums of integers (revenue in cents, never a float sum whose result depends on the order of
  additions), minima and maxima, and "the N greatest by a total order" for the bounded lists.
- **Replays change nothing.** An ``event_id`` seen again within ``dedup_hours`` (event time,
  cut at whole hours; at most ``max_event_ids`` of them) is ignored.
- **State is bounded.** Engagement is kept per category and UTC day for the interest window
  only; purchase times only as the ``loyal_purchases`` most recent ones (all the loyalty
  test needs); event ids for the dedup window only. Bounds are taken relative to the
  profile's own latest event (``last_seen``), which is what keeps the fold and the merge
  equal; ``prune`` can cut further at a later event time (a timer).

Segments (``segment_of``), with ``age`` = now − last purchase and every "within" strict, so a
segment changes exactly at the instant ``next_segment_change_ms`` reports:

- ``new``: no purchase yet and active (any event) within ``lapsed_days``; or exactly one
  purchase, made within ``new_days``.
- ``loyal``: age < ``active_days`` and at least ``loyal_purchases`` purchases within
  ``loyal_window_days``.
- ``active``: age < ``active_days`` otherwise.
- ``at_risk``: ``active_days`` ≤ age < ``lapsed_days``.
- ``lapsed``: age ≥ ``lapsed_days``; also a customer who never purchased and has shown no
  activity for ``lapsed_days`` (chosen over "first seen": a prospect who keeps browsing is
  still new, one who went quiet is who win-back audiences look for).

Top categories weigh engagement inside the interest window (the last
``interest_window_days`` UTC days up to now's day): a product view 1, an add to cart 3, a
purchase 5 for each distinct category on the order or receipt; most engaged first, ties by
name.

Every ``is_purchase`` event is one purchase: an online order, or a till sale that is not
the store pickup of one (``connectors.trigger_inputs``: the pickup's sale names the order,
which was the purchase). Known simplification: cancellations and returns do not take
purchases back.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from base.units import DAY_MS, HOUR_MS
from domain.customer_rules import CustomerEvent
from domain.resumable import resumable
from domain.timeparse import format_event_time

if TYPE_CHECKING:
    from base.config import ProfileConfig

NEW = "new"
ACTIVE = "active"
LOYAL = "loyal"
AT_RISK = "at_risk"
LAPSED = "lapsed"
SEGMENTS = (NEW, ACTIVE, LOYAL, AT_RISK, LAPSED)

#: Engagement weights of the interest ranking.
VIEW_WEIGHT = 1
CART_WEIGHT = 3
PURCHASE_WEIGHT = 5

#: The hash fields of CONTRACT §11, in the order they are listed there.
PROFILE_FIELDS = (
    "first_seen",
    "last_seen",
    "last_purchase_at",
    "purchases",
    "revenue",
    "preferred_channel",
    "preferred_store",
    "pickup_share",
    "segment",
    "top_categories",
    "consent_marketing",
    "updated_at",
)

_JSON_VERSION = 1
#: name → count as a flat tuple (name, count, name, count, …), names ascending
Counts = tuple[str | int, ...]
K = TypeVar("K", str, int)


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """Segment thresholds and bounds of the profile (``Config.profile``)."""

    new_days: float = 30.0
    active_days: float = 30.0
    loyal_purchases: int = 3
    loyal_window_days: float = 180.0
    lapsed_days: float = 60.0
    interest_window_days: int = 30
    max_categories: int = 5
    #: Event ids are remembered this long (event time) to drop replayed duplicates …
    dedup_hours: float = 168.0
    #: … and at most this many of them (the most recent).
    max_event_ids: int = 1000

    @classmethod
    def from_config(cls, config: ProfileConfig) -> ProfileSettings:
        return cls(
            new_days=config.new_days,
            active_days=config.active_days,
            loyal_purchases=config.loyal_purchases,
            loyal_window_days=config.loyal_window_days,
            lapsed_days=config.lapsed_days,
            interest_window_days=config.interest_window_days,
            max_categories=config.max_categories,
            dedup_hours=config.dedup_hours,
            max_event_ids=config.max_event_ids,
        )

    @property
    def new_ms(self) -> int:
        return round(self.new_days * DAY_MS)

    @property
    def active_ms(self) -> int:
        return round(self.active_days * DAY_MS)

    @property
    def lapsed_ms(self) -> int:
        return round(self.lapsed_days * DAY_MS)

    @property
    def loyal_window_ms(self) -> int:
        return round(self.loyal_window_days * DAY_MS)

    @property
    def dedup_ms(self) -> int:
        return round(self.dedup_hours * HOUR_MS)


@resumable
@dataclass(slots=True)
class CustomerProfile:
    """What one customer's events add up to; see the module doc for the invariants."""

    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    first_purchase_ms: int | None = None
    last_purchase_ms: int | None = None
    purchases: int = 0
    revenue_cents: int = 0
    #: ``order_placed`` events, and those of them collected in a store
    online_orders: int = 0
    pickup_orders: int = 0
    #: channel → events seen on it, as (channel, count, channel, count, …), names
    #: ascending (``Counts``: a flat tuple costs under half of a small dict)
    channels: Counts = ()
    #: store → till sales (pickups included) and check-ins there, as ``channels``
    stores: Counts = ()
    #: category → (day, weight, day, weight, …): the engagement weight of each UTC day
    #: number, days ascending, interest window only (a flat tuple, not a dict of days: a
    #: small dict costs about four times as much, and every customer has a few)
    engagement: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: times of the ``loyal_purchases`` most recent purchases, newest first
    recent_purchases: list[int] = field(default_factory=list)
    #: (ts, event_id, marketing) of the latest consent event; None: consented by default
    consent: tuple[int, str, bool] | None = None
    #: the ids of the events inside the dedup window, ordered by (ts, event id) …
    seen_ids: tuple[str, ...] = ()
    #: … and their ts, in the same order, packed (``_pack_times``): the dict of id → ts
    #: this replaces cost about 3.5 times as much per customer (``seen`` still reads as it)
    seen_ts: bytes = b""

    @property
    def seen(self) -> dict[str, int]:
        """Event id → ts of the events inside the dedup window (a copy)."""
        return dict(zip(self.seen_ids, _times(self.seen_ts), strict=True))

    @staticmethod
    def _resume_upgrade(held: dict[str, Any]) -> dict[str, Any]:
        """A snapshot pickled before ``seen`` and ``engagement`` were packed (dicts)."""
        if "seen" in held:
            items = sorted((ts, event_id) for event_id, ts in held.pop("seen").items())
            held["seen_ids"] = tuple(event_id for _, event_id in items)
            held["seen_ts"] = _pack_times([ts for ts, _ in items])
        for name in ("channels", "stores"):
            if isinstance(held.get(name), dict):
                held[name] = _flat_counts(held[name])
        engagement = held.get("engagement")
        if engagement and isinstance(next(iter(engagement.values())), dict):
            held["engagement"] = {
                category: _flat(days) for category, days in engagement.items() if days
            }
        return held

    def __deepcopy__(self, memo: dict[int, object]) -> CustomerProfile:
        """Bytewax snapshots copy state every epoch: copy the containers, nothing else
        (every value inside is an immutable int, str or tuple)."""
        return CustomerProfile(
            self.first_seen_ms,
            self.last_seen_ms,
            self.first_purchase_ms,
            self.last_purchase_ms,
            self.purchases,
            self.revenue_cents,
            self.online_orders,
            self.pickup_orders,
            self.channels,
            self.stores,
            dict(self.engagement),
            list(self.recent_purchases),
            self.consent,
            self.seen_ids,
            self.seen_ts,
        )


_TIME = struct.Struct("<q")


def _pack_times(times: list[int]) -> bytes:
    return struct.pack(f"<{len(times)}q", *times)


def _times(packed: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(packed) // 8}q", packed)


def _flat_counts(counts: dict[str, int]) -> Counts:
    return tuple(x for name in sorted(counts) for x in (name, counts[name]))


def _counts(flat: Counts) -> dict[str, int]:
    return cast(dict[str, int], dict(zip(flat[::2], flat[1::2], strict=True)))


def _bump(flat: Counts, name: str) -> Counts:
    """``flat`` with one more of ``name``."""
    for i in range(0, len(flat), 2):
        if flat[i] == name:
            return (*flat[: i + 1], cast(int, flat[i + 1]) + 1, *flat[i + 2 :])
        if cast(str, flat[i]) > name:
            return (*flat[:i], name, 1, *flat[i:])
    return (*flat, name, 1)


def _flat(days: dict[int, int]) -> tuple[int, ...]:
    """Day → weight as the flat tuple ``CustomerProfile.engagement`` keeps, days ascending."""
    return tuple(x for day in sorted(days) for x in (day, days[day]))


def _days(flat: tuple[int, ...]) -> dict[int, int]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _add_weight(flat: tuple[int, ...], day: int, weight: int) -> tuple[int, ...]:
    for i in range(0, len(flat), 2):
        if flat[i] == day:
            return (*flat[: i + 1], flat[i + 1] + weight, *flat[i + 2 :])
        if flat[i] > day:
            return (*flat[:i], day, weight, *flat[i:])
    return (*flat, day, weight)


def _set_seen(profile: CustomerProfile, items: list[tuple[int, str]]) -> None:
    """``items``: (ts, event id), sorted."""
    profile.seen_ids = tuple(event_id for _, event_id in items)
    profile.seen_ts = _pack_times([ts for ts, _ in items])


def _seen_items(profile: CustomerProfile) -> list[tuple[int, str]]:
    return list(zip(_times(profile.seen_ts), profile.seen_ids, strict=True))


def _remember(profile: CustomerProfile, event_id: str, ts: int) -> None:
    ids, packed = profile.seen_ids, profile.seen_ts
    if not ids or (ts, event_id) > (_TIME.unpack_from(packed, len(packed) - 8)[0], ids[-1]):
        profile.seen_ids = (*ids, event_id)  # the usual case: the latest event
        profile.seen_ts = packed + _TIME.pack(ts)
    else:
        _set_seen(profile, sorted([*_seen_items(profile), (ts, event_id)]))


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _engagement_of(event: CustomerEvent) -> list[tuple[str, int]]:
    if event.is_purchase:
        return [(category, PURCHASE_WEIGHT) for category in sorted(set(event.categories))]
    if event.category is None:
        return []
    if event.event_type == "product_view":
        return [(event.category, VIEW_WEIGHT)]
    if event.event_type == "add_to_cart":
        return [(event.category, CART_WEIGHT)]
    return []


def _interest_cutoff_day(latest_ms: int, settings: ProfileSettings) -> int:
    """Days at or before this one are outside the interest window as of ``latest_ms``."""
    return latest_ms // DAY_MS - settings.interest_window_days


def observe(
    profile: CustomerProfile | None, event: CustomerEvent, settings: ProfileSettings
) -> CustomerProfile:
    """Fold one event of the customer in (in place; the profile is returned).

    A duplicate of an event inside the dedup window changes nothing. Events may come in any
    order: an event older than the profile's windows still counts in every total, only its
    part of the bounded figures (engagement, dedup ids) is not kept.
    """
    if profile is None:
        profile = CustomerProfile()
    if event.event_id in profile.seen_ids:
        return profile
    ts = event.ts_ms
    previous_latest = profile.last_seen_ms
    profile.first_seen_ms = _min(profile.first_seen_ms, ts)
    profile.last_seen_ms = _max(profile.last_seen_ms, ts)
    latest = profile.last_seen_ms
    assert latest is not None
    if event.channel:
        profile.channels = _bump(profile.channels, event.channel)
    if event.store_id:
        profile.stores = _bump(profile.stores, event.store_id)
    if event.is_purchase:
        profile.purchases += 1
        profile.revenue_cents += round(event.revenue * 100)
        profile.first_purchase_ms = _min(profile.first_purchase_ms, ts)
        profile.last_purchase_ms = _max(profile.last_purchase_ms, ts)
        profile.recent_purchases = _newest(
            [*profile.recent_purchases, ts], settings.loyal_purchases
        )
        if event.event_type == "order_placed":
            profile.online_orders += 1
            if event.fulfillment == "store_pickup":
                profile.pickup_orders += 1
    if event.consent is not None:
        mark = (ts, event.event_id, event.consent)
        if profile.consent is None or mark[:2] > profile.consent[:2]:
            profile.consent = mark
    day = ts // DAY_MS
    if day > _interest_cutoff_day(latest, settings):
        for category, weight in _engagement_of(event):
            profile.engagement[category] = _add_weight(
                profile.engagement.get(category, ()), day, weight
            )
    if ts // HOUR_MS > _dedup_cutoff_hour(latest, settings):
        _remember(profile, event.event_id, ts)
    if previous_latest is not None and (
        _interest_cutoff_day(latest, settings) != _interest_cutoff_day(previous_latest, settings)
        or _dedup_cutoff_hour(latest, settings) != _dedup_cutoff_hour(previous_latest, settings)
    ):
        # A window moved: look for what fell out (at most once an hour of event time).
        _prune_to(profile, latest, settings)
    elif len(profile.seen_ids) > settings.max_event_ids:
        # One more than the bound: drop the oldest (the first by (ts, event id)).
        profile.seen_ids, profile.seen_ts = profile.seen_ids[1:], profile.seen_ts[8:]
    return profile


def _newest(times: list[int], count: int) -> list[int]:
    return sorted(times, reverse=True)[:count]


def _dedup_cutoff_hour(latest_ms: int, settings: ProfileSettings) -> int:
    """Event ids of this hour or earlier are forgotten as of ``latest_ms``: the window is
    cut at whole hours, so it moves (and costs a look through the ids) once an hour."""
    return (latest_ms - settings.dedup_ms) // HOUR_MS


def _prune_to(profile: CustomerProfile, latest_ms: int, settings: ProfileSettings) -> None:
    """Drop what lies outside the windows as of ``latest_ms``."""
    cutoff_day = _interest_cutoff_day(latest_ms, settings)
    for category in list(profile.engagement):
        days = profile.engagement[category]
        if days[0] > cutoff_day:
            continue  # nothing of this category fell out (days ascending)
        kept = next((i for i in range(0, len(days), 2) if days[i] > cutoff_day), len(days))
        if kept < len(days):
            profile.engagement[category] = days[kept:]
        else:
            del profile.engagement[category]
    cutoff_hour = _dedup_cutoff_hour(latest_ms, settings)
    packed = profile.seen_ts
    if packed and _TIME.unpack_from(packed)[0] // HOUR_MS <= cutoff_hour:
        times = _times(packed)
        first = next((i for i, ts in enumerate(times) if ts // HOUR_MS > cutoff_hour), len(times))
        profile.seen_ids, profile.seen_ts = profile.seen_ids[first:], packed[8 * first :]
    extra = len(profile.seen_ids) - settings.max_event_ids
    if extra > 0:  # keep the most recent ones (the last by (ts, event id))
        profile.seen_ids, profile.seen_ts = profile.seen_ids[extra:], profile.seen_ts[8 * extra :]


def prune(profile: CustomerProfile, now_ms: int, settings: ProfileSettings) -> None:
    """Cut the bounded figures to their windows as of ``now_ms`` (e.g. a timer long after
    the last event), in place. ``observe`` and ``merge`` already prune as of the profile's
    own latest event; this only ever removes more."""
    latest = max(now_ms, profile.last_seen_ms if profile.last_seen_ms is not None else now_ms)
    _prune_to(profile, latest, settings)


def merge(a: CustomerProfile, b: CustomerProfile, settings: ProfileSettings) -> CustomerProfile:
    """The profile of the customer who survives a merge of ``a`` and ``b``: a new profile,
    the inputs are left alone. Commutative and associative; for disjoint event histories it
    equals the fold of all events (the same event in both would count twice)."""
    merged = CustomerProfile(
        first_seen_ms=_min(a.first_seen_ms, b.first_seen_ms),
        last_seen_ms=_max(a.last_seen_ms, b.last_seen_ms),
        first_purchase_ms=_min(a.first_purchase_ms, b.first_purchase_ms),
        last_purchase_ms=_max(a.last_purchase_ms, b.last_purchase_ms),
        purchases=a.purchases + b.purchases,
        revenue_cents=a.revenue_cents + b.revenue_cents,
        online_orders=a.online_orders + b.online_orders,
        pickup_orders=a.pickup_orders + b.pickup_orders,
        channels=_flat_counts(_add_counts(_counts(a.channels), _counts(b.channels))),
        stores=_flat_counts(_add_counts(_counts(a.stores), _counts(b.stores))),
        engagement={
            category: _flat(
                _add_counts(
                    _days(a.engagement.get(category, ())), _days(b.engagement.get(category, ()))
                )
            )
            for category in a.engagement.keys() | b.engagement.keys()
        },
        recent_purchases=_newest(
            [*a.recent_purchases, *b.recent_purchases], settings.loyal_purchases
        ),
        consent=_latest_consent(a.consent, b.consent),
    )
    seen = a.seen
    for event_id, ts in b.seen.items():
        seen[event_id] = max(ts, seen.get(event_id, ts))
    _set_seen(merged, sorted((ts, event_id) for event_id, ts in seen.items()))
    if merged.last_seen_ms is not None:
        _prune_to(merged, merged.last_seen_ms, settings)
    return merged


def _add_counts(a: dict[K, int], b: dict[K, int]) -> dict[K, int]:
    total = dict(a)
    for key, count in b.items():
        total[key] = total.get(key, 0) + count
    return total


def _latest_consent(
    a: tuple[int, str, bool] | None, b: tuple[int, str, bool] | None
) -> tuple[int, str, bool] | None:
    if a is None or b is None:
        return a if b is None else b
    return a if a[:2] >= b[:2] else b


def _recent_purchase_count(profile: CustomerProfile, now_ms: int, window_ms: int) -> int:
    return sum(1 for ts in profile.recent_purchases if now_ms - ts < window_ms)


def segment_of(profile: CustomerProfile, now_ms: int, settings: ProfileSettings) -> str:
    """The customer's lifecycle segment as of event time ``now_ms`` (module doc)."""
    last_purchase = profile.last_purchase_ms
    if last_purchase is None:
        if profile.last_seen_ms is None or now_ms - profile.last_seen_ms < settings.lapsed_ms:
            return NEW
        return LAPSED
    first_purchase = profile.first_purchase_ms
    assert first_purchase is not None
    if profile.purchases == 1 and now_ms - first_purchase < settings.new_ms:
        return NEW
    age = now_ms - last_purchase
    if age < settings.active_ms:
        recent = _recent_purchase_count(profile, now_ms, settings.loyal_window_ms)
        return LOYAL if recent >= settings.loyal_purchases else ACTIVE
    if age < settings.lapsed_ms:
        return AT_RISK
    return LAPSED


def next_segment_change_ms(
    profile: CustomerProfile, settings: ProfileSettings, after_ms: int | None = None
) -> int | None:
    """The first event time after ``after_ms`` (default: the profile's latest event) at
    which the segment changes with no new activity (active → at_risk → lapsed, loyal →
    active, new → …), or None if it never does. The segment is constant between the
    instants listed here and takes its new value exactly at one, so a flow can set a timer
    there and rewrite the profile."""
    if after_ms is None:
        after_ms = profile.last_seen_ms
    if after_ms is None:
        return None
    instants: set[int] = set()
    if profile.last_purchase_ms is None:
        if profile.last_seen_ms is not None:
            instants.add(profile.last_seen_ms + settings.lapsed_ms)
    else:
        if profile.purchases == 1 and profile.first_purchase_ms is not None:
            instants.add(profile.first_purchase_ms + settings.new_ms)
        instants.add(profile.last_purchase_ms + settings.active_ms)
        instants.add(profile.last_purchase_ms + settings.lapsed_ms)
        instants.update(ts + settings.loyal_window_ms for ts in profile.recent_purchases)
    current = segment_of(profile, after_ms, settings)
    for instant in sorted(t for t in instants if t > after_ms):
        if segment_of(profile, instant, settings) != current:
            return instant
    return None


def top_categories(profile: CustomerProfile, now_ms: int, settings: ProfileSettings) -> list[str]:
    """Categories by engagement inside the interest window as of ``now_ms``, most engaged
    first (ties by name), at most ``max_categories``."""
    cutoff_day = _interest_cutoff_day(now_ms, settings)
    totals = {
        category: sum(days[i + 1] for i in range(0, len(days), 2) if days[i] > cutoff_day)
        for category, days in profile.engagement.items()
    }
    ranked = sorted((item for item in totals.items() if item[1] > 0), key=lambda i: (-i[1], i[0]))
    return [category for category, _ in ranked[: settings.max_categories]]


def _most_used(flat: Counts) -> str:
    if not flat:
        return ""
    return min(_counts(flat).items(), key=lambda item: (-item[1], item[0]))[0]


def _time_or_empty(ts_ms: int | None) -> str:
    return "" if ts_ms is None else format_event_time(ts_ms)


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def profile_fields(
    profile: CustomerProfile, now_ms: int, settings: ProfileSettings
) -> dict[str, str]:
    """The public hash ``omni:profile:<customer_id>`` (CONTRACT §11) as of event time
    ``now_ms``: exactly ``PROFILE_FIELDS``, every value a string."""
    share = f"{profile.pickup_orders / profile.online_orders:.3f}" if profile.online_orders else "0"
    consented = profile.consent is None or profile.consent[2]
    return {
        "first_seen": _time_or_empty(profile.first_seen_ms),
        "last_seen": _time_or_empty(profile.last_seen_ms),
        "last_purchase_at": _time_or_empty(profile.last_purchase_ms),
        "purchases": str(profile.purchases),
        "revenue": _money(profile.revenue_cents),
        "preferred_channel": _most_used(profile.channels),
        "preferred_store": _most_used(profile.stores),
        "pickup_share": share,
        "segment": segment_of(profile, now_ms, settings),
        "top_categories": json.dumps(
            top_categories(profile, now_ms, settings), ensure_ascii=False, separators=(",", ":")
        ),
        "consent_marketing": "1" if consented else "0",
        "updated_at": format_event_time(now_ms),
    }


def profile_to_json(profile: CustomerProfile) -> bytes:
    """The whole state as JSON, to hand a profile over through Redis (no pickle: a store
    must never run what it reads). The standard library's ``json`` (the domain uses the
    standard library only); every value is an int, str or bool, so the round trip is exact."""
    document = {
        "v": _JSON_VERSION,
        "first_seen_ms": profile.first_seen_ms,
        "last_seen_ms": profile.last_seen_ms,
        "first_purchase_ms": profile.first_purchase_ms,
        "last_purchase_ms": profile.last_purchase_ms,
        "purchases": profile.purchases,
        "revenue_cents": profile.revenue_cents,
        "online_orders": profile.online_orders,
        "pickup_orders": profile.pickup_orders,
        "channels": _counts(profile.channels),
        "stores": _counts(profile.stores),
        "engagement": {
            category: [[days[i], days[i + 1]] for i in range(0, len(days), 2)]
            for category, days in profile.engagement.items()
        },
        "recent_purchases": profile.recent_purchases,
        "consent": list(profile.consent) if profile.consent is not None else None,
        "seen": profile.seen,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class ProfileDecodeError(ValueError):
    """Bytes that are not a profile this version wrote."""


def profile_from_json(raw: bytes) -> CustomerProfile:
    """The profile ``profile_to_json`` wrote (ProfileDecodeError for anything else)."""
    try:
        document: Any = json.loads(raw)
        if not isinstance(document, dict) or document.get("v") != _JSON_VERSION:
            raise ProfileDecodeError(f"not a version {_JSON_VERSION} profile")
        consent = document["consent"]
        profile = CustomerProfile(
            first_seen_ms=_opt_int(document["first_seen_ms"]),
            last_seen_ms=_opt_int(document["last_seen_ms"]),
            first_purchase_ms=_opt_int(document["first_purchase_ms"]),
            last_purchase_ms=_opt_int(document["last_purchase_ms"]),
            purchases=_int(document["purchases"]),
            revenue_cents=_int(document["revenue_cents"]),
            online_orders=_int(document["online_orders"]),
            pickup_orders=_int(document["pickup_orders"]),
            channels=_flat_counts({str(k): _int(v) for k, v in document["channels"].items()}),
            stores=_flat_counts({str(k): _int(v) for k, v in document["stores"].items()}),
            engagement={
                str(category): _flat({_int(day): _int(weight) for day, weight in days})
                for category, days in document["engagement"].items()
                if days
            },
            recent_purchases=[_int(ts) for ts in document["recent_purchases"]],
            consent=None
            if consent is None
            else (_int(consent[0]), str(consent[1]), bool(consent[2])),
        )
        seen = {str(k): _int(v) for k, v in document["seen"].items()}
        _set_seen(profile, sorted((ts, event_id) for event_id, ts in seen.items()))
        return profile
    except ProfileDecodeError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ProfileDecodeError(f"malformed profile: {exc!r}") from None


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)
