"""The stock pool in Redis: public per-location hashes and internal totals.

Public (CONTRACT §5): ``<prefix>stock:<sku>:<location_id>`` hash with ``on_hand``,
``reserved``, ``available``, ``updated_at`` (event time of the latest change, RFC 3339 UTC),
``sold_1h``, ``sold_24h``, ``days_of_cover`` (absent when nothing sold in 24 h), plus
``region``, ``location_type``, ``cause`` and ``updated_at_ms``.

Internal: ``<prefix>stock_total:<sku>`` (network total) and
``<prefix>stock_region:<sku>:<region>`` (region total), same figures plus ``locations``.

A batch is written in one pipelined round trip, and only the last position per key of the
batch is written: the values are absolute, so the earlier ones are already superseded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from base.config import Config
from base.flow_names import STOCK_POOL
from base.metrics import REDIS_WRITE_SECONDS, STOCK_POSITIONS_WRITTEN
from domain.reference import ReferenceData
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_totals import Figures, SkuTotals
from domain.timeparse import format_event_time
from state.redis_io import connect, with_retries


def _figures_mapping(f: Figures, as_of_ms: int) -> dict[str, Any]:
    return {
        "on_hand": f.on_hand,
        "reserved": f.reserved,
        "available": f.available,
        "sold_1h": f.sold_1h,
        "sold_24h": f.sold_24h,
        "locations": f.locations,
        "updated_at": format_event_time(as_of_ms),
        "updated_at_ms": as_of_ms,
    }


@dataclass(frozen=True)
class StockKeys:
    prefix: str

    def position(self, sku: str, location_id: str) -> str:
        return f"{self.prefix}stock:{sku}:{location_id}"

    def sku_total(self, sku: str) -> str:
        return f"{self.prefix}stock_total:{sku}"

    def region_total(self, sku: str, region: str) -> str:
        return f"{self.prefix}stock_region:{sku}:{region}"


class StockStore:
    def __init__(self, client: redis.Redis, key_prefix: str, reference: ReferenceData) -> None:
        self.client = client
        self.keys = StockKeys(key_prefix)
        self.reference = reference

    @classmethod
    def from_config(cls, config: Config, reference: ReferenceData) -> StockStore:
        return cls(connect(config), config.redis.key_prefix, reference)

    def close(self) -> None:
        self.client.close()

    def write(self, positions: Sequence[StockPosition], totals: Sequence[SkuTotals] = ()) -> int:
        """Write the latest of each position and of each sku's totals in one pipeline (one
        round trip per batch: Redis answers ~10× more commands pipelined than one by one)."""
        latest = {(p.sku, p.location_id): p for p in positions}
        latest_totals = {t.sku: t for t in totals}
        if not latest and not latest_totals:
            return 0

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for p in latest.values():
                location = self.reference.locations[p.location_id]
                key = self.keys.position(p.sku, p.location_id)
                pipe.hset(
                    key,
                    mapping={
                        "on_hand": p.on_hand,
                        "reserved": p.reserved,
                        "available": p.available,
                        "sold_1h": p.sold_1h,
                        "sold_24h": p.sold_24h,
                        "updated_at": format_event_time(p.as_of_ms),
                        "updated_at_ms": p.as_of_ms,
                        "region": location.region,
                        "location_type": location.type,
                        "cause": p.cause,
                        **(
                            {"days_of_cover": p.days_of_cover}
                            if p.days_of_cover is not None
                            else {}
                        ),
                    },
                )
                if p.days_of_cover is None:
                    pipe.hdel(key, "days_of_cover")
            for t in latest_totals.values():
                self._hset_figures(pipe, self.keys.sku_total(t.sku), t.total, t.as_of_ms)
                for region, figures in t.regions.items():
                    self._hset_figures(
                        pipe, self.keys.region_total(t.sku, region), figures, t.as_of_ms
                    )
            pipe.execute()

        started = time.perf_counter()
        with_retries(STOCK_POOL, write)
        REDIS_WRITE_SECONDS.labels(STOCK_POOL).observe(time.perf_counter() - started)
        STOCK_POSITIONS_WRITTEN.inc(len(latest))
        return len(latest)

    @staticmethod
    def _hset_figures(pipe: Any, key: str, figures: Figures, as_of_ms: int) -> None:
        pipe.hset(key, mapping=_figures_mapping(figures, as_of_ms))
        if figures.days_of_cover is None:
            pipe.hdel(key, "days_of_cover")
        else:
            pipe.hset(key, "days_of_cover", figures.days_of_cover)

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, flow: str
    ) -> list[tuple[str, int]]:
        """Stores of ``region`` with at least ``minimum`` available of ``sku``, most first
        (ties by store id): one pipelined round trip."""
        stores = sorted(
            loc.location_id
            for loc in self.reference.locations.values()
            if loc.type == "store" and loc.region == region
        )
        if not stores:
            return []

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for store in stores:
                pipe.hget(self.keys.position(sku, store), "available")
            return pipe.execute()  # type: ignore[no-any-return]

        replies = with_retries(flow, read)
        found = [
            (store, int(value))
            for store, value in zip(stores, replies, strict=True)
            if value is not None and int(value) >= minimum
        ]
        return sorted(found, key=lambda item: (-item[1], item[0]))

    def region_positions(self, sku: str, region: str, flow: str) -> list[StockChange]:
        """The sku's current position at every location of ``region`` that has one, as the
        stock rules read them (one pipelined round trip)."""
        locations = sorted(
            loc.location_id for loc in self.reference.locations.values() if loc.region == region
        )

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for location_id in locations:
                pipe.hgetall(self.keys.position(sku, location_id))
            return pipe.execute()  # type: ignore[no-any-return]

        positions = []
        for location_id, row in zip(locations, with_retries(flow, read), strict=True):
            if not row:
                continue
            field = {k.decode(): v.decode() for k, v in row.items()}
            positions.append(
                StockChange(
                    sku=sku,
                    location_id=location_id,
                    region=region,
                    available=int(field.get("available", 0)),
                    sold_24h=int(field.get("sold_24h", 0)),
                    ts_ms=int(field.get("updated_at_ms", 0)),
                    cause=field.get("cause", ""),
                    on_hand=int(field.get("on_hand", 0)),
                    location_type=self.reference.locations[location_id].type,
                )
            )
        return positions

    def available(self, sku: str, location_id: str, flow: str) -> int:
        value = with_retries(
            flow, lambda: self.client.hget(self.keys.position(sku, location_id), "available")
        )
        return int(value) if value is not None else 0

    def read_sku(
        self, sku: str
    ) -> tuple[list[dict[str, str]], dict[str, str], dict[str, dict[str, str]]]:
        """Per-location hashes (sorted by location), the network total and region totals."""
        regions = sorted({loc.region for loc in self.reference.locations.values()})
        location_ids = sorted(self.reference.locations)
        pipe = self.client.pipeline(transaction=False)
        for location_id in location_ids:
            pipe.hgetall(self.keys.position(sku, location_id))
        pipe.hgetall(self.keys.sku_total(sku))
        for region in regions:
            pipe.hgetall(self.keys.region_total(sku, region))
        replies = pipe.execute()
        decoded = [{k.decode(): v.decode() for k, v in r.items()} for r in replies]
        rows = [
            {"location_id": location_id, **row}
            for location_id, row in zip(location_ids, decoded[: len(location_ids)], strict=True)
            if row
        ]
        total = decoded[len(location_ids)]
        region_rows = {
            region: row
            for region, row in zip(regions, decoded[len(location_ids) + 1 :], strict=True)
            if row
        }
        return rows, total, region_rows
