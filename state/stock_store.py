"""The stock pool in Redis: public per-location hashes and internal totals.

Public (CONTRACT §5): ``<prefix>stock:<sku>:<location_id>`` hash with ``on_hand``,
``reserved``, ``available``, ``updated_at`` (event time of the latest change, RFC 3339 UTC),
``sold_1h``, ``sold_24h``, ``days_of_cover`` (absent when nothing sold in 24 h), and
(CONTRACT §9) ``safety_stock``, ``in_transit``, ``available_to_sell``, plus
``region``, ``location_type``, ``cause`` and ``updated_at_ms``.

Internal: ``<prefix>stock_total:<sku>`` (network total) and
``<prefix>stock_region:<sku>:<region>`` (region total), same figures plus ``locations``;
``<prefix>tasks:<store_id>`` (task id → the store task's JSON, read by the store console).

A batch is written in one pipelined round trip, and only the last position per key of the
batch is written: the values are absolute, so the earlier ones are already superseded.

``StockHashes`` is the layout and every read and write in terms of three primitives on
hashes (write some, read some whole, read one field of some); ``StockStore`` implements
them on Redis, ``state.memory_stock.MemoryStockStore`` on dicts. So both backends store
and answer the same (``state.interfaces.StockPoolStore``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from base.config import Config
from base.flow_names import STOCK_POOL
from base.metrics import REDIS_WRITE_SECONDS, STOCK_POSITIONS_WRITTEN
from domain.reference import ReferenceData
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_totals import Figures, SkuTotals
from domain.timeparse import format_event_time
from state.interfaces import StockRow, TaskWrite
from state.redis_io import connect, with_retries


@dataclass(frozen=True, slots=True)
class HashWrite:
    """Fields to set on one hash (values as Redis takes them: int, float or str) and
    fields to delete from it."""

    key: str
    fields: dict[str, Any]
    deleted: tuple[str, ...] = ()


def position_write(key: str, p: StockPosition, region: str, location_type: str) -> HashWrite:
    fields: dict[str, Any] = {
        "on_hand": p.on_hand,
        "reserved": p.reserved,
        "available": p.available,
        "safety_stock": p.safety_stock,
        "available_to_sell": p.available_to_sell,
        "in_transit": p.in_transit,
        "sold_1h": p.sold_1h,
        "sold_24h": p.sold_24h,
        "updated_at": format_event_time(p.as_of_ms),
        "updated_at_ms": p.as_of_ms,
        "region": region,
        "location_type": location_type,
        "cause": p.cause,
    }
    if p.days_of_cover is None:
        return HashWrite(key, fields, ("days_of_cover",))
    fields["days_of_cover"] = p.days_of_cover
    return HashWrite(key, fields)


def figures_write(key: str, f: Figures, as_of_ms: int) -> HashWrite:
    fields: dict[str, Any] = {
        "on_hand": f.on_hand,
        "reserved": f.reserved,
        "available": f.available,
        "available_to_sell": f.available_to_sell,
        "in_transit": f.in_transit,
        "sold_1h": f.sold_1h,
        "sold_24h": f.sold_24h,
        "locations": f.locations,
        "updated_at": format_event_time(as_of_ms),
        "updated_at_ms": as_of_ms,
    }
    days_of_cover = f.days_of_cover
    if days_of_cover is None:
        return HashWrite(key, fields, ("days_of_cover",))
    fields["days_of_cover"] = days_of_cover
    return HashWrite(key, fields)


def task_writes(keys: StockKeys, tasks: Sequence[TaskWrite]) -> list[HashWrite]:
    """One hash write per store; the latest record of a task wins (a batch may carry a
    task's placement and its collection)."""
    by_store: dict[str, dict[str, bytes | None]] = {}
    for t in tasks:
        by_store.setdefault(t.store_id, {})[t.task_id] = t.record
    writes = []
    for store_id, records in by_store.items():
        fields = {task_id: r for task_id, r in records.items() if r is not None}
        deleted = tuple(task_id for task_id, r in records.items() if r is None)
        writes.append(HashWrite(keys.tasks(store_id), fields, deleted))
    return writes


@dataclass(frozen=True)
class StockKeys:
    prefix: str

    def position(self, sku: str, location_id: str) -> str:
        return f"{self.prefix}stock:{sku}:{location_id}"

    def sku_total(self, sku: str) -> str:
        return f"{self.prefix}stock_total:{sku}"

    def region_total(self, sku: str, region: str) -> str:
        return f"{self.prefix}stock_region:{sku}:{region}"

    def tasks(self, store_id: str) -> str:
        """The open and recent tasks of a store (CONTRACT §10): task id → task JSON."""
        return f"{self.prefix}tasks:{store_id}"


class StockHashes(ABC):
    """The stock pool's layout, reads and writes over hash primitives a backend provides.

    ``flow`` (None for the CLI's reads) names the caller in Redis's retry policy and error
    metric: None reads once, without retries."""

    def __init__(self, key_prefix: str, reference: ReferenceData) -> None:
        self.keys = StockKeys(key_prefix)
        self.reference = reference

    # -- primitives (per backend) --------------------------------------------------------

    @abstractmethod
    def _write_hashes(self, writes: list[HashWrite]) -> None:
        """Set (and delete) the fields of each hash, all of a batch together."""

    @abstractmethod
    def _hashes(self, keys: list[str], flow: str | None) -> list[StockRow]:
        """Each hash whole ({} when absent)."""

    @abstractmethod
    def _fields(self, keys: list[str], field: str, flow: str) -> list[str | None]:
        """One field of each hash (None when absent)."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's connections."""

    # -- write side ----------------------------------------------------------------------

    def write(
        self,
        positions: Sequence[StockPosition],
        totals: Sequence[SkuTotals] = (),
        tasks: Sequence[TaskWrite] = (),
    ) -> int:
        """Write the latest of each position and of each sku's totals, and the store tasks,
        in one batch (one round trip on Redis: it answers ~10× more commands pipelined than
        one by one)."""
        latest = {(p.sku, p.location_id): p for p in positions}
        latest_totals = {t.sku: t for t in totals}
        if not latest and not latest_totals and not tasks:
            return 0
        locations = self.reference.locations
        keys = self.keys
        writes: list[HashWrite] = []
        for p in latest.values():
            location = locations[p.location_id]
            key = keys.position(p.sku, p.location_id)
            writes.append(position_write(key, p, location.region, location.type))
        for t in latest_totals.values():
            writes.append(figures_write(keys.sku_total(t.sku), t.total, t.as_of_ms))
            for region, figures in t.regions.items():
                writes.append(figures_write(keys.region_total(t.sku, region), figures, t.as_of_ms))
        writes.extend(task_writes(keys, tasks))
        self._write_hashes(writes)
        STOCK_POSITIONS_WRITTEN.inc(len(latest))
        return len(latest)

    # -- read side -----------------------------------------------------------------------

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, flow: str
    ) -> list[tuple[str, int]]:
        """Stores of ``region`` with at least ``minimum`` available to sell of ``sku``, most first
        (ties by store id): one pipelined round trip."""
        stores = sorted(
            loc.location_id
            for loc in self.reference.locations.values()
            if loc.type == "store" and loc.region == region
        )
        if not stores:
            return []
        replies = self._fields(
            [self.keys.position(sku, s) for s in stores], "available_to_sell", flow
        )
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
        rows = self._hashes([self.keys.position(sku, loc) for loc in locations], flow)
        positions = []
        for location_id, row in zip(locations, rows, strict=True):
            if not row:
                continue
            positions.append(
                StockChange(
                    sku=sku,
                    location_id=location_id,
                    region=region,
                    available=int(row.get("available_to_sell", row.get("available", 0))),
                    sold_24h=int(row.get("sold_24h", 0)),
                    ts_ms=int(row.get("updated_at_ms", 0)),
                    cause=row.get("cause", ""),
                    on_hand=int(row.get("on_hand", 0)),
                    location_type=self.reference.locations[location_id].type,
                    in_transit=int(row.get("in_transit", 0)),
                )
            )
        return positions

    def tasks(self, store_id: str) -> dict[str, str]:
        """A store's tasks as stored: task id → task JSON (CONTRACT §10)."""
        (row,) = self._hashes([self.keys.tasks(store_id)], None)
        return row

    def available(self, sku: str, location_id: str, flow: str) -> int:
        (value,) = self._fields([self.keys.position(sku, location_id)], "available_to_sell", flow)
        return int(value) if value is not None else 0

    def available_at(self, sku: str, location_ids: Sequence[str], flow: str) -> int:
        if not location_ids:
            return 0
        keys = [self.keys.position(sku, location_id) for location_id in location_ids]
        values = self._fields(keys, "available_to_sell", flow)
        return sum(int(value) for value in values if value is not None)

    def read_sku(self, sku: str) -> tuple[list[StockRow], StockRow, dict[str, StockRow]]:
        """Per-location hashes (sorted by location), the network total and region totals."""
        regions = sorted({loc.region for loc in self.reference.locations.values()})
        location_ids = sorted(self.reference.locations)
        keys = [self.keys.position(sku, location_id) for location_id in location_ids]
        keys.append(self.keys.sku_total(sku))
        keys += [self.keys.region_total(sku, region) for region in regions]
        decoded = self._hashes(keys, None)
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


class StockStore(StockHashes):
    """The stock pool in Redis (``state.interfaces.StockPoolStore``)."""

    def __init__(self, client: redis.Redis, key_prefix: str, reference: ReferenceData) -> None:
        super().__init__(key_prefix, reference)
        self.client = client

    @classmethod
    def from_config(cls, config: Config, reference: ReferenceData) -> StockStore:
        return cls(connect(config), config.redis.key_prefix, reference)

    def close(self) -> None:
        self.client.close()

    def _write_hashes(self, writes: list[HashWrite]) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for w in writes:
                if w.fields:
                    pipe.hset(w.key, mapping=cast("Mapping[Any, Any]", w.fields))
                if w.deleted:
                    pipe.hdel(w.key, *w.deleted)
            pipe.execute()

        started = time.perf_counter()
        with_retries(STOCK_POOL, write)
        REDIS_WRITE_SECONDS.labels(STOCK_POOL).observe(time.perf_counter() - started)

    def _hashes(self, keys: list[str], flow: str | None) -> list[StockRow]:
        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()  # type: ignore[no-any-return]

        replies = read() if flow is None else with_retries(flow, read)
        return [{k.decode(): v.decode() for k, v in r.items()} for r in replies]

    def _fields(self, keys: list[str], field: str, flow: str) -> list[str | None]:
        def read() -> list[Any]:
            if len(keys) == 1:  # one command, no pipeline (a rule's check of one store)
                return [self.client.hget(keys[0], field)]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, field)
            return pipe.execute()  # type: ignore[no-any-return]

        return [None if v is None else v.decode() for v in with_retries(flow, read)]
