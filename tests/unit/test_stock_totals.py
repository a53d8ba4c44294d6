"""Sku and segment totals kept by replacement (``domain.stock_totals``), against plain sums.

The flow never re-sums: each new position takes out what its predecessor put in. Whatever
the positions and however they are grouped into bundles (a replayed one included), the
totals must equal summing each location's latest position from scratch — the figures the
store keeps (``stock_total:*``, ``stock_region:*``) and the stock gauges show.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.reference import Location, Product, ReferenceData
from domain.stock import StockPosition
from domain.stock_totals import (
    Figures,
    SegmentState,
    SkuTotalsState,
    update_segment,
    update_sku_totals,
)

T0 = 1_795_000_000_000
REFERENCE = ReferenceData(
    locations={
        loc.location_id: loc
        for loc in (
            Location("WH-N", "warehouse", "N"),
            Location("ST-N1", "store", "N"),
            Location("ST-N2", "store", "N"),
            Location("ST-S1", "store", "S"),
            Location("FW-S", "forward_warehouse", "S"),
        )
    },
    products={
        "SKU-A": Product("SKU-A", "grocery", 2.5, 5, 2, None),
        "SKU-B": Product("SKU-B", "grocery", 4.0, 12, 2, None),
    },
)

positions = st.builds(
    lambda sku, loc, on_hand, reserved, sold, n, safety, transit: StockPosition(
        sku,
        loc,
        on_hand,
        reserved,
        on_hand - reserved,
        min(sold, 3),
        sold,
        round((on_hand - reserved) / sold, 3) if sold else None,
        T0 + n,
        f"e{n}",
        f"e{n}#0",
        safety,
        transit,
    ),
    st.sampled_from(sorted(REFERENCE.products)),
    st.sampled_from(sorted(REFERENCE.locations)),
    st.integers(-5, 60),
    st.integers(0, 8),
    st.integers(0, 9),
    st.integers(0, 10_000),
    st.integers(0, 4),
    st.integers(0, 12),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(positions, max_size=60), st.lists(st.integers(1, 6), min_size=1), st.booleans())
def test_totals_by_replacement_equal_plain_sums_of_the_latest_positions(
    stream: list[StockPosition], sizes: list[int], replay: bool
) -> None:
    stream = sorted(stream, key=lambda p: p.as_of_ms)  # a shard folds in event-time order
    sku_states: dict[str, SkuTotalsState] = {}
    segments: dict[tuple[str, str], SegmentState] = {}
    latest_totals = {}
    start, i = 0, 0
    bundles = []
    while start < len(stream):  # bundles of varying size, in stream order
        size = sizes[i % len(sizes)]
        bundles.append(stream[start : start + size])
        start, i = start + size, i + 1
    if replay and bundles:
        bundles.append(bundles[len(bundles) // 2])  # an earlier bundle delivered again …
        bundles.append(bundles[-2])  # … then the last one again, so it stays the latest
    for bundle in bundles:
        by_sku: dict[str, dict[str, StockPosition]] = defaultdict(dict)
        for p in bundle:  # a shard hands over each location's latest of the bundle
            by_sku[p.sku][p.location_id] = p
        for sku, by_location in by_sku.items():
            state, totals, shares = update_sku_totals(
                sku_states.get(sku), sku, by_location.values(), REFERENCE
            )
            sku_states[sku] = state
            latest_totals[sku] = totals
            for segment, share in shares:
                segments[segment], _ = update_segment(segments.get(segment), segment, sku, share)

    final: dict[tuple[str, str], StockPosition] = {}
    for bundle in bundles:
        for p in bundle:
            final[(p.sku, p.location_id)] = p
    for sku, totals in latest_totals.items():
        mine = [p for (s, _), p in final.items() if s == sku]
        assert totals.total == plain_sum(mine)
        regions = {region_of(p) for p in mine}
        assert totals.regions == {
            region: plain_sum([p for p in mine if region_of(p) == region]) for region in regions
        }
        # as of the latest change of the sku anywhere
        assert totals.as_of_ms == max(p.as_of_ms for p in stream if p.sku == sku)
    for segment, state in segments.items():
        members = [p for p in final.values() if segment_of(p) == segment]
        t = state.total
        assert (t.on_hand, t.reserved, t.available) == (
            sum(p.on_hand for p in members),
            sum(p.reserved for p in members),
            sum(p.available for p in members),
        )
        assert (t.available_to_sell, t.in_transit) == (
            sum(max(0, p.available - p.safety_stock) for p in members),
            sum(p.in_transit for p in members),
        )
        # what cannot be sold: the safety stock is held back (CONTRACT §9)
        assert t.stockouts == sum(1 for p in members if p.available - p.safety_stock <= 0)
        assert t.low_stock == sum(
            1
            for p in members
            if max(0, p.available - p.safety_stock) < REFERENCE.products[p.sku].reorder_point
        )


def region_of(p: StockPosition) -> str:
    return REFERENCE.locations[p.location_id].region


def segment_of(p: StockPosition) -> tuple[str, str]:
    return (region_of(p), REFERENCE.locations[p.location_id].type)


def plain_sum(members: list[StockPosition]) -> Figures:
    return Figures(
        on_hand=sum(p.on_hand for p in members),
        reserved=sum(p.reserved for p in members),
        available=sum(p.available for p in members),
        sold_1h=sum(p.sold_1h for p in members),
        sold_24h=sum(p.sold_24h for p in members),
        locations=len(members),
        available_to_sell=sum(max(0, p.available - p.safety_stock) for p in members),
        in_transit=sum(p.in_transit for p in members),
    )


def test_days_of_cover_of_a_total_is_available_over_a_days_sales() -> None:
    assert Figures(available=17, sold_24h=5).days_of_cover == 3.4
    assert Figures(available=10, sold_24h=3).days_of_cover == 3.333
    assert Figures(available=-4, sold_24h=8).days_of_cover == -0.5
    assert Figures(available=9, sold_24h=0).days_of_cover is None
