"""Sku and region totals: sums of the per-location positions (CONTRACT §2).

Totals are recomputed from remembered absolute positions, never accumulated from deltas, so
a replayed position cannot make them drift. Two levels:

- per sku (``SkuTotals``): the whole network and each region, for readers such as the CLI;
- per region × location type (``SegmentTotals``): units, stockouts and low-stock counts for
  the metrics, with no per-sku label (bounded cardinality).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flows.logic.reference import ReferenceData
from flows.logic.stock import StockPosition


@dataclass(frozen=True, slots=True)
class Figures:
    on_hand: int = 0
    reserved: int = 0
    available: int = 0
    sold_1h: int = 0
    sold_24h: int = 0
    locations: int = 0

    def plus(self, p: StockPosition) -> Figures:
        return Figures(
            self.on_hand + p.on_hand,
            self.reserved + p.reserved,
            self.available + p.available,
            self.sold_1h + p.sold_1h,
            self.sold_24h + p.sold_24h,
            self.locations + 1,
        )

    @property
    def days_of_cover(self) -> float | None:
        return round(self.available / self.sold_24h, 3) if self.sold_24h > 0 else None


@dataclass(frozen=True, slots=True)
class SkuTotals:
    sku: str
    total: Figures
    regions: dict[str, Figures]
    #: (region, location type) → this sku's contribution to that segment.
    segments: dict[tuple[str, str], SegmentShare]
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class SegmentShare:
    on_hand: int = 0
    reserved: int = 0
    available: int = 0
    stockouts: int = 0
    low_stock: int = 0


@dataclass(slots=True)
class SkuTotalsState:
    positions: dict[str, StockPosition] = field(default_factory=dict)


def is_stockout(position: StockPosition) -> bool:
    return position.available <= 0


def is_low_stock(position: StockPosition, reorder_point: int) -> bool:
    """Below the reorder point (stockouts included): the sku needs replenishment here."""
    return position.available < reorder_point


def update_sku_totals(
    state: SkuTotalsState | None, position: StockPosition, reference: ReferenceData
) -> tuple[SkuTotalsState, SkuTotals]:
    if state is None:
        state = SkuTotalsState()
    state.positions[position.location_id] = position
    reorder_point = reference.products[position.sku].reorder_point
    total = Figures()
    regions: dict[str, Figures] = {}
    segments: dict[tuple[str, str], SegmentShare] = {}
    for location_id, p in state.positions.items():
        location = reference.locations[location_id]
        total = total.plus(p)
        regions[location.region] = regions.get(location.region, Figures()).plus(p)
        seg = (location.region, location.type)
        share = segments.get(seg, SegmentShare())
        segments[seg] = SegmentShare(
            share.on_hand + p.on_hand,
            share.reserved + p.reserved,
            share.available + p.available,
            share.stockouts + int(is_stockout(p)),
            share.low_stock + int(is_low_stock(p, reorder_point)),
        )
    as_of = max(p.as_of_ms for p in state.positions.values())
    return state, SkuTotals(position.sku, total, regions, segments, as_of)


@dataclass(slots=True)
class SegmentState:
    shares: dict[str, SegmentShare] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SegmentTotals:
    region: str
    location_type: str
    on_hand: int
    reserved: int
    available: int
    stockouts: int
    low_stock: int


def update_segment(
    state: SegmentState | None, segment: tuple[str, str], sku: str, share: SegmentShare
) -> tuple[SegmentState, SegmentTotals]:
    """Replace one sku's share of a region × location-type segment and re-add the segment."""
    if state is None:
        state = SegmentState()
    state.shares[sku] = share
    shares = state.shares.values()
    return state, SegmentTotals(
        segment[0],
        segment[1],
        sum(s.on_hand for s in shares),
        sum(s.reserved for s in shares),
        sum(s.available for s in shares),
        sum(s.stockouts for s in shares),
        sum(s.low_stock for s in shares),
    )
