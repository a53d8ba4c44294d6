"""A shard of the stock pool: the positions and sku totals of a set of skus, fed in bundles.

Why bundles: Bytewax's per-item cost (every operator hop, every keyed state lookup, every
per-key snapshot) was most of stock_pool's time when each movement travelled alone through a
dozen steps. The flow now groups a Kafka batch's movements by shard and hands each shard one
list; this module folds the list with the same per-position arithmetic
(``flows.logic.stock.apply_movement``) and the same totals by replacement
(``flows.logic.stock_totals``), so the figures are exactly those of one-at-a-time folding.

A shard holds every location of its skus, so a sku's totals are computed next to its
positions, once per bundle rather than once per movement. Shards are chosen by a stable hash
of the sku (crc32), the same in every process, so a replay after a restart meets the state
it left.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from flows.logic.reference import ReferenceData
from flows.logic.stock import StockMovement, StockPolicy, StockPosition, StockState, TooLate
from flows.logic.stock import apply_movement as apply_to_position
from flows.logic.stock_totals import (
    SegmentShare,
    SegmentState,
    SegmentTotals,
    SkuTotals,
    SkuTotalsState,
    update_segment,
    update_sku_totals,
)


def stock_shard(sku: str, shards: int) -> str:
    """Stable shard of a sku (crc32: the same in every process and Python version)."""
    return f"stock-{zlib.crc32(sku.encode('utf-8')) % shards}"


@dataclass(frozen=True, slots=True)
class Bundle:
    """Movements of one shard, in arrival order (per sku × location order is kept)."""

    shard: str
    movements: list[StockMovement]


@dataclass(frozen=True, slots=True)
class ShardOutcome:
    """What one bundle changed."""

    #: Every new position in order: each is one ``stock.changed`` event.
    positions: list[StockPosition]
    refused: list[TooLate]
    #: Latest totals of every sku the bundle touched (absolute figures, for Redis).
    totals: list[SkuTotals]
    #: Latest share of every (segment, sku) the bundle touched, for the segment gauges.
    shares: list[tuple[tuple[str, str], str, SegmentShare]]


@dataclass(slots=True)
class ShardState:
    positions: dict[str, StockState] = field(default_factory=dict)
    skus: dict[str, SkuTotalsState] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, object]) -> ShardState:
        """Bytewax snapshots state every epoch: the per-position and per-sku states know how
        to copy themselves cheaply (their contents are immutable values)."""
        return ShardState(
            {key: state.__deepcopy__(memo) for key, state in self.positions.items()},
            {sku: state.__deepcopy__(memo) for sku, state in self.skus.items()},
        )


def apply_bundle(
    state: ShardState | None,
    movements: list[StockMovement],
    policy: StockPolicy,
    reference: ReferenceData,
) -> tuple[ShardState, ShardOutcome]:
    """Fold a bundle of movements into the shard: positions, refusals, then totals."""
    if state is None:
        state = ShardState()
    positions: list[StockPosition] = []
    refused: list[TooLate] = []
    #: sku → location → its latest position in this bundle.
    latest: dict[str, dict[str, StockPosition]] = {}
    for movement in movements:
        key = movement.key
        position_state, outcome = apply_to_position(state.positions.get(key), movement, policy)
        state.positions[key] = position_state
        if outcome is None:
            continue  # a duplicate: nothing changed
        if isinstance(outcome, TooLate):
            refused.append(outcome)
            continue
        positions.append(outcome)
        by_location = latest.get(outcome.sku)
        if by_location is None:
            by_location = latest[outcome.sku] = {}
        by_location[outcome.location_id] = outcome
    totals: list[SkuTotals] = []
    shares: list[tuple[tuple[str, str], str, SegmentShare]] = []
    for sku, by_location in latest.items():
        sku_state, sku_totals, sku_shares = update_sku_totals(
            state.skus.get(sku), sku, by_location.values(), reference
        )
        state.skus[sku] = sku_state
        totals.append(sku_totals)
        shares.extend((segment, sku, share) for segment, share in sku_shares)
    return state, ShardOutcome(positions, refused, totals, shares)


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
