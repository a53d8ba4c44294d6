"""Running attribution totals in Redis: one hash per model, ``<channel>|revenue`` and
``<channel>|conversions`` fields, written as absolute values computed in the flow (a replay
writes the same values again)."""

from __future__ import annotations

from typing import Any

import redis

from base.config import Config
from base.flow_names import ATTRIBUTION
from base.metrics import ATTRIBUTED_CONVERSIONS, ATTRIBUTED_REVENUE
from state.redis_io import connect, with_retries

#: (model, channel, revenue, conversions): one cell of the totals, absolute.
TotalsCell = tuple[str, str, float, float]


class AttributionStore:
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix

    @classmethod
    def from_config(cls, config: Config) -> AttributionStore:
        return cls(connect(config), config.redis.key_prefix)

    def key(self, model: str) -> str:
        return f"{self.prefix}attr:{model}"

    def close(self) -> None:
        self.client.close()

    def write_cells(self, cells: list[TotalsCell]) -> None:
        latest = {(model, channel): (rev, conv) for model, channel, rev, conv in cells}
        if not latest:
            return

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for (model, channel), (revenue, conversions) in latest.items():
                pipe.hset(
                    self.key(model),
                    mapping={f"{channel}|revenue": revenue, f"{channel}|conversions": conversions},
                )
            pipe.execute()

        with_retries(ATTRIBUTION, write)
        for (model, channel), (revenue, conversions) in latest.items():
            ATTRIBUTED_REVENUE.labels(model, channel).set(revenue)
            ATTRIBUTED_CONVERSIONS.labels(model, channel).set(conversions)

    def read_totals(self, models: tuple[str, ...]) -> dict[str, dict[str, tuple[float, float]]]:
        """model → channel → (revenue, conversions)."""
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(self.key(model))
        out: dict[str, dict[str, tuple[float, float]]] = {}
        replies: list[Any] = pipe.execute()
        for model, row in zip(models, replies, strict=True):
            table: dict[str, list[float]] = {}
            for field, value in row.items():
                channel, figure = field.decode().rsplit("|", 1)
                cell = table.setdefault(channel, [0.0, 0.0])
                cell[0 if figure == "revenue" else 1] = float(value)
            out[model] = {c: (v[0], v[1]) for c, v in table.items()}
        return out
