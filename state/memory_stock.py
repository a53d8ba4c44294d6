"""The stock pool in memory: the Redis store's layout and logic on a dict of hashes.

For running stock_pool (and the readers of its pool) in-process in the tests. Every read
and write is ``state.stock_store.StockHashes``'s, so only its primitives are written here
(hashes, and the visit index's sorted sets), storing values as text exactly as Redis does
(so ``read_sku`` answers the same strings). One instance serves every worker of a flow: a
lock keeps a batch's writes whole, as Redis's pipeline does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from domain.reference import ReferenceData
from state.interfaces import StockRow
from state.stock_store import HashWrite, IndexWrite, StockHashes


def redis_text(value: Any) -> str:
    """A field value as Redis stores it: redis-py writes ints and floats by ``repr``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Redis takes no {type(value).__name__} as a hash value")
    return repr(value)


class MemoryStockStore(StockHashes):
    """``state.interfaces.StockPoolStore`` on dicts (key prefix "" unless given)."""

    def __init__(self, reference: ReferenceData, key_prefix: str = "") -> None:
        super().__init__(key_prefix, reference)
        self.hashes: dict[str, dict[str, str]] = {}
        self.sorted_sets: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release; the contents stay readable after a flow closed its writer."""

    def _write_hashes(self, writes: list[HashWrite], indexes: Sequence[IndexWrite] = ()) -> None:
        with self._lock:
            for w in writes:
                row = self.hashes.setdefault(w.key, {})
                row.update((name, redis_text(value)) for name, value in w.fields.items())
                for name in w.deleted:
                    row.pop(name, None)
            for i in indexes:
                members = self.sorted_sets.setdefault(i.key, {})
                members.update(i.added)
                for name in i.removed:
                    members.pop(name, None)

    def _prune_index(self, key: str, index: str, before_ms: int) -> int:
        with self._lock:
            members = self.sorted_sets.get(index, {})
            old = [name for name, score in members.items() if score < before_ms]
            row = self.hashes.get(key, {})
            for name in old:
                members.pop(name)
                row.pop(name, None)
            return len(old)

    def _hashes(self, keys: list[str], flow: str | None) -> list[StockRow]:
        with self._lock:
            return [dict(self.hashes.get(key, {})) for key in keys]

    def _fields(self, keys: list[str], field: str, flow: str) -> list[str | None]:
        with self._lock:
            return [self.hashes.get(key, {}).get(field) for key in keys]

    def positions(self) -> dict[str, StockRow]:
        """Every ``stock:<sku>:<location>`` hash, by ``<sku>:<location>`` (for tests that
        compare the whole pool)."""
        prefix = f"{self.keys.prefix}stock:"
        with self._lock:
            return {
                key[len(prefix) :]: dict(row)
                for key, row in self.hashes.items()
                if key.startswith(prefix)
            }
