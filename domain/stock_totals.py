"""Sku and region totals: sums of the per-location positions (CONTRACT §2).

Totals are kept by *replacement*: each level remembers the last absolute figures it added
for every member, and a new position takes out exactly what its predecessor put in. A
replayed position therefore replaces itself and cannot make a total drift, and an update
costs O(1) rather than a re-sum over every location or sku. Two levels:

- per sku (``SkuTotals``): the whole network and each region, for readers such as the CLI;
- per region × location type (``SegmentTotals``): units, stockouts and low-stock counts for
  the metrics, with no per-sku label (bounded cardinality).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from domain.reference import ReferenceData
from domain.resumable import resumable
from domain.stock import StockPosition


@dataclass(frozen=True, slots=True)
class Figures:
    on_hand: int = 0
    reserved: int = 0
    available: int = 0
    sold_1h: int = 0
    sold_24h: int = 0
    locations: int = 0
    available_to_sell: int = 0
    in_transit: int = 0

    @staticmethod
    def of(p: StockPosition | None) -> Figures:
        if p is None:
            return Figures()
        return Figures(
            p.on_hand,
            p.reserved,
            p.available,
            p.sold_1h,
            p.sold_24h,
            1,
            p.available_to_sell,
            p.in_transit,
        )

    def replace(self, old: Figures, new: Figures) -> Figures:
        return Figures(
            self.on_hand - old.on_hand + new.on_hand,
            self.reserved - old.reserved + new.reserved,
            self.available - old.available + new.available,
            self.sold_1h - old.sold_1h + new.sold_1h,
            self.sold_24h - old.sold_24h + new.sold_24h,
            self.locations - old.locations + new.locations,
            self.available_to_sell - old.available_to_sell + new.available_to_sell,
            self.in_transit - old.in_transit + new.in_transit,
        )

    @property
    def days_of_cover(self) -> float | None:
        return round(self.available / self.sold_24h, 3) if self.sold_24h > 0 else None


@dataclass(frozen=True, slots=True)
class SegmentShare:
    """What one sku contributes to one region × location type."""

    on_hand: int = 0
    reserved: int = 0
    available: int = 0
    stockouts: int = 0
    low_stock: int = 0
    available_to_sell: int = 0
    in_transit: int = 0

    @staticmethod
    def of(p: StockPosition | None, reorder_point: int) -> SegmentShare:
        if p is None:
            return SegmentShare()
        return SegmentShare(
            p.on_hand,
            p.reserved,
            p.available,
            int(is_stockout(p)),
            int(is_low_stock(p, reorder_point)),
            p.available_to_sell,
            p.in_transit,
        )

    def replace(self, old: SegmentShare, new: SegmentShare) -> SegmentShare:
        return SegmentShare(
            self.on_hand - old.on_hand + new.on_hand,
            self.reserved - old.reserved + new.reserved,
            self.available - old.available + new.available,
            self.stockouts - old.stockouts + new.stockouts,
            self.low_stock - old.low_stock + new.low_stock,
            self.available_to_sell - old.available_to_sell + new.available_to_sell,
            self.in_transit - old.in_transit + new.in_transit,
        )


@dataclass(frozen=True, slots=True)
class SkuTotals:
    sku: str
    total: Figures
    #: Region totals of the sku (every region it is held in).
    regions: dict[str, Figures]
    as_of_ms: int


@resumable
@dataclass(slots=True)
class SkuTotalsState:
    positions: dict[str, StockPosition] = field(default_factory=dict)
    total: Figures = field(default_factory=Figures)
    regions: dict[str, Figures] = field(default_factory=dict)
    segments: dict[tuple[str, str], SegmentShare] = field(default_factory=dict)
    as_of_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> SkuTotalsState:
        """Every value is immutable: copying the containers is a full copy (see StockState)."""
        return SkuTotalsState(
            dict(self.positions), self.total, dict(self.regions), dict(self.segments), self.as_of_ms
        )


def is_stockout(position: StockPosition) -> bool:
    """Nothing left to sell here (the safety stock is not for sale)."""
    return position.available_to_sell <= 0


def is_low_stock(position: StockPosition, reorder_point: int) -> bool:
    """Available to sell below the reorder point (stockouts included): the sku needs
    replenishment here."""
    return position.available_to_sell < reorder_point


def update_sku_totals(
    state: SkuTotalsState | None,
    sku: str,
    positions: Iterable[StockPosition],
    reference: ReferenceData,
) -> tuple[SkuTotalsState, SkuTotals, list[tuple[tuple[str, str], SegmentShare]]]:
    """Replace the positions of one sku's locations (each location's latest) in its totals.

    Returns the new totals and the sku's new share of every segment a position touched.
    Replacement makes the result independent of how changes are grouped: folding a batch's
    latest positions gives what folding every intermediate one would.
    """
    if state is None:
        state = SkuTotalsState()
    touched: dict[tuple[str, str], SegmentShare] = {}
    reorder_point = reference.products[sku].reorder_point
    for position in positions:
        location = reference.locations[position.location_id]
        old = state.positions.get(position.location_id)
        state.positions[position.location_id] = position
        old_figures, new_figures = Figures.of(old), Figures.of(position)
        state.total = state.total.replace(old_figures, new_figures)
        region = state.regions.get(location.region, Figures())
        state.regions[location.region] = region.replace(old_figures, new_figures)
        segment = (location.region, location.type)
        share = state.segments.get(segment, SegmentShare()).replace(
            SegmentShare.of(old, reorder_point), SegmentShare.of(position, reorder_point)
        )
        state.segments[segment] = touched[segment] = share
        state.as_of_ms = max(state.as_of_ms, position.as_of_ms)
    totals = SkuTotals(sku, state.total, dict(state.regions), state.as_of_ms)
    return state, totals, list(touched.items())


@resumable
@dataclass(slots=True)
class SegmentState:
    shares: dict[str, SegmentShare] = field(default_factory=dict)
    total: SegmentShare = field(default_factory=SegmentShare)

    def __deepcopy__(self, memo: dict[int, object]) -> SegmentState:
        return SegmentState(dict(self.shares), self.total)


@dataclass(frozen=True, slots=True)
class SegmentTotals:
    region: str
    location_type: str
    on_hand: int
    reserved: int
    available: int
    stockouts: int
    low_stock: int
    available_to_sell: int = 0
    in_transit: int = 0


def update_segment(
    state: SegmentState | None, segment: tuple[str, str], sku: str, share: SegmentShare
) -> tuple[SegmentState, SegmentTotals]:
    """Replace one sku's share of a region × location-type segment."""
    if state is None:
        state = SegmentState()
    old = state.shares.get(sku, SegmentShare())
    state.shares[sku] = share
    state.total = state.total.replace(old, share)
    t = state.total
    return state, SegmentTotals(
        segment[0],
        segment[1],
        t.on_hand,
        t.reserved,
        t.available,
        t.stockouts,
        t.low_stock,
        t.available_to_sell,
        t.in_transit,
    )


@resumable
@dataclass(slots=True)
class SegmentsState:
    """Every region × location type segment: one state, as the gauges are process-wide."""

    segments: dict[tuple[str, str], SegmentState] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, object]) -> SegmentsState:
        return SegmentsState({seg: s.__deepcopy__(memo) for seg, s in self.segments.items()})


def apply_shares(
    state: SegmentsState | None, shares: list[tuple[tuple[str, str], str, SegmentShare]]
) -> tuple[SegmentsState, list[SegmentTotals]]:
    """Replace each sku's share of its segments; the new totals of every touched segment."""
    if state is None:
        state = SegmentsState()
    touched: dict[tuple[str, str], SegmentTotals] = {}
    for segment, sku, share in shares:
        segment_state, totals = update_segment(state.segments.get(segment), segment, sku, share)
        state.segments[segment] = segment_state
        touched[segment] = totals
    return state, list(touched.values())
