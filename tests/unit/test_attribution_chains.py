"""Attribution along merge chains (A merged into B, then B into C) and erasure, in-process
(``tests/inprocess.MemoryIO``, the real dataflow) and through the domain's live steps.

The expected credits are written from the rule, not from the code: every id has its own
path until its merge; at the merge (its event time) the id's touches not used by one of its
purchases join the survivor's path, and its later items go there; a purchase uses every
touch before it on its path (at most ``max_touches``, within the lookback); each conversion
id once. So after A → B → C, C's purchase is credited with A's touch unless a purchase of
B between the merges used it.

Merges reach the flow from ``identity.changes`` (read, in ``MemoryIO``, after everything
else) or as identity's notices inside ``events.resolved`` (read before the events they
precede, or after them): the credits are the same every way, on 1 worker and on 2.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from base.config import Config
from connectors.resolved import erased_notice, merge_notices
from domain.attribution import AttributionParams, ConvertedPath, PathState, Touch
from domain.attribution_paths import (
    Absorb,
    CustomerTouch,
    Erase,
    Handover,
    MergeChains,
    Purchase,
    RouterState,
    chain_merges,
    erased_token,
    follow_path,
    route,
)
from flows.attribution import build
from state.attribution_store import MemoryAttributionStore
from tests.inprocess import MemoryIO, run

T0 = 1_795_000_000_000
HOUR = 3_600_000
LINE = [{"sku": "SKU-1", "qty": 1, "unit_price": 30.0}]
TOPICS = ("events.resolved", "triggers.coupon", "identity.changes")
#: events.resolved partition of each customer's stream (as identity_stitch keys it)
PARTITION = {"A": 0, "B": 1, "C": 2, "": 0}


def iso(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def touch(event_id: str, customer: str, ts: int, source: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "page_view",
        "ts": ts,
        "customer_id": customer,
        "channel": "app",
        "campaign": {"source": source, "medium": "cpc", "campaign": f"{source}-nov"},
    }


def order(event_id: str, customer: str, ts: int, order_id: str, total: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "order_placed",
        "ts": ts,
        "customer_id": customer,
        "order_id": order_id,
        "lines": LINE,
        "total": total,
    }


def merged_change(old: str, survivor: str, ts: int) -> dict[str, Any]:
    data = {"kind": "merged", "customer_id": survivor, "merged_from": [old]}
    return {"specversion": "1.0", "id": f"m-{old}", "time": iso(ts), "data": data}


def erased_change(customer: str, ts: int) -> dict[str, Any]:
    data = {"kind": "erased", "customer_id": customer, "merged_from": [], "identifiers": []}
    return {"specversion": "1.0", "id": f"x-{customer}", "time": iso(ts), "data": data}


# --- the story -------------------------------------------------------------------------------

A_TOUCH = touch("t-a", "A", T0 - 3 * HOUR, "wechat")
AB_AT, BC_AT = T0 - 2 * HOUR, T0
B_ORDER = order("o-b", "B", T0 - HOUR, "O-B", 30.0)
C_ORDER = order("o-c", "C", T0 + HOUR, "O-C", 50.0)
C_TOUCH = touch("t-c", "C", T0 - 30 * 60_000, "baidu")  # C's own, before B's order


def inputs(
    events: list[dict[str, Any]], merges: str, reverse_chain: bool = False
) -> dict[str, dict[int, list[Any]]]:
    """Per topic and partition. ``merges``: ``changes`` (identity.changes, read after every
    event), ``notices-first`` / ``notices-last`` (identity's notices in events.resolved,
    read before / after the events of each stream). ``reverse_chain``: B → C listed first."""
    chain = [("A", "B", AB_AT), ("B", "C", BC_AT)]
    if reverse_chain:
        chain.reverse()
    streams: dict[int, list[Any]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e["ts"]):
        streams[PARTITION[event["customer_id"]]].append(event)
    out: dict[str, dict[int, list[Any]]] = {"events.resolved": streams}
    if merges == "changes":
        out["identity.changes"] = {1: [merged_change(old, new, ts) for old, new, ts in chain]}
        return out
    notices = [
        (key, orjson.loads(record))
        for old, new, ts in chain
        for key, record in merge_notices(old, new, f"cause-{old}", ts)
    ]
    for key, record in notices if merges == "notices-first" else reversed(notices):
        stream = streams[PARTITION[key]]
        if merges == "notices-first":
            stream.insert(0, record)
        else:
            stream.append(record)
    return out


def credits_of(
    topics: dict[str, dict[int, list[Any]]], workers: int, live: bool = False
) -> dict[str, tuple[str | None, list[str]]]:
    """conversion id → (customer_id, touches' campaigns) of what the flow published."""
    config = Config()
    io = MemoryIO(config, partition_counts=dict.fromkeys(TOPICS, 3), partitioned=workers > 1)
    for topic, partitions in topics.items():
        for partition, messages in partitions.items():
            io.add(topic, messages, partition)
    store = MemoryAttributionStore()
    run(build(config, until_idle=not live, io=io, open_store=lambda: store), workers)
    out: dict[str, tuple[str | None, list[str]]] = {}
    for value in io.values("attribution.credits"):
        data = value["data"]
        assert data["conversion_id"] not in out  # each conversion credited once
        out[data["conversion_id"]] = (data["customer_id"], [t["campaign"] for t in data["touches"]])
    return out


READINGS = [
    ("changes", False),
    ("changes", True),
    ("notices-first", False),
    ("notices-first", True),
    ("notices-last", False),
]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("merges", "reverse_chain"), READINGS)
def test_a_touch_of_a_reaches_c_through_b(workers: int, merges: str, reverse_chain: bool) -> None:
    got = credits_of(inputs([A_TOUCH, C_ORDER], merges, reverse_chain), workers)
    assert got == {"order:O-C": ("C", ["wechat-nov"])}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("merges", "reverse_chain"), READINGS)
def test_a_touch_used_by_b_between_the_merges_is_not_used_again_by_c(
    workers: int, merges: str, reverse_chain: bool
) -> None:
    """B's order used A's touch (A was B's by then); C's own touch was on C's path, which
    B's order was not on: C's later order has it, and only it."""
    got = credits_of(inputs([A_TOUCH, C_TOUCH, B_ORDER, C_ORDER], merges, reverse_chain), workers)
    assert got == {
        "order:O-B": ("B", ["wechat-nov"]),
        "order:O-C": ("C", ["baidu-nov"]),
    }


def test_a_purchase_under_a_after_both_merges_is_on_cs_path() -> None:
    """A late item of the first id (a pickup of A's) follows the chain to its end."""
    late = order("o-a", "A", T0 + 2 * HOUR, "O-A", 12.0)
    for merges in ("changes", "notices-first"):
        for workers in (1, 2):
            got = credits_of(inputs([A_TOUCH, C_TOUCH, late], merges), workers)
            assert got == {"order:O-A": ("A", ["wechat-nov", "baidu-nov"])}, (merges, workers)


# --- live: the domain's router and path steps, in delivery orders the flow allows ------------


class LiveFlow:
    """The merges, router and path steps keyed as the flow keys them, live. The handovers
    the routers send are delivered in ``handover_order`` (their workers race)."""

    def __init__(self) -> None:
        self.params = AttributionParams()
        self.merges: MergeChains | None = None
        self.routers: dict[str, RouterState | None] = defaultdict(lambda: None)
        self.paths: dict[str, PathState | None] = defaultdict(lambda: None)
        self.credits: dict[str, list[str]] = {}

    def feed(self, item: CustomerTouch | Purchase | Absorb, reverse: bool = False) -> None:
        routed = []
        if isinstance(item, Absorb):
            self.merges, resolved = chain_merges(self.merges, item)
            for told in resolved:
                self.routers[told.customer_id], out = route(
                    self.routers[told.customer_id], told, self.params
                )
                routed += out
        else:
            key = item.customer_id or ""
            self.routers[key], routed = route(self.routers[key], item, self.params)
        for owner, owned in reversed(routed) if reverse else routed:
            assert not isinstance(owned, Erase)
            assert isinstance(owned, Touch | Handover | Purchase)
            self.paths[owner], produced = follow_path(self.paths[owner], owned, self.params)
            for converted in produced:
                if isinstance(converted, ConvertedPath):
                    assert converted.conversion_id not in self.credits
                    self.credits[converted.conversion_id] = [t.event_id for t in converted.path]


def touch_item(event_id: str, customer: str, ts: int) -> CustomerTouch:
    return CustomerTouch(customer, Touch("email", None, ts, event_id))


@pytest.mark.parametrize("reverse", [False, True], ids=["b-handover-first", "a-handover-first"])
@pytest.mark.parametrize("b_orders", [False, True], ids=["no-b-order", "b-order-between"])
def test_live_the_chain_reaches_c_and_no_touch_credits_twice(reverse: bool, b_orders: bool) -> None:
    flow = LiveFlow()
    flow.feed(touch_item("t-a", "A", T0 - 3 * HOUR))
    flow.feed(Absorb("A", "B", AB_AT))
    if b_orders:
        flow.feed(Purchase("B", "order:O-B", 30.0, T0 - HOUR, "o-b"))
    flow.feed(Absorb("B", "C", BC_AT), reverse=reverse)
    flow.feed(touch_item("t-c", "C", T0 + 30 * 60_000))
    flow.feed(Purchase("C", "order:O-C", 50.0, T0 + HOUR, "o-c"))
    if b_orders:
        assert flow.credits == {"order:O-B": ["t-a"], "order:O-C": ["t-c"]}
    else:
        assert flow.credits == {"order:O-C": ["t-a", "t-c"]}


def test_live_a_chain_of_three_merges_hands_every_id_to_the_last_survivor() -> None:
    flow = LiveFlow()
    for n, customer in enumerate("ABC"):
        flow.feed(touch_item(f"t-{customer}", customer, T0 + n))
    for n, (old, into) in enumerate((("A", "B"), ("B", "C"), ("C", "D"))):
        flow.feed(Absorb(old, into, T0 + HOUR + n))
    flow.feed(Purchase("D", "order:O-D", 10.0, T0 + 2 * HOUR, "o-d"))
    assert flow.credits == {"order:O-D": ["t-A", "t-B", "t-C"]}


# --- erasure -------------------------------------------------------------------------------------

ERASED_AT = T0 + 2 * HOUR


def erasure_inputs(erase_via: str, merges: str = "changes") -> dict[str, dict[int, list[Any]]]:
    """The chain, C's order, then C erased; afterwards a purchase under C's id, a touch and a
    purchase under A's. ``erase_via``: ``change`` (identity.changes, read after every event:
    the later events are read before it, as a replay of another partition may), ``notice``
    (C's stream of events.resolved, the later events read after it). ``merges`` as in
    ``inputs``."""
    topics = inputs([A_TOUCH, C_ORDER], merges)
    later = [
        touch("t-a2", "A", ERASED_AT + HOUR, "douyin"),
        order("o-c2", "C", ERASED_AT + 2 * HOUR, "O-C2", 20.0),
        order("o-a2", "A", ERASED_AT + 3 * HOUR, "O-A2", 7.0),
    ]
    streams = topics["events.resolved"]
    if erase_via == "notice":
        streams[PARTITION["C"]].append(orjson.loads(erased_notice("C", ERASED_AT)))
        streams[PARTITION["C"]] += later  # read after the notice, whatever their key
    else:
        topics.setdefault("identity.changes", {}).setdefault(1, [])
        topics["identity.changes"][1].append(erased_change("C", ERASED_AT))
        for event in later:
            streams[PARTITION[event["customer_id"]]].append(event)
    return topics


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("merges", ["changes", "notices-first"])
@pytest.mark.parametrize("erase_via", ["change", "notice"])
def test_an_erased_customer_is_credited_to_nobody_in_a_replay(
    workers: int, merges: str, erase_via: str
) -> None:
    """A replay after the erasure sends nothing naming C or its ids, whatever order the
    merges and the erasure are read in; the purchases still count, as walk-ins (direct,
    nobody's)."""
    got = credits_of(erasure_inputs(erase_via, merges), workers)
    assert got == {
        "order:O-C": (None, []),
        "order:O-C2": (None, []),
        "order:O-A2": (None, []),
    }


def test_live_nothing_more_is_credited_to_an_erased_customer() -> None:
    """Live, C's order before the erasure was credited (and sent) then; after it, nothing
    names C or A: a purchase under either id is a walk-in's, a touch is dropped."""
    params = AttributionParams()
    merges: MergeChains | None = None
    routers: dict[str, RouterState | None] = defaultdict(lambda: None)
    routed: list[tuple[str, Any]] = []

    def deliver(item: Any) -> None:
        nonlocal merges
        if isinstance(item, Absorb | Erase):
            merges, told = chain_merges(merges, item)
        else:
            told = [item]
        for one in told:
            routers[one.customer_id or ""], out = route(routers[one.customer_id or ""], one, params)
            routed.extend(out)

    deliver(touch_item("t-a", "A", T0 - 3 * HOUR))
    deliver(Absorb("A", "B", AB_AT))
    deliver(Absorb("B", "C", BC_AT))
    deliver(Purchase("C", "order:O-C", 50.0, T0 + HOUR, "o-c"))
    before = len(routed)
    deliver(Erase("C"))
    deliver(touch_item("t-a2", "A", ERASED_AT + HOUR))
    deliver(Purchase("C", "order:O-C2", 20.0, ERASED_AT + 2 * HOUR, "o-c2"))
    deliver(Purchase("A", "order:O-A2", 7.0, ERASED_AT + 3 * HOUR, "o-a2"))
    deliver(Absorb("D", "C", ERASED_AT + 4 * HOUR))  # a merge into C read after its erasure
    after = routed[before:]
    # Each id's path is told to go (A, B, C and D, merged into erased C); then walk-ins only.
    assert sorted(owner for owner, item in after if isinstance(item, Erase)) == ["A", "B", "C", "D"]
    purchases = [(owner, item) for owner, item in after if isinstance(item, Purchase)]
    assert [(owner, p.customer_id, p.conversion_id) for owner, p in purchases] == [
        ("", None, "order:O-C2"),
        ("", None, "order:O-A2"),
    ]
    assert not [item for _, item in after if isinstance(item, Touch)]
    for customer in "ABCD":
        # The bare mark (the key's own id, erased), nothing else.
        assert routers[customer] == RouterState(erased=True, customer_id="")
    assert merges is not None
    assert merges.survivor == {} and merges.merged == {} and merges.edges == {}


def snapshots(directory: Path) -> dict[tuple[str, str], Any]:
    """(step id, key) → the latest snapshot of every stateful step (None: discarded)."""
    latest: dict[tuple[str, str], tuple[int, Any]] = {}
    for part in directory.glob("part-*.sqlite3"):
        with sqlite3.connect(part) as db:
            rows = db.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps")
            for step_id, key, epoch, blob in rows:
                if (step_id, key) not in latest or epoch >= latest[(step_id, key)][0]:
                    state = pickle.loads(blob) if blob is not None else None
                    latest[(step_id, key)] = (epoch, state)
    return {where: state for where, (_, state) in latest.items()}


def assert_only_erased_marks(kept: dict[tuple[str, str], Any], erased: set[str]) -> None:
    """``snapshots`` keep of the ``erased`` ids only the bare marks: their routers' and
    their paths' (or no path), and no step else keyed by one of them."""
    for (step, key), state in kept.items():
        if key not in erased:
            continue
        if step.endswith(".paths.stateful_batch"):
            assert state in (None, (None, [], True)), (step, key, state)
        elif step.endswith(".router.stateful_flat_map.stateful.stateful_batch"):
            assert state == RouterState(erased=True, customer_id=""), (step, key, state)
        else:
            pytest.fail(f"state of {key} in {step}: {state!r}")


@pytest.mark.parametrize("live", [False, True], ids=["replay", "live"])
def test_after_an_erasure_no_step_keeps_state_for_the_customer(tmp_path: Path, live: bool) -> None:
    """The recovery snapshots at the end of the run: the paths and routers of A, B and C
    with the bare erased mark only (or no path), the merges step with no chain naming
    them."""
    config = Config()
    io = MemoryIO(config, partition_counts=dict.fromkeys(TOPICS, 3), batch_size=2)
    # Live the flow follows what it reads when: the merges (notices) before the events.
    for topic, partitions in erasure_inputs("notice", "notices-first").items():
        for partition, messages in partitions.items():
            io.add(topic, messages, partition)
    store = MemoryAttributionStore()
    init_db_dir(tmp_path, 1)
    run_main(
        build(config, until_idle=not live, io=io, open_store=lambda: store),
        epoch_interval=timedelta(0),
        recovery_config=RecoveryConfig(str(tmp_path)),
    )
    kept = snapshots(tmp_path)
    assert any(
        step.endswith(".router.stateful_flat_map.stateful.stateful_batch") for step, _ in kept
    )
    assert_only_erased_marks(kept, {"A", "B", "C"})
    [(_, chains)] = [
        (s, v)
        for (s, _), v in kept.items()
        if s.endswith(".merges.stateful_flat_map.stateful.stateful_batch")
    ]
    assert isinstance(chains, MergeChains)
    assert chains.survivor == {} and chains.merged == {} and chains.edges == {}
    # digests only: a merge into them read later is still known as theirs, without the ids
    assert chains.erased == {erased_token(i) for i in ("A", "B", "C")}
    assert not {"A", "B", "C"} & chains.erased
    published = [v["data"] for v in io.values("attribution.credits")]
    named = {d["customer_id"] for d in published} - {None}
    assert named == ({"C"} if live else set())  # live: C's order, credited before the erasure
