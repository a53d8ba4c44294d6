"""The stock pool in Redis: public per-location hashes and internal totals.

Public (CONTRACT §5): ``<prefix>stock:<sku>:<location_id>`` hash with ``on_hand``,
``reserved``, ``available``, ``updated_at`` (event time of the latest change, RFC 3339 UTC),
``sold_1h``, ``sold_24h``, ``days_of_cover`` (absent when nothing sold in 24 h), and
(CONTRACT §9) ``safety_stock``, ``in_transit``, ``available_to_sell``, plus
``region``, ``location_type``, ``cause`` and ``updated_at_ms``.

Internal: ``<prefix>stock_total:<sku>`` (network total) and
``<prefix>stock_region:<sku>:<region>`` (region total), same figures plus ``locations``;
``<prefix>tasks:<store_id>`` (task id → the store task's JSON, read by the store console);
``<prefix>visit_index:{<prefix>tasks:<store_id>}``, a sorted set of the store's customer visit
task ids (rule_triggers writes them into the task hash) scored by their ``updated_at_ms``, so
that pruning the visits past the retention reads only those (``prune_visits``: one script,
``_PRUNE_VISITS``) instead of the whole hash with stock_pool's pickup tasks in it. Its hash
tag is the task hash's name, so both are in one Redis Cluster slot (``StockKeys.visit_index``).

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
from base.flow_names import RULE_TRIGGERS, STOCK_POOL
from base.metrics import REDIS_WRITE_SECONDS, STOCK_POSITIONS_WRITTEN
from domain.reference import ReferenceData
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_totals import Figures, SkuTotals
from domain.timeparse import format_event_time
from state.interfaces import StockRow, TaskWrite
from state.redis_io import connect, with_retries

#: A store's visits indexed before ARGV[1] (ms), out of its task hash (KEYS[1]) and its
#: visit index (KEYS[2]); the number removed. In chunks: Lua's unpack takes a few thousand.
_PRUNE_VISITS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for i = 1, #ids, 500 do
  local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
  redis.call('HDEL', KEYS[1], unpack(chunk))
  redis.call('ZREM', KEYS[2], unpack(chunk))
end
return #ids
"""


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


@dataclass(frozen=True, slots=True)
class IndexWrite:
    """Members to add to one sorted set (member → score) and members to remove from it."""

    key: str
    added: dict[str, int]
    removed: tuple[str, ...] = ()


def visit_index_writes(keys: StockKeys, tasks: Sequence[TaskWrite]) -> list[IndexWrite]:
    """What the visits among ``tasks`` change in their stores' visit indexes, one write per
    store (the latest write of a task wins, as in ``task_writes``)."""
    by_store: dict[str, dict[str, TaskWrite]] = {}
    for t in tasks:
        if t.visit_ms is not None:
            by_store.setdefault(t.store_id, {})[t.task_id] = t
    writes = []
    for store_id, visits in by_store.items():
        added: dict[str, int] = {}
        removed: list[str] = []
        for v in visits.values():
            if v.record is None:
                removed.append(v.task_id)
            elif v.visit_ms is not None:
                added[v.task_id] = v.visit_ms
        writes.append(IndexWrite(keys.visit_index(store_id), added, tuple(removed)))
    return writes


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

    def visit_index(self, store_id: str) -> str:
        """Internal: the store's visit task ids scored by ``updated_at_ms``. In the task
        hash's Redis Cluster slot, without renaming that public key: when its name holds a
        hash tag (the prefix's or the store id's), this name holds the same one first;
        otherwise the task hash's slot is that of its whole name, which is this one's tag."""
        tasks = self.tasks(store_id)
        if hash_tag(tasks) is not None:
            return f"{self.prefix}visit_index:{store_id}"
        return f"{self.prefix}visit_index:{{{tasks}}}"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes instead of the whole name, if any: between
    the first ``{`` and the first ``}`` after it, when not empty."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else None


class StockHashes(ABC):
    """The stock pool's layout, reads and writes over hash primitives a backend provides.

    ``flow`` (None for the CLI's reads) names the caller in Redis's retry policy and error
    metric: None reads once, without retries."""

    def __init__(self, key_prefix: str, reference: ReferenceData) -> None:
        self.keys = StockKeys(key_prefix)
        self.reference = reference

    # -- primitives (per backend) --------------------------------------------------------

    @abstractmethod
    def _write_hashes(self, writes: list[HashWrite], indexes: Sequence[IndexWrite] = ()) -> None:
        """Set (and delete) the fields of each hash and the members of each sorted set, all
        of a batch together."""

    @abstractmethod
    def _prune_index(self, key: str, index: str, before_ms: int) -> int:
        """Remove the members of sorted set ``index`` scored below ``before_ms`` from it and
        as fields of hash ``key``, at once; how many."""

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
        self._write_hashes(writes, visit_index_writes(keys, tasks))
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

    def prune_visits(self, store_id: str, before_ms: int) -> int:
        """Remove the store's visits indexed (``updated_at_ms``) before ``before_ms`` from its
        task hash and its visit index; how many. Reads the index, not the hash."""
        keys = self.keys
        return self._prune_index(keys.tasks(store_id), keys.visit_index(store_id), before_ms)

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
        self._prune_visits = client.register_script(_PRUNE_VISITS)

    @classmethod
    def from_config(cls, config: Config, reference: ReferenceData) -> StockStore:
        return cls(connect(config), config.redis.key_prefix, reference)

    def close(self) -> None:
        self.client.close()

    def _write_hashes(self, writes: list[HashWrite], indexes: Sequence[IndexWrite] = ()) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for w in writes:
                if w.fields:
                    pipe.hset(w.key, mapping=cast("Mapping[Any, Any]", w.fields))
                if w.deleted:
                    pipe.hdel(w.key, *w.deleted)
            for i in indexes:
                if i.added:
                    pipe.zadd(i.key, cast("Mapping[Any, Any]", i.added))
                if i.removed:
                    pipe.zrem(i.key, *i.removed)
            pipe.execute()

        started = time.perf_counter()
        with_retries(STOCK_POOL, write)
        REDIS_WRITE_SECONDS.labels(STOCK_POOL).observe(time.perf_counter() - started)

    def _prune_index(self, key: str, index: str, before_ms: int) -> int:
        def prune() -> int:
            return int(self._prune_visits(keys=[key, index], args=[before_ms]))

        return with_retries(RULE_TRIGGERS, prune)

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
