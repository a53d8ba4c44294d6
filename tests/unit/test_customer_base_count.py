"""The customer base the identity stores count, on both backends (memory, and Redis marked
``integration``), and the gauge identity_stitch sets from it, and the board that shows it.

The reference is outside the code: the number of distinct owners of every identifier seen
(what the graph holds), and for conflict-free traffic the connected components of the
events' identifiers (``networkx``); merges and erasures are written out by hand. A replayed
batch must leave the count where it was.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import networkx as nx
import pytest

from base.config import Config
from base.metrics import IDENTITY_CUSTOMERS
from domain.identity import DEFAULT_LIMITS, EventIdentifiers, IdentityPolicy, Resolution
from flows.identity_stitch import build, resolve_identities
from omnistream.dashboards import IDENTITY, rendered
from state.identity_store import CustomerCounting, IdentityStore
from state.memory_identity import MemoryIdentityStore
from state.redis_io import connect
from tests.inprocess import MemoryIO, run
from tests.store_backends import BACKENDS, handles

T0 = 1_793_500_000_000
POLICY = IdentityPolicy()
UNLIMITED = IdentityPolicy(limits={**DEFAULT_LIMITS, "anon": 10**6, "order": 10**6,
                                   "phone": 10**6, "email": 10**6})  # fmt: skip

Store = MemoryIdentityStore | IdentityStore
Open = Callable[..., Store]


def _redis_graph(config: Config, name: str = "main", policy: IdentityPolicy = POLICY) -> Store:
    return IdentityStore(connect(config), f"{config.redis.key_prefix}{name}:", policy, ttl_s=3600)


@pytest.fixture(params=BACKENDS)
def graphs(request: pytest.FixtureRequest) -> Iterator[Open]:
    yield from handles(
        request,
        lambda name="main", policy=POLICY: MemoryIdentityStore(policy),
        _redis_graph,
        same_store=lambda name="main", policy=POLICY: name,
    )


def event(event_id: str, *identifiers: str, ts: int = T0) -> EventIdentifiers:
    return EventIdentifiers(event_id, ts, identifiers)


def owners_of(store: Store, identifiers: set[str]) -> set[str]:
    """The distinct customers owning ``identifiers``: how many customers the graph holds."""
    return {owner for ident in identifiers if (owner := store.owner_of(ident)) is not None}


def components(events: Sequence[EventIdentifiers]) -> int:
    reference = nx.Graph()
    for e in events:
        reference.add_nodes_from(e.identifiers)
        reference.add_edges_from(itertools.pairwise(e.identifiers))
    return nx.number_connected_components(reference)


def test_an_empty_memory_graph_counts_zero() -> None:
    assert MemoryIdentityStore().customer_count() == 0


def test_creations_count_one_each(graphs: Open) -> None:
    store = graphs()
    store.resolve_batch([event("e1", "anon:d1", "user:ann"), event("e2", "anon:d2")])
    assert store.customer_count() == 2
    # Linking a new identifier to a known customer creates nobody.
    store.resolve_batch([event("e3", "anon:d1", "order:o1")])
    assert store.customer_count() == 2
    store.resolve_batch([event("e4", "member:m9")])
    assert store.customer_count() == 3 == len(owners_of(store, {"anon:d1", "anon:d2", "member:m9"}))


def test_a_merge_takes_the_merged_customer_off(graphs: Open) -> None:
    store = graphs()
    store.resolve_batch([event("e1", "anon:d1", "user:ann"), event("e2", "anon:d2", ts=T0 + 1)])
    assert store.customer_count() == 2
    (resolution,) = store.resolve_batch([event("e3", "anon:d2", "user:ann", ts=T0 + 2)])
    assert [c.kind for c in resolution.changes] == ["merged"]
    assert store.customer_count() == 1
    assert len(owners_of(store, {"anon:d1", "anon:d2", "user:ann"})) == 1


def test_a_merge_of_customers_first_seen_at_once_counts_one(graphs: Open) -> None:
    """Same first-seen time: both records give way to one under a new id (two ``merged``
    changes, two records deleted, one created)."""
    store = graphs()
    store.resolve_batch([event("e1", "anon:d1", "user:ann"), event("e2", "anon:d2")])
    (resolution,) = store.resolve_batch([event("e3", "anon:d2", "user:ann")])
    assert [c.kind for c in resolution.changes] == ["merged", "merged"]
    assert store.customer_count() == 1


def test_a_merge_and_a_creation_in_one_batch_count_both(graphs: Open) -> None:
    store = graphs()
    store.resolve_batch([event("e1", "anon:a"), event("e2", "anon:b"), event("e3", "anon:c")])
    store.resolve_batch(
        [event("e4", "anon:a", "anon:b"), event("e5", "anon:z"), event("e6", "anon:b", "anon:c")]
    )
    # a, b, c are one customer now; z is new.
    assert store.customer_count() == 2


def test_forget_takes_the_erased_customer_off_once(graphs: Open) -> None:
    store = graphs()
    store.resolve_batch([event("e1", "anon:d1", "user:ann"), event("e2", "user:bob")])
    change = store.forget("anon:d1")
    assert change is not None and change.kind == "erased"
    assert store.customer_count() == 1
    assert store.forget("user:ann") is None  # gone already: nothing more to take off
    assert store.customer_count() == 1
    store.forget("user:bob")
    assert store.customer_count() == 0
    # The erased identifier seen again is a new customer.
    store.resolve_batch([event("e3", "anon:d1")])
    assert store.customer_count() == 1


def test_a_replayed_batch_changes_nothing(graphs: Open) -> None:
    store = graphs()
    first = [event("e1", "anon:d1", "user:ann"), event("e2", "anon:d2"), event("e3", "anon:d3")]
    second = [event("e4", "anon:d2", "user:ann"), event("e5", "anon:d4")]
    store.resolve_batch(first)
    resolutions = store.resolve_batch(second)
    assert store.customer_count() == 3
    # After a crash the flow reads both batches again, from another handle (a restarted
    # worker): same resolutions, same count.
    again = graphs()
    again.resolve_batch(first)
    assert again.customer_count() == 3
    assert again.resolve_batch(second) == resolutions
    assert again.customer_count() == 3
    assert store.resolve_batch(first + second)[3:] == resolutions
    assert store.customer_count() == 3


def test_a_second_handle_continues_the_same_count(graphs: Open) -> None:
    """The count lives with the graph (Redis), not in the process: a restart keeps it."""
    graphs().resolve_batch([event("e1", "anon:d1"), event("e2", "anon:d2")])
    restarted = graphs()
    restarted.resolve_batch([event("e3", "anon:d3")])
    assert restarted.customer_count() == 3


@pytest.mark.parametrize("seed", [1, 2])
def test_conflict_free_traffic_counts_its_connected_components(graphs: Open, seed: int) -> None:
    rnd = random.Random(seed)
    pool = [f"{kind}:{kind[0]}{n}" for kind in ("anon", "order", "phone") for n in range(40)]
    events = [
        event(f"e{n}", *rnd.sample(pool, rnd.choice((1, 1, 2, 3))), ts=T0 + n) for n in range(300)
    ]
    store = graphs("main", UNLIMITED)
    for start in range(0, len(events), 25):
        store.resolve_batch(events[start : start + 25])
        assert store.customer_count() == components(events[: start + 25])
    seen = {ident for e in events for ident in e.identifiers}
    assert store.customer_count() == len(owners_of(store, seen))


def test_traffic_with_conflicts_and_erasures_counts_the_owners(graphs: Open) -> None:
    """Shared devices, users, members, blocked kiosks: whatever the rules decide, the count
    is the number of customers the identifiers end with."""
    rnd = random.Random(11)
    users = [f"user:u{n}" for n in range(12)]
    devices = [f"anon:d{n}" for n in range(20)]
    members = [f"member:m{n}" for n in range(8)]
    events = [
        event(f"e{n}", *rnd.sample(users + devices + members, rnd.choice((1, 2, 2, 3))), ts=T0 + n)
        for n in range(400)
    ]
    store = graphs()
    seen: set[str] = set()
    for start in range(0, len(events), 20):
        batch = events[start : start + 20]
        store.resolve_batch(batch)
        seen |= {ident for e in batch for ident in e.identifiers}
        if start % 100 == 0:
            store.forget(rnd.choice(sorted(seen)))
        assert store.customer_count() == len(owners_of(store, seen)), start


# --- identity_stitch sets the gauge -------------------------------------------------------


class _Counting:
    """A graph store whose every batch answers a given count."""

    def __init__(self, count: int | None) -> None:
        self.count = count

    def resolve_batch(self, events: Sequence[EventIdentifiers]) -> list[Resolution]:
        return [Resolution(None, (), (), False) for _ in events]

    def customer_count(self) -> int | None:
        return self.count

    def owner_of(self, ident: str) -> str | None:
        return None

    def customer(self, customer_id: str) -> Any:
        return None

    def forget(self, ident: str) -> Any:
        return None

    def close(self) -> None:
        pass


def gauge() -> float:
    return float(IDENTITY_CUSTOMERS._value.get())


def test_the_batch_sets_the_gauge_from_the_stores_count() -> None:
    store = _Counting(1234)
    assert isinstance(store, CustomerCounting)
    resolve_identities(store, [], "events.resolved", "identity.changes")
    assert gauge() == 1234
    store.count = None  # nothing written yet: the gauge is left alone
    resolve_identities(store, [], "events.resolved", "identity.changes")
    assert gauge() == 1234


T_CLICK = 1_793_500_000_000


def login(n: int, anon: str, **fields: object) -> dict[str, Any]:
    return {"event_id": f"c{n}", "event_type": "login", "ts": T_CLICK + n * 1000,
            "anonymous_id": anon, "channel": "app", **fields}  # fmt: skip


def test_identity_stitch_in_process_reports_the_customer_base() -> None:
    config = Config().with_overrides(pii={"key": "count-secret"})
    io = MemoryIO(config)
    io.add(
        "clickstream",
        [
            login(1, "dev-1", user_id="u-ann"),
            login(2, "dev-2", user_id="u-bob"),
            login(3, "dev-3"),  # a third customer, for now
            login(4, "dev-3", user_id="u-ann"),  # ... merged into Ann
            login(5, "dev-4"),
        ],
    )
    IDENTITY_CUSTOMERS.set(-1)
    store = MemoryIdentityStore.from_config(config)
    run(build(config, io=io, identity_store=lambda: store), 1)
    assert gauge() == 3  # Ann (dev-1, dev-3), Bob, dev-4
    assert len(set(store.owners.values())) == 3


# --- the Identity board -------------------------------------------------------------------


def test_the_identity_board_shows_the_counted_base_and_the_segments() -> None:
    doc = json.loads(rendered()[f"{IDENTITY.uid}.json"])
    by_title = {p["title"]: p for p in doc["panels"]}
    base = by_title["Customer base"]
    assert base["type"] == "stat"
    assert [t["expr"] for t in base["targets"]] == [
        'max(omnistream_identity_customers{flow=~"$flow"})'
    ]
    segments = by_title["Customers by segment"]
    assert [t["expr"] for t in segments["targets"]] == [
        'max by (segment) (omnistream_customers{flow=~"$flow"})'
    ]
    assert segments["targets"][0]["legendFormat"] == "{{segment}}"
    # The process-local difference that reset on every restart is gone.
    assert "customers_created_total" not in json.dumps(doc)
