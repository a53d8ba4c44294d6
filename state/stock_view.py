"""The trigger rules' ``domain.stock_view.StockView`` on the stock pool as it stands.

rule_triggers asks the pool stock_pool keeps (Redis in production, ``state.memory_stock``
in the in-process tests) through its read side, ``state.interfaces.StockReader``: one
pipelined round trip per question. The pool holds no history, so the event time a question
is asked at is not used: live, the answer is the pool of the moment; in a replay behind a
stock_pool that has caught up, the pool at the end of the input.
"""

from __future__ import annotations

from collections.abc import Collection

from domain.stock_rules import StockChange
from state.interfaces import StockReader


class PoolStockView:
    """``StockView`` on a ``StockReader``; ``flow`` names the reader in the Redis metrics.

    ``shipping``: the ids of the locations that ship online orders (from the reference,
    ``Location.ships``), asked in one round trip for ``available_online`` (a coupon's
    ``no_stock`` guard asks it for every repurchase reminder). Without it the
    sku's positions are read whole and every location that is not a store counts (the
    reference's default), which misses a store the locations file lets ship.
    """

    def __init__(
        self, reader: StockReader, flow: str, shipping: Collection[str] | None = None
    ) -> None:
        self.reader = reader
        self.flow = flow
        self.shipping = sorted(shipping) if shipping is not None else None

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, as_of_ms: int
    ) -> list[tuple[str, int]]:
        return self.reader.stores_with_stock(region, sku, minimum, self.flow)

    def region_positions(self, sku: str, region: str, as_of_ms: int) -> list[StockChange]:
        return self.reader.region_positions(sku, region, self.flow)

    def available(self, sku: str, location_id: str, as_of_ms: int) -> int:
        return self.reader.available(sku, location_id, self.flow)

    def available_online(self, sku: str, as_of_ms: int) -> int:
        if self.shipping is not None:
            return self.reader.available_at(sku, self.shipping, self.flow)
        rows, _, _ = self.reader.read_sku(sku)
        return sum(
            int(row.get("available_to_sell", 0))
            for row in rows
            if row.get("location_type", "store") != "store"
        )

    def close(self) -> None:
        self.reader.close()
