"""The OneID graph in memory, resolved exactly as the Redis store resolves it.

For running identity_stitch in-process in the tests. The records are those of
``state.identity_store`` (owner per identifier, versioned customer records, sightings,
each changing event's resolution for replays), and a batch goes through the same pure
steps of ``domain.identity``: read the part of the graph the batch touches
(``graph_part``), resolve its events on that part (``resolve_events``), write the
difference back (``graph_writes``). Only the optimistic check is gone: one lock makes every
batch atomic, which is what the Redis script's check achieves across workers.

The customer base is counted as the Redis script counts it: one on for each record created
(not there before), one off for each record dropped that was there; ``customer_count``
answers it.

Nothing expires here (Redis keeps identities ``identity.ttl_days`` and resolutions a
week, by wall-clock TTL): a test's run is far shorter.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from base.config import Config
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
from state.identity_store import policy_of


class MemoryIdentityStore:
    """``state.interfaces.IdentityGraphStore`` on dicts; one instance for every worker."""

    def __init__(self, policy: IdentityPolicy | None = None) -> None:
        self.policy = policy if policy is not None else IdentityPolicy()
        self.junk = self.policy.compiled_junk()
        self.owners: dict[str, str] = {}
        self.customers: dict[str, StoredCustomer] = {}
        self.sightings: dict[str, Sighting] = {}
        #: event id → what it resolved to (events that changed the graph only)
        self.results: dict[str, Resolution] = {}
        #: customer records created minus those deleted (``len(customers)`` by construction,
        #: kept the way Redis keeps it so both count alike)
        self.customer_total = 0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> MemoryIdentityStore:
        """With the limits, junk patterns and blocking of ``config`` (as Redis's store)."""
        return cls(policy_of(config))

    def close(self) -> None:
        """Nothing to release; the graph stays readable after a flow closed its store."""

    def _read(self, identifiers: Sequence[str]) -> GraphPart:
        idents = list(dict.fromkeys(identifiers))
        owners = {ident: self.owners.get(ident, "") for ident in idents}
        customers = {cid: self.customers.get(cid) for cid in sorted(set(owners.values()) - {""})}
        sightings = {i: s for i in idents if (s := self.sightings.get(i)) is not None}
        return graph_part(owners, customers, sightings)

    def _write(self, part: GraphPart, touched: set[str]) -> None:
        writes = graph_writes(part, touched)
        for ident in writes.dropped_owners:
            self.owners.pop(ident, None)
        for customer_id in writes.dropped_customers:
            if self.customers.pop(customer_id, None) is not None:
                self.customer_total -= 1
        self.owners.update(writes.owners)
        self.customer_total += sum(1 for cid in writes.customers if cid not in self.customers)
        self.customers.update(writes.customers)
        self.sightings.update(writes.sightings)

    def resolve_batch(self, events: Sequence[EventIdentifiers]) -> list[Resolution]:
        """Link the identifiers of every event, in order; one resolution per event."""
        if not events:
            return []
        with self._lock:
            # Looked up before any event of the batch is resolved, as Redis reads them.
            previous = [self.results.get(e.event_id) for e in events]
            part = self._read([ident for e in events for ident in e.identifiers])
            resolutions, remembered, touched = resolve_events(
                part.graph, events, previous, self.policy, self.junk
            )
            self._write(part, touched)
            self.results.update(remembered)
            return resolutions

    def customer_count(self) -> int | None:
        """How many customers the graph holds (every handle shares this one object)."""
        with self._lock:
            return self.customer_total

    def owner_of(self, ident: str) -> str | None:
        with self._lock:
            return self.owners.get(ident)

    def customer(self, customer_id: str) -> Customer | None:
        with self._lock:
            record = self.customers.get(customer_id)
        if record is None:
            return None
        return Customer(customer_id, record.first_seen_ms, set(record.identifiers))

    def forget(self, ident: str) -> IdentityChange | None:
        """Erase the customer owning ``ident``: every identifier and its record."""
        with self._lock:
            owner = self.owners.get(ident)
            if owner is None:
                return None
            record = self.customers.get(owner)
            part = self._read([ident, *(record.identifiers if record is not None else ())])
            change = erase_customer(part.graph, owner)
            if change is None:  # a dangling owner without a record: drop it alone
                del self.owners[ident]
                return IdentityChange("erased", owner, (ident,))
            self._write(part, set())
            return change
