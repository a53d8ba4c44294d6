"""Sourcing, pickup alternatives, transfer sources and availability (CONTRACT §10).

The property tests hold every function to a brute-force restatement of the rule written here
from the contract: every location is enumerated, the filter is applied literally, the winner is
the minimum of an explicit key tuple, and distances come from a great-circle formula of its
own (the angle between 3-D unit vectors), not from the module's haversine.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import domain.fulfilment as fulfilment
from domain.fulfilment import (
    AvailabilityOption,
    SourcingDecision,
    availability_options,
    haversine_km,
    pickup_alternative,
    pickup_code,
    source_order,
    transfer_source,
)
from domain.reference import Location

#: Mean Earth radius (IUGG) in km, the contract's great-circle radius.
R_KM = 6371.0088

SHANGHAI = (31.2304, 121.4737)
HANGZHOU = (30.2741, 120.1551)
BEIJING = (39.9042, 116.4074)
SHENZHEN = (22.5431, 114.0579)


# --- an independent great circle ---------------------------------------------------------


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    phi, lam = math.radians(lat), math.radians(lon)
    return (math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi))


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """R × the angle between the points' unit vectors, atan2(|u × v|, u · v): exact at 0 and π
    alike, and a different formula from the module's haversine."""
    u, v = unit_vector(*a), unit_vector(*b)
    cross = (
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    )
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    return R_KM * math.atan2(math.dist(cross, (0.0, 0.0, 0.0)), dot)


# --- haversine ---------------------------------------------------------------------------


def test_shanghai_to_hangzhou_is_about_165_km() -> None:
    assert haversine_km(*SHANGHAI, *HANGZHOU) == pytest.approx(165, abs=2)


def test_one_degree_of_meridian_and_of_equator_is_111_19_km() -> None:
    arc = 2 * math.pi * R_KM / 360  # 111.195 km
    assert arc == pytest.approx(111.19, abs=0.01)
    assert haversine_km(0, 0, 1, 0) == pytest.approx(arc, abs=1e-6)
    assert haversine_km(45, 7, 46, 7) == pytest.approx(arc, abs=1e-6)
    assert haversine_km(0, 30, 0, 31) == pytest.approx(arc, abs=1e-6)


def test_known_city_pairs() -> None:
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=1.5)
    assert haversine_km(40.7128, -74.0060, 51.5074, -0.1278) == pytest.approx(5570, abs=10)


def test_zero_distance_and_antipodes() -> None:
    assert haversine_km(*SHANGHAI, *SHANGHAI) == 0.0
    half_circumference = math.pi * R_KM
    assert half_circumference == pytest.approx(20015.1, abs=0.1)
    assert haversine_km(0, 0, 0, 180) == pytest.approx(half_circumference, abs=1e-6)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(half_circumference, abs=1e-6)
    assert haversine_km(31.2304, 121.4737, -31.2304, -58.5263) == pytest.approx(
        half_circumference, abs=1e-3
    )


latitudes = st.floats(-90, 90)
longitudes = st.floats(-180, 180)


@settings(max_examples=300, deadline=None)
@given(latitudes, longitudes, latitudes, longitudes)
def test_haversine_agrees_with_the_vector_angle_and_is_symmetric(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    d = haversine_km(lat1, lon1, lat2, lon2)
    assert d == pytest.approx(great_circle_km((lat1, lon1), (lat2, lon2)), abs=1e-3)
    assert d == pytest.approx(haversine_km(lat2, lon2, lat1, lon1), abs=1e-9)
    assert 0.0 <= d <= math.pi * R_KM + 1e-6


# --- helpers -----------------------------------------------------------------------------


def loc(
    location_id: str,
    kind: str = "warehouse",
    region: str = "east",
    at: tuple[float, float] | None = None,
    ships_online: bool | None = None,
    pickup: bool | None = None,
) -> Location:
    lat, lon = at if at is not None else (None, None)
    return Location(location_id, kind, region, "", lat, lon, ships_online, pickup)


def stock(levels: dict[tuple[str, str], int]) -> Callable[[str, str], int]:
    def ats(sku: str, location_id: str) -> int:
        return levels.get((sku, location_id), 0)

    return ats


def north_of(origin: tuple[float, float], km: float) -> tuple[float, float]:
    """A point ``km`` due north of ``origin`` (a meridian arc: distance = R × Δφ)."""
    return (origin[0] + math.degrees(km / R_KM), origin[1])


# --- source_order ------------------------------------------------------------------------


def test_the_nearest_covering_location_wins_and_reports_its_distance() -> None:
    pool = [loc("WH-BJ", at=BEIJING), loc("WH-SH", at=SHANGHAI), loc("WH-SZ", at=SHENZHEN)]
    ats = stock({("A", "WH-BJ"): 50, ("A", "WH-SH"): 1, ("A", "WH-SZ"): 50})
    decision = source_order([("A", 1)], ats, pool, *HANGZHOU, region="south")
    assert decision.location_id == "WH-SH"
    assert decision.distance_km == round(great_circle_km(HANGZHOU, SHANGHAI), 1)
    assert "WH-SH" in decision.reason and "nearest" in decision.reason


def test_a_nearer_location_short_of_one_line_is_passed_over() -> None:
    pool = [loc("WH-SH", at=SHANGHAI), loc("WH-BJ", at=BEIJING)]
    ats = stock({("A", "WH-SH"): 5, ("B", "WH-SH"): 1, ("A", "WH-BJ"): 5, ("B", "WH-BJ"): 2})
    decision = source_order([("A", 2), ("B", 2)], ats, pool, *HANGZHOU, region=None)
    assert decision.location_id == "WH-BJ"


def test_equal_distance_goes_to_the_larger_smallest_line_cover() -> None:
    # Both at the same point; WH-A has more of A but less of B: its smallest cover is 1
    # (B: 3 − 2), WH-B's is 2 (A: 4 − 2, B: 5 − 2 → 2).
    pool = [loc("WH-A", at=SHANGHAI), loc("WH-B", at=SHANGHAI)]
    ats = stock({("A", "WH-A"): 40, ("B", "WH-A"): 3, ("A", "WH-B"): 4, ("B", "WH-B"): 5})
    decision = source_order([("A", 2), ("B", 2)], ats, pool, *HANGZHOU, region=None)
    assert decision.location_id == "WH-B"
    assert "tied" in decision.reason


def test_equal_distance_and_equal_cover_goes_to_the_smaller_location_id() -> None:
    pool = [loc("WH-Z", at=SHANGHAI), loc("WH-M", at=SHANGHAI), loc("WH-Q", at=SHANGHAI)]
    ats = stock({("A", "WH-Z"): 3, ("A", "WH-M"): 3, ("A", "WH-Q"): 3})
    for order in (pool, pool[::-1], [pool[1], pool[2], pool[0]]):
        assert source_order([("A", 1)], ats, order, *HANGZHOU, None).location_id == "WH-M"


def test_distances_equal_at_the_published_tenth_of_a_km_are_a_tie() -> None:
    # 10.02 km and 10.04 km both publish as 10.0 km: the 20 m nobody is shown do not decide,
    # the units to spare do.
    origin = (0.0, 0.0)
    pool = [loc("WH-NEAR", at=north_of(origin, 10.02)), loc("WH-FAR", at=north_of(origin, 10.04))]
    ats = stock({("A", "WH-NEAR"): 2, ("A", "WH-FAR"): 9})
    decision = source_order([("A", 1)], ats, pool, *origin, None)
    assert (decision.location_id, decision.distance_km) == ("WH-FAR", 10.0)
    # 0.1 km apart is not a tie any more.
    pool = [loc("WH-NEAR", at=north_of(origin, 10.02)), loc("WH-FAR", at=north_of(origin, 10.12))]
    decision = source_order([("A", 1)], ats, pool, *origin, None)
    assert (decision.location_id, decision.distance_km) == ("WH-NEAR", 10.0)


def test_locations_without_coordinates_come_after_every_located_one() -> None:
    pool = [loc("WH-NOWHERE", region="east"), loc("WH-SZ", region="south", at=SHENZHEN)]
    ats = stock({("A", "WH-NOWHERE"): 100, ("A", "WH-SZ"): 1})
    decision = source_order([("A", 1)], ats, pool, *HANGZHOU, region="east")
    assert (decision.location_id, decision.distance_km) == (
        "WH-SZ",
        round(great_circle_km(HANGZHOU, SHENZHEN), 1),
    )
    # Only the unlocated one covers: it is chosen, with no distance.
    decision = source_order([("A", 2)], ats, pool, *HANGZHOU, region="east")
    assert (decision.location_id, decision.distance_km) == ("WH-NOWHERE", None)
    assert "no coordinates" in decision.reason


def test_among_locations_without_coordinates_the_larger_cover_then_the_id_wins() -> None:
    pool = [loc("WH-C"), loc("WH-B"), loc("WH-A")]
    ats = stock({("A", "WH-C"): 7, ("A", "WH-B"): 9, ("A", "WH-A"): 9})
    assert source_order([("A", 1)], ats, pool, *HANGZHOU, None).location_id == "WH-A"


def test_without_coordinates_the_orders_region_comes_first() -> None:
    pool = [
        loc("WH-W", region="west", at=BEIJING),
        loc("WH-E2", region="east"),
        loc("WH-E1", region="east", at=SHENZHEN),
    ]
    ats = stock({("A", "WH-W"): 99, ("A", "WH-E2"): 4, ("A", "WH-E1"): 3})
    decision = source_order([("A", 1)], ats, pool, None, None, region="east")
    # In the region, the larger cover wins (coordinates of the locations play no part).
    assert (decision.location_id, decision.distance_km) == ("WH-E2", None)
    assert "region east" in decision.reason
    # Ties in the region: the smaller id.
    ats = stock({("A", "WH-W"): 99, ("A", "WH-E2"): 4, ("A", "WH-E1"): 4})
    assert source_order([("A", 1)], ats, pool, None, None, "east").location_id == "WH-E1"
    # Nobody in the region covers: the other regions, larger cover first.
    decision = source_order([("A", 5)], ats, pool, None, None, region="east")
    assert decision.location_id == "WH-W"
    assert "no location" in decision.reason and "region east" in decision.reason
    # No region either: the larger cover over all.
    assert source_order([("A", 1)], ats, pool, None, None, None).location_id == "WH-W"


def test_half_a_delivery_address_counts_as_none() -> None:
    pool = [loc("WH-E", region="east", at=SHENZHEN), loc("WH-N", region="north", at=HANGZHOU)]
    ats = stock({("A", "WH-E"): 1, ("A", "WH-N"): 1})
    for lat, lon in ((HANGZHOU[0], None), (None, HANGZHOU[1])):
        decision = source_order([("A", 1)], ats, pool, lat, lon, "east")
        assert (decision.location_id, decision.distance_km) == ("WH-E", None)


def test_repeated_skus_add_up_before_they_are_covered() -> None:
    pool = [loc("WH-SH", at=SHANGHAI), loc("WH-BJ", at=BEIJING)]
    ats = stock({("A", "WH-SH"): 3, ("A", "WH-BJ"): 4})
    # Each line alone fits in WH-SH's 3; together they need 4.
    assert source_order([("A", 2), ("A", 2)], ats, pool, *HANGZHOU, None).location_id == "WH-BJ"
    assert source_order([("A", 2), ("A", 3)], ats, pool, *HANGZHOU, None) == SourcingDecision(
        None, None, "no location that ships online covers every line"
    )


def test_stores_do_not_ship_unless_the_file_says_so_and_warehouses_can_opt_out() -> None:
    ats = stock({("A", "ST-HZ"): 9, ("A", "FW-HZ"): 9, ("A", "WH-SH"): 9, ("A", "WH-BJ"): 9})
    store = loc("ST-HZ", "store", at=HANGZHOU)
    forward = loc("FW-HZ", "forward_warehouse", at=north_of(HANGZHOU, 1))
    opted_out = loc("WH-SH", at=SHANGHAI, ships_online=False)
    far = loc("WH-BJ", at=BEIJING)
    assert not store.ships and forward.ships and not opted_out.ships
    pool = [store, forward, opted_out, far]
    assert source_order([("A", 1)], ats, pool, *HANGZHOU, None).location_id == "FW-HZ"
    assert source_order([("A", 1)], ats, [store, opted_out, far], *HANGZHOU, None).location_id == (
        "WH-BJ"
    )
    shipping_store = loc("ST-HZ", "store", at=HANGZHOU, ships_online=True)
    assert (
        source_order([("A", 1)], ats, [shipping_store, forward, far], *HANGZHOU, None).location_id
        == "ST-HZ"
    )


def test_pickup_flag_defaults_to_stores_and_can_be_overridden() -> None:
    assert loc("ST", "store").offers_pickup
    assert not loc("ST", "store", pickup=False).offers_pickup
    assert not loc("WH").offers_pickup
    assert loc("WH", pickup=True).offers_pickup


def test_unfulfillable_orders_say_why() -> None:
    stores = [loc("ST-1", "store", at=HANGZHOU), loc("ST-2", "store")]
    ats = stock({("A", "ST-1"): 9})
    assert source_order([("A", 1)], ats, stores, *HANGZHOU, "east") == SourcingDecision(
        None, None, "no location ships online"
    )
    assert source_order([("A", 1)], ats, [], None, None, None).location_id is None
    pool = [*stores, loc("WH-1", at=SHANGHAI)]
    decision = source_order([("A", 1), ("B", 1)], ats, pool, *HANGZHOU, "east")
    assert decision == SourcingDecision(
        None, None, "no location that ships online covers every line"
    )


def test_an_order_without_lines_or_with_a_non_positive_qty_is_refused() -> None:
    pool = [loc("WH-1")]
    with pytest.raises(ValueError, match="at least one line"):
        source_order([], stock({}), pool, None, None, None)
    with pytest.raises(ValueError, match=r"line 1 \(B\): qty must be ≥ 1, got 0"):
        source_order([("A", 1), ("B", 0)], stock({}), pool, None, None, None)


def test_one_pass_one_distance_per_covering_location_and_no_reads_past_a_short_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    distances: list[tuple[float, float, float, float]] = []
    real = fulfilment.haversine_km

    def counted(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        distances.append((lat1, lon1, lat2, lon2))
        return real(lat1, lon1, lat2, lon2)

    monkeypatch.setattr(fulfilment, "haversine_km", counted)
    reads: list[tuple[str, str]] = []
    levels = {("A", f"WH-{i}"): i % 3 for i in range(40)} | {("B", f"WH-{i}"): 5 for i in range(40)}

    def ats(sku: str, location_id: str) -> int:
        reads.append((sku, location_id))
        return levels.get((sku, location_id), 0)

    pool = [loc(f"WH-{i}", at=(30 + i / 10, 120)) for i in range(40)]
    pool += [loc(f"ST-{i}", "store", at=HANGZHOU) for i in range(10)]
    decision = source_order([("A", 2), ("B", 1)], ats, iter(pool), *HANGZHOU, None)
    covering = [f"WH-{i}" for i in range(40) if i % 3 == 2]
    assert decision.location_id == "WH-2"
    assert len(distances) == len(covering)
    assert len(set(distances)) == len(distances)
    # Stores do not ship: never read. A location short of A is not asked for B.
    assert all(location_id.startswith("WH-") for _, location_id in reads)
    assert Counter(reads)[("A", "WH-0")] == 1 and ("B", "WH-0") not in reads
    assert len(reads) == 40 + len(covering)


# --- pickup_alternative ------------------------------------------------------------------


def test_pickup_alternative_is_the_nearest_other_pickup_store_from_the_ordered_store() -> None:
    ordered = loc("ST-HZ", "store", at=HANGZHOU)
    pool = [
        ordered,
        loc("ST-SH", "store", at=SHANGHAI),
        loc("ST-BJ", "store", at=BEIJING),
        loc("WH-HZ", at=north_of(HANGZHOU, 1)),  # nearer, but no pickup
        loc("ST-NOPICKUP", "store", at=north_of(HANGZHOU, 2), pickup=False),
        loc("WH-PICKUP", at=SHENZHEN, pickup=True),
    ]
    ats = stock({(("A", p.location_id)): 10 for p in pool})
    decision = pickup_alternative([("A", 3)], ats, pool, ordered)
    assert decision.location_id == "ST-SH"
    assert decision.distance_km == round(great_circle_km(HANGZHOU, SHANGHAI), 1)
    # The ordered store itself is never its own alternative, whatever it holds.
    assert pickup_alternative([("A", 3)], ats, [ordered], ordered) == SourcingDecision(
        None, None, "no location other than ST-HZ offers pickup"
    )
    # A warehouse that offers pickup is one.
    only_far = [ordered, loc("WH-PICKUP", at=SHENZHEN, pickup=True)]
    assert pickup_alternative([("A", 3)], ats, only_far, ordered).location_id == "WH-PICKUP"
    # Nobody else covers.
    decision = pickup_alternative([("A", 11)], ats, pool, ordered)
    assert decision == SourcingDecision(
        None, None, "no location other than ST-HZ that offers pickup covers every line"
    )


def test_a_store_without_coordinates_looks_in_its_region_first() -> None:
    ordered = loc("ST-1", "store", region="east")
    pool = [
        ordered,
        loc("ST-W", "store", region="west", at=SHANGHAI),
        loc("ST-E", "store", region="east", at=BEIJING),
    ]
    ats = stock({("A", "ST-W"): 50, ("A", "ST-E"): 2, ("A", "ST-1"): 50})
    decision = pickup_alternative([("A", 1)], ats, pool, ordered)
    assert (decision.location_id, decision.distance_km) == ("ST-E", None)


# --- transfer_source ---------------------------------------------------------------------


def test_transfer_source_is_the_nearest_other_location_of_any_type_with_the_units() -> None:
    to = loc("ST-HZ", "store", at=HANGZHOU)
    pool = [
        to,
        loc("ST-HZ2", "store", at=north_of(HANGZHOU, 3)),
        loc("WH-SH", at=SHANGHAI),
        loc("WH-BJ", at=BEIJING, ships_online=False),
    ]
    ats = stock({("A", "ST-HZ"): 100, ("A", "ST-HZ2"): 4, ("A", "WH-SH"): 6, ("A", "WH-BJ"): 50})
    assert transfer_source("A", 4, ats, pool, to) == "ST-HZ2"  # a store gives too
    assert transfer_source("A", 5, ats, pool, to) == "WH-SH"
    assert transfer_source("A", 7, ats, pool, to) == "WH-BJ"  # not shipping does not matter
    assert transfer_source("A", 51, ats, pool, to) is None  # `to` itself is never the source
    assert transfer_source("B", 1, ats, pool, to) is None


def test_transfer_source_without_coordinates_prefers_the_destinations_region() -> None:
    to = loc("ST-1", "store", region="east")
    pool = [to, loc("WH-W", region="west"), loc("WH-E", region="east")]
    ats = stock({("A", "WH-W"): 90, ("A", "WH-E"): 3})
    assert transfer_source("A", 3, ats, pool, to) == "WH-E"
    assert transfer_source("A", 4, ats, pool, to) == "WH-W"


# --- availability_options ----------------------------------------------------------------


AVAILABILITY_POOL = [
    loc("ST-HZ", "store", at=HANGZHOU),
    loc("ST-SH", "store", at=SHANGHAI, ships_online=True),
    loc("WH-SH", at=SHANGHAI),
    loc("WH-BJ", at=BEIJING, pickup=True),
    loc("WH-DARK", at=north_of(HANGZHOU, 1), ships_online=False),  # neither flag
    loc("FW-NOWHERE", "forward_warehouse"),
]
AVAILABILITY_ATS = {"ST-HZ": 2, "ST-SH": 5, "WH-SH": 9, "WH-BJ": 3, "WH-DARK": 50, "FW-NOWHERE": 8}


def option_ids(options: list[AvailabilityOption]) -> list[str]:
    return [o.location_id for o in options]


def test_availability_for_pickup_lists_pickup_locations_nearest_first() -> None:
    options = availability_options(
        "A", 2, AVAILABILITY_ATS, AVAILABILITY_POOL, *HANGZHOU, None, "pickup"
    )
    assert option_ids(options) == ["ST-HZ", "ST-SH", "WH-BJ"]
    assert options[0] == AvailabilityOption(
        "ST-HZ", "store", "east", 2, 0.0, pickup=True, ships_online=False
    )
    assert options[1].distance_km == round(great_circle_km(HANGZHOU, SHANGHAI), 1)
    assert (options[2].pickup, options[2].ships_online) == (True, True)


def test_availability_for_delivery_lists_shipping_locations_with_ties_by_cover() -> None:
    options = availability_options(
        "A", 3, AVAILABILITY_ATS, AVAILABILITY_POOL, *HANGZHOU, None, "delivery"
    )
    # WH-SH and ST-SH are at the same point: more available first. The unlocated one last.
    assert option_ids(options) == ["WH-SH", "ST-SH", "WH-BJ", "FW-NOWHERE"]
    assert [o.available_to_sell for o in options] == [9, 5, 3, 8]
    assert options[-1].distance_km is None


def test_availability_for_either_mode_skips_locations_that_do_neither() -> None:
    options = availability_options(
        "A", 1, AVAILABILITY_ATS, AVAILABILITY_POOL, None, None, None, None
    )
    assert option_ids(options) == ["WH-SH", "FW-NOWHERE", "ST-SH", "WH-BJ", "ST-HZ"]
    assert all(o.distance_km is None for o in options)
    regional = availability_options(
        "A", 1, {"ST-HZ": 2, "WH-SH": 9}, AVAILABILITY_POOL, None, None, "east", None
    )
    assert option_ids(regional) == ["WH-SH", "ST-HZ"]  # a position never seen counts 0


def test_availability_refuses_an_unknown_mode_or_qty_below_one() -> None:
    with pytest.raises(ValueError, match="mode must be one of pickup, delivery or absent"):
        availability_options("A", 1, {}, AVAILABILITY_POOL, None, None, None, "courier")
    with pytest.raises(ValueError, match="qty must be ≥ 1"):
        availability_options("A", 0, {}, AVAILABILITY_POOL, None, None, None, None)


# --- the rule, brute force ---------------------------------------------------------------


def ref_ships(location: Location) -> bool:
    if location.ships_online is not None:
        return location.ships_online
    return location.type in ("warehouse", "forward_warehouse")


def ref_pickup(location: Location) -> bool:
    return location.pickup if location.pickup is not None else location.type == "store"


def ref_ranked(
    lines: Sequence[tuple[str, int]],
    ats: dict[tuple[str, str], int],
    locations: Iterable[Location],
    admits: Callable[[Location], bool],
    origin: tuple[float, float] | None,
    region: str | None,
) -> list[tuple[tuple[int, float, int, str], Location, float | None]]:
    """Every admitted location that covers the order's summed lines, with its key, sorted."""
    need = Counter[str]()
    for sku, qty in lines:
        need[sku] += qty
    ranked = []
    for location in locations:
        if not admits(location):
            continue
        left = [ats.get((sku, location.location_id), 0) - qty for sku, qty in need.items()]
        if min(left) < 0:
            continue
        spare = min(left)
        distance = None
        if origin is None:
            in_region = region is not None and location.region == region
            key = (0 if in_region else 1, 0.0, -spare, location.location_id)
        elif location.lat is None or location.lon is None:
            key = (1, 0.0, -spare, location.location_id)
        else:
            distance = round(great_circle_km(origin, (location.lat, location.lon)), 1)
            key = (0, distance, -spare, location.location_id)
        ranked.append((key, location, distance))
    return sorted(ranked, key=lambda entry: entry[0])


PALETTE = [SHANGHAI, HANGZHOU, BEIJING, SHENZHEN, (0.0, 0.0), (-33.87, 151.21)]
SKUS = ["A", "B", "C"]
REGIONS = ["east", "west", "south"]
points = st.one_of(
    st.none(), st.sampled_from(PALETTE), st.tuples(st.floats(-90, 90), st.floats(-180, 180))
)
flags = st.sampled_from([None, True, False])


@st.composite
def pools(draw: st.DrawFn) -> tuple[list[Location], dict[tuple[str, str], int]]:
    ids = draw(st.lists(st.sampled_from([f"L{i:02d}" for i in range(14)]), unique=True))
    locations = []
    for location_id in ids:
        point = draw(points)
        kind = draw(st.sampled_from(["warehouse", "forward_warehouse", "store"]))
        locations.append(
            loc(location_id, kind, draw(st.sampled_from(REGIONS)), point, draw(flags), draw(flags))
        )
    levels = {(sku, i): draw(st.integers(0, 8)) for sku in SKUS for i in ids}
    return locations, levels


orders = st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 4)), min_size=1, max_size=4)
regions = st.one_of(st.none(), st.sampled_from(REGIONS))


@settings(max_examples=400, deadline=None)
@given(pools(), orders, points, regions)
def test_source_order_is_the_brute_force_choice(
    pool: tuple[list[Location], dict[tuple[str, str], int]],
    lines: list[tuple[str, int]],
    origin: tuple[float, float] | None,
    region: str | None,
) -> None:
    locations, levels = pool
    lat, lon = origin if origin is not None else (None, None)
    decision = source_order(lines, stock(levels), locations, lat, lon, region)
    ranked = ref_ranked(lines, levels, locations, ref_ships, origin, region)
    if not ranked:
        assert (decision.location_id, decision.distance_km) == (None, None)
        assert "no location" in decision.reason
    else:
        _, best, distance = ranked[0]
        assert (decision.location_id, decision.distance_km) == (best.location_id, distance)
        assert best.location_id in decision.reason


@settings(max_examples=300, deadline=None)
@given(pools(), orders, st.data())
def test_pickup_alternative_and_transfer_source_are_the_brute_force_choice(
    pool: tuple[list[Location], dict[tuple[str, str], int]],
    lines: list[tuple[str, int]],
    data: st.DataObject,
) -> None:
    locations, levels = pool
    store = data.draw(st.sampled_from(locations)) if locations else loc("ST-X", "store")
    origin = (store.lat, store.lon) if store.lat is not None and store.lon is not None else None

    decision = pickup_alternative(lines, stock(levels), locations, store)
    ranked = ref_ranked(
        lines,
        levels,
        locations,
        lambda other: ref_pickup(other) and other.location_id != store.location_id,
        origin,
        store.region,
    )
    expected = (ranked[0][1].location_id, ranked[0][2]) if ranked else (None, None)
    assert (decision.location_id, decision.distance_km) == expected

    sku, qty = lines[0]
    ranked = ref_ranked(
        [(sku, qty)],
        levels,
        locations,
        lambda other: other.location_id != store.location_id,
        origin,
        store.region,
    )
    expected_source = ranked[0][1].location_id if ranked else None
    assert transfer_source(sku, qty, stock(levels), locations, store) == expected_source


@settings(max_examples=300, deadline=None)
@given(
    pools(),
    st.sampled_from(SKUS),
    st.integers(1, 6),
    points,
    regions,
    st.sampled_from([None, "pickup", "delivery"]),
)
def test_availability_options_are_the_brute_force_order(
    pool: tuple[list[Location], dict[tuple[str, str], int]],
    sku: str,
    qty: int,
    origin: tuple[float, float] | None,
    region: str | None,
    mode: str | None,
) -> None:
    locations, levels = pool
    by_location = {i: n for (s, i), n in levels.items() if s == sku}
    admits: dict[str | None, Callable[[Location], bool]] = {
        "pickup": ref_pickup,
        "delivery": ref_ships,
        None: lambda location: ref_pickup(location) or ref_ships(location),
    }
    lat, lon = origin if origin is not None else (None, None)
    options = availability_options(sku, qty, by_location, locations, lat, lon, region, mode)
    ranked = ref_ranked([(sku, qty)], levels, locations, admits[mode], origin, region)
    assert options == [
        AvailabilityOption(
            location.location_id,
            location.type,
            location.region,
            by_location[location.location_id],
            distance,
            ref_pickup(location),
            ref_ships(location),
        )
        for _, location, distance in ranked
    ]
    if mode == "delivery":
        first = source_order([(sku, qty)], stock(levels), locations, lat, lon, region)
        assert first.location_id == (options[0].location_id if options else None)


# --- pickup_code -------------------------------------------------------------------------


def hmac_sha256_by_hand(key: bytes, message: bytes) -> bytes:
    """RFC 2104 spelled out on hashlib alone (not the hmac module the code uses)."""
    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + message).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).digest()


def expected_code(secret: bytes, order_id: str) -> str:
    digest = hmac_sha256_by_hand(secret, b"pickup:" + order_id.encode("utf-8"))
    value = sum(byte << (8 * (7 - i)) for i, byte in enumerate(digest[:8]))
    return str(value % 1_000_000).rjust(6, "0")


SECRET = b"store-pickup-secret"


def test_pickup_code_is_the_keyed_hash_of_the_order_id_in_six_digits() -> None:
    long_secret = b"k" * 100  # longer than a SHA-256 block: hashed first
    for secret in (SECRET, long_secret, b""):
        for order_id in ("O-1", "O-2", "订单-7", ""):
            code = pickup_code(secret, order_id)
            assert code == expected_code(secret, order_id)
            assert len(code) == 6 and code.isdigit()


def test_pickup_code_is_zero_padded() -> None:
    order_id = next(
        f"O-{n}" for n in range(100_000) if expected_code(SECRET, f"O-{n}").startswith("0")
    )
    assert pickup_code(SECRET, order_id) == expected_code(SECRET, order_id)
    assert pickup_code(SECRET, order_id).startswith("0")


def test_pickup_code_is_deterministic_and_depends_on_the_secret() -> None:
    ids = [f"O-{n}" for n in range(200)]
    assert [pickup_code(SECRET, i) for i in ids] == [pickup_code(SECRET, i) for i in ids]
    differ = sum(pickup_code(SECRET, i) != pickup_code(SECRET + b"!", i) for i in ids)
    assert differ >= 198  # equal by chance with probability 10⁻⁶ each


def test_pickup_codes_spread_over_the_million() -> None:
    codes = Counter(pickup_code(SECRET, f"ORD-{n:05d}") for n in range(10_000))
    # 10,000 draws from 10⁶ codes: ~50 colliding pairs expected, a triple is already rare.
    assert max(codes.values()) <= 3
    assert len(codes) >= 9_850
    first_digits = Counter(code[0] for code in codes.elements())
    assert set(first_digits) == set("0123456789")
    assert all(850 <= n <= 1_150 for n in first_digits.values())  # ±5 standard deviations
