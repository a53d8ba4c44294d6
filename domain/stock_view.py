"""What the trigger rules may ask of the stock pool, and the pool as a recording shows it.

A rule of one sku × location or of one customer sometimes needs stock it does not hold: the
stores of a region with stock (``browse_nearby_stock``), the sku's positions in a region (the
source of a transfer, the store selling fastest), one position's available units
(``campaign_prep``, a coupon naming a store), the sku's units available to sell wherever
online orders ship from (a coupon sending the customer to the web shop). Those questions go
through a ``StockView``:

- the flow answers them from the stock pool in Redis, as it stands when the question is asked
  (``state.stock_view.PoolStockView``): live, that is the pool of the moment; in a replay
  behind a stock_pool that has caught up, it is the pool at the end of the input;
- ``rules backtest`` answers them from the ``stock.changes`` it replays (``RecordedStock``):
  either the pool *as of the question's event time* (what a live run saw, give or take
  stock_pool's lag) or the pool *at the end of the recording* (what a replay of the
  recording behind a caught-up stock_pool sees).

Every question carries the event time it is asked at (``as_of_ms``); a view of the current
pool ignores it.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from domain.stock_rules import StockChange


class StockView(Protocol):
    """The stock pool, as far as the trigger rules read it."""

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, as_of_ms: int
    ) -> list[tuple[str, int]]:
        """(store, available) of every store of ``region`` with at least ``minimum``
        available of ``sku``, most first, ties by store id."""
        ...

    def region_positions(self, sku: str, region: str, as_of_ms: int) -> list[StockChange]:
        """The sku's position at every location of ``region`` that has one, by location id."""
        ...

    def available(self, sku: str, location_id: str, as_of_ms: int) -> int:
        """Units of ``sku`` available at ``location_id`` (0 when nothing is recorded)."""
        ...

    def available_online(self, sku: str, as_of_ms: int) -> int:
        """Units of ``sku`` available to sell summed over the locations that ship online
        orders (``domain.reference.Location.ships``): what a coupon for the web shop can
        be redeemed against."""
        ...


@dataclass(frozen=True, slots=True)
class _Position:
    """A recorded change as a region lookup returns it (Redis keeps no partition)."""

    ts_ms: int
    seq: int
    change: StockChange


class RecordedStock:
    """``stock.changes`` folded by sku × location, every change kept in event-time order.

    ``as_recorded()`` and ``at_end()`` are the two ``StockView``s ``rules backtest`` offers;
    the stock pool's own order of a key's changes is kept among changes of the same event
    time (the later one wins).

    >>> from domain.stock_rules import StockChange
    >>> stock = RecordedStock()
    >>> stock.record(StockChange("SKU1", "ST1", "SH", 5, 0, 1_000, "a"))
    >>> stock.record(StockChange("SKU1", "ST1", "SH", 2, 0, 2_000, "b"))
    >>> stock.as_recorded().available("SKU1", "ST1", 1_500)
    5
    >>> stock.at_end().available("SKU1", "ST1", 1_500)
    2

    Which locations ship online orders is the reference's to say (``shipping``: their ids);
    without it, every location that is not a store does (the reference's default).

    >>> stock.record(StockChange("SKU1", "WH1", "SH", 7, 0, 1_000, "c", location_type="warehouse"))
    >>> stock.as_recorded().available_online("SKU1", 1_500)
    7
    >>> RecordedStock(shipping={"ST1"}).as_recorded().available_online("SKU1", 1_500)
    0
    """

    def __init__(
        self, changes: Iterable[StockChange] = (), *, shipping: Collection[str] | None = None
    ) -> None:
        #: ids of the locations that ship online orders (None: every non-store location)
        self.shipping = frozenset(shipping) if shipping is not None else None
        #: (sku, region) → location → its changes, by (event time, arrival)
        self._by_region: dict[tuple[str, str], dict[str, list[_Position]]] = {}
        #: (sku, location) → the region its changes name
        self._region_of: dict[tuple[str, str], str] = {}
        #: sku → the locations that recorded it
        self._locations_of: dict[str, set[str]] = {}
        self._seq = 0
        for change in changes:
            self.record(change)

    def record(self, change: StockChange) -> None:
        self._region_of[(change.sku, change.location_id)] = change.region
        self._locations_of.setdefault(change.sku, set()).add(change.location_id)
        locations = self._by_region.setdefault((change.sku, change.region), {})
        history = locations.setdefault(change.location_id, [])
        self._seq += 1
        position = _Position(change.ts_ms, self._seq, _as_stored(change))
        if not history or (history[-1].ts_ms, history[-1].seq) <= (position.ts_ms, position.seq):
            history.append(position)
        else:
            bisect.insort(history, position, key=lambda p: (p.ts_ms, p.seq))

    def as_recorded(self) -> StockView:
        """The pool as of each question's event time: the latest change at or before it."""
        return _StockAt(self, final=False)

    def at_end(self) -> StockView:
        """The pool after the whole recording, whatever the question's event time."""
        return _StockAt(self, final=True)

    def _positions(self, sku: str, region: str, as_of_ms: int | None) -> dict[str, StockChange]:
        found: dict[str, StockChange] = {}
        for location, history in self._by_region.get((sku, region), {}).items():
            if as_of_ms is None:
                found[location] = history[-1].change
                continue
            index = bisect.bisect_right(history, as_of_ms, key=lambda p: p.ts_ms)
            if index:
                found[location] = history[index - 1].change
        return found

    def _position(self, sku: str, location_id: str, as_of_ms: int | None) -> StockChange | None:
        region = self._region_of.get((sku, location_id))
        if region is None:
            return None
        history = self._by_region[(sku, region)][location_id]
        if as_of_ms is None:
            return history[-1].change
        index = bisect.bisect_right(history, as_of_ms, key=lambda p: p.ts_ms)
        return history[index - 1].change if index else None

    def _online(self, sku: str, as_of_ms: int | None) -> int:
        total = 0
        for location in self._locations_of.get(sku, ()):
            position = self._position(sku, location, as_of_ms)
            if position is None:
                continue
            ships = (
                location in self.shipping
                if self.shipping is not None
                else position.location_type != "store"
            )
            if ships:
                total += position.available
        return total


def _as_stored(change: StockChange) -> StockChange:
    """The change as the pool stores it: a lookup answers no input partition."""
    if change.source_partition == 0:
        return change
    return StockChange(
        change.sku,
        change.location_id,
        change.region,
        change.available,
        change.sold_24h,
        change.ts_ms,
        change.cause,
        change.on_hand,
        change.location_type,
    )


class _StockAt:
    def __init__(self, stock: RecordedStock, final: bool) -> None:
        self._stock = stock
        self._final = final

    def _when(self, as_of_ms: int) -> int | None:
        return None if self._final else as_of_ms

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, as_of_ms: int
    ) -> list[tuple[str, int]]:
        positions = self._stock._positions(sku, region, self._when(as_of_ms))
        found = [
            (location, p.available)
            for location, p in positions.items()
            if p.location_type == "store" and p.available >= minimum
        ]
        return sorted(found, key=lambda item: (-item[1], item[0]))

    def region_positions(self, sku: str, region: str, as_of_ms: int) -> list[StockChange]:
        positions = self._stock._positions(sku, region, self._when(as_of_ms))
        return [positions[location] for location in sorted(positions)]

    def available(self, sku: str, location_id: str, as_of_ms: int) -> int:
        position = self._stock._position(sku, location_id, self._when(as_of_ms))
        return position.available if position is not None else 0

    def available_online(self, sku: str, as_of_ms: int) -> int:
        return self._stock._online(sku, self._when(as_of_ms))
