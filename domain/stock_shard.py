"""A shard of the stock pool: the positions and sku totals of a set of skus, fed in bundles.

Why bundles: Bytewax's per-item cost (every operator hop, every keyed state lookup, every
per-key snapshot) was most of stock_pool's time when each movement travelled alone through a
dozen steps. The flow now groups a Kafka batch's movements by shard and hands each shard one
list; this module folds the list with the same per-position arithmetic
(``domain.stock.apply_movement``) and the same totals by replacement
(``domain.stock_totals``), so the figures are exactly those of one-at-a-time folding.

A shard holds every location of its skus, so a sku's totals are computed next to its
positions, once per bundle rather than once per movement. Shards are chosen by a stable hash
of the sku (crc32), the same in every process, so a replay after a restart meets the state
it left.

Order: a shard applies movements in event-time order across all input partitions, whatever
order the partitions are read in. Every bundle carries the reports of the partitions it
came from (``domain.progress``); the shard buffers what is ahead of the release bound
and applies, oldest first (ties by movement id), what every partition still being read has
passed. So a rebuild from history publishes the positions of event-time order, not
intermediate ones that never existed, and lateness is judged against the whole flow.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from domain.progress import EventTimeBuffer, InputProgress, Partition, PartitionReport
from domain.reference import ReferenceData
from domain.stock import (
    StockMovement,
    StockPolicy,
    StockPosition,
    StockState,
    TooLate,
    lateness,
)
from domain.stock import apply_movement as apply_to_position
from domain.stock_totals import (
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
    """Movements of one shard from one batch, with the reports of the partitions the batch
    read: a bundle without movements still tells the shard how far those partitions are."""

    shard: str
    movements: list[StockMovement]
    reports: tuple[PartitionReport, ...] = ()


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
    progress: InputProgress = field(default_factory=InputProgress)
    #: Movements that arrived ahead of the release bound.
    pending: EventTimeBuffer[StockMovement] = field(default_factory=EventTimeBuffer)

    def __deepcopy__(self, memo: dict[int, object]) -> ShardState:
        """Bytewax snapshots state every epoch: the per-position and per-sku states know how
        to copy themselves cheaply (their contents are immutable values)."""
        return ShardState(
            {key: state.__deepcopy__(memo) for key, state in self.positions.items()},
            {sku: state.__deepcopy__(memo) for sku, state in self.skus.items()},
            self.progress.__deepcopy__(memo),
            self.pending.__deepcopy__(memo),
        )


def apply_bundle(
    state: ShardState | None,
    bundle: Bundle,
    policy: StockPolicy,
    reference: ReferenceData,
    expected: frozenset[Partition] = frozenset(),
) -> tuple[ShardState, ShardOutcome]:
    """Take in a bundle and fold, in event-time order, every movement the release bound now
    allows: positions, refusals, then totals. ``expected`` are the input partitions that
    must report before anything is applied (a shard built before any report knows them)."""
    if state is None:
        state = ShardState(progress=InputProgress(expected))
    pending = state.pending
    refused: list[TooLate] = []
    # Lateness is judged on arrival, against the flow's progress before this batch: what
    # waits in the buffer was on time and is applied, however far the watermark has moved
    # on by its release (one topic may be read to its end long before another).
    progress_ms = state.progress.progress_ms
    for movement in bundle.movements:
        position = state.positions.get(movement.key)
        late = None
        if position is None or movement.movement_id not in position.seen:
            late = lateness(movement, policy, progress_ms)
        if late is None:
            pending.add(movement.ts_ms, movement.movement_id, movement)
        else:
            refused.append(late)
    if bundle.reports:
        state.progress.report(bundle.reports)
    released = pending.release(state.progress.release_bound())
    return state, fold_movements(state, released, policy, reference, refused)


def fold_movements(
    state: ShardState,
    movements: list[StockMovement],
    policy: StockPolicy,
    reference: ReferenceData,
    refused: list[TooLate] | None = None,
) -> ShardOutcome:
    """Fold movements, in the order given, into the shard's positions and sku totals.

    The horizon passed down is the flow's low watermark, but never past the oldest movement
    folded here: these were judged on arrival, and forgetting counts back from it."""
    positions: list[StockPosition] = []
    refused = [] if refused is None else refused
    progress_ms = state.progress.progress_ms
    if progress_ms is not None and movements:
        progress_ms = min(progress_ms, movements[0].ts_ms)
    #: sku → location → its latest position in this bundle.
    latest: dict[str, dict[str, StockPosition]] = {}
    for movement in movements:
        key = movement.key
        position_state, outcome = apply_to_position(
            state.positions.get(key), movement, policy, progress_ms
        )
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
    return ShardOutcome(positions, refused, totals, shares)


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
