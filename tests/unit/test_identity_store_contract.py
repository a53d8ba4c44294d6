"""The identity store's contract, one suite over both backends: the in-memory one (fast tier)
and Redis on the session's embedded stack (marked ``integration``).

What identity_stitch and ``omnistream whois`` / ``forget`` rely on
(``state.interfaces.IdentityGraphStore``), against expectations from outside the code:
without conflicts the customers are the connected components of the events' identifiers (a
reference union-find, ``networkx``), also with two handles resolving overlapping batches at
the same time; the changes a batch reports fold (CONTRACT §4, ``tests/identity_fold.py``)
into the owners the store holds; the hand-written cases of shared devices, junk values,
blocked kiosks, late older events and erasure; a replayed event resolves as it did the first
time. The last test runs one stream with conflicts through both backends and requires the
same resolutions, event by event.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Iterator, Sequence

import networkx as nx
import pytest

from base.config import Config
from domain.identity import DEFAULT_LIMITS, EventIdentifiers, IdentityPolicy, Resolution
from state.identity_store import IdentityStore
from state.interfaces import IdentityGraphStore
from state.memory_identity import MemoryIdentityStore
from state.redis_io import connect
from tests.identity_fold import fold_changes
from tests.store_backends import BACKENDS, handles

T0 = 1_793_500_000_000
MINUTE = 60_000
POLICY = IdentityPolicy()
#: Limits out of reach: with no user or member, nothing can conflict.
UNLIMITED = IdentityPolicy(limits={**DEFAULT_LIMITS, "anon": 10**6, "order": 10**6,
                                   "phone": 10**6, "email": 10**6})  # fmt: skip

#: Opens a handle on graph ``name`` (the same name: the same graph, as a second worker or
#: the CLI sees it; another name: an empty graph of its own) with a resolution policy.
Open = Callable[..., IdentityGraphStore]
#: (kind, customer_id, identifiers, merged_from) of a change, as ``fold_changes`` takes it.
Change = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def _redis_graph(
    config: Config, name: str = "main", policy: IdentityPolicy = POLICY
) -> IdentityGraphStore:
    return IdentityStore(connect(config), f"{config.redis.key_prefix}{name}:", policy, ttl_s=3600)


@pytest.fixture(params=BACKENDS)
def graphs(request: pytest.FixtureRequest) -> Iterator[Open]:
    """``open_graph(name, policy)``: the same name is the same graph (as a second worker or
    the CLI sees it), another name an empty graph of its own."""
    yield from handles(
        request,
        lambda name="main", policy=POLICY: MemoryIdentityStore(policy),
        _redis_graph,
        same_store=lambda name="main", policy=POLICY: name,
    )


def event(event_id: str, *identifiers: str, ts: int = T0) -> EventIdentifiers:
    return EventIdentifiers(event_id, ts, identifiers)


def changes_of(resolutions: Sequence[Resolution]) -> list[Change]:
    return [
        (c.kind, c.customer_id, c.identifiers, c.merged_from)
        for r in resolutions
        for c in r.changes
    ]


def partition(store: IdentityGraphStore, identifiers: set[str]) -> set[frozenset[str]]:
    """The customers as the owner keys group the identifiers, each checked against its
    record (no identifier owned by a customer whose record does not list it)."""
    groups: dict[str, set[str]] = {}
    for ident in identifiers:
        owner = store.owner_of(ident)
        assert owner is not None, ident
        groups.setdefault(owner, set()).add(ident)
    for owner, members in groups.items():
        record = store.customer(owner)
        assert record is not None and record.identifiers == members, owner
    return {frozenset(g) for g in groups.values()}


def components(events: Sequence[EventIdentifiers]) -> set[frozenset[str]]:
    reference = nx.Graph()
    for e in events:
        reference.add_nodes_from(e.identifiers)
        reference.add_edges_from(itertools.pairwise(e.identifiers))
    return {frozenset(c) for c in nx.connected_components(reference)}


def conflict_free_events(seed: int, count: int, size: int) -> list[EventIdentifiers]:
    """Events of 1 to 3 identifiers drawn from ``size`` of each kind that never conflicts."""
    rnd = random.Random(seed)
    kinds = ("anon", "order", "phone", "email")
    pool = [f"{kind}:{kind[0]}{n}" for kind in kinds for n in range(size)]
    return [
        event(f"e{n}", *rnd.sample(pool, rnd.choice((1, 1, 2, 2, 3))), ts=T0 + rnd.randint(0, 500))
        for n in range(count)
    ]  # fmt: skip


# --- linking -------------------------------------------------------------------------------


def test_one_event_links_its_identifiers_into_one_customer(graphs: Open) -> None:
    store = graphs()
    (resolution,) = store.resolve_batch([event("e1", "anon:d1", "user:ann", "order:o1")])
    customer_id = resolution.customer_id
    assert customer_id is not None and resolution.created
    reader = graphs()
    assert {reader.owner_of(i) for i in ("anon:d1", "user:ann", "order:o1")} == {customer_id}
    record = reader.customer(customer_id)
    assert record is not None
    assert (record.first_seen_ms, record.identifiers) == (T0, {"anon:d1", "user:ann", "order:o1"})
    assert fold_changes(changes_of([resolution])) == dict.fromkeys(
        ("anon:d1", "user:ann", "order:o1"), customer_id
    )
    assert reader.owner_of("anon:elsewhere") is None and reader.customer("c-none") is None


def test_without_conflicts_customers_are_the_connected_components(graphs: Open) -> None:
    store = graphs(policy=UNLIMITED)
    events = conflict_free_events(seed=3, count=400, size=150)
    resolutions: list[Resolution] = []
    rnd = random.Random(4)
    start = 0
    while start < len(events):  # batches of varying size, as Kafka hands them over
        size = rnd.randint(1, 40)
        resolutions += store.resolve_batch(events[start : start + size])
        start += size
    used = {i for e in events for i in e.identifiers}
    assert partition(graphs(policy=UNLIMITED), used) == components(events)
    linked = [c for c in components(events) if len(c) > 2]
    assert len(linked) > 10  # many customers, and they really linked
    owners = {i: graphs(policy=UNLIMITED).owner_of(i) for i in used}
    assert fold_changes(changes_of(resolutions)) == owners


def test_two_handles_resolving_overlapping_batches_at_once_end_with_the_components(
    graphs: Open,
) -> None:
    events = conflict_free_events(seed=8, count=1200, size=400)
    halves = (events[0::2], events[1::2])
    errors: list[BaseException] = []
    resolved: list[Resolution] = []

    def run(part: list[EventIdentifiers]) -> None:
        store = graphs(policy=UNLIMITED)
        try:
            for start in range(0, len(part), 30):
                resolved.extend(store.resolve_batch(part[start : start + 30]))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(part,)) for part in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    used = {i for e in events for i in e.identifiers}
    assert partition(graphs(policy=UNLIMITED), used) == components(events)
    owners = {i: graphs(policy=UNLIMITED).owner_of(i) for i in used}
    assert fold_changes(changes_of(resolved)) == owners


def test_the_older_customer_survives_a_merge_and_takes_the_identifiers(graphs: Open) -> None:
    store = graphs()
    (old,) = store.resolve_batch([event("e1", "anon:a", "order:1", ts=T0)])
    (young,) = store.resolve_batch([event("e2", "anon:b", ts=T0 + MINUTE)])
    (merge,) = store.resolve_batch([event("e3", "anon:b", "order:1", ts=T0 + 2 * MINUTE)])
    assert old.customer_id is not None and young.customer_id is not None
    assert merge.customer_id == old.customer_id
    assert [(c.kind, c.customer_id, c.merged_from) for c in merge.changes] == [
        ("merged", old.customer_id, (young.customer_id,))
    ]
    assert graphs().customer(young.customer_id) is None
    record = graphs().customer(old.customer_id)
    assert record is not None and record.identifiers == {"anon:a", "anon:b", "order:1"}


def test_an_older_event_arriving_late_gives_the_id_it_would_have_minted_first(
    graphs: Open,
) -> None:
    """The same two events in both arrival orders, on two graphs: the same customer id."""
    early = event("e-early", "anon:x", "order:9", ts=T0)
    late = event("e-late", "anon:x", ts=T0 + MINUTE)
    in_order = graphs("in-order")
    in_order.resolve_batch([early])
    in_order.resolve_batch([late])
    reversed_ = graphs("reversed")
    (first,) = reversed_.resolve_batch([late])
    (renamed,) = reversed_.resolve_batch([early])
    expected = in_order.owner_of("anon:x")
    assert expected is not None and first.customer_id != expected
    assert reversed_.owner_of("anon:x") == reversed_.owner_of("order:9") == expected
    assert ("merged", expected, (first.customer_id,)) in [
        (c.kind, c.customer_id, c.merged_from) for c in renamed.changes
    ]
    assert reversed_.customer(str(first.customer_id)) is None


# --- what never links ---------------------------------------------------------------------


def test_a_shared_device_does_not_fuse_two_logged_in_users(graphs: Open) -> None:
    store = graphs()
    (ann,) = store.resolve_batch([event("e1", "anon:D", "user:ann", ts=T0)])
    (bob,) = store.resolve_batch([event("e2", "anon:D", "user:bob", ts=T0 + MINUTE)])
    conflicts = [c for c in bob.changes if c.kind == "conflict"]
    assert [(c.reason, set(c.identifiers)) for c in conflicts] == [
        ("two_users", {"anon:D", "user:bob"})
    ]
    assert bob.customer_id != ann.customer_id
    assert graphs().owner_of("anon:D") == ann.customer_id
    assert graphs().owner_of("user:bob") == bob.customer_id
    # The same pair again (a repeat on another event) is not reported a second time.
    (again,) = store.resolve_batch([event("e3", "anon:D", "user:bob", ts=T0 + 2 * MINUTE)])
    assert [c for c in again.changes if c.kind == "conflict"] == []


@pytest.mark.parametrize("value", ["undefined", "null", "00000000", ""])
def test_a_junk_value_links_nobody(graphs: Open, value: str) -> None:
    store = graphs()
    first, second = store.resolve_batch(
        [event("e1", f"anon:{value}", "user:u1"), event("e2", f"anon:{value}", "user:u2")]
    )
    assert first.junk == second.junk == (f"anon:{value}",)
    assert first.customer_id != second.customer_id
    assert graphs().owner_of(f"anon:{value}") is None
    (nobody,) = store.resolve_batch([event("e3", f"anon:{value}")])
    assert nobody.customer_id is None and nobody.changes == ()


def test_a_kiosk_seen_with_too_many_customers_is_blocked(graphs: Open) -> None:
    """Six users log in on one kiosk; with at most 3 customers per identifier, the 4th
    blocks it: no user joins another, and the kiosk alone resolves to nobody."""
    store = graphs(policy=IdentityPolicy(max_customers_per_identifier=3))
    logins = [event(f"k{n}", "anon:kiosk", f"user:u{n}", ts=T0 + n) for n in range(6)]
    resolutions = store.resolve_batch(logins[:2]) + store.resolve_batch(logins[2:])
    users = {graphs().owner_of(f"user:u{n}") for n in range(6)}
    assert len(users) == 6
    assert graphs().owner_of("anon:kiosk") == resolutions[0].customer_id
    assert [r.junk for r in resolutions[4:]] == [("anon:kiosk",), ("anon:kiosk",)]
    (alone,) = store.resolve_batch([event("k9", "anon:kiosk", ts=T0 + 9)])
    assert alone.customer_id is None


# --- replays and erasure ------------------------------------------------------------------


def test_a_replayed_batch_resolves_as_the_first_time_and_changes_nothing(graphs: Open) -> None:
    store = graphs()
    batch = [
        event("e1", "anon:a", ts=T0),
        event("e2", "anon:b", "order:1", ts=T0 + 1),
        event("e3", "anon:a", "order:1", ts=T0 + 2),  # merges the two
        event("e4", "anon:a", "user:bob", ts=T0 + 3),
    ]
    first = store.resolve_batch(batch)
    used = {i for e in batch for i in e.identifiers}
    before = {i: graphs().owner_of(i) for i in used}
    # Later events change the graph; then the batch is delivered again (after a crash).
    store.resolve_batch([event("e5", "anon:c", "order:1", ts=T0 + 4)])
    after_more = {i: graphs().owner_of(i) for i in used}
    again = graphs().resolve_batch(batch)
    assert again == first  # the same customers and the same changes, published again
    assert {i: graphs().owner_of(i) for i in used} == after_more == before


def test_forget_erases_every_identifier_of_the_customer(graphs: Open) -> None:
    store = graphs()
    (ann,) = store.resolve_batch([event("e1", "anon:d1", "user:ann", "phone:h1", ts=T0)])
    store.resolve_batch([event("e2", "user:ann", "member:m1", ts=T0 + 1)])
    (other,) = store.resolve_batch([event("e3", "anon:d2", ts=T0 + 2)])
    erased = graphs().forget("member:m1")
    assert erased is not None
    assert (erased.kind, erased.customer_id) == ("erased", ann.customer_id)
    assert sorted(erased.identifiers) == ["anon:d1", "member:m1", "phone:h1", "user:ann"]
    reader = graphs()
    assert all(reader.owner_of(i) is None for i in erased.identifiers)
    assert reader.customer(str(ann.customer_id)) is None
    assert reader.owner_of("anon:d2") == other.customer_id  # nobody else is touched
    assert reader.forget("user:ann") is None  # nothing left to forget
    (later,) = store.resolve_batch([event("e9", "anon:d1", ts=T0 + 9)])
    assert later.created and later.customer_id not in (None, ann.customer_id)


# --- both backends, the same answers --------------------------------------------------------


def stream_with_conflicts(seed: int, count: int) -> list[EventIdentifiers]:
    """Users, cards, shared devices, phones, junk: every rule gets exercised."""
    rnd = random.Random(seed)
    kinds = {"user": 25, "member": 20, "anon": 40, "phone": 15, "email": 15, "order": 60}
    pool = [f"{kind}:{kind[0]}{n}" for kind, size in kinds.items() for n in range(size)]
    pool += ["anon:undefined", "member:0000", "anon:kiosk"] * 3
    return [
        event(f"e{n}", *rnd.sample(pool, rnd.choice((1, 2, 2, 3, 4))), ts=T0 + rnd.randint(0, 900))
        for n in range(count)
    ]  # fmt: skip


@pytest.mark.integration
def test_redis_and_memory_resolve_a_stream_with_conflicts_alike(omni_config: Config) -> None:
    """The memory store is the Redis store's semantics, not a look-alike: the same batches
    give the same resolutions (customers, changes, conflicts, junk) event by event."""
    events = stream_with_conflicts(seed=12, count=1500)
    policy = IdentityPolicy(max_customers_per_identifier=3)
    redis_store = IdentityStore(connect(omni_config), omni_config.redis.key_prefix, policy, 3600)
    memory_store = MemoryIdentityStore(policy)
    try:
        rnd = random.Random(13)
        start, kinds = 0, set()
        while start < len(events):
            batch = events[start : start + rnd.randint(1, 60)]
            start += len(batch)
            expected = redis_store.resolve_batch(batch)
            assert memory_store.resolve_batch(batch) == expected, batch[0].event_id
            kinds |= {c.reason or c.kind for r in expected for c in r.changes}
        assert {"linked", "merged", "two_users", "two_members"} <= kinds
        used = {i for e in events for i in e.identifiers}
        assert {i: memory_store.owner_of(i) for i in used} == {
            i: redis_store.owner_of(i) for i in used
        }
    finally:
        redis_store.close()
