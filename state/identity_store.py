"""The identity graph in Redis, updated atomically per batch.

Keys (``<p>`` = key prefix):

- ``<p>id:<type>:<value>`` → customer id (public, CONTRACT §5);
- ``<p>cust:<customer_id>`` hash: ``first_seen`` (event ms), ``ids`` (JSON list of
  ``type:value``), ``v`` (version, bumped on every write) — internal;
- ``<p>idseen:<type>:<value>`` JSON ``{"seen": [customer ids], "blocked_by": event id or
  null}`` — internal,
  only for identifiers involved in conflicts;
- ``<p>idres:<event_id>`` JSON of what an event that changed the graph resolved to, kept a
  week — internal: an event replayed after a crash finds its effects already applied, and
  publishes the same changes again instead of none (written in the same script as the
  changes themselves).

A batch is resolved optimistically: one pipelined read of every identifier and customer it
touches, the rules of ``domain.identity`` applied in memory, then one Lua script that
checks nothing it read has changed (owners and customer versions) and writes the difference.
Which part is read, the loop over the batch and the difference are ``domain.identity``'s
(``graph_part``, ``resolve_events``, ``graph_writes``), shared with the in-memory store of
the tests (``state.memory_identity``), so both resolve alike.
If another worker changed any of it in between, the script writes nothing and the batch is
read and resolved again. So two workers or processes linking overlapping identifiers end
with one consistent graph, with two round trips per batch in the common case.

The script touches keys of several slots: identity needs a single Redis instance (or one
primary), not Redis Cluster, and ``from_config`` refuses ``redis.cluster``. Why not make it
slot-local: the owner keys ``<p>id:<type>:<value>`` are public (CONTRACT §5) and a batch
checks and writes owners of unrelated identifiers, which only one hash tag for all of them
would put in one slot, and that is a rename of the public keys. Its ceiling on one primary
is measured by ``scripts/measure_identity_ceiling.py``; docs/redis-cluster.md states it and
what to do past it.

**Customer base.** ``<p>customers:count`` (internal, no TTL) is the number of customer
records: the same script adds one for each ``cust:`` record it creates (``EXISTS`` was 0
before its ``HSET``) and takes one off for each it deletes (``DEL`` answered 1: merged away,
renamed, erased by ``forget``), and returns the count. A replayed batch writes records that
already exist and deletes none that are gone, so it changes nothing; nor does a batch whose
check failed (the script stops before writing). identity_stitch sets the
``omnistream_identity_customers`` gauge from that reply after each batch: no extra round
trip, and the board keeps its number across restarts (it used to be created − merged since
the process started).

The count key is global, one for the whole graph, which is one more reason this script needs
one Redis primary: on Redis Cluster it would sit in its own slot, away from the customers'
keys, and the script could not touch it. Sharding identity over a cluster would mean one
count per shard (hash-tagged with the shard's keys), summed by the reader.

Seeding: on a deployment that predates the count, ``from_config`` finds the key missing and
sets it once from a ``SCAN`` of the ``cust:`` records (``SET NX``: several workers starting
at once count alike, and the first one wins; every process seeds or sees the key before its
first batch, so no batch is counted twice). During a rolling upgrade, batches of processes
still on the old version are not counted: delete the key and restart to count again. A
record that expires by TTL (``identity.ttl_days`` without a write) is not taken off either;
the same recount corrects that drift (``IdentityStore.recount_customers``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson
import redis

from base.config import Config, ConfigError
from base.flow_names import IDENTITY_STITCH
from base.metrics import IDENTITY_CAS_RETRIES, REDIS_WRITE_SECONDS
from domain.identity import (
    Customer,
    EventIdentifiers,
    GraphPart,
    IdentityChange,
    IdentityPolicy,
    Resolution,
    Sighting,
    StoredCustomer,
    erase_customer,
    graph_part,
    graph_writes,
    resolve_events,
)
from state.redis_io import connect, with_retries

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 50

# Checks then writes; returns 0 when something read has changed meanwhile, else
# {1, the number of customers after the writes} (KEYS[1]: the count of customers).
_APPLY = """
local doc = cjson.decode(ARGV[1])
local ttl = tonumber(ARGV[2])
-- Owners are checked by MGET in chunks (unpack's limit): a GET per key from Lua cost the
-- server more than the rest of the script.
local keys, expected = doc.owner_keys, doc.owner_values
for first = 1, #keys, 4000 do
  local last = math.min(first + 3999, #keys)
  local current = redis.call('MGET', unpack(keys, first, last))
  for i = first, last do
    local value = current[i - first + 1]
    if value == false then value = '' end
    if value ~= expected[i] then return 0 end
  end
end
for _, check in ipairs(doc.versions) do
  local current = redis.call('HGET', check[1], 'v')
  if current == false then current = '' end
  if current ~= check[2] then return 0 end
end
for _, key in ipairs(doc.delete) do redis.call('DEL', key) end
-- Only records that were there count off, and only records that were not count on: a
-- replayed batch finds its records written and its merged customers gone.
local delta = 0
for _, key in ipairs(doc.delete_customers) do delta = delta - redis.call('DEL', key) end
for _, pair in ipairs(doc.owner_writes) do redis.call('SET', pair[1], pair[2], 'EX', ttl) end
for _, c in ipairs(doc.customers) do
  if redis.call('EXISTS', c[1]) == 0 then delta = delta + 1 end
  redis.call('HSET', c[1], 'first_seen', c[2], 'ids', c[3], 'v', c[4])
  redis.call('EXPIRE', c[1], ttl)
end
for _, s in ipairs(doc.sightings) do redis.call('SET', s[1], s[2], 'EX', ttl) end
for _, r in ipairs(doc.results) do redis.call('SET', r[1], r[2], 'EX', tonumber(ARGV[3])) end
local count
if delta ~= 0 then
  count = redis.call('INCRBY', KEYS[1], delta)
else
  count = tonumber(redis.call('GET', KEYS[1]) or '0')
end
return {1, count}
"""


@runtime_checkable
class CustomerCounting(Protocol):
    """A graph store that knows its customer base (both stores here); a store without it
    (a test's fake) simply leaves the gauge alone."""

    def customer_count(self) -> int | None:
        """The number of customers as of this handle's last write; None before any."""
        ...


@dataclass(frozen=True)
class IdentityKeys:
    prefix: str

    def owner(self, ident: str) -> str:
        return f"{self.prefix}id:{ident}"

    def customer(self, customer_id: str) -> str:
        return f"{self.prefix}cust:{customer_id}"

    def sightings(self, ident: str) -> str:
        return f"{self.prefix}idseen:{ident}"

    def result(self, event_id: str) -> str:
        return f"{self.prefix}idres:{event_id}"

    def customer_count(self) -> str:
        return f"{self.prefix}customers:count"

    def customer_pattern(self) -> str:
        """``SCAN`` pattern of every customer record (the prefix's glob characters
        escaped)."""
        escaped = "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in self.prefix)
        return f"{escaped}cust:*"


#: How long an event's resolution is kept for a replay (after a crash, the flow resumes
#: from a snapshot at most minutes old; a week covers restarts of a stopped deployment).
RESULT_TTL_S = 7 * 86_400


def encode_resolution(resolution: Resolution) -> str:
    return orjson.dumps(
        {
            "customer_id": resolution.customer_id,
            "created": resolution.created,
            "junk": list(resolution.junk),
            "changes": [
                [c.kind, c.customer_id, list(c.identifiers), list(c.merged_from), c.reason]
                for c in resolution.changes
            ],
        }
    ).decode()


def decode_resolution(raw: bytes | str) -> Resolution:
    doc = orjson.loads(raw)
    changes = tuple(
        IdentityChange(kind, customer_id, tuple(identifiers), tuple(merged_from), reason)
        for kind, customer_id, identifiers, merged_from, reason in doc["changes"]
    )
    return Resolution(doc["customer_id"], changes, tuple(doc["junk"]), doc["created"])


class IdentityStore:
    def __init__(
        self, client: redis.Redis, key_prefix: str, policy: IdentityPolicy, ttl_s: int
    ) -> None:
        self.client = client
        self.keys = IdentityKeys(key_prefix)
        self.policy = policy
        self.junk = policy.compiled_junk()
        self.ttl_s = ttl_s
        self._apply = client.register_script(_APPLY)
        self._customer_count: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> IdentityStore:
        """The store of ``config``'s graph, its customer count seeded if it has none yet
        (one ``EXISTS`` per opening; a ``SCAN`` only the first time on an old deployment).
        A Redis Cluster is refused here, at start, rather than by a CROSSSLOT error on the
        first batch (module doc)."""
        if config.redis.cluster:
            raise ConfigError(
                f"{config.source}: key `redis.cluster`: expected false for identity_stitch "
                "(its compare-and-set spans hash slots and needs one Redis primary; "
                "docs/redis-cluster.md), got true"
            )
        store = cls(
            connect(config),
            config.redis.key_prefix,
            policy_of(config),
            int(config.identity.ttl_days * 86_400),
        )
        with_retries(IDENTITY_STITCH, store.seed_customer_count)
        return store

    def close(self) -> None:
        self.client.close()

    # -- reading -------------------------------------------------------------------------

    def _read(
        self, identifiers: Sequence[str], event_ids: Sequence[str] = ()
    ) -> tuple[GraphPart, list[bytes | None]]:
        """The part of the graph ``identifiers`` touch (``domain.identity.graph_part``), and
        what each of ``event_ids`` resolved to if it was seen before. Owners, sightings and
        results come in one MGET (a command per key cost more in the client than Redis
        spends answering), the owners' records in one pipeline."""
        idents = list(dict.fromkeys(identifiers))
        keys = [self.keys.owner(ident) for ident in idents]
        keys += [self.keys.sightings(ident) for ident in idents]
        keys += [self.keys.result(event_id) for event_id in event_ids]
        # The client is built without decode_responses: values are bytes or None.
        replies: list[bytes | None] = self.client.mget(keys) if keys else []  # type: ignore[assignment]
        owners = {i: (r.decode() if r else "") for i, r in zip(idents, replies, strict=False)}
        sightings: dict[str, Sighting] = {}
        for ident, raw in zip(idents, replies[len(idents) : 2 * len(idents)], strict=True):
            if raw:
                doc = orjson.loads(raw)
                sightings[ident] = Sighting(frozenset(doc["seen"]), doc.get("blocked_by"))
        stored = replies[2 * len(idents) :]
        customer_ids = sorted({owner for owner in owners.values() if owner})
        pipe = self.client.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.hgetall(self.keys.customer(customer_id))
        customers = {
            customer_id: _stored_customer(record)
            for customer_id, record in zip(customer_ids, pipe.execute(), strict=True)
        }
        return graph_part(owners, customers, sightings), stored

    def owner_of(self, ident: str) -> str | None:
        value = self.client.get(self.keys.owner(ident))
        return value.decode() if isinstance(value, bytes) else None

    def customer(self, customer_id: str) -> Customer | None:
        record = _stored_customer(self.client.hgetall(self.keys.customer(customer_id)))
        if record is None:
            return None
        return Customer(customer_id, record.first_seen_ms, set(record.identifiers))

    # -- the customer base ---------------------------------------------------------------

    def customer_count(self) -> int | None:
        """How many customers the graph holds, as the last batch or erasure this handle
        wrote answered (no round trip); None before it wrote anything."""
        return self._customer_count

    def count_records(self) -> int:
        """The customer records there are now, by ``SCAN`` (a pass over the keyspace: for
        seeding and checking the count, not per batch)."""
        pattern = self.keys.customer_pattern()
        return sum(1 for _ in self.client.scan_iter(match=pattern, count=1000))

    def seed_customer_count(self) -> bool:
        """Set the count from the records if it is missing (a deployment from before the
        count, or after the key was deleted to recount); True when this call set it."""
        key = self.keys.customer_count()
        if self.client.exists(key):
            return False
        return bool(self.client.set(key, self.count_records(), nx=True))

    def recount_customers(self) -> int:
        """Count the records again and replace the count (drift from records expired by
        TTL, or batches of an old version). Meant for a quiet graph: a batch written during
        the ``SCAN`` may be counted in the scan and again by its script, or not at all."""
        count = self.count_records()
        self.client.set(self.keys.customer_count(), count)
        self._customer_count = count
        return count

    # -- writing -------------------------------------------------------------------------

    def _write(
        self,
        part: GraphPart,
        touched: set[str],
        results: Sequence[tuple[str, Resolution]] = (),
    ) -> bool:
        """Write the difference (``domain.identity.graph_writes``) in one script, if nothing
        ``part`` was read from has changed since; False (nothing written) otherwise."""
        writes = graph_writes(part, touched)
        keys = self.keys
        doc = {
            "owner_keys": [keys.owner(i) for i in part.owners],
            "owner_values": list(part.owners.values()),
            "versions": [
                [keys.customer(c), "" if v is None else str(v)] for c, v in part.versions.items()
            ],
            "owner_writes": [[keys.owner(i), owner] for i, owner in writes.owners.items()],
            "delete": [keys.owner(i) for i in writes.dropped_owners],
            "delete_customers": [keys.customer(c) for c in writes.dropped_customers],
            "customers": [
                [
                    keys.customer(cid),
                    c.first_seen_ms,
                    orjson.dumps(sorted(c.identifiers)).decode(),
                    c.version,
                ]
                for cid, c in writes.customers.items()
            ],
            "sightings": [
                [
                    keys.sightings(ident),
                    orjson.dumps({"seen": sorted(s.seen), "blocked_by": s.blocked_by}).decode(),
                ]
                for ident, s in writes.sightings.items()
            ],
            "results": [[keys.result(eid), encode_resolution(r)] for eid, r in results],
        }
        reply = self._apply(
            keys=[keys.customer_count()], args=[orjson.dumps(doc), self.ttl_s, RESULT_TTL_S]
        )
        if not reply:
            return False
        self._customer_count = int(reply[1])
        return True

    def resolve_batch(self, events: Sequence[EventIdentifiers]) -> list[Resolution]:
        """Link the identifiers of every event, in order; one resolution per event."""
        if not events:
            return []
        started = time.perf_counter()
        wanted = [ident for e in events for ident in e.identifiers]
        event_ids = [e.event_id for e in events]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # An event seen before (a replay after a crash) already left its mark in Redis:
            # give back what it resolved to then, so its outputs are the same again.
            part, stored = with_retries(IDENTITY_STITCH, lambda: self._read(wanted, event_ids))
            previous = [None if raw is None else decode_resolution(raw) for raw in stored]
            resolutions, results, touched = resolve_events(
                part.graph, events, previous, self.policy, self.junk
            )
            if with_retries(
                IDENTITY_STITCH, functools.partial(self._write, part, touched, results)
            ):
                REDIS_WRITE_SECONDS.labels(IDENTITY_STITCH).observe(time.perf_counter() - started)
                return resolutions
            IDENTITY_CAS_RETRIES.inc()
            time.sleep(min(0.001 * attempt, 0.05))
        raise RuntimeError(f"identity batch could not be applied after {MAX_ATTEMPTS} attempts")

    def forget(self, ident: str) -> IdentityChange | None:
        """Erase the customer owning ``ident``: every identifier key and its record."""
        for _ in range(MAX_ATTEMPTS):
            owner = self.owner_of(ident)
            if owner is None:
                return None
            part, _ = self._read([ident])
            customer = part.graph.customers.get(owner)
            if customer is not None:
                part, _ = self._read([ident, *customer.identifiers])
            change = erase_customer(part.graph, owner)
            if change is None:  # a dangling key without a record: drop the key alone
                self.client.delete(self.keys.owner(ident))
                return IdentityChange("erased", owner, (ident,))
            if self._write(part, set()):
                self._forget_results(owner)
                return change
        raise RuntimeError("erasure could not be applied: the customer kept changing")

    def _forget_results(self, customer_id: str) -> None:
        """Drop the kept resolutions (``idres:<event_id>``, there for replayed batches) that
        name the erased customer. They are keyed by event, not by customer, so this is a
        ``SCAN`` of them: fine for an erasure now and then, not for thousands an hour (then
        keep a per-customer index of result keys instead)."""
        needle = customer_id.encode()
        keys = list(self.client.scan_iter(match=self.keys.result("*"), count=1000))
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            values = self.client.mget(chunk)
            named = [k for k, v in zip(chunk, values, strict=True) if v and needle in v]
            if named:
                self.client.delete(*named)


def _stored_customer(record: dict[Any, Any]) -> StoredCustomer | None:
    """A ``cust:`` hash as read (bytes), or None when there is none."""
    if not record:
        return None
    return StoredCustomer(
        int(record[b"first_seen"]), frozenset(orjson.loads(record[b"ids"])), int(record[b"v"])
    )


def policy_of(config: Config) -> IdentityPolicy:
    identity = config.identity
    limits = {
        "user": 1,
        "member": 1,
        "anon": identity.max_anon,
        "phone": identity.max_phone,
        "email": identity.max_email,
        "order": identity.max_order,
    }
    base = IdentityPolicy()
    junk = (identity.junk_pattern,) if identity.junk_pattern else base.junk_patterns
    return IdentityPolicy(
        limits=limits,
        junk_patterns=junk,
        max_customers_per_identifier=identity.max_customers_per_identifier,
    )
