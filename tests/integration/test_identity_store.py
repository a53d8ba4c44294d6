"""The identity graph's optimistic, atomic update on a real Redis: a batch resolved from a
read that another writer has since changed is not written, and two stores resolving
overlapping identifiers at the same time end with one consistent graph."""

from __future__ import annotations

import itertools
import random
import threading

import networkx as nx
import pytest
import redis

from base.config import Config
from base.metrics import IDENTITY_CAS_RETRIES
from state.identity_store import EventIdentifiers, IdentityStore

pytestmark = pytest.mark.integration
T0 = 1_793_500_000_000


def test_a_write_based_on_a_stale_read_is_refused(omni_config: Config) -> None:
    first, second = IdentityStore.from_config(omni_config), IdentityStore.from_config(omni_config)
    try:
        first.resolve_batch([EventIdentifiers("e1", T0, ("anon:a",))])
        snapshot, _ = first._read(["anon:a", "anon:b"])
        # Another writer links anon:b to the customer between the read and the write.
        second.resolve_batch([EventIdentifiers("e2", T0 + 1, ("anon:a", "anon:b"))])
        assert first._write(snapshot, set()) is False
        # ... and an up-to-date read writes.
        fresh, _ = first._read(["anon:a", "anon:b"])
        assert first._write(fresh, set()) is True
        owner = first.owner_of("anon:a")
        assert owner is not None and first.owner_of("anon:b") == owner
    finally:
        first.close()
        second.close()


def test_two_stores_resolving_overlapping_identifiers_at_once_end_consistent(
    omni_config: Config, redis_client: redis.Redis
) -> None:
    # Limits out of reach, so the customers must be exactly the connected components.
    omni_config = omni_config.with_overrides(identity={"max_anon": 10_000, "max_order": 10_000})
    rnd = random.Random(7)
    pool = [f"anon:d{n}" for n in range(300)] + [f"order:o{n}" for n in range(300)]
    events = [
        EventIdentifiers(f"e{n}", T0 + n, tuple(rnd.sample(pool, rnd.choice((1, 1, 2)))))
        for n in range(3000)
    ]
    halves = (events[0::2], events[1::2])  # each store gets every other event, all at once
    errors: list[BaseException] = []

    def run(part: list[EventIdentifiers]) -> None:
        store = IdentityStore.from_config(omni_config)
        try:
            for start in range(0, len(part), 50):
                store.resolve_batch(part[start : start + 50])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            store.close()

    retries_before = IDENTITY_CAS_RETRIES._value.get()
    threads = [threading.Thread(target=run, args=(part,)) for part in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    print(
        f"\nbatches written again after a conflicting write: "
        f"{IDENTITY_CAS_RETRIES._value.get() - retries_before:.0f}"
    )

    prefix = omni_config.redis.key_prefix
    store = IdentityStore.from_config(omni_config)
    try:
        used = sorted({ident for event in events for ident in event.identifiers})
        owners = {ident: store.owner_of(ident) for ident in used}
        assert all(owners.values())
        for owner, idents in itertools.groupby(sorted(owners, key=owners.get), owners.get):
            record = store.customer(str(owner))
            assert record is not None and record.identifiers == set(idents)  # no dangling key
        reference = nx.Graph()
        reference.add_nodes_from(used)
        for event in events:
            reference.add_edges_from(itertools.pairwise(event.identifiers))
        groups: dict[str, set[str]] = {}
        for ident, owner in owners.items():
            groups.setdefault(str(owner), set()).add(ident)
        assert {frozenset(g) for g in groups.values()} == {
            frozenset(c) for c in nx.connected_components(reference)
        }
        customers = list(redis_client.scan_iter(match=f"{prefix}cust:*", count=1000))
        assert len(customers) == len(groups)  # no record left behind by a merge
    finally:
        store.close()
