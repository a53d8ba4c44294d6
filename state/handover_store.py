"""Where a merged customer's per-customer state waits for its survivor (rule_triggers).

Bytewax dataflows have no loops: a key's state cannot be sent to another key of the same
step. When customer A merges into B, A's key writes what it keeps into this store, and
B's key — told by its own ``identity_absorbed`` notice to wait for it — takes it from
here (``flows.rule_triggers``). Redis is shared by every worker and every process of a
cluster, so the survivor finds the state wherever A's key ran.

An entry is not deleted when it is taken: a run resumed from a snapshot taken before the
survivor absorbed it must find it again. It expires after ``ttl_s`` instead, and an
erasure of the survivor removes every entry it was party to. The key names the survivor in
a hash tag, so an entry lives in its survivor's Redis Cluster slot.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import redis

from base.config import Config
from state.redis_io import connect, get_many

#: How long a handed-over state waits (seconds): far longer than any lag between a merge's
#: two notices, short enough that merged customers' state does not pile up in Redis.
HANDOVER_TTL_S = 7 * 24 * 3600


class HandoverStore(Protocol):
    def put(self, survivor: str, merged: str, payload: bytes) -> None:
        """Keep ``merged``'s state for ``survivor`` (writing it again changes nothing)."""
        ...

    def put_many(self, entries: Sequence[tuple[str, str, bytes]]) -> None:
        """``put`` of each (survivor, merged, payload), in one round trip."""
        ...

    def take(self, survivor: str, merged: str) -> bytes | None:
        """``merged``'s state if it has been handed over, else None (ask again later)."""
        ...

    def take_many(self, pairs: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """``take`` of each (survivor, merged), in order, in one round trip."""
        ...

    def erase(self, customer_id: str) -> None:
        """Drop every entry ``customer_id`` is the survivor or the merged customer of."""
        ...

    def close(self) -> None: ...


def handover_key(prefix: str, survivor: str, merged: str) -> str:
    return f"{prefix}handover:{{{survivor}}}:{merged}"


class RedisHandoverStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int = HANDOVER_TTL_S) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    @classmethod
    def from_config(cls, config: Config) -> RedisHandoverStore:
        return cls(connect(config), config.redis.key_prefix)

    def put(self, survivor: str, merged: str, payload: bytes) -> None:
        self.client.set(handover_key(self.prefix, survivor, merged), payload, ex=self.ttl_s)

    def put_many(self, entries: Sequence[tuple[str, str, bytes]]) -> None:
        if len(entries) == 1:
            self.put(*entries[0])
            return
        pipe = self.client.pipeline(transaction=False)
        for survivor, merged, payload in entries:
            pipe.set(handover_key(self.prefix, survivor, merged), payload, ex=self.ttl_s)
        pipe.execute()

    def take(self, survivor: str, merged: str) -> bytes | None:
        value = self.client.get(handover_key(self.prefix, survivor, merged))
        return value if isinstance(value, bytes) else None

    def take_many(self, pairs: Sequence[tuple[str, str]]) -> list[bytes | None]:
        if len(pairs) == 1:
            return [self.take(*pairs[0])]
        keys = [handover_key(self.prefix, survivor, merged) for survivor, merged in pairs]
        return get_many(self.client, keys)

    def erase(self, customer_id: str) -> None:
        """Erasures are rare: a scan of the handover keys is cheap enough and finds the
        entries where the id was merged away as well as those it survived."""
        patterns = (
            f"{self.prefix}handover:{{{customer_id}}}:*",
            f"{self.prefix}handover:{{*}}:{customer_id}",
        )
        for pattern in patterns:
            keys = list(self.client.scan_iter(match=pattern, count=1000))
            if keys:
                self.client.delete(*keys)

    def close(self) -> None:
        self.client.close()


class MemoryHandoverStore:
    """One dictionary shared by every worker thread of a test's flow (give every worker the
    same instance)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def put(self, survivor: str, merged: str, payload: bytes) -> None:
        with self._lock:
            self.entries[(survivor, merged)] = payload

    def put_many(self, entries: Sequence[tuple[str, str, bytes]]) -> None:
        for entry in entries:
            self.put(*entry)

    def take(self, survivor: str, merged: str) -> bytes | None:
        with self._lock:
            return self.entries.get((survivor, merged))

    def take_many(self, pairs: Sequence[tuple[str, str]]) -> list[bytes | None]:
        return [self.take(survivor, merged) for survivor, merged in pairs]

    def erase(self, customer_id: str) -> None:
        with self._lock:
            for key in [k for k in self.entries if customer_id in k]:
                del self.entries[key]

    def close(self) -> None:
        pass


#: States a process keeps at hand for survivors on its own workers (``LocalHandovers``).
LOCAL_HANDOVERS_KEPT = 10_000


class LocalHandovers:
    """The states this process's keys handed over, kept at hand for the survivors on its
    own workers: most merges find both keys in one process, and a survivor that takes its
    state from here asks Redis nothing. The store stays the record (the flow writes every
    hand-over there too, through its sink, before the epoch that discarded the merged key
    is committed): a survivor on another process, or one resumed from a snapshot, finds the
    state there. An entry goes when it is taken, when either id is erased, or, oldest first,
    past ``limit`` entries (survivors elsewhere never take theirs from here); all its
    worker threads share one."""

    def __init__(self, limit: int = LOCAL_HANDOVERS_KEPT) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        #: kept since ``unwritten`` was last asked
        self._unwritten: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def keep(self, survivor: str, merged: str, payload: bytes) -> None:
        with self._lock:
            self._entries[(survivor, merged)] = payload
            self._unwritten.append((survivor, merged))
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
            if len(self._unwritten) > self.limit:
                del self._unwritten[: len(self._unwritten) - self.limit]

    def unwritten(self) -> list[tuple[str, str, bytes]]:
        """The entries kept since the last call and still here, as (survivor, merged,
        payload), for a key about to block its worker at the end of the input: the sink
        that writes them to the store runs on that worker only after it, so a survivor
        on another process, itself blocked waiting for one of them, would wait in vain
        (each process waiting for the other's sink until the wait gives up)."""
        with self._lock:
            keys, self._unwritten = self._unwritten, []
            return [
                (s, m, self._entries[(s, m)])
                for s, m in dict.fromkeys(keys)
                if (s, m) in self._entries
            ]

    def take(self, survivor: str, merged: str) -> bytes | None:
        with self._lock:
            return self._entries.pop((survivor, merged), None)

    def drop(self, customer_id: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if customer_id in k]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
