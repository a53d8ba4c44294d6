"""OneID (CONTRACT §4) on the pure in-memory graph of ``domain.identity``.

No Redis, no Kafka: every test builds an ``IdentityGraph`` and applies events to it with
``link_identifiers``, exactly as the Redis store does for the part of the graph a batch touches.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.identity import (
    DEFAULT_JUNK_PATTERNS,
    DEFAULT_LIMITS,
    PRIORITY,
    IdentityChange,
    IdentityGraph,
    IdentityPolicy,
    Resolution,
    by_priority,
    erase_customer,
    hash_pii,
    link_identifiers,
    new_customer_id,
    normalise_email,
    normalise_phone,
    pii_identifier_value,
)
from tests.identity_fold import fold_changes

REPO = Path(__file__).resolve().parents[2]
POLICY = IdentityPolicy()
KEY = "s3cret-pii-key"
T0 = 1_793_500_000_000
MINUTE = 60_000


def link(
    graph: IdentityGraph,
    event_id: str,
    *identifiers: str,
    ts: int = T0,
    policy: IdentityPolicy = POLICY,
) -> Resolution:
    return link_identifiers(graph, list(identifiers), event_id, ts, policy)


def of_kind(resolution: Resolution, kind: str) -> list[IdentityChange]:
    return [change for change in resolution.changes if change.kind == kind]


def conflict_reasons(resolution: Resolution) -> list[str | None]:
    return [change.reason for change in of_kind(resolution, "conflict")]


def customers_by_owner(graph: IdentityGraph) -> dict[str, set[str]]:
    """customer_id → identifiers, as read from ``graph.owners`` alone."""
    found: dict[str, set[str]] = {}
    for ident, owner in graph.owners.items():
        found.setdefault(owner, set()).add(ident)
    return found


def assert_consistent(graph: IdentityGraph) -> None:
    """Every customer holds exactly the identifiers whose owner it is, and nothing dangles."""
    assert {cid: c.identifiers for cid, c in graph.customers.items()} == customers_by_owner(graph)


def phone(raw: str) -> str:
    """The identifier of a raw phone number, as identity_stitch builds it ("" when unusable)."""
    return f"phone:{pii_identifier_value('phone', raw, KEY, '86') or ''}"


# --- normalisation and hashing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13800138000", "8613800138000"),  # bare 11 digits: no country code → default 86
        ("138-0013-8000", "8613800138000"),
        ("(138) 0013 8000", "8613800138000"),
        (" 138 0013 8000 ", "8613800138000"),
        ("+86 138 0013 8000", "8613800138000"),  # leading + marks a country code
        ("0086 138 0013 8000", "8613800138000"),  # so does a leading 00 (dropped)
        ("+44 20 7946 0958", "442079460958"),
        ("0044 20 7946 0958", "442079460958"),
        ("8613800138000", "8613800138000"),  # not 11 digits: kept as it is
        ("138001", "138001"),
    ],
)
def test_phone_is_digits_only_with_the_default_country_code_for_a_bare_number(
    raw: str, expected: str
) -> None:
    assert normalise_phone(raw) == expected


def test_the_default_country_code_is_configurable() -> None:
    assert normalise_phone("138 0013 8000", default_country_code="1") == "113800138000"
    assert normalise_phone("+86 138 0013 8000", default_country_code="1") == "8613800138000"


@pytest.mark.parametrize("raw", ["", "   ", "n/a", "+", "00", "--"])
def test_a_phone_without_digits_is_unusable(raw: str) -> None:
    assert normalise_phone(raw) is None
    assert pii_identifier_value("phone", raw, KEY, "86") is None


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalise_email("  Ann@Example.COM ") == "ann@example.com"
    assert normalise_email("\tBOB@Shop.CN\n") == "bob@shop.cn"


@pytest.mark.parametrize("raw", ["", "   ", "not-an-email"])
def test_an_email_without_at_sign_is_unusable(raw: str) -> None:
    assert normalise_email(raw) is None
    assert pii_identifier_value("email", raw, KEY, "86") is None


def test_pii_is_hmac_sha256_keyed_by_the_utf8_secret_in_lower_case_hex() -> None:
    expected = hmac.new(KEY.encode("utf-8"), b"8613800138000", hashlib.sha256).hexdigest()
    assert hash_pii(KEY, "8613800138000") == expected
    assert len(expected) == 64 and expected == expected.lower()
    non_ascii_key = "密钥-ü"
    assert (
        hash_pii(non_ascii_key, "ann@example.com")
        == hmac.new(non_ascii_key.encode("utf-8"), b"ann@example.com", hashlib.sha256).hexdigest()
    )
    assert hash_pii("another key", "8613800138000") != expected


def test_raw_pii_is_normalised_before_hashing() -> None:
    phone_hash = hmac.new(KEY.encode(), b"8613800138000", hashlib.sha256).hexdigest()
    for raw in ("138-0013-8000", "+86 138 0013 8000", "0086 13800138000"):
        assert pii_identifier_value("phone", raw, KEY, "86") == phone_hash
    email_hash = hmac.new(KEY.encode(), b"ann@example.com", hashlib.sha256).hexdigest()
    assert pii_identifier_value("email", " Ann@Example.com ", KEY, "86") == email_hash


# --- the partition equals the connected components ------------------------------------------

NO_CONFLICT_KINDS = ("anon", "phone", "email", "order")
UNLIMITED = IdentityPolicy(limits={**DEFAULT_LIMITS, **dict.fromkeys(NO_CONFLICT_KINDS, 10**6)})


@st.composite
def conflict_free_streams(draw: st.DrawFn) -> list[list[str]]:
    """Events of 1..4 identifiers that can never conflict: no user/member, no junk values."""
    size = draw(st.integers(min_value=2, max_value=30))
    pool = [f"{kind}:{kind[0]}{n}" for kind in NO_CONFLICT_KINDS for n in range(size)]
    event = st.lists(st.sampled_from(pool), min_size=1, max_size=4)
    return draw(st.lists(event, min_size=1, max_size=60))


@settings(max_examples=300, deadline=None)
@given(conflict_free_streams())
def test_without_conflicts_customers_are_the_connected_components(
    stream: list[list[str]],
) -> None:
    graph = IdentityGraph()
    reference = nx.Graph()
    for n, identifiers in enumerate(stream):
        resolution = link(graph, f"e{n}", *identifiers, ts=T0 + n, policy=UNLIMITED)
        assert resolution.customer_id is not None
        assert conflict_reasons(resolution) == []
        reference.add_nodes_from(identifiers)  # a one-identifier event is an isolated node
        reference.add_edges_from(itertools.pairwise(identifiers))

    partition = {frozenset(ids) for ids in customers_by_owner(graph).values()}
    assert partition == {frozenset(c) for c in nx.connected_components(reference)}
    assert_consistent(graph)
    assert not graph.blocked


@st.composite
def timed_streams_in_two_orders(
    draw: st.DrawFn,
) -> tuple[list[tuple[str, int, list[str]]], list[tuple[str, int, list[str]]]]:
    """Conflict-free events with event times (ties included), and the same events in another
    arrival order, as two partitions read in another interleaving would deliver them."""
    stream = draw(conflict_free_streams())
    times = draw(st.lists(st.integers(0, 20), min_size=len(stream), max_size=len(stream)))
    events = [
        (f"e{n}", T0 + t * MINUTE, ids)
        for n, (t, ids) in enumerate(zip(times, stream, strict=True))
    ]
    return events, draw(st.permutations(events))


@settings(max_examples=300, deadline=None)
@given(timed_streams_in_two_orders())
def test_customer_ids_do_not_depend_on_the_arrival_order(
    orders: tuple[list[tuple[str, int, list[str]]], list[tuple[str, int, list[str]]]],
) -> None:
    """Each customer ends with the id its oldest event mints, however the events arrive, so
    a restart reading the partitions in another interleaving ends with the same keys."""
    graphs = []
    for events in orders:
        graph = IdentityGraph()
        for event_id, ts, identifiers in events:
            link(graph, event_id, *identifiers, ts=ts, policy=UNLIMITED)
        assert_consistent(graph)
        graphs.append(graph)
    first, second = graphs
    assert first.owners == second.owners
    assert {c: v.first_seen_ms for c, v in first.customers.items()} == {
        c: v.first_seen_ms for c, v in second.customers.items()
    }
    for customer_id, customer in first.customers.items():  # the oldest event's id, in order
        oldest = min(
            (ts, new_customer_id(event_id, by_priority(ids)[0]))
            for event_id, ts, ids in orders[0]
            if set(ids) <= customer.identifiers
        )
        assert (customer.first_seen_ms, customer_id) == oldest


def test_an_older_event_arriving_late_renames_its_customer_as_a_merge() -> None:
    graph = IdentityGraph()
    later = link(graph, "e-later", "anon:a", "anon:b", ts=T0 + MINUTE).customer_id
    late_arrival = link(graph, "e-earlier", "anon:b", ts=T0)
    renamed = new_customer_id("e-earlier", "anon:b")
    assert late_arrival.customer_id == renamed != later
    assert not late_arrival.created
    (merged,) = late_arrival.changes
    assert merged == IdentityChange("merged", renamed, ("anon:a", "anon:b"), merged_from=(later,))
    assert graph.owners == {"anon:a": renamed, "anon:b": renamed}
    assert graph.customers[renamed].first_seen_ms == T0 and later not in graph.customers
    assert link(graph, "e-earlier", "anon:b", ts=T0).changes == ()  # a replay changes nothing


def test_an_older_event_minting_a_customer_absorbs_the_younger_one() -> None:
    graph = IdentityGraph()
    later = link(graph, "e-later", "anon:a", ts=T0 + MINUTE).customer_id
    late_arrival = link(graph, "e-earlier", "anon:a", "order:1", ts=T0)
    minted = new_customer_id("e-earlier", "order:1")  # order outranks anon
    assert late_arrival.customer_id == minted and late_arrival.created
    assert late_arrival.changes == (
        IdentityChange("linked", minted, ("order:1",)),
        IdentityChange("merged", minted, ("anon:a",), merged_from=(later,)),
    )
    assert graph.owners == {"anon:a": minted, "order:1": minted}


def folded(changes: list[IdentityChange]) -> dict[str, str]:
    """The reference fold (CONTRACT §4) over the changes the domain produced."""
    return fold_changes((c.kind, c.customer_id, c.identifiers, c.merged_from) for c in changes)


def test_a_minted_customer_that_absorbs_one_and_joins_an_older_one_names_the_survivor() -> None:
    """Seen in the identity SIGKILL test's input (not a crash: an uninterrupted run): a till
    sale with a phone read before the older login carrying that phone, the account and a
    device that browsed before. The login mints a customer for the account, takes the sale's
    customer (younger), then joins the device's customer (older). The merge of the sale's
    customer was published under the minted id, which nothing announced as absorbed: a
    subscriber kept the phone under it, away from the omni:id value."""
    graph = IdentityGraph()
    device = link(graph, "e-browse", "anon:d", ts=T0).customer_id
    sale = link(graph, "e-sale", "phone:p", ts=T0 + 90 * MINUTE).customer_id
    login = link(graph, "e-login", "anon:d", "user:u", "phone:p", ts=T0 + MINUTE)
    assert login.customer_id == device
    assert graph.owners == {"anon:d": device, "user:u": device, "phone:p": device}
    assert {c.customer_id for c in login.changes} == {device}
    assert [c.merged_from for c in of_kind(login, "merged")] == [(sale,)]
    assert folded(
        [*link(IdentityGraph(), "e-browse", "anon:d", ts=T0).changes, *login.changes]
    ) == {"anon:d": device, "user:u": device, "phone:p": device}


@settings(max_examples=300, deadline=None)
@given(timed_streams_in_two_orders())
def test_the_changes_fold_into_the_owners_whatever_the_arrival_order(
    orders: tuple[list[tuple[str, int, list[str]]], list[tuple[str, int, list[str]]]],
) -> None:
    """CONTRACT §4 for a subscriber: linked and merged changes, merged_from as aliases, end
    with exactly the owners, for events arriving in any order (and read in any order)."""
    for events in orders:
        graph = IdentityGraph()
        changes: list[IdentityChange] = []
        for event_id, ts, identifiers in events:
            changes += link(graph, event_id, *identifiers, ts=ts, policy=UNLIMITED).changes
        assert folded(changes) == graph.owners


JUNK_POOL = ("anon:null", "anon:", "member:0", "order:-1", "user:undefined")


@st.composite
def any_streams(draw: st.DrawFn) -> list[list[str]]:
    """Events over every identifier type, with conflicts, limits and junk all possible."""
    pool = [f"{kind}:{kind[0]}{n}" for kind in PRIORITY for n in range(4)] + list(JUNK_POOL)
    event = st.lists(st.sampled_from(pool), min_size=1, max_size=4)
    return draw(st.lists(event, min_size=1, max_size=40))


TIGHT = IdentityPolicy(
    limits={"user": 1, "member": 1, "phone": 2, "email": 2, "order": 3, "anon": 3},
    max_customers_per_identifier=2,
)


@settings(max_examples=300, deadline=None)
@given(any_streams())
def test_the_rules_hold_for_any_stream(stream: list[list[str]]) -> None:
    """Whatever arrives: limits and exclusivity hold, customers only ever grow, the event
    resolves to its highest-priority usable identifier, and a replay changes nothing."""
    junk = TIGHT.compiled_junk()
    graph = IdentityGraph()
    reference = nx.Graph()
    for n, identifiers in enumerate(stream):
        before = dict(graph.owners)
        blocked_before = set(graph.blocked)
        customers_before = {
            cid: (set(c.identifiers), c.first_seen_ms) for cid, c in graph.customers.items()
        }
        resolution = link(graph, f"e{n}", *identifiers, ts=T0 + n % 7, policy=TIGHT)
        # The Redis store writes back exactly the customers the changes name.
        named = {change.customer_id for change in resolution.changes}
        for cid, customer in graph.customers.items():
            if customers_before.get(cid) != (customer.identifiers, customer.first_seen_ms):
                assert cid in named, (cid, resolution)

        usable = [
            i
            for i in by_priority(identifiers)
            if not junk.fullmatch(i.split(":", 1)[1]) and i not in blocked_before
        ]
        if usable:
            assert resolution.customer_id == graph.owners[usable[0]]
        else:
            assert resolution.customer_id is None and resolution.changes == ()

        assert_consistent(graph)
        for customer in graph.customers.values():
            for kind, limit in TIGHT.limits.items():
                assert len(customer.of_kind(kind)) <= limit
        for a, b in itertools.combinations(before, 2):  # linked identifiers stay linked
            if before[a] == before[b]:
                assert graph.owners[a] == graph.owners[b]

        replayed = copy.deepcopy(graph)
        again = link(replayed, f"e{n}", *identifiers, ts=T0 + n % 7, policy=TIGHT)
        assert again.customer_id == resolution.customer_id
        assert replayed.owners == graph.owners and replayed.blocked == graph.blocked

        clean = [i for i in identifiers if not junk.fullmatch(i.split(":", 1)[1])]
        reference.add_nodes_from(clean)
        reference.add_edges_from(itertools.pairwise(clean))

    component = {i: n for n, c in enumerate(nx.connected_components(reference)) for i in c}
    for customer in graph.customers.values():  # a customer never spans two components
        assert len({component[i] for i in customer.identifiers}) == 1


# --- survivor rule ------------------------------------------------------------------------


@pytest.mark.parametrize("order", [("anon:old", "anon:young"), ("anon:young", "anon:old")])
def test_the_customer_first_seen_earlier_keeps_its_id(order: tuple[str, str]) -> None:
    graph = IdentityGraph()
    old = link(graph, "e-old", "anon:old", ts=T0).customer_id
    young = link(graph, "e-young", "anon:young", ts=T0 + MINUTE).customer_id
    assert old is not None and young is not None

    merge = link(graph, "e-link", *order, ts=T0 + 2 * MINUTE)

    assert merge.customer_id == old
    (merged,) = of_kind(merge, "merged")
    assert merged.customer_id == old
    assert merged.merged_from == (young,)
    assert merged.identifiers == ("anon:young",)
    assert young not in graph.customers
    assert graph.owners == {"anon:old": old, "anon:young": old}
    assert graph.customers[old].first_seen_ms == T0


def test_the_older_customer_survives_even_when_it_was_first_seen_by_a_later_event() -> None:
    """Age is event time (first seen), not arrival order."""
    graph = IdentityGraph()
    late_arrival = link(graph, "e1", "anon:a", ts=T0 + MINUTE).customer_id
    early_event = link(graph, "e2", "anon:b", ts=T0).customer_id
    merge = link(graph, "e3", "anon:a", "anon:b", ts=T0 + 2 * MINUTE)
    assert merge.customer_id == early_event
    assert of_kind(merge, "merged")[0].merged_from == (late_arrival,)


def test_on_equal_first_seen_the_smaller_id_survives() -> None:
    graph = IdentityGraph()
    first = link(graph, "e1", "anon:a", ts=T0).customer_id
    second = link(graph, "e2", "anon:b", ts=T0).customer_id
    assert first is not None and second is not None
    smaller, larger = sorted([first, second])

    merge = link(graph, "e3", "anon:b", "anon:a", ts=T0 + MINUTE)

    assert merge.customer_id == smaller
    assert of_kind(merge, "merged")[0].merged_from == (larger,)


def test_one_event_merging_three_customers_keeps_the_oldest() -> None:
    graph = IdentityGraph()
    ids = [link(graph, f"e{n}", f"anon:a{n}", ts=T0 + n * MINUTE).customer_id for n in range(3)]
    merge = link(graph, "e-all", "anon:a2", "anon:a1", "anon:a0", ts=T0 + 9 * MINUTE)
    assert merge.customer_id == ids[0]
    assert sorted(c.merged_from[0] for c in of_kind(merge, "merged")) == sorted(ids[1:])
    assert list(graph.customers) == [ids[0]]
    assert_consistent(graph)


def test_a_customer_minted_by_the_event_joins_the_known_one_instead_of_merging() -> None:
    graph = IdentityGraph()
    known = link(graph, "e1", "anon:a", ts=T0).customer_id
    login = link(graph, "e2", "user:ann", "anon:a", ts=T0 + MINUTE)
    assert login.customer_id == known
    assert not login.created
    assert of_kind(login, "merged") == []
    (linked,) = of_kind(login, "linked")
    assert linked.customer_id == known and linked.identifiers == ("user:ann",)
    assert list(graph.customers) == [known]


def test_an_event_with_new_identifiers_only_creates_one_customer() -> None:
    graph = IdentityGraph()
    resolution = link(graph, "e1", "anon:a", "user:ann", "order:1")
    assert resolution.created
    assert resolution.customer_id == new_customer_id("e1", "user:ann")
    (linked,) = resolution.changes
    assert linked.kind == "linked"
    assert set(linked.identifiers) == {"anon:a", "user:ann", "order:1"}


# --- junk identifiers ---------------------------------------------------------------------

JUNK_VALUES = [
    "",
    "null",
    "NULL",
    "undefined",
    "anonymous",
    "-1",
    "0",
    "0000",
    "----",
    "00000000-0000-0000-0000-000000000000",
]


@pytest.mark.parametrize("value", JUNK_VALUES)
def test_a_junk_value_never_links(value: str) -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", f"anon:{value}", "user:ann")
    bob = link(graph, "e2", f"anon:{value}", "user:bob")
    assert ann.junk == bob.junk == (f"anon:{value}",)
    assert ann.customer_id != bob.customer_id
    assert f"anon:{value}" not in graph.owners
    assert conflict_reasons(bob) == []  # refused as junk, not as a conflict
    assert graph.sightings == {}


@pytest.mark.parametrize("value", JUNK_VALUES)
def test_an_event_with_only_junk_resolves_to_nobody(value: str) -> None:
    graph = IdentityGraph()
    resolution = link(graph, "e1", f"anon:{value}", f"member:{value}", f"order:{value}")
    assert resolution.customer_id is None
    assert resolution.changes == ()
    assert not resolution.created
    assert graph.owners == {} and graph.customers == {}


@pytest.mark.parametrize("value", ["1", "10", "a0", "guest42", "null-island"])
def test_ordinary_values_that_look_a_bit_like_junk_still_link(value: str) -> None:
    graph = IdentityGraph()
    resolution = link(graph, "e1", f"anon:{value}", "user:ann")
    assert resolution.junk == ()
    assert graph.owners[f"anon:{value}"] == graph.owners["user:ann"]


def test_a_custom_junk_pattern_is_refused_too() -> None:
    policy = IdentityPolicy(junk_patterns=(*DEFAULT_JUNK_PATTERNS, r"store-default-\d+"))
    graph = IdentityGraph()
    ann = link(graph, "e1", "member:store-default-7", "order:1", policy=policy)
    bob = link(graph, "e2", "member:store-default-7", "order:2", policy=policy)
    assert ann.junk == bob.junk == ("member:store-default-7",)
    assert ann.customer_id != bob.customer_id
    assert link(graph, "e3", "anon:null", policy=policy).customer_id is None
    assert link(graph, "e4", "member:store-default-7", policy=policy).customer_id is None


def test_the_highest_priority_identifier_is_skipped_when_it_is_junk() -> None:
    graph = IdentityGraph()
    device = link(graph, "e1", "anon:dev").customer_id
    resolution = link(graph, "e2", "user:undefined", "anon:dev", ts=T0 + MINUTE)
    assert resolution.customer_id == device
    assert resolution.junk == ("user:undefined",)


@pytest.mark.parametrize("raw", ["0", "00000000000", "-1"])
def test_a_junk_phone_number_never_links(raw: str) -> None:
    """A form's placeholder phone ("0", all zeros) must not fuse the visitors who typed it."""
    graph = IdentityGraph()
    first = link(graph, "e1", "anon:visitor-1", phone(raw))
    second = link(graph, "e2", "anon:visitor-2", phone(raw))
    assert first.customer_id != second.customer_id
    assert graph.owners["anon:visitor-1"] != graph.owners["anon:visitor-2"]


# --- blocking values seen with too many customers -----------------------------------------


def test_an_anon_id_seen_with_more_customers_than_allowed_is_blocked() -> None:
    policy = IdentityPolicy(max_customers_per_identifier=3)
    graph = IdentityGraph()
    first = link(graph, "e0", "anon:kiosk", "user:u0", policy=policy).customer_id
    for n in (1, 2):
        link(graph, f"e{n}", "anon:kiosk", f"user:u{n}", policy=policy)
    assert "anon:kiosk" not in graph.blocked  # seen with 3 customers: not more than 3

    link(graph, "e3", "anon:kiosk", "user:u3", policy=policy)  # the 4th
    assert "anon:kiosk" in graph.blocked
    assert len(graph.sightings["anon:kiosk"]) == 4

    later = link(graph, "e4", "anon:kiosk", "user:u4", policy=policy)
    assert later.junk == ("anon:kiosk",)
    assert conflict_reasons(later) == []  # refused before it could conflict
    fresh = link(graph, "e5", "anon:kiosk", "phone:p", policy=policy)
    assert fresh.junk == ("anon:kiosk",)
    assert graph.owners["phone:p"] != graph.owners["anon:kiosk"] == first
    assert link(graph, "e6", "anon:kiosk", policy=policy).customer_id is None


def test_the_number_of_customers_before_blocking_is_configurable() -> None:
    policy = IdentityPolicy(max_customers_per_identifier=1)
    graph = IdentityGraph()
    link(graph, "e0", "anon:kiosk", "user:u0", policy=policy)
    link(graph, "e1", "anon:kiosk", "user:u1", policy=policy)
    assert "anon:kiosk" in graph.blocked


def test_a_stores_default_loyalty_card_is_blocked_once_seen_with_too_many_customers() -> None:
    """The till scans the store's own card for shoppers without one; each pickup pairs it with
    the order of a different online customer. It must end up blocked, not stay with the first."""
    policy = IdentityPolicy(max_customers_per_identifier=3)
    graph = IdentityGraph()
    for n in range(6):
        link(graph, f"o{n}", f"anon:a{n}", f"user:u{n}", f"order:o{n}", ts=T0 + n, policy=policy)
    for n in range(6):
        link(graph, f"p{n}", "member:STORE-CARD", f"order:o{n}", ts=T0 + MINUTE + n, policy=policy)

    assert "member:STORE-CARD" in graph.blocked
    sale = link(
        graph, "p-next", "member:STORE-CARD", "order:o-next", ts=T0 + 2 * MINUTE, policy=policy
    )
    assert sale.customer_id != graph.owners["user:u0"]


# --- conflicts ----------------------------------------------------------------------------


def test_a_shared_device_does_not_fuse_two_logged_in_users() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "anon:D", "user:ann", ts=T0).customer_id
    second = link(graph, "e2", "anon:D", "user:bob", ts=T0 + MINUTE)

    assert conflict_reasons(second) == ["two_users"]
    (conflict,) = of_kind(second, "conflict")
    assert set(conflict.identifiers) == {"user:bob", "anon:D"}
    bob = graph.owners["user:bob"]
    assert second.customer_id == bob != ann
    assert conflict.customer_id == bob
    assert graph.owners["anon:D"] == ann
    assert graph.customers[ann].identifiers == {"anon:D", "user:ann"}
    assert graph.customers[bob].identifiers == {"user:bob"}
    assert of_kind(second, "merged") == []


def test_one_loyalty_card_scanned_with_two_accounts_is_a_conflict() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "member:M", "user:ann", ts=T0).customer_id
    second = link(graph, "e2", "member:M", "user:bob", ts=T0 + MINUTE)

    assert conflict_reasons(second) == ["two_users"]
    assert graph.owners["member:M"] == ann
    assert second.customer_id == graph.owners["user:bob"] != ann  # user outranks member


def test_one_loyalty_card_used_for_two_online_customers_pickups_is_a_conflict() -> None:
    graph = IdentityGraph()
    ann = link(graph, "o1", "user:ann", "order:1", ts=T0).customer_id
    bob = link(graph, "o2", "user:bob", "order:2", ts=T0 + 1).customer_id
    first = link(graph, "p1", "member:M", "order:1", ts=T0 + MINUTE)
    assert first.customer_id == ann
    clash = link(graph, "p2", "member:M", "order:2", ts=T0 + 2 * MINUTE)

    assert conflict_reasons(clash) == ["two_users"]
    assert graph.owners["member:M"] == ann
    assert graph.owners["order:2"] == bob
    assert clash.customer_id == ann  # member outranks order


def test_a_merge_giving_one_customer_two_members_is_a_conflict() -> None:
    graph = IdentityGraph()
    first = link(graph, "e1", "member:M1", "anon:x", ts=T0).customer_id
    second = link(graph, "e2", "member:M2", "anon:y", ts=T0 + 1).customer_id
    clash = link(graph, "e3", "anon:x", "anon:y", ts=T0 + MINUTE)
    assert conflict_reasons(clash) == ["two_members"]
    assert graph.owners["anon:y"] == second != first == graph.owners["anon:x"]


def test_two_users_in_one_event_are_a_conflict() -> None:
    graph = IdentityGraph()
    resolution = link(graph, "e1", "user:ann", "user:bob")
    assert conflict_reasons(resolution) == ["two_users"]
    assert graph.owners == {"user:ann": resolution.customer_id}


_BOTH_CLASH = """
from domain.identity import IdentityGraph, IdentityPolicy, link_identifiers
graph, policy = IdentityGraph(), IdentityPolicy()
link_identifiers(graph, ["user:ann", "member:m-ann", "anon:a"], "e1", 1, policy)
link_identifiers(graph, ["user:bob", "member:m-bob", "anon:b"], "e2", 2, policy)
resolution = link_identifiers(graph, ["anon:a", "anon:b"], "e3", 3, policy)
print(*[c.reason for c in resolution.changes if c.kind == "conflict"])
"""


def test_the_conflict_reason_does_not_depend_on_the_process() -> None:
    """A merge clashing on both user and member reports the same reason in every process
    (identity.changes and the conflicts metric must not vary with PYTHONHASHSEED)."""
    reasons = set()
    for seed in range(8):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        done = subprocess.run(
            [sys.executable, "-c", _BOTH_CLASH],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        reasons.add(done.stdout.strip())
    assert len(reasons) == 1, reasons


def test_a_conflict_names_a_customer_that_exists_after_the_event() -> None:
    """Bob logs in on Ann's device and on a device seen before: the conflict over Ann's device
    must be reported against the customer Bob ends up as, not one that no longer exists."""
    graph = IdentityGraph()
    link(graph, "e1", "user:ann", "anon:ann-phone", ts=T0)
    link(graph, "e2", "anon:laptop", ts=T0 + 1)
    resolution = link(graph, "e3", "user:bob", "anon:ann-phone", "anon:laptop", ts=T0 + 2)
    assert conflict_reasons(resolution) == ["two_users"]
    for change in resolution.changes:
        assert change.customer_id in graph.customers, change


def test_a_replayed_conflict_does_not_count_a_customer_that_no_longer_exists() -> None:
    """Bob's new login conflicts over Ann's user id, then joins the member card's customer in
    the same event. Ann's id was seen with two real customers; replaying the event must not
    make it three (the minted-then-absorbed id counted as a third) and block Ann's user id."""
    policy = IdentityPolicy(max_customers_per_identifier=2)
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", ts=T0, policy=policy).customer_id
    card = link(graph, "e2", "member:m", ts=T0 + 1, policy=policy).customer_id
    event = ("user:bob", "user:ann", "member:m")
    first = link(graph, "e3", *event, ts=T0 + 2, policy=policy)
    assert first.customer_id == card
    assert graph.sightings["user:ann"] <= {ann, card}

    link(graph, "e3", *event, ts=T0 + 2, policy=policy)
    assert "user:ann" not in graph.blocked


# --- per-type limits ----------------------------------------------------------------------

TWO_ANON = IdentityPolicy(limits={**DEFAULT_LIMITS, "anon": 2})


def test_an_identifier_beyond_its_type_limit_is_refused() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", "anon:a1", "anon:a2", policy=TWO_ANON).customer_id
    third = link(graph, "e2", "user:ann", "anon:a3", policy=TWO_ANON)
    assert conflict_reasons(third) == ["limit_anon"]
    assert third.customer_id == ann
    assert "anon:a3" not in graph.owners
    assert graph.customers[ann].of_kind("anon") == {"anon:a1", "anon:a2"}


def test_a_merge_beyond_a_type_limit_is_refused() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", "anon:a1", "anon:a2", policy=TWO_ANON).customer_id
    other = link(graph, "e2", "phone:p", "anon:b1", ts=T0 + MINUTE, policy=TWO_ANON).customer_id
    merge = link(graph, "e3", "user:ann", "phone:p", ts=T0 + 2 * MINUTE, policy=TWO_ANON)
    assert conflict_reasons(merge) == ["limit_anon"]
    assert of_kind(merge, "merged") == []
    assert graph.owners["phone:p"] == graph.owners["anon:b1"] == other != ann


def test_the_default_limit_is_100_anon_ids_per_customer() -> None:
    graph = IdentityGraph()
    for n in range(100):
        assert conflict_reasons(link(graph, f"e{n}", "user:ann", f"anon:a{n}")) == []
    refused = link(graph, "e100", "user:ann", "anon:a100")
    assert conflict_reasons(refused) == ["limit_anon"]
    assert len(graph.customers[graph.owners["user:ann"]].of_kind("anon")) == 100


# --- erasure ------------------------------------------------------------------------------


def test_erasure_forgets_every_identifier_of_the_customer() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", "anon:dev", phone("138 0013 8000")).customer_id
    bob = link(graph, "e2", "user:bob", "anon:bob-dev").customer_id
    assert ann is not None

    erased = erase_customer(graph, ann)

    assert erased is not None
    assert erased.kind == "erased" and erased.customer_id == ann
    assert set(erased.identifiers) == {"user:ann", "anon:dev", phone("138 0013 8000")}
    assert ann not in graph.customers
    assert ann not in graph.owners.values()
    assert graph.owners == {"user:bob": bob, "anon:bob-dev": bob}  # others untouched
    assert_consistent(graph)


def test_after_erasure_a_later_event_starts_a_new_customer() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", "anon:dev", ts=T0).customer_id
    assert ann is not None
    erase_customer(graph, ann)

    later = link(graph, "e2", "anon:dev", ts=T0 + MINUTE)

    assert later.created
    assert later.customer_id not in (None, ann)
    assert graph.customers[later.customer_id].identifiers == {"anon:dev"}
    assert "user:ann" not in graph.owners


def test_erasing_an_unknown_customer_changes_nothing() -> None:
    graph = IdentityGraph()
    link(graph, "e1", "anon:a")
    before = copy.deepcopy(graph)
    assert erase_customer(graph, "c-unknown") is None
    assert graph == before


# --- store pickup -------------------------------------------------------------------------


def test_a_store_pickup_joins_the_in_store_member_to_the_online_customer() -> None:
    graph = IdentityGraph()
    online = link(graph, "o1", "anon:X", "user:U", "order:O", ts=T0).customer_id
    store = link(graph, "pos1", "member:M", "order:O", ts=T0 + 3 * MINUTE)

    assert store.customer_id == online
    assert graph.owners["member:M"] == online
    assert graph.customers[online].identifiers == {"anon:X", "user:U", "order:O", "member:M"}
    assert not store.created
    assert of_kind(store, "linked")[0].identifiers == ("member:M",)


def test_a_member_known_in_store_joins_the_online_customer_at_pickup() -> None:
    graph = IdentityGraph()
    online = link(graph, "o1", "anon:X", "user:U", "order:O", ts=T0 + MINUTE).customer_id
    member = link(graph, "pos0", "member:M", "order:old", ts=T0).customer_id  # seen first
    pickup = link(graph, "pos1", "member:M", "order:O", ts=T0 + 2 * MINUTE)

    assert pickup.customer_id == member  # the older customer keeps its id
    assert of_kind(pickup, "merged")[0].merged_from == (online,)
    assert graph.owners["user:U"] == graph.owners["member:M"] == member


# --- priority -----------------------------------------------------------------------------


def test_identifiers_are_taken_user_member_phone_email_order_anon() -> None:
    mixed = ["anon:a2", "order:o", "email:e", "anon:a1", "phone:p", "member:m", "user:u", "anon:a2"]
    assert by_priority(mixed) == [
        "user:u",
        "member:m",
        "phone:p",
        "email:e",
        "order:o",
        "anon:a2",  # stable within a type, duplicates dropped
        "anon:a1",
    ]


def test_when_a_conflict_blocks_the_merge_the_event_goes_to_its_highest_priority_owner() -> None:
    graph = IdentityGraph()
    ann = link(graph, "e1", "user:ann", "email:e", ts=T0).customer_id
    bob = link(graph, "e2", "user:bob", ts=T0 + 1).customer_id
    mixed = link(graph, "e3", "email:e", "user:bob", ts=T0 + 2)  # user outranks email
    assert conflict_reasons(mixed) == ["two_users"]
    assert mixed.customer_id == bob != ann


def test_a_member_outranks_a_phone_when_they_belong_to_different_users() -> None:
    graph = IdentityGraph()
    link(graph, "e1", "user:ann", "phone:p", ts=T0)
    bob = link(graph, "e2", "user:bob", "member:m", ts=T0 + 1).customer_id
    sale = link(graph, "e3", "phone:p", "member:m", ts=T0 + 2)
    assert conflict_reasons(sale) == ["two_users"]
    assert sale.customer_id == bob


# --- replay -------------------------------------------------------------------------------


def test_replaying_an_event_changes_nothing() -> None:
    graph = IdentityGraph()
    first = link(graph, "e1", "anon:a", "user:u", "order:1")
    state = copy.deepcopy(graph)
    again = link(graph, "e1", "anon:a", "user:u", "order:1")
    assert again.customer_id == first.customer_id
    assert again.changes == ()
    assert not again.created
    assert graph == state


def test_replaying_a_merging_event_changes_nothing() -> None:
    graph = IdentityGraph()
    link(graph, "e1", "anon:a", ts=T0)
    link(graph, "e2", "anon:b", ts=T0 + 1)
    first = link(graph, "e3", "anon:a", "anon:b", ts=T0 + 2)
    assert of_kind(first, "merged")
    again = link(graph, "e3", "anon:a", "anon:b", ts=T0 + 2)
    assert again.customer_id == first.customer_id and again.changes == ()


def test_replaying_a_conflicting_event_reports_nothing_new() -> None:
    """A replay (at-least-once delivery) must not publish the conflict a second time."""
    graph = IdentityGraph()
    link(graph, "e1", "anon:D", "user:ann", ts=T0)
    first = link(graph, "e2", "anon:D", "user:bob", ts=T0 + 1)
    assert conflict_reasons(first) == ["two_users"]
    again = link(graph, "e2", "anon:D", "user:bob", ts=T0 + 1)
    assert again.customer_id == first.customer_id
    assert again.changes == ()


def test_customer_ids_are_deterministic_per_event_and_identifier() -> None:
    cid = new_customer_id("e1", "user:u")
    assert cid == new_customer_id("e1", "user:u")
    assert cid.startswith("c") and len(cid) == 20
    int(cid[1:], 16)
    assert cid != new_customer_id("e2", "user:u")
    assert cid != new_customer_id("e1", "user:v")
