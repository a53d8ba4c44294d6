"""The trigger rules' ``domain.stock_view.StockView`` on the stock pool as it stands.

rule_triggers asks the pool stock_pool keeps (Redis in production, ``state.memory_stock``
in the in-process tests) through its read side, ``state.interfaces.StockReader``: one
pipelined round trip per question. The pool holds no history, so the event time a question
is asked at is not used: live, the answer is the pool of the moment; in a replay behind a
stock_pool that has caught up, the pool at the end of the input.

With ``max_age_s``, an answer is reused for that long (wall clock): thousands of customers'
coupons a second ask about the same few hundred skus, and the pool itself is written in
batches (its freshness target is 300 ms), so an answer a tenth of a second old is as good
as a new one and saves the round trip that was a tenth of the flow's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from domain.stock_rules import StockChange
from state.interfaces import StockReader

R = TypeVar("R")


class PoolStockView:
    """``StockView`` on a ``StockReader``; ``flow`` names the reader in the Redis metrics.

    ``shipping``: the ids of the locations that ship online orders (from the reference,
    ``Location.ships``), asked in one round trip for ``available_online`` (a coupon's
    ``no_stock`` guard asks it for every repurchase reminder). Without it the
    sku's positions are read whole and every location that is not a store counts (the
    reference's default), which misses a store the locations file lets ship.
    """

    def __init__(
        self,
        reader: StockReader,
        flow: str,
        shipping: Collection[str] | None = None,
        *,
        max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.flow = flow
        self.shipping = sorted(shipping) if shipping is not None else None
        self.max_age_s = max_age_s
        self._clock = clock
        #: question → (when answered, answer); emptied whole once its oldest is too old
        self._answers: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._oldest = 0.0

    def _answer(self, question: tuple[Any, ...], ask: Callable[[], R]) -> R:
        if self.max_age_s <= 0:
            return ask()
        now = self._clock()
        if now - self._oldest > self.max_age_s:
            self._answers.clear()
            self._oldest = now
        kept = self._answers.get(question)
        if kept is not None:
            return kept[1]  # type: ignore[no-any-return]
        answer = ask()
        self._answers[question] = (now, answer)
        return answer

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, as_of_ms: int
    ) -> list[tuple[str, int]]:
        return list(
            self._answer(
                ("stores", region, sku, minimum),
                lambda: self.reader.stores_with_stock(region, sku, minimum, self.flow),
            )
        )

    def region_positions(self, sku: str, region: str, as_of_ms: int) -> list[StockChange]:
        return list(
            self._answer(
                ("region", sku, region),
                lambda: self.reader.region_positions(sku, region, self.flow),
            )
        )

    def available(self, sku: str, location_id: str, as_of_ms: int) -> int:
        return self._answer(
            ("at", sku, location_id), lambda: self.reader.available(sku, location_id, self.flow)
        )

    def available_online(self, sku: str, as_of_ms: int) -> int:
        return self._answer(("online", sku), lambda: self._available_online(sku))

    def _available_online(self, sku: str) -> int:
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
