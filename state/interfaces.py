"""What the flows and commands need of their stores, apart from where the data lives.

Each store has a Redis implementation (production: ``state.stock_store.StockStore``,
``state.identity_store.IdentityStore``) and an in-memory one (``state.memory_stock``,
``state.memory_identity``) for running a flow in-process in the tests. One contract test
suite per store runs against both (``tests/unit/test_stock_store_contract.py``,
``tests/unit/test_identity_store_contract.py``), so the memory stores are the Redis ones'
semantics, not a look-alike.

A flow is handed a *factory* of its store (``StoreFactory``), called once per worker inside
the running dataflow: Redis gets a client per worker thread, the memory stores hand every
worker the same (locked) instance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from domain.identity import Customer, EventIdentifiers, IdentityChange, Resolution
from domain.stock import StockPosition
from domain.stock_rules import StockChange
from domain.stock_totals import SkuTotals

S = TypeVar("S")

#: Opens a store for one worker (a Redis client per worker, or a shared memory store).
StoreFactory = Callable[[], S]

#: One location's stock hash as stored (CONTRACT §5 field names, values as text).
StockRow = dict[str, str]


@dataclass(frozen=True, slots=True)
class TaskWrite:
    """A store task's JSON record to set, or None to remove the task. ``visit_ms``: the task
    is a customer visit (rule_triggers), indexed by this time (its ``updated_at_ms``) in the
    store's visit index, which a removal leaves too (``state.stock_store``)."""

    store_id: str
    task_id: str
    record: bytes | None
    visit_ms: int | None = None


class TaskStore(Protocol):
    """Store tasks in the stock pool's store, as rule_triggers writes its visits there: the
    store's task records to read (an erasure looks for its visits), task records to set or
    remove, and the removal of the visits indexed before a time."""

    def write(
        self,
        positions: Sequence[StockPosition],
        totals: Sequence[SkuTotals] = (),
        tasks: Sequence[TaskWrite] = (),
    ) -> int: ...

    def tasks(self, store_id: str) -> dict[str, str]: ...

    def prune_visits(self, store_id: str, before_ms: int) -> int: ...

    def close(self) -> None: ...


class StockWriter(Protocol):
    """The stock pool's write side, used by stock_pool: absolute figures, so a replayed
    batch writes the same values again."""

    def write(
        self,
        positions: Sequence[StockPosition],
        totals: Sequence[SkuTotals] = (),
        tasks: Sequence[TaskWrite] = (),
    ) -> int:
        """Store the latest position of each sku × location and the latest totals of each
        sku given (earlier ones of the same key are superseded), and the store tasks'
        records (None removes one); the positions written."""
        ...

    def close(self) -> None: ...


class StockReader(Protocol):
    """The stock pool's read side, used by rule_triggers and ``omnistream stock``.

    ``flow`` names the reader in the Redis error metrics (the memory store ignores it)."""

    def stores_with_stock(
        self, region: str, sku: str, minimum: int, flow: str
    ) -> list[tuple[str, int]]:
        """(store, available) of every store of ``region`` with at least ``minimum``
        available of ``sku``, most first, ties by store id."""
        ...

    def region_positions(self, sku: str, region: str, flow: str) -> list[StockChange]:
        """The sku's current position at every location of ``region`` that has one, by
        location id."""
        ...

    def available(self, sku: str, location_id: str, flow: str) -> int:
        """Units available of ``sku`` at ``location_id`` (0 when nothing is recorded)."""
        ...

    def available_at(self, sku: str, location_ids: Sequence[str], flow: str) -> int:
        """Units available of ``sku`` summed over ``location_ids``, in one round trip (a
        coupon's stock guard asks every shipping location at once)."""
        ...

    def read_sku(self, sku: str) -> tuple[list[StockRow], StockRow, dict[str, StockRow]]:
        """The sku's hash at every location that has one (by location id, each with its
        ``location_id``), its network total and its region totals (empty when none)."""
        ...

    def close(self) -> None: ...


class StockPoolStore(StockWriter, StockReader, Protocol):
    """Both sides of the stock pool (what a backend implements)."""


class IdentityGraphStore(Protocol):
    """The OneID graph (CONTRACT §4), resolved a batch at a time by identity_stitch and read
    and erased by ``omnistream whois`` / ``forget``."""

    def resolve_batch(self, events: Sequence[EventIdentifiers]) -> list[Resolution]:
        """Link the identifiers of every event, in order (``domain.identity``), atomically
        for the batch; one resolution per event. An event resolved before (a replay)
        resolves as it did then."""
        ...

    def owner_of(self, ident: str) -> str | None:
        """The customer id an identifier (``type:value``) belongs to."""
        ...

    def customer(self, customer_id: str) -> Customer | None:
        """A customer's record: first seen and every identifier."""
        ...

    def forget(self, ident: str) -> IdentityChange | None:
        """Erase the customer owning ``ident`` (every identifier); the ``erased`` change,
        or None when nobody owns it."""
        ...

    def close(self) -> None: ...
