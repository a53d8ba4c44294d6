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
If another worker changed any of it in between, the script writes nothing and the batch is
read and resolved again. So two workers or processes linking overlapping identifiers end
with one consistent graph, with two round trips per batch in the common case.

The script touches keys of several slots: identity needs a single Redis instance (or one
primary), not Redis Cluster.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis

from base.config import Config
from base.flow_names import IDENTITY_STITCH
from base.metrics import IDENTITY_CAS_RETRIES, REDIS_WRITE_SECONDS
from domain.identity import (
    Customer,
    IdentityChange,
    IdentityGraph,
    IdentityPolicy,
    Resolution,
    erase_customer,
    link_identifiers,
)
from state.redis_io import connect, with_retries

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 50

# Checks then writes; returns 1 when applied, 0 when something read has changed meanwhile.
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
for _, pair in ipairs(doc.owner_writes) do redis.call('SET', pair[1], pair[2], 'EX', ttl) end
for _, c in ipairs(doc.customers) do
  redis.call('HSET', c[1], 'first_seen', c[2], 'ids', c[3], 'v', c[4])
  redis.call('EXPIRE', c[1], ttl)
end
for _, s in ipairs(doc.sightings) do redis.call('SET', s[1], s[2], 'EX', ttl) end
for _, r in ipairs(doc.results) do redis.call('SET', r[1], r[2], 'EX', tonumber(ARGV[3])) end
return 1
"""


@dataclass(slots=True)  # not frozen: one per event, and a frozen __init__ costs 5× more
class EventIdentifiers:
    event_id: str
    ts_ms: int
    identifiers: tuple[str, ...]


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


@dataclass
class _Snapshot:
    """What a batch read, to check it is unchanged when writing."""

    graph: IdentityGraph
    owners: dict[str, str]
    versions: dict[str, str]
    sightings: dict[str, bytes]


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

    @classmethod
    def from_config(cls, config: Config) -> IdentityStore:
        return cls(
            connect(config),
            config.redis.key_prefix,
            policy_of(config),
            int(config.identity.ttl_days * 86_400),
        )

    def close(self) -> None:
        self.client.close()

    # -- reading -------------------------------------------------------------------------

    def _read(
        self, identifiers: Sequence[str], event_ids: Sequence[str] = ()
    ) -> tuple[_Snapshot, list[bytes | None]]:
        """The part of the graph ``identifiers`` touch, and what each of ``event_ids``
        resolved to if it was seen before. Owners, sightings and results come in one MGET
        (a command per key cost more in the client than Redis spends answering)."""
        idents = list(dict.fromkeys(identifiers))
        keys = [self.keys.owner(ident) for ident in idents]
        keys += [self.keys.sightings(ident) for ident in idents]
        keys += [self.keys.result(event_id) for event_id in event_ids]
        # The client is built without decode_responses: values are bytes or None.
        replies: list[bytes | None] = self.client.mget(keys) if keys else []  # type: ignore[assignment]
        owners = {i: (r.decode() if r else "") for i, r in zip(idents, replies, strict=False)}
        sightings_raw = dict(zip(idents, replies[len(idents) : 2 * len(idents)], strict=True))
        stored = replies[2 * len(idents) :]
        customer_ids = sorted({owner for owner in owners.values() if owner})
        pipe = self.client.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.hgetall(self.keys.customer(customer_id))
        graph = IdentityGraph()
        versions: dict[str, str] = {}
        for customer_id, record in zip(customer_ids, pipe.execute(), strict=True):
            if not record:
                versions[customer_id] = ""
                continue
            ids = set(orjson.loads(record[b"ids"]))
            graph.customers[customer_id] = Customer(customer_id, int(record[b"first_seen"]), ids)
            versions[customer_id] = record[b"v"].decode()
            for ident in ids:
                graph.owners[ident] = customer_id
        for ident, owner in owners.items():
            if owner and owner in graph.customers:
                graph.owners[ident] = owner
        sightings: dict[str, bytes] = {}
        for ident, raw in sightings_raw.items():
            if raw:
                doc = orjson.loads(raw)
                graph.sightings[ident] = set(doc["seen"])
                if doc.get("blocked_by") is not None:
                    graph.blocked[ident] = doc["blocked_by"]
                sightings[ident] = raw
        return _Snapshot(graph, owners, versions, sightings), stored

    def owner_of(self, ident: str) -> str | None:
        value = self.client.get(self.keys.owner(ident))
        return value.decode() if isinstance(value, bytes) else None

    def customer(self, customer_id: str) -> Customer | None:
        record = self.client.hgetall(self.keys.customer(customer_id))
        if not record:
            return None
        return Customer(customer_id, int(record[b"first_seen"]), set(orjson.loads(record[b"ids"])))

    # -- writing -------------------------------------------------------------------------

    def _write(
        self, snapshot: _Snapshot, touched: set[str], results: list[list[str]] | None = None
    ) -> bool:
        graph = snapshot.graph
        owner_writes = []
        for ident, owner in graph.owners.items():
            if snapshot.owners.get(ident) != owner:
                owner_writes.append([self.keys.owner(ident), owner])
        delete = [
            self.keys.owner(ident)
            for ident, owner in snapshot.owners.items()
            if owner and ident not in graph.owners
        ]
        delete += [
            self.keys.customer(cid) for cid in snapshot.versions if cid not in graph.customers
        ]
        customers = []
        for cid in touched:
            customer = graph.customers.get(cid)
            if customer is None:
                continue
            version = int(snapshot.versions.get(cid) or 0) + 1
            customers.append(
                [
                    self.keys.customer(cid),
                    customer.first_seen_ms,
                    orjson.dumps(sorted(customer.identifiers)).decode(),
                    version,
                ]
            )
        sightings = []
        for ident, seen in graph.sightings.items():
            encoded = orjson.dumps({"seen": sorted(seen), "blocked_by": graph.blocked.get(ident)})
            if snapshot.sightings.get(ident) != encoded:
                sightings.append([self.keys.sightings(ident), encoded.decode()])
        doc = {
            "owner_keys": [self.keys.owner(i) for i in snapshot.owners],
            "owner_values": list(snapshot.owners.values()),
            "versions": [[self.keys.customer(c), v] for c, v in snapshot.versions.items()],
            "owner_writes": owner_writes,
            "delete": delete,
            "customers": customers,
            "sightings": sightings,
            "results": results or [],
        }
        return bool(self._apply(args=[orjson.dumps(doc), self.ttl_s, RESULT_TTL_S]))

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
            snapshot, stored = with_retries(IDENTITY_STITCH, lambda: self._read(wanted, event_ids))
            resolutions = []
            results: list[list[str]] = []
            touched: set[str] = set()
            graph = snapshot.graph
            for e, previous in zip(events, stored, strict=True):
                if previous is not None:
                    resolutions.append(decode_resolution(previous))
                    continue
                resolution = link_identifiers(
                    graph, e.identifiers, e.event_id, e.ts_ms, self.policy, self.junk
                )
                resolutions.append(resolution)
                if resolution.changes or resolution.created:
                    results.append([self.keys.result(e.event_id), encode_resolution(resolution)])
                # Every customer an event changes (gains identifiers, absorbs another, is
                # minted or renamed) is named by one of its changes.
                touched.update(change.customer_id for change in resolution.changes)
            if with_retries(
                IDENTITY_STITCH, functools.partial(self._write, snapshot, touched, results)
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
            snapshot, _ = self._read([ident])
            customer = snapshot.graph.customers.get(owner)
            if customer is not None:
                snapshot, _ = self._read([ident, *customer.identifiers])
            change = erase_customer(snapshot.graph, owner)
            if change is None:  # a dangling key without a record: drop the key alone
                self.client.delete(self.keys.owner(ident))
                return IdentityChange("erased", owner, (ident,))
            if self._write(snapshot, set()):
                return change
        raise RuntimeError("erasure could not be applied: the customer kept changing")


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
