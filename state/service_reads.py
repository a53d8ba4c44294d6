"""What ``omnistream serve`` reads from Redis: one pipelined round trip per request.

The service answers order management and store apps at a thousand requests a second, so no
request waits on more than one round trip:

- availability: ``HMGET`` of the few stock fields it needs, for every candidate location,
  in one pipeline;
- stock of a sku: ``HGETALL`` of every location's hash, in one pipeline;
- a customer: one Lua script reads ``<p>id:<type>:<value>`` and then the customer's
  ``<p>profile:<customer_id>`` (the second key is only known after the first read; a
  script saves the second round trip). The profile key is built inside the script rather
  than declared, which a single Redis instance allows. On a Redis Cluster the two keys
  are in different slots (both public, CONTRACT §5 and §11: no hash tag can join them),
  so there it is a GET and then an HGETALL, two round trips;
- a store's tasks: ``HGETALL <p>tasks:<store_id>``.

Keys are the writers' (``StockKeys`` for positions and tasks, ``IdentityKeys``; the profile
key is defined here until its writer exists); a missing stock hash reads as a
position that never moved. Errors are redis-py's own: the service turns a connection
failure into a 503 (no retries here: a caller's retry is better informed than ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio

from state.identity_store import IdentityKeys
from state.redis_io import is_cluster
from state.stock_store import StockKeys

#: The fields availability needs. ``available_to_sell`` is written by the stock flow
#: (CONTRACT §9); ``available`` and ``safety_stock`` let a hash written before that field
#: existed still be read right (ATS = max(0, available − safety stock)).
_ATS_FIELDS = ("available_to_sell", "available", "safety_stock")

# KEYS[1] = the identifier's owner key; ARGV[1] = the profile key without the customer id.
# Returns false when no customer owns the identifier, else {customer_id, {field, value, …}}.
_CUSTOMER = """
local customer_id = redis.call('GET', KEYS[1])
if not customer_id then return false end
return {customer_id, redis.call('HGETALL', ARGV[1] .. customer_id)}
"""

#: Every error meaning "Redis is not there right now" (the service answers 503 for them).
UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.AuthenticationError,
)


def profile_key(prefix: str, customer_id: str) -> str:
    """The public profile hash of a customer (CONTRACT §11)."""
    return f"{prefix}profile:{customer_id}"


@dataclass(frozen=True, slots=True)
class Position:
    """One sku × location as the stock flow last wrote it; ``recorded`` is False for a
    location that never had a movement of the sku (every figure 0, no ``updated_at``)."""

    location_id: str
    recorded: bool
    on_hand: int
    reserved: int
    available: int
    safety_stock: int
    available_to_sell: int
    in_transit: int
    sold_1h: int
    sold_24h: int
    days_of_cover: float | None
    updated_at: str | None


def _text(value: bytes | str) -> str:
    """A reply as text (the client answers bytes: ``decode_responses`` is off)."""
    return value.decode() if isinstance(value, bytes) else value


def _int(value: bytes | str | None, default: int = 0) -> int:
    if value is None:
        return default
    return int(value)


def _ats(
    ats: bytes | None,
    available: bytes | None,
    safety_stock: bytes | None,
    default_safety_stock: int,
) -> int:
    """``available_to_sell`` as stored, else derived as CONTRACT §9 defines it."""
    if ats is not None:
        return int(ats)
    return max(0, _int(available) - _int(safety_stock, default_safety_stock))


def position_from_hash(location_id: str, row: dict[bytes, bytes], safety_stock: int) -> Position:
    """Read one stock hash (``{}`` when absent); ``safety_stock`` is the product's, used
    when the hash does not carry its own."""
    if not row:
        return Position(location_id, False, 0, 0, 0, safety_stock, 0, 0, 0, 0, None, None)
    cover = row.get(b"days_of_cover")
    updated = row.get(b"updated_at")
    return Position(
        location_id=location_id,
        recorded=True,
        on_hand=_int(row.get(b"on_hand")),
        reserved=_int(row.get(b"reserved")),
        available=_int(row.get(b"available")),
        safety_stock=_int(row.get(b"safety_stock"), safety_stock),
        available_to_sell=_ats(
            row.get(b"available_to_sell"),
            row.get(b"available"),
            row.get(b"safety_stock"),
            safety_stock,
        ),
        in_transit=_int(row.get(b"in_transit")),
        sold_1h=_int(row.get(b"sold_1h")),
        sold_24h=_int(row.get(b"sold_24h")),
        days_of_cover=float(cover) if cover is not None else None,
        updated_at=updated.decode() if updated is not None else None,
    )


class ServiceReads:
    """The service's reads over one ``redis.asyncio`` client (``state.redis_io.connect_async``).

    The client is the caller's: it opens and closes it (``omnistream.serve.run``)."""

    def __init__(self, client: redis.asyncio.Redis, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix
        self._stock = StockKeys(key_prefix)
        self._identity = IdentityKeys(key_prefix)
        self._customer = client.register_script(_CUSTOMER)
        self._cluster = is_cluster(client)

    async def ping(self) -> None:
        """Raise (one of ``UNAVAILABLE``) unless Redis answers ``PING``."""
        await self.client.ping()

    async def available_to_sell(
        self, sku: str, location_ids: Sequence[str], safety_stock: int
    ) -> dict[str, int]:
        """ATS of ``sku`` at each location (0 where it never moved): one pipeline of HMGETs."""
        pipe = self.client.pipeline(transaction=False)
        for location_id in location_ids:
            pipe.hmget(self._stock.position(sku, location_id), _ATS_FIELDS)
        replies = await pipe.execute()
        return {
            location_id: _ats(ats, available, stored_safety, safety_stock)
            for location_id, (ats, available, stored_safety) in zip(
                location_ids, replies, strict=True
            )
        }

    async def positions(
        self, sku: str, location_ids: Sequence[str], safety_stock: int
    ) -> list[Position]:
        """Every location's position of ``sku``, in the order given: one pipeline of HGETALLs."""
        pipe = self.client.pipeline(transaction=False)
        for location_id in location_ids:
            pipe.hgetall(self._stock.position(sku, location_id))
        replies = await pipe.execute()
        return [
            position_from_hash(location_id, row, safety_stock)
            for location_id, row in zip(location_ids, replies, strict=True)
        ]

    async def customer(self, ident: str) -> tuple[str, dict[str, str]] | None:
        """The customer owning ``type:value`` (value already hashed for phone/email) and its
        profile hash (``{}`` when the customer has none yet), or None: one script call (two
        reads on a cluster, module doc)."""
        owner = self._identity.owner(ident)
        if self._cluster:
            found = await self.client.get(owner)
            if found is None:
                return None
            record = await self.client.hgetall(profile_key(self.prefix, _text(found)))
            return _text(found), {_text(k): _text(v) for k, v in record.items()}
        reply = await self._customer(keys=[owner], args=[profile_key(self.prefix, "")])
        if not reply:
            return None
        customer_id, flat = reply
        profile = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat) - 1, 2)}
        return customer_id.decode(), profile

    async def store_tasks(self, store_id: str) -> dict[str, str]:
        """The store's tasks as stored: task id → the task's JSON text (one HGETALL)."""
        raw = await self.client.hgetall(self._stock.tasks(store_id))
        return {_text(field): _text(value) for field, value in raw.items()}
