"""OneID rules (CONTRACT §4) on the pure in-memory graph."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.identity import (
    IdentityGraph,
    IdentityPolicy,
    erase_customer,
    link_identifiers,
    normalise_email,
    normalise_phone,
    pii_identifier_value,
)

POLICY = IdentityPolicy()
T0 = 1_793_500_000_000


def link(
    graph: IdentityGraph,
    event_id: str,
    *identifiers: str,
    ts: int = T0,
    policy: IdentityPolicy = POLICY,
):
    return link_identifiers(graph, list(identifiers), event_id, ts, policy)


def test_phone_and_email_normalisation_and_keyed_hash() -> None:
    assert normalise_phone("138-0013-8000") == "8613800138000"
    assert normalise_phone("+86 138 0013 8000") == "8613800138000"
    assert normalise_phone("0086 13800138000") == "8613800138000"
    assert normalise_phone("+44 20 7946 0958") == "442079460958"
    assert normalise_phone("12345") is None  # too short to be anybody's number
    assert normalise_phone("000-0000-0000") is None
    assert normalise_email("  Ann@Example.COM ") == "ann@example.com"
    expected = hmac.new(b"k3y", b"8613800138000", hashlib.sha256).hexdigest()
    assert pii_identifier_value("phone", "138 0013 8000", "k3y", "86") == expected
    assert pii_identifier_value("email", "not-an-email", "k3y", "86") is None


@st.composite
def linking_streams(draw: st.DrawFn) -> list[list[str]]:
    pool = [f"{kind}:v{n}" for kind in ("anon", "phone", "email", "order") for n in range(12)]
    return draw(
        st.lists(st.lists(st.sampled_from(pool), min_size=1, max_size=4), min_size=1, max_size=40)
    )


@settings(max_examples=300, deadline=None)
@given(linking_streams())
def test_customers_are_the_connected_components(stream: list[list[str]]) -> None:
    """Without conflicts, customers are exactly the components of the co-occurrence graph."""
    policy = IdentityPolicy(
        limits={
            "user": 1,
            "member": 1,
            "anon": 10**6,
            "phone": 10**6,
            "email": 10**6,
            "order": 10**6,
        }
    )
    graph = IdentityGraph()
    reference = nx.Graph()
    for n, identifiers in enumerate(stream):
        link(graph, f"e{n}", *identifiers, ts=T0 + n, policy=policy)
        reference.add_nodes_from(identifiers)
        reference.add_edges_from(itertools.pairwise(identifiers))
    customers: dict[str, set[str]] = {}
    for ident, owner in graph.owners.items():
        customers.setdefault(owner, set()).add(ident)
    assert {frozenset(c) for c in customers.values()} == {
        frozenset(c) for c in nx.connected_components(reference)
    }
    assert {cid: c.identifiers for cid, c in graph.customers.items()} == customers


def test_the_older_customer_survives_a_merge() -> None:
    graph = IdentityGraph()
    old = link(graph, "e1", "anon:a", ts=T0).customer_id
    young = link(graph, "e2", "anon:b", ts=T0 + 1000).customer_id
    merge = link(graph, "e3", "anon:b", "anon:a", ts=T0 + 2000)
    assert merge.customer_id == old
    (change,) = [c for c in merge.changes if c.kind == "merged"]
    assert change.merged_from == (young,)
    assert set(graph.owners.values()) == {old}


def test_junk_values_never_link() -> None:
    graph = IdentityGraph()
    for n, junk in enumerate(
        [
            "",
            "null",
            "undefined",
            "anonymous",
            "-1",
            "0",
            "0000",
            "----",
            "00000000-0000-0000-0000-000000000000",
            "NULL",
        ]
    ):
        resolution = link(graph, f"e{n}", f"anon:{junk}", f"user:u{n}")
        assert resolution.junk == (f"anon:{junk}",)
    assert not any(ident.startswith("anon:") for ident in graph.owners)
    assert link(graph, "only-junk", "anon:undefined").customer_id is None
    custom = IdentityPolicy(junk_patterns=(r"store-default-\d+",))
    assert link(IdentityGraph(), "e", "member:store-default-7", policy=custom).customer_id is None


def test_shared_device_with_two_users_is_a_conflict() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "anon:dev", "user:ann").customer_id
    second = link(graph, "e2", "anon:dev", "user:bob")
    assert [c.reason for c in second.changes if c.kind == "conflict"] == ["two_users"]
    assert second.customer_id not in (None, ann)  # resolves to bob's own customer
    assert graph.owners["anon:dev"] == ann


def test_one_loyalty_card_with_two_accounts_is_a_conflict() -> None:
    graph = IdentityGraph()
    link(graph, "o1", "user:ann", "order:1")
    link(graph, "o2", "user:bob", "order:2")
    card = link(graph, "p1", "member:card", "order:1").customer_id
    clash = link(graph, "p2", "member:card", "order:2")
    assert any(c.kind == "conflict" and c.reason == "two_users" for c in clash.changes)
    assert graph.owners["member:card"] == card == graph.owners["user:ann"]
    assert graph.owners["order:2"] == graph.owners["user:bob"] != card


def test_value_seen_with_too_many_customers_is_blocked() -> None:
    graph = IdentityGraph()
    policy = IdentityPolicy(max_customers_per_identifier=2)
    for n in range(4):
        link(graph, f"e{n}", "anon:kiosk", f"user:u{n}", policy=policy)
    assert "anon:kiosk" in graph.blocked
    fresh = link(graph, "late", "anon:kiosk", "phone:abc", policy=policy)
    assert fresh.junk == ("anon:kiosk",)
    assert graph.owners["anon:kiosk"] != graph.owners["phone:abc"]


def test_per_type_limits_refuse_links_and_merges() -> None:
    policy = IdentityPolicy(
        limits={"user": 1, "member": 1, "anon": 2, "phone": 5, "email": 5, "order": 10}
    )
    graph = IdentityGraph()
    link(graph, "e1", "user:ann", "anon:a1", "anon:a2", policy=policy)
    third = link(graph, "e2", "user:ann", "anon:a3", policy=policy)
    assert [c.reason for c in third.changes if c.kind == "conflict"] == ["limit_anon"]
    link(graph, "e3", "phone:p", "anon:b1", policy=policy)
    merge = link(graph, "e4", "user:ann", "phone:p", policy=policy)
    assert [c.reason for c in merge.changes if c.kind == "conflict"] == ["limit_anon"]
    assert graph.owners["phone:p"] != graph.owners["user:ann"]


def test_erasure_forgets_every_identifier_and_a_later_event_starts_afresh() -> None:
    graph = IdentityGraph()
    old = link(graph, "e1", "user:ann", "anon:dev", "phone:h").customer_id
    assert old is not None
    erased = erase_customer(graph, old)
    assert erased is not None and set(erased.identifiers) == {"user:ann", "anon:dev", "phone:h"}
    assert graph.owners == {} and graph.customers == {}
    again = link(graph, "e2", "anon:dev").customer_id
    assert again not in (None, old)


def test_store_pickup_joins_the_member_to_the_online_customer() -> None:
    graph = IdentityGraph()
    online = link(graph, "o1", "anon:dev", "user:cat", "order:100").customer_id
    pickup = link(graph, "p1", "member:m-cat", "order:100", ts=T0 + 1)
    assert pickup.customer_id == online == graph.owners["member:m-cat"]


def test_event_resolves_to_its_highest_priority_identifier() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", "email:e").customer_id
    bob = link(graph, "e2", "user:bob", ts=T0 + 1).customer_id
    mixed = link(graph, "e3", "email:e", "user:bob", ts=T0 + 2)  # user outranks email
    assert mixed.customer_id == bob != ann


def test_replay_of_an_event_changes_nothing() -> None:
    graph = IdentityGraph()
    first = link(graph, "e1", "anon:a", "user:u", "order:1")
    again = link(graph, "e1", "anon:a", "user:u", "order:1")
    assert again.customer_id == first.customer_id and again.changes == ()
