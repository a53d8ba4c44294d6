"""Where an order is fulfilled from: the sourcing rule of CONTRACT §10, pure.

Every question of the fulfilment path is the same question with a different filter: *which
location that may serve this, and has the units, is the best one to send it from?*

- ``source_order``: a delivery order without a location → a location that ships online;
- ``pickup_alternative``: a store-pickup order its store cannot cover → another pickup store;
- ``transfer_source``: stock to bring to a location → any other location with it to spare;
- ``availability_options``: ``GET /v1/availability`` → every location that could, in order.

They share one ranking (``_rank``), so the answer of the API, the sourcing decision and the
alternative a store is told of never disagree:

1. A location *covers* the order when its ``available_to_sell`` of every sku is at least the
   order's quantity of that sku (lines of the same sku add up). A line's *cover* is the units
   it leaves to spare (``ATS − qty``); a location's *smallest line cover* is the least of them.
2. With origin coordinates: nearest first, by great-circle distance rounded to 0.1 km — the
   distance a reader is shown, so two locations shown at the same distance are decided by the
   tie rules, not by metres nobody sees. Locations without coordinates come after every
   location with them (their distance is unknown, not zero).
3. Without origin coordinates: the locations of the origin's region first (when a region is
   given), then the others.
4. Ties (same distance, or same group without coordinates): the larger smallest line cover
   first — the location left with more to sell after the order is the least likely to run out
   under it — then ``location_id``, so the choice never depends on the order of the input.

Cost, since the stock flow sources every order with it (15–500 locations): one pass over the
locations, the ATS of a location read only until its first short line, one distance per
location that covers the order and none for one that does not, and no sort at all for a single
choice (``min``); ``availability_options`` sorts its options once.

>>> from domain.reference import Location
>>> pool = [
...     Location("WH-SH", "warehouse", "east", lat=31.23, lon=121.47),
...     Location("WH-HZ", "warehouse", "east", lat=30.27, lon=120.16),
...     Location("ST-HZ", "store", "east", lat=30.27, lon=120.16),
... ]
>>> stock = {("SKU1", "WH-SH"): 9, ("SKU1", "WH-HZ"): 2, ("SKU1", "ST-HZ"): 50}
>>> def ats(sku: str, location_id: str) -> int:
...     return stock.get((sku, location_id), 0)
>>> source_order([("SKU1", 1), ("SKU1", 1)], ats, pool, 30.3, 120.2, None).location_id
'WH-HZ'
>>> source_order([("SKU1", 3)], ats, pool, 30.3, 120.2, None).location_id
'WH-SH'
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from domain.reference import Location

#: Mean Earth radius (IUGG), the radius of CONTRACT §8's great-circle kilometres.
EARTH_RADIUS_KM = 6371.0088

#: Values of ``availability_options``' ``mode`` (None: either way of handing over).
AVAILABILITY_MODES = ("pickup", "delivery")

#: (sku, location_id) → that position's ``available_to_sell``; 0 for a position never seen.
AtsLookup = Callable[[str, str], int]

#: (group, distance_km, −smallest line cover, location_id): ascending is best first.
#: group 0 = has a distance (or is in the origin's region), 1 = the rest.
_RankKey = tuple[int, float, int, str]


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two WGS84 points given in degrees.

    The haversine form stays accurate for the short distances sourcing compares (stores a few
    hundred metres apart), where the law of cosines loses digits; the clamp keeps antipodal
    points from a rounding error above 1 under the square root.
    """
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lon2 - lon1) / 2
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


@dataclass(frozen=True, slots=True)
class SourcingDecision:
    """Where an order goes, and why: what ``orders.sourced`` publishes."""

    #: None: no location may serve the order with every line (unfulfillable).
    location_id: str | None
    #: Rounded to 0.1 km; None when the origin or the chosen location has no coordinates.
    distance_km: float | None
    #: One readable sentence for the people who look at the decision later.
    reason: str


@dataclass(frozen=True, slots=True)
class AvailabilityOption:
    """One location that covers the asked quantity, as ``GET /v1/availability`` lists it."""

    location_id: str
    type: str
    region: str
    available_to_sell: int
    #: Rounded to 0.1 km; None when the caller or the location gave no coordinates.
    distance_km: float | None
    #: The location hands over store-pickup orders (``Location.offers_pickup``).
    pickup: bool
    #: The location ships online orders (``Location.ships``).
    ships_online: bool


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where the ranking measures from: the customer, the ordered store, the destination."""

    lat: float | None
    lon: float | None
    region: str | None

    @classmethod
    def at(cls, lat: float | None, lon: float | None, region: str | None) -> _Origin:
        """A point needs both coordinates; one without the other ranks as none."""
        if lat is None or lon is None:
            return cls(None, None, region)
        return cls(lat, lon, region)

    @classmethod
    def of(cls, location: Location) -> _Origin:
        return cls.at(location.lat, location.lon, location.region)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A location that covers the demand, with its rank computed once."""

    key: _RankKey
    location: Location
    #: Smallest line cover: the fewest units any line leaves to sell.
    spare: int
    distance_km: float | None


def _rank(origin: _Origin, location: Location, spare: int) -> tuple[_RankKey, float | None]:
    """The rank of a covering location from ``origin`` (module docstring, rules 2–4) and its
    distance. The one place the ranking is written; every public function goes through it."""
    if origin.lat is not None and origin.lon is not None:
        if location.lat is not None and location.lon is not None:
            distance = round(haversine_km(origin.lat, origin.lon, location.lat, location.lon), 1)
            return (0, distance, -spare, location.location_id), distance
        return (1, 0.0, -spare, location.location_id), None
    group = 0 if origin.region is not None and location.region == origin.region else 1
    return (group, 0.0, -spare, location.location_id), None


def _demand(lines: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Units per sku: an order may name the same sku on several lines, and a location must
    cover their sum, not each line alone."""
    if not lines:
        raise ValueError("an order needs at least one line")
    demand: dict[str, int] = {}
    for index, (sku, qty) in enumerate(lines):
        if qty < 1:
            raise ValueError(f"line {index} ({sku}): qty must be ≥ 1, got {qty}")
        demand[sku] = demand.get(sku, 0) + qty
    return demand


def _smallest_cover(demand: Mapping[str, int], ats: AtsLookup, location_id: str) -> int | None:
    """The least units any sku leaves to spare at the location; None at the first sku it is
    short of (the remaining skus are not read)."""
    smallest: int | None = None
    for sku, qty in demand.items():
        cover = ats(sku, location_id) - qty
        if cover < 0:
            return None
        if smallest is None or cover < smallest:
            smallest = cover
    return smallest


def _candidates(
    demand: Mapping[str, int],
    ats: AtsLookup,
    locations: Iterable[Location],
    admits: Callable[[Location], bool],
    origin: _Origin,
) -> tuple[list[_Candidate], int]:
    """The admitted locations that cover ``demand``, ranked from ``origin`` (unsorted), and how
    many locations were admitted at all (to tell "none may" from "none has the units")."""
    found: list[_Candidate] = []
    admitted = 0
    for location in locations:
        if not admits(location):
            continue
        admitted += 1
        spare = _smallest_cover(demand, ats, location.location_id)
        if spare is None:
            continue
        key, distance = _rank(origin, location, spare)
        found.append(_Candidate(key, location, spare, distance))
    return found, admitted


def _best(candidates: list[_Candidate]) -> _Candidate:
    return min(candidates, key=lambda c: c.key)


def _reason(best: _Candidate, candidates: list[_Candidate], origin: _Origin, role: str) -> str:
    """Why ``best`` won, in the terms of the rule that decided it (distance, region, spare)."""
    chosen = best.location.location_id

    def pool(n: int) -> str:
        return f"{'location' if n == 1 else f'{n} locations'} {role} with every line available"

    n = len(candidates)
    if origin.lat is not None and origin.lon is not None:
        if best.distance_km is None:
            if n == 1:
                return f"{chosen} is the only {pool(1)}; it has no coordinates"
            return (
                f"{chosen} has the most units to spare ({best.spare}) of {pool(n)}; "
                "none of them has coordinates"
            )
        if n == 1:
            return f"{chosen} is the only {pool(1)}, {best.distance_km} km away"
        tied = sum(1 for c in candidates if c.key[:2] == best.key[:2])
        if tied == 1:
            return f"{chosen} is the nearest of {pool(n)}, {best.distance_km} km away"
        return (
            f"{chosen} is the nearest of {pool(n)}, {best.distance_km} km away, tied with "
            f"{tied - 1} more; it has the most units to spare ({best.spare})"
        )
    if origin.region is None:
        if n == 1:
            return f"{chosen} is the only {pool(1)}; no coordinates or region to rank by"
        return (
            f"{chosen} has the most units to spare ({best.spare}) of {pool(n)}; "
            "no coordinates or region to rank by"
        )
    if best.key[0] == 0:
        peers = sum(1 for c in candidates if c.key[0] == 0)
        if peers == 1:
            return f"{chosen} is the only {pool(1)} in region {origin.region}"
        return (
            f"{chosen} has the most units to spare ({best.spare}) of {pool(peers)} "
            f"in region {origin.region}"
        )
    elsewhere = f"no {pool(1)} in region {origin.region}; {chosen} (region {best.location.region})"
    if n == 1:
        return f"{elsewhere} is the only one elsewhere"
    return f"{elsewhere} has the most units to spare ({best.spare}) of {n} elsewhere"


def _decide(
    candidates: list[_Candidate],
    admitted: int,
    origin: _Origin,
    role: str,
    none_admitted: str,
    none_covers: str,
) -> SourcingDecision:
    """The best candidate as a decision; without one, the sentence saying which filter left
    nothing (no location may serve at all, or none of those has every line)."""
    if not candidates:
        return SourcingDecision(None, None, none_covers if admitted else none_admitted)
    best = _best(candidates)
    return SourcingDecision(
        best.location.location_id, best.distance_km, _reason(best, candidates, origin, role)
    )


def _ships(location: Location) -> bool:
    return location.ships


def source_order(
    lines: Sequence[tuple[str, int]],
    ats: AtsLookup,
    locations: Iterable[Location],
    lat: float | None,
    lon: float | None,
    region: str | None,
) -> SourcingDecision:
    """The location a delivery order without ``fulfillment.location_id`` is reserved at.

    Candidates ship online (``Location.ships``) and cover every line; the best of them by the
    module's ranking from the delivery address (``lat``/``lon``, both or neither; one without
    the other counts as none) or, without it, from ``region``. No candidate: the order is
    unfulfillable (``location_id`` None) and reserves nothing.
    """
    origin = _Origin.at(lat, lon, region)
    candidates, admitted = _candidates(_demand(lines), ats, locations, _ships, origin)
    return _decide(
        candidates,
        admitted,
        origin,
        "shipping online",
        "no location ships online",
        "no location that ships online covers every line",
    )


def pickup_alternative(
    lines: Sequence[tuple[str, int]],
    ats: AtsLookup,
    locations: Iterable[Location],
    store: Location,
) -> SourcingDecision:
    """The pickup store to name when ``store`` cannot cover a store-pickup order.

    Another location that offers pickup (``Location.offers_pickup``; never ``store`` itself,
    which was just found short) and covers every line, ranked from the store's coordinates —
    the customer chose that store, so near it is near the customer — or, when the store has
    none, its region first.
    """
    origin = _Origin.of(store)

    def admits(location: Location) -> bool:
        return location.offers_pickup and location.location_id != store.location_id

    candidates, admitted = _candidates(_demand(lines), ats, locations, admits, origin)
    return _decide(
        candidates,
        admitted,
        origin,
        f"offering pickup other than {store.location_id}",
        f"no location other than {store.location_id} offers pickup",
        f"no location other than {store.location_id} that offers pickup covers every line",
    )


def transfer_source(
    sku: str,
    qty: int,
    ats: AtsLookup,
    locations: Iterable[Location],
    to: Location,
) -> str | None:
    """The location a transfer of ``qty`` units of ``sku`` to ``to`` should come from.

    Any other location of any type with ``available_to_sell ≥ qty``, ranked from ``to`` like
    ``source_order`` (nearest; ties: the one left with more; then id). None when no other
    location has the units to spare (a replenishment, not a transfer, is then the answer).
    """
    origin = _Origin.of(to)

    def admits(location: Location) -> bool:
        return location.location_id != to.location_id

    candidates, _ = _candidates(_demand([(sku, qty)]), ats, locations, admits, origin)
    return _best(candidates).location.location_id if candidates else None


def _mode_filter(mode: str | None) -> Callable[[Location], bool]:
    if mode == "pickup":
        return lambda location: location.offers_pickup
    if mode == "delivery":
        return _ships
    if mode is None:
        return lambda location: location.offers_pickup or location.ships
    raise ValueError(f"mode must be one of {', '.join(AVAILABILITY_MODES)} or absent, got {mode!r}")


def availability_options(
    sku: str,
    qty: int,
    ats_by_location: Mapping[str, int],
    locations: Iterable[Location],
    lat: float | None,
    lon: float | None,
    region: str | None,
    mode: str | None,
) -> list[AvailabilityOption]:
    """Every location that could hand over ``qty`` of ``sku``, best first.

    ``mode`` "pickup" keeps the locations that offer pickup, "delivery" those that ship online,
    None either; of those, the ones whose ``available_to_sell`` (``ats_by_location``; absent
    counts 0) covers ``qty``, in the order ``source_order`` would try them for a one-line order
    (so its first option is the one sourcing would pick for delivery).
    """
    admits = _mode_filter(mode)
    origin = _Origin.at(lat, lon, region)

    def ats(_sku: str, location_id: str) -> int:
        return ats_by_location.get(location_id, 0)

    candidates, _ = _candidates(_demand([(sku, qty)]), ats, locations, admits, origin)
    candidates.sort(key=lambda c: c.key)
    return [
        AvailabilityOption(
            location_id=c.location.location_id,
            type=c.location.type,
            region=c.location.region,
            available_to_sell=c.spare + qty,
            distance_km=c.distance_km,
            pickup=c.location.offers_pickup,
            ships_online=c.location.ships,
        )
        for c in candidates
    ]


def pickup_code(secret: bytes, order_id: str) -> str:
    """The six digits a customer shows to collect a store-pickup order.

    Keyed (HMAC-SHA256 over ``b"pickup:" + order_id``), so it cannot be derived from the order
    id a customer or associate may see elsewhere, and deterministic, so a replay of the order
    prints the same code on the store's task. The first 8 bytes taken modulo 10⁶ are uniform to
    within 10⁻¹³ (2⁶⁴ is not a multiple of 10⁶, but close enough never to show).
    """
    digest = hmac.new(secret, b"pickup:" + order_id.encode("utf-8"), hashlib.sha256).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"
