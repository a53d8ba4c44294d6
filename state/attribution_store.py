"""Running attribution totals: what the attribution flow writes and ``omnistream attribution
report`` reads, behind one interface (``AttributionStore``) with a Redis backend (production)
and an in-memory one (in-process tests).

Cells are written as absolute values computed in the flow, never increments, so a replay
writes the same values again. In Redis: one hash per model, ``<channel>|revenue`` and
``<channel>|conversions`` fields.

Nothing here names a customer: channels are campaign sources, channel names and
``coupon:<rule_id>``, so an erasure (``forget``) has nothing to remove from this store; the
flow forgets the customer in its own steps (``domain.attribution_paths``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

import redis

from base.config import Config
from base.flow_names import ATTRIBUTION
from state.redis_io import connect, with_retries

#: model → channel → (revenue, conversions)
TotalsTable = dict[str, dict[str, tuple[float, float]]]


class AttributionStore(Protocol):
    """Where the running totals per model × channel live."""

    def write_totals(self, cells: Mapping[tuple[str, str], tuple[float, float]]) -> None:
        """Set each (model, channel) cell to (revenue, conversions); other cells stay."""
        ...

    def read_totals(self, models: tuple[str, ...]) -> TotalsTable:
        """model → channel → (revenue, conversions) for each of ``models`` (empty if none)."""
        ...

    def close(self) -> None: ...


class RedisAttributionStore:
    """The totals in Redis, one pipelined round trip per batch of cells."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix

    @classmethod
    def from_config(cls, config: Config) -> RedisAttributionStore:
        return cls(connect(config), config.redis.key_prefix)

    def key(self, model: str) -> str:
        return f"{self.prefix}attr:{model}"

    def close(self) -> None:
        self.client.close()

    def write_totals(self, cells: Mapping[tuple[str, str], tuple[float, float]]) -> None:
        if not cells:
            return

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for (model, channel), (revenue, conversions) in cells.items():
                pipe.hset(
                    self.key(model),
                    mapping={f"{channel}|revenue": revenue, f"{channel}|conversions": conversions},
                )
            pipe.execute()

        with_retries(ATTRIBUTION, write)

    def read_totals(self, models: tuple[str, ...]) -> TotalsTable:
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(self.key(model))
        out: TotalsTable = {}
        replies: list[Any] = pipe.execute()
        for model, row in zip(models, replies, strict=True):
            table: dict[str, list[float]] = {}
            for field, value in row.items():
                channel, figure = field.decode().rsplit("|", 1)
                cell = table.setdefault(channel, [0.0, 0.0])
                cell[0 if figure == "revenue" else 1] = float(value)
            out[model] = {c: (v[0], v[1]) for c, v in table.items()}
        return out


class MemoryAttributionStore:
    """The totals in this process: for in-process runs of the flow, where several worker
    threads may share one store (hence the lock). ``close`` keeps the totals, so a test
    reads them after the flow ended."""

    def __init__(self) -> None:
        self._cells: dict[str, dict[str, tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def write_totals(self, cells: Mapping[tuple[str, str], tuple[float, float]]) -> None:
        with self._lock:
            for (model, channel), (revenue, conversions) in cells.items():
                self._cells.setdefault(model, {})[channel] = (float(revenue), float(conversions))

    def read_totals(self, models: tuple[str, ...]) -> TotalsTable:
        with self._lock:
            return {model: dict(self._cells.get(model, {})) for model in models}

    def close(self) -> None:
        return None
