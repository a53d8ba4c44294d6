"""Attribution across chains of merges: A merged into B, then B into C.

``identity.changes`` names the two customers of one merge only. The generated traffic of
seed 31 (``tests/integration/test_attribution_flow.py``) has a store pickup that
identity_stitch read before the order (the tills' topic ran ahead of the clickstream): the
sale created customer A with the member card and the order id, a click merged A into B, and
the order itself merged B into C, so the order was resolved to C and its pickup to A. The
router of A knew only B: the conversion credited under A was handed to B's path, not C's,
and C credited the order a second time.

Here: the merges step resolves each merge to the end of its chain (against an independent
union-find), the real dataflow credits that order once in every reading order, and a
property over random merge forests, arrival orders and delays of the merges step: in a
replay every conversion id is credited exactly once and no touch leads two conversions.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from base.config import Config
from domain.attribution import AttributionParams, ConvertedPath, Touch
from domain.attribution_paths import (
    Absorb,
    CustomerPath,
    CustomerTouch,
    Erase,
    MergeChains,
    Purchase,
    Repoint,
    RouterState,
    chain_merges,
    route,
    route_finish,
)
from flows.attribution import build
from state.attribution_store import MemoryAttributionStore
from tests.inprocess import MemoryIO, run

T0 = 1_793_498_000_000
MIN = 60_000


def survivor_of(merges: list[tuple[str, str]], customer: str) -> str:
    """Independent: follow ``merged_from → customer_id`` edges to the end."""
    into = dict(merges)
    while customer in into:
        customer = into[customer]
    return customer


# --- the merges step --------------------------------------------------------------------------


def test_a_chain_resolves_to_its_end_in_either_reading_order() -> None:
    state, out = chain_merges(None, Absorb("a", into="b"))
    assert out == [Absorb("a", "b")]
    state, out = chain_merges(state, Absorb("b", into="c"))
    # a's router is told of c (and of its own merge, into b)
    assert out == [Absorb("b", "c"), Repoint("a", "c", None, via="b")]

    state, out = chain_merges(None, Absorb("b", into="c"))
    assert out == [Absorb("b", "c")]
    state, out = chain_merges(state, Absorb("a", into="b", ts_ms=5))
    assert out == [Absorb("a", "c", 5, via="b")]  # straight to the end, naming its own merge
    assert state.survivor == {"a": "c", "b": "c"}
    assert state.edges == {"a": ("b", 5), "b": ("c", None)}


def test_self_repeated_and_looping_merges_change_nothing() -> None:
    state, _ = chain_merges(None, Absorb("a", into="b"))
    before = copy.deepcopy(state)
    for item in (Absorb("x", "x"), Absorb("a", "z"), Absorb("b", "a")):
        state, out = chain_merges(state, item)
        assert out == []
        assert state == before


@st.composite
def merge_forests(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Merges as identity_stitch publishes them (each merges one current root into another),
    in identity's order, and the same merges in a reading order of the topic."""
    ids = [f"c{n}" for n in range(draw(st.integers(2, 9)))]
    roots = list(ids)
    merges = []
    for _ in range(draw(st.integers(1, len(ids) - 1))):
        old, into = draw(st.permutations(roots))[:2]
        roots.remove(old)
        merges.append((old, into))
    return merges, draw(st.permutations(merges))


@settings(max_examples=300, deadline=None)
@given(merge_forests())
def test_every_id_ends_at_the_survivor_of_its_chain(
    forest: tuple[list[tuple[str, str]], list[tuple[str, str]]],
) -> None:
    """What each router is told last (Absorb, then Repoints) names the end of its chain,
    whatever order the merges are read in."""
    merges, reading = forest
    state: MergeChains | None = None
    told: dict[str, str] = {}
    for old, into in reading:
        state, out = chain_merges(state, Absorb(old, into))
        for item in out:
            assert not isinstance(item, Erase)
            told[item.customer_id] = item.into
    assert told == {old: survivor_of(merges, old) for old, _ in merges}


# --- the flow, in-process: the case of the generated traffic ------------------------------------


def resolved(event_id: str, customer: str, ts: int, **body: Any) -> dict[str, Any]:
    return {"event_id": event_id, "ts": ts, "customer_id": customer, **body}


def merged(change_id: str, survivor: str, old: str) -> dict[str, Any]:
    data = {"kind": "merged", "customer_id": survivor, "merged_from": [old]}
    return {"specversion": "1.0", "id": change_id, "data": data}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("merges_first", [True, False], ids=["a-into-b-first", "b-into-c-first"])
def test_an_order_picked_up_under_a_customer_merged_twice_is_credited_once(
    workers: int, merges_first: bool
) -> None:
    """seed 31's ORD-31-0000126, reduced: the pickup sale resolved to A, the order to C,
    A merged into B and B into C. One credit, whatever order the merges are read in."""
    config = Config()
    line = [{"sku": "SKU-10120", "qty": 2, "unit_price": 10.5}]
    io = MemoryIO(config, partition_counts=dict.fromkeys(
        ("events.resolved", "triggers.coupon", "identity.changes"), 2
    ))  # fmt: skip
    io.add("events.resolved", [
        resolved("e-click", "B", T0 - 60 * MIN, event_type="page_view", channel="web",
                 campaign={"source": "wechat", "medium": "cpc", "campaign": "w-1"}),
        resolved("e-order", "C", T0, event_type="order_placed", order_id="O-1", lines=line,
                 total=21.0),
        resolved("e-pickup", "A", T0 + 50 * MIN, event_type="sale", store_id="ST-SH-02",
                 receipt_id="r-1", order_id="O-1", lines=line, total=21.0),
    ], partition=0)  # fmt: skip
    changes = [merged("m-ab", "B", "A"), merged("m-bc", "C", "B")]
    io.add("identity.changes", changes if merges_first else changes[::-1], partition=1)
    store = MemoryAttributionStore()
    run(build(config, until_idle=True, io=io, open_store=lambda: store), workers)

    published = [value["data"] for value in io.values("attribution.credits")]
    assert Counter(c["conversion_id"] for c in published) == {"order:O-1": 1}
    # The totals count it once too (which of its two purchases carries it is the reading
    # order's: the pickup under A, read before the merges, converts A's path).
    linear = store.read_totals(("linear",))["linear"]
    assert sum(revenue for revenue, _ in linear.values()) == pytest.approx(21.0)
    assert sum(conversions for _, conversions in linear.values()) == pytest.approx(1.0)


def test_a_touch_read_after_the_purchase_it_precedes_is_not_handed_over() -> None:
    """A replay applies a path in event-time order, so the e-mail (before the order, read
    after it) is the order's; the merge must not bring it back for the account's order."""
    replay = Replay()
    email = Touch("email", None, T0 - MIN, "t1")
    for item in (
        Purchase("device", "order:o1", 9.0, T0, "o1"),
        CustomerTouch("device", email),
        Absorb("device", "account"),
        Purchase("account", "order:o2", 4.0, T0 + 60 * MIN, "o2"),
    ):
        replay.read(item)
    paths = {c.conversion_id: [t.event_id for t in c.path] for c in replay.finish()}
    assert paths == {"order:o1": ["t1"], "order:o2": []}


# --- property: a replay through the domain steps -----------------------------------------------


class Replay:
    """The merges, router and path steps keyed as the flow keys them, a replay's paths
    (applied at the end), and the merges step's output delivered late: the router reads it
    beside the other inputs, in an interleaving Bytewax chooses."""

    def __init__(self) -> None:
        self.params = AttributionParams()
        self.merges: MergeChains | None = None
        self.routers: dict[str, RouterState | None] = defaultdict(lambda: None)
        self.paths: dict[str, CustomerPath] = {}
        self.in_flight: list[Absorb | Repoint | Erase] = []

    def read(self, item: CustomerTouch | Purchase | Absorb) -> None:
        if isinstance(item, Absorb):
            self.merges, out = chain_merges(self.merges, item)
            self.in_flight += out
        else:
            self.deliver(item)

    def deliver(self, item: CustomerTouch | Purchase | Absorb | Repoint | Erase) -> None:
        arrival = item.customer_id or ""
        self.routers[arrival], routed = route(self.routers[arrival], item, self.params, False)
        self.take(routed)

    def take(self, routed: list[tuple[str, Any]]) -> None:
        for owner, owned in routed:
            path = self.paths.setdefault(owner, CustomerPath(self.params, live=False))
            assert path.take(owned) == []

    def flush(self, count: int) -> None:
        for item in self.in_flight[:count]:
            self.deliver(item)
        del self.in_flight[:count]

    def finish(self) -> list[ConvertedPath]:
        """The end of the input: the routers send what they held, then the paths replay."""
        self.flush(len(self.in_flight))
        for customer, state in self.routers.items():
            if state is not None:
                self.take(route_finish(customer, state))
        return [
            out
            for path in self.paths.values()
            for out in path.finish()
            if isinstance(out, ConvertedPath)
        ]


@st.composite
def histories(draw: st.DrawFn) -> dict[str, Any]:
    """Customers merging over time (each merge: one current root into another), events
    resolved as identity_stitch resolves them (to the customer that owns the id at that
    moment), each order once placed and once picked up (the pickup resolves to the customer
    then owning the order), touches between; then a reading order of all of it."""
    ids = [f"c{n}" for n in range(draw(st.integers(2, 6)))]
    owner = {c: c for c in ids}  # id → its customer at this moment
    events: list[CustomerTouch | Purchase | Absorb] = []
    placed: dict[str, str] = {}  # order id → the id it was placed under
    ts = T0
    for step in range(draw(st.integers(3, 24))):
        ts += MIN
        roots = sorted(set(owner.values()))
        action = draw(st.sampled_from(("touch", "order", "pickup", "merge")))
        if action == "merge" and len(roots) > 1:
            old, into = draw(st.permutations(roots))[:2]
            for c, r in owner.items():
                if r == old:
                    owner[c] = into
            events.append(Absorb(old, into, ts))
        elif action == "pickup" and placed:
            order = draw(st.sampled_from(sorted(placed)))
            events.append(Purchase(owner[placed.pop(order)], f"order:{order}", 5.0, ts, f"p{step}"))
        elif action == "order":
            who = owner[draw(st.sampled_from(ids))]
            placed[f"o{step}"] = who
            events.append(Purchase(who, f"order:o{step}", 5.0, ts, f"o{step}"))
        else:
            who = owner[draw(st.sampled_from(ids))]
            events.append(CustomerTouch(who, Touch("email", None, ts, f"t{step}")))
    merges = [e for e in events if isinstance(e, Absorb)]
    others = draw(st.permutations([e for e in events if not isinstance(e, Absorb)]))
    # identity.changes and events.resolved interleave as they may; each in its own order.
    slots = draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    reading, m, o = [], iter(merges), iter(others)
    for take_merge in slots:
        nxt = next(m, None) if take_merge else next(o, None)
        reading.append(nxt if nxt is not None else next(o, None) or next(m))
    delays = draw(st.lists(st.integers(0, 3), min_size=len(events), max_size=len(events)))
    orders = {e.conversion_id for e in events if isinstance(e, Purchase)}
    chained = {m.into for m in merges} & {m.customer_id for m in merges}
    return {"reading": reading, "delays": delays, "orders": orders, "chained": bool(chained)}


@settings(max_examples=400, deadline=None)
@given(histories())
def test_a_replay_credits_every_conversion_once_across_merge_chains(
    history: dict[str, Any],
) -> None:
    """Every conversion id exactly once, and no touch leads two conversions, along chains
    too; and the credits are those of the history read in event-time order with every
    merge read at once (the reading order and the merges step's delays change nothing)."""
    replay = Replay()
    for item, delay in zip(history["reading"], history["delays"], strict=True):
        replay.read(item)
        replay.flush(delay)
    converted = replay.finish()
    assert Counter(c.conversion_id for c in converted) == dict.fromkeys(history["orders"], 1)
    used = Counter(t.event_id for c in converted for t in c.path)
    assert all(n == 1 for n in used.values()), used
    in_time = Replay()
    for item in sorted(history["reading"], key=event_time):
        in_time.read(item)
        in_time.flush(len(in_time.in_flight))
    expected = {c.conversion_id: c.path for c in in_time.finish()}
    assert {c.conversion_id: c.path for c in converted} == expected


def event_time(item: CustomerTouch | Purchase | Absorb) -> tuple[int, int]:
    """A merge first in its millisecond, as identity writes it before its cause's event."""
    if isinstance(item, Absorb):
        return (item.ts_ms or 0, 0)
    return (item.touch.ts_ms if isinstance(item, CustomerTouch) else item.ts_ms, 1)


def test_the_reading_orders_above_include_every_interleaving_of_a_small_case() -> None:
    """The exhaustive version of the property on the flow's case: the two merges, the order
    and the pickup in every reading order and every delay of the merges step's output."""
    items: list[CustomerTouch | Purchase | Absorb] = [
        Purchase("A", "order:O-1", 21.0, T0 + 50 * MIN, "e-pickup"),
        Purchase("C", "order:O-1", 21.0, T0, "e-order"),
        Absorb("A", "B"),
        Absorb("B", "C"),
    ]
    for reading in itertools.permutations(items):
        for delays in itertools.product((0, 1, 2), repeat=len(items)):
            replay = Replay()
            for item, delay in zip(reading, delays, strict=True):
                replay.read(item)
                replay.flush(delay)
            assert [c.conversion_id for c in replay.finish()] == ["order:O-1"], (reading, delays)
