"""identity_stitch run in-process (``tests/inprocess.MemoryIO`` and ``MemoryIdentityStore``):
the real dataflow on a hand-written scenario and on generated traffic, on 1 worker and on 2.
No broker, no Redis.

Expectations come from outside the code: the scenario's customers written out by hand
(shared device, card and phone joining an account, a store pickup, junk, a kiosk, a
walk-in); for the generated traffic, which links no two users, the customers are the
connected components of the events' identifiers (a reference union-find over the raw
events, ``networkx``); ``identity.changes`` folds (CONTRACT §4, ``tests/identity_fold.py``)
into the owners the store ends with; every good event is on ``events.resolved`` with a
customer its changes lead to, and exactly the malformed ones on ``deadletter``, where they
were read. 1 worker reads one source topic after topic; 2 workers read a source partition
per topic × partition each, as on Kafka: the customers, ids included, must not differ.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

import networkx as nx
import orjson
import pytest

from base.config import Config
from connectors.generator import GeneratedEvent, TrafficModel
from connectors.reference_files import load_reference
from domain.identity import hash_pii
from flows.identity_stitch import build
from state.memory_identity import MemoryIdentityStore
from tests.identity_fold import fold_changes
from tests.inprocess import MemoryIO, run

KEY = "in-process-secret"
CONFIG = Config().with_overrides(pii={"key": KEY})
REFERENCE = load_reference(CONFIG)
PARTITIONS = 4
INPUTS = ("clickstream", "pos.sales")
T = 1_793_500_000_000


@dataclass
class Run:
    store: MemoryIdentityStore
    io: MemoryIO

    def values(self, topic: str) -> list[dict[str, Any]]:
        return self.io.values(topic)

    def changes(self) -> list[dict[str, Any]]:
        return [envelope["data"] for envelope in self.values("identity.changes")]

    def everything_written(self) -> bytes:
        return b"\n".join(m.value for ms in self.io.collect().values() for m in ms)


def run_flow(io: MemoryIO, workers: int) -> Run:
    store = MemoryIdentityStore.from_config(CONFIG)
    run(build(CONFIG, reference=REFERENCE, io=io, identity_store=lambda: store), workers)
    return Run(store, io)


def folded(changes: list[dict[str, Any]]) -> dict[str, str]:
    return fold_changes(
        (c["kind"], c["customer_id"], c["identifiers"], c["merged_from"]) for c in changes
    )


def survivor(changes: list[dict[str, Any]]) -> dict[str, str]:
    """customer id → the customer it ended in, through the ``merged_from`` aliases."""
    alias = {old: c["customer_id"] for c in changes for old in c["merged_from"]}

    def final(customer_id: str) -> str:
        while customer_id in alias:
            customer_id = alias[customer_id]
        return customer_id

    return {cid: final(cid) for cid in {*alias, *(c["customer_id"] for c in changes)}}


# --- a hand-written scenario ----------------------------------------------------------------


def click(n: int, event_type: str, anon: str, **fields: object) -> dict[str, Any]:
    return {"event_id": f"c{n}", "event_type": event_type, "ts": T + n * 1000,
            "anonymous_id": anon, "channel": "app", **fields}  # fmt: skip


def sale(n: int, **fields: object) -> dict[str, Any]:
    return {"event_id": f"p{n}", "event_type": "sale", "ts": T + n * 1000, "store_id": "ST-SH-01",
            "receipt_id": f"r{n}", "total": 9.9,
            "lines": [{"sku": "SKU-10001", "qty": 1, "unit_price": 9.9}], **fields}  # fmt: skip


def order(n: int, anon: str, user: str, order_id: str) -> dict[str, Any]:
    return click(n, "order_placed", anon, user_id=user, order_id=order_id, total=9.9,
                 lines=[{"sku": "SKU-10001", "qty": 1, "unit_price": 9.9}],
                 fulfillment={"type": "store_pickup", "location_id": "ST-SH-01"})  # fmt: skip


CLICKS = [
    click(1, "login", "dev-1", user_id="u-ann", phone="138-0013-8000", email=" Ann@Example.COM "),
    click(2, "login", "dev-1", user_id="u-bob"),  # a shared device: two users, a conflict
    order(4, "dev-9", "u-cat", "o-100"),
    click(10, "login", "undefined", user_id="u-fay"),  # a junk anon id links nobody
    *[click(20 + i, "login", "kiosk-1", user_id=f"u-k{i}") for i in range(6)],  # a kiosk
]
SALES = [
    sale(3, member_code="m-ann", phone="+86 13800138000"),  # the same phone: joins Ann
    sale(5, member_code="m-cat", order_id="o-100"),  # the pickup joins the card to Cat
    sale(31),  # a walk-in: no identifier at all
]
BROKEN = b'{"event_id":"bad1","phone":"13912345678","email":"bob.secret@shop.example"'
RAW_PII = ["138-0013-8000", "13800138000", "Ann@Example.COM", "ann@example.com", "13912345678",
           "bob.secret@shop.example"]  # fmt: skip
PHONE = f"phone:{hash_pii(KEY, '8613800138000')}"  # CONTRACT §4: HMAC of the normalised value
EMAIL = f"email:{hash_pii(KEY, 'ann@example.com')}"


@cache
def scenario(workers: int) -> Run:
    io = MemoryIO(CONFIG, partitioned=workers > 1)
    io.add("clickstream", CLICKS)
    io.add("clickstream", [BROKEN], partition=1)
    io.add("pos.sales", SALES)
    return run_flow(io, workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_scenarios_customers_are_those_written_by_hand(workers: int) -> None:
    result = scenario(workers)
    owner = result.store.owner_of
    ann = owner("user:u-ann")
    assert ann is not None
    assert {owner(i) for i in ("anon:dev-1", PHONE, EMAIL, "member:m-ann")} == {ann}
    bob, cat = owner("user:u-bob"), owner("user:u-cat")
    assert len({ann, bob, cat}) == 3 and None not in (bob, cat)
    assert {owner(i) for i in ("anon:dev-9", "order:o-100", "member:m-cat")} == {cat}
    assert owner("anon:undefined") is None and owner("user:u-fay") is not None
    assert len({owner(f"user:u-k{i}") for i in range(6)}) == 6  # the kiosk fused nobody
    record = result.store.customer(ann)
    assert record is not None and record.first_seen_ms == T + 1000
    assert record.identifiers == {"anon:dev-1", "user:u-ann", PHONE, EMAIL, "member:m-ann"}

    changes = result.changes()
    assert folded(changes) == result.store.owners
    conflicts = [c for c in changes if c["kind"] == "conflict"]
    assert {c["reason"] for c in conflicts} == {"two_users"}
    assert any(set(c["identifiers"]) == {"anon:dev-1", "user:u-bob"} for c in conflicts)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_scenarios_events_are_resolved_and_the_broken_one_dead_lettered(
    workers: int,
) -> None:
    result = scenario(workers)
    written = result.values("events.resolved")
    resolved = {r["event_id"]: r for r in written if r["source_topic"] != "identity"}
    assert sorted(resolved) == sorted(e["event_id"] for e in [*CLICKS, *SALES])
    # Each merge also put its two notices in the customers' streams (merged id → survivor).
    notices = [r for r in written if r["source_topic"] == "identity"]
    away = {(r["customer_id"], r["into"]) for r in notices if r["event_type"] == "identity_merged"}
    absorbed = {
        (r["merged_from"], r["customer_id"])
        for r in notices
        if r["event_type"] == "identity_absorbed"
    }
    merges = {
        (old, c["customer_id"])
        for c in result.changes()
        if c["kind"] == "merged"
        for old in c["merged_from"]
    }
    assert away == absorbed == merges
    final = survivor(result.changes())
    assert final[resolved["c2"]["customer_id"]] == result.store.owner_of("user:u-bob")
    assert final[resolved["p3"]["customer_id"]] == result.store.owner_of("user:u-ann")
    assert resolved["p31"]["customer_id"] is None
    assert resolved["p3"]["source_topic"] == "pos.sales" and resolved["c1"]["ts"] == T + 1000
    assert all("phone" not in r and "email" not in r for r in resolved.values())
    (letter,) = result.values("deadletter")
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("clickstream", 1, 0)
    assert (letter["reason"], letter["flow"]) == ("malformed_json", "identity_stitch")
    written = result.everything_written().decode().lower()
    assert not [raw for raw in RAW_PII if raw.lower() in written]


def test_the_scenario_ends_the_same_on_one_and_two_workers() -> None:
    assert scenario(1).store.owners == scenario(2).store.owners


# --- generated traffic ----------------------------------------------------------------------


@cache
def traffic() -> tuple[GeneratedEvent, ...]:
    events = TrafficModel(REFERENCE, seed=21, customers=300, bad_ratio=0.03).events(6000)
    return tuple(e for e in events if e.topic in INPUTS)


def partition_of(event: GeneratedEvent) -> int:
    return zlib.crc32(event.key) % PARTITIONS


@cache
def generated(workers: int) -> Run:
    io = MemoryIO(
        CONFIG, partition_counts=dict.fromkeys(INPUTS, PARTITIONS), partitioned=workers > 1
    )
    for e in traffic():
        io.add(e.topic, [(e.key, e.value)], partition_of(e))
    return run_flow(io, workers)


def identifiers(doc: dict[str, Any]) -> list[str]:
    """An event's identifiers read from its raw JSON (CONTRACT §4): phone and e-mail as the
    keyed hash of their normalised value."""
    found = [f"{kind}:{doc[field]}" for kind, field in
             (("anon", "anonymous_id"), ("user", "user_id"), ("member", "member_code"),
              ("order", "order_id")) if field in doc]  # fmt: skip
    if "email" in doc:
        found.append(f"email:{hash_pii(KEY, doc['email'].strip().lower())}")
    if "phone" in doc:
        digits = "".join(ch for ch in doc["phone"] if ch.isdigit())
        if doc["phone"].strip().startswith("+"):
            normalised = digits
        elif digits.startswith("00"):
            normalised = digits[2:]
        else:
            normalised = "86" + digits if len(digits) == 11 else digits
        found.append(f"phone:{hash_pii(KEY, normalised)}")
    return found


def good_events() -> list[dict[str, Any]]:
    return [orjson.loads(e.value) for e in traffic() if e.bad_reason is None]


@pytest.mark.parametrize("workers", [1, 2])
def test_generated_customers_are_the_connected_components_of_their_identifiers(
    workers: int,
) -> None:
    result = generated(workers)
    reference = nx.Graph()
    for doc in good_events():
        ids = identifiers(doc)
        reference.add_nodes_from(ids)
        reference.add_edges_from(itertools.pairwise(ids))
    groups: dict[str, set[str]] = {}
    for ident, owner in result.store.owners.items():
        groups.setdefault(owner, set()).add(ident)
    expected = {frozenset(c) for c in nx.connected_components(reference)}
    assert {frozenset(g) for g in groups.values()} == expected
    for owner, members in groups.items():
        record = result.store.customer(owner)
        assert record is not None and record.identifiers == members
    assert sum(1 for c in expected if len(c) > 2) > 50  # customers that really linked
    changes = result.changes()
    assert [c for c in changes if c["kind"] == "conflict"] == []  # the traffic has none
    assert folded(changes) == result.store.owners


def events_of(result: Run) -> list[dict[str, Any]]:
    """The resolved events on ``events.resolved``, without the merges' notices (their ids
    name the merge, which may differ between runs like the changes themselves)."""
    return [r for r in result.values("events.resolved") if r["source_topic"] != "identity"]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_good_event_is_resolved_to_the_customer_of_its_identifiers(workers: int) -> None:
    result = generated(workers)
    records = events_of(result)
    docs = good_events()
    assert Counter(r["event_id"] for r in records) == Counter(d["event_id"] for d in docs)
    notices = [r for r in result.values("events.resolved") if r["source_topic"] == "identity"]
    merges = Counter(
        (old, c["customer_id"])
        for c in result.changes()
        if c["kind"] == "merged"
        for old in c["merged_from"]
    )
    assert merges, "the generated day merges customers"
    for kind, pair in (
        ("identity_merged", ("customer_id", "into")),
        ("identity_absorbed", ("merged_from", "customer_id")),
    ):
        found = Counter((r[pair[0]], r[pair[1]]) for r in notices if r["event_type"] == kind)
        assert found == merges, kind
    final = survivor(result.changes())
    by_id = {d["event_id"]: d for d in docs}
    for record in records:
        owners = {result.store.owner_of(i) for i in identifiers(by_id[record["event_id"]])}
        if record["customer_id"] is None:
            assert owners == set()  # nothing to resolve by (a walk-in)
        else:
            assert owners == {final.get(record["customer_id"], record["customer_id"])}
        assert "phone" not in record and "email" not in record
    assert sum(1 for r in records if r["customer_id"] is None) > 10


@pytest.mark.parametrize("workers", [1, 2])
def test_exactly_the_malformed_messages_are_dead_lettered_where_they_were_read(
    workers: int,
) -> None:
    offsets: Counter[tuple[str, int]] = Counter()
    wanted: list[tuple[str, int, int, str]] = []
    for e in traffic():
        where = (e.topic, partition_of(e))
        if e.bad_reason is not None:
            wanted.append((e.topic, where[1], offsets[where], e.bad_reason))
        offsets[where] += 1
    letters = generated(workers).values("deadletter")
    assert sorted((d["topic"], d["partition"], d["offset"], d["reason"]) for d in letters) == (
        sorted(wanted)
    )
    assert len(wanted) > 50


def test_generated_traffic_ends_the_same_on_one_and_two_workers() -> None:
    one, two = generated(1), generated(2)
    assert one.store.owners == two.store.owners  # the same customers, with the same ids

    def records(result: Run) -> dict[str, tuple[int, frozenset[str]]]:
        return {c: (r.first_seen_ms, r.identifiers) for c, r in result.store.customers.items()}

    assert records(one) == records(two)

    def resolved(result: Run) -> Counter[tuple[str, str | None]]:
        final = survivor(result.changes())
        return Counter(
            (r["event_id"], final.get(r["customer_id"], r["customer_id"]))
            for r in events_of(result)
        )

    assert resolved(one) == resolved(two)
