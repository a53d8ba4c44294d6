"""attribution run in-process (``tests/inprocess.MemoryIO`` and the memory store): the real
dataflow on hand-built and generated ``events.resolved``, ``triggers.coupon`` and
``identity.changes``, on 1 worker and on 2, as a replay (``until_idle``, as the integration
tests run it). No broker, no Redis.

The generated traffic is checked against an independent reference written from the rules,
not from the code: per customer, a purchase is credited once per conversion id with the
touches in the lookback before it that no earlier purchase of the path used (at most
``max_touches``); a device merged into an account at the merge's time hands the account the
touches it saw after its last purchase, for the account's purchases after the merge (a till
sale of the account before the merge knows nothing of the device yet, as it would not
live), and the purchases credited under the device are not credited again on the account
(the store pickup of an order placed on the device). The heuristic models are
recomputed from those paths; the store's totals are the sums of the credits. ``MemoryIO``
reads ``identity.changes`` after the other inputs, so every merge is read after the
purchases around it: the case a replay must get right by applying each path in event-time
order at the end.
"""

from __future__ import annotations

import pickle
import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pytest

from base.config import Config
from domain.attribution import MODELS
from domain.attribution_paths import Purchase, RouterState
from flows.attribution import build
from state.attribution_store import MemoryAttributionStore, TotalsTable
from tests.inprocess import MemoryIO, run

DAY = 86_400_000
T0 = 1_795_000_000_000  # 2026-11-18
#: The configuration's defaults (``AttributionConfig``).
LOOKBACK, MAX_TOUCHES, HALF_LIFE, FIRST, LAST = 30 * DAY, 20, 7 * DAY, 0.4, 0.4
HEURISTIC = ("first_touch", "last_touch", "linear", "time_decay", "position_based")
PARTITIONS = 4
INPUT_TOPICS = ("events.resolved", "triggers.coupon", "identity.changes")


def iso(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefTouch:
    channel: str
    campaign: str | None
    ts: int
    event_id: str


@dataclass(frozen=True)
class RefPurchase:
    conversion_id: str
    revenue: float
    ts: int


@dataclass
class Traffic:
    """Messages per topic × partition, and what the reference needs to know of them."""

    resolved: dict[int, list[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(list))
    coupons: dict[int, list[Any]] = field(default_factory=lambda: defaultdict(list))
    changes: list[Any] = field(default_factory=list)
    #: customer id (as the message names it) → its touches, its purchases
    touches: dict[str, list[RefTouch]] = field(default_factory=lambda: defaultdict(list))
    purchases: dict[str, list[RefPurchase]] = field(default_factory=lambda: defaultdict(list))
    #: account → the devices merged into it
    devices: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: account → the time of its merge
    merged_at: dict[str, int] = field(default_factory=dict)
    #: (topic, reason) of every foreign record
    refused: list[tuple[str, str]] = field(default_factory=list)
    used_times: set[int] = field(default_factory=set)
    events: int = 0

    def time(self, rng: random.Random, low: int, high: int) -> int:
        """A time no other event has: a tie between a touch and a purchase is the one case
        where the reference would need the code's tie rule."""
        while (ts := rng.randrange(low, high)) in self.used_times:
            pass
        self.used_times.add(ts)
        return ts

    def resolved_event(self, customer: str | None, ts: int, **body: Any) -> str:
        self.events += 1
        event = {"event_id": f"e{self.events}", "ts": ts, **body}
        if customer is not None:
            event["customer_id"] = customer
        partition = zlib.crc32((customer or str(body.get("store_id"))).encode()) % PARTITIONS
        self.resolved[partition].append((ts, event))
        return event["event_id"]

    def touch(self, customer: str, ts: int, source: str | None, campaign: str | None) -> None:
        if source is None:  # an ad click without campaign: the channel it came through
            event_id = self.resolved_event(customer, ts, event_type="ad_click", channel="app")
            self.touches[customer].append(RefTouch("app", None, ts, event_id))
            return
        utm = {"source": source, "medium": "cpc", "campaign": campaign}
        event_id = self.resolved_event(
            customer, ts, event_type="page_view", channel="web", campaign=utm
        )
        self.touches[customer].append(RefTouch(source, campaign, ts, event_id))

    def coupon(self, customer: str, ts: int, rule_id: str, coupon_id: str) -> None:
        data = {"rule_id": rule_id, "customer_id": customer, "variant": "default"}
        document = {"specversion": "1.0", "id": coupon_id, "time": iso(ts), "data": data}
        self.coupons[zlib.crc32(customer.encode()) % PARTITIONS].append(document)
        self.touches[customer].append(RefTouch(f"coupon:{rule_id}", rule_id, ts, coupon_id))

    def order(self, customer: str, ts: int, order_id: str, total: float) -> None:
        self.resolved_event(customer, ts, event_type="order_placed", order_id=order_id, total=total)
        self.purchases[customer].append(RefPurchase(f"order:{order_id}", total, ts))

    def sale(
        self, customer: str | None, ts: int, store: str, receipt: str, total: float, **more: Any
    ) -> None:
        self.resolved_event(
            customer, ts, event_type="sale", store_id=store, receipt_id=receipt, total=total, **more
        )
        order_id = more.get("order_id")
        conversion_id = f"order:{order_id}" if order_id else f"receipt:{store}:{receipt}"
        self.purchases[customer or ""].append(RefPurchase(conversion_id, total, ts))

    def merge(self, account: str, devices: list[str], ts: int) -> None:
        """A merge at ``ts`` (its CloudEvent ``time``, the time of the event that caused it)."""
        data = {"kind": "merged", "customer_id": account, "merged_from": devices}
        change = {"specversion": "1.0", "id": f"m-{account}", "time": iso(ts), "data": data}
        self.changes.append(change)
        self.devices[account] += devices
        self.merged_at[account] = ts

    def memory_io(self, config: Config) -> MemoryIO:
        io = MemoryIO(config, partition_counts=dict.fromkeys(INPUT_TOPICS, PARTITIONS))
        for partition, timed in self.resolved.items():
            # A partition holds each customer's events in event-time order.
            ordered = [event for _, event in sorted(timed, key=lambda pair: pair[0])]
            io.add("events.resolved", ordered, partition)
        for partition, documents in self.coupons.items():
            io.add("triggers.coupon", documents, partition)
        io.add("identity.changes", self.changes, partition=1)
        return io


SOURCES = ("wechat", "baidu", "douyin", "email", "display", None)


def generate(seed: int, accounts: int) -> Traffic:
    """Accounts with campaign touches, coupons, orders, store pickups and till sales over 80
    days; some browse first on one or two devices merged into the account later (and buy on
    a device before the merge, picked up in store as the account); walk-in sales; some
    messages delivered twice; a few foreign records."""
    rng = random.Random(seed)
    t = Traffic()
    orders = 0
    end = T0 + 80 * DAY

    def cents(low: float, high: float) -> float:
        return 0.0 if rng.random() < 0.04 else round(rng.uniform(low, high), 2)

    def touch(customer: str, low: int, high: int) -> None:
        source = rng.choice(SOURCES)
        campaign = None if source is None else f"{source}-{rng.randint(1, 3)}"
        t.touch(customer, t.time(rng, low, high), source, campaign)

    def order(customer: str, low: int, high: int, picked_up_by: str | None) -> None:
        nonlocal orders
        orders += 1
        ts, total = t.time(rng, low, high), cents(5, 400)
        t.order(customer, ts, f"o{orders}", total)
        if picked_up_by is not None:  # the same conversion as the order
            at = t.time(rng, ts + 1, ts + 2 * DAY)
            t.sale(picked_up_by, at, "ST-1", f"p{orders}", total, order_id=f"o{orders}")

    for n in range(accounts):
        account = f"u-{n}"
        for _ in range(rng.randint(0, 6)):
            touch(account, T0, end)
        for c in range(rng.choice((0, 0, 1, 2))):
            rule = rng.choice(("win_back", "cart_abandonment"))
            t.coupon(account, t.time(rng, T0, end), rule, f"cp-{n}-{c}")
        merge_ts = t.time(rng, T0 + 20 * DAY, T0 + 60 * DAY)
        devices = [f"d-{n}-{d}" for d in range(rng.choice((0, 0, 1, 1, 2)))]
        for device in devices:
            for _ in range(rng.randint(1, 8)):  # under max_touches even when twice delivered
                touch(device, T0, merge_ts)
            if rng.random() < 0.4:
                order(device, T0 + DAY, merge_ts - DAY, picked_up_by=account)
        if devices:
            t.merge(account, devices, merge_ts)
        else:  # not a merge: changes nothing
            t.changes.append({"data": {"kind": "linked", "customer_id": account}})
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            pickup = account if rng.random() < 0.3 else None
            order(account, merge_ts if devices else T0, end, picked_up_by=pickup)
        if rng.random() < 0.3:  # a till sale with the loyalty card
            t.sale(account, t.time(rng, T0, end), "ST-2", f"m{n}", cents(1, 90))
    for w in range(accounts // 4):  # walk-ins: nobody known, credited to direct
        t.sale(None, t.time(rng, T0, end), "ST-3", f"w{w}", cents(1, 60))
    for timed in t.resolved.values():  # at-least-once delivery: some messages twice
        timed += rng.sample(timed, len(timed) // 20)
    for documents in t.coupons.values():
        documents += rng.sample(documents, len(documents) // 10)
    # Foreign records: dead-lettered with a reason, never credited.
    t.resolved[0].append((T0, b"not json"))
    t.resolved[2].append((T0, {"event_id": "x1", "event_type": "sale", "ts": "yesterday"}))
    t.coupons[3].append({"id": "cp-x", "time": iso(T0), "data": {"rule_id": "r", "customer_id": 7}})
    t.changes.append({"data": {"kind": "merged", "customer_id": "u-0", "merged_from": "d-0-0"}})
    t.refused += [
        ("events.resolved", "malformed_json"),
        ("events.resolved", "bad_timestamp"),
        ("triggers.coupon", "bad_type"),
        ("identity.changes", "bad_type"),
    ]
    return t


# --- the reference -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RefCredit:
    customer_id: str | None
    revenue: float
    ts: int
    path: tuple[RefTouch, ...]


def walk(
    customer: str,
    touches: list[RefTouch],
    purchases: list[RefPurchase],
    credited: set[str],
    out: dict[str, RefCredit],
    handed: Sequence[RefTouch] = (),
    merged_at: int | None = None,
) -> int | None:
    """Credit one customer's purchases in time order; the time of its last purchase.
    ``handed`` (a merged device's unused touches) join the path at ``merged_at``: purchases
    before it see the customer's own touches only, and they use up only those."""
    own = {t.event_id: t for t in touches}
    joined = {t.event_id: t for t in handed if t.event_id not in own}
    used_own: int | None = None
    used_joined: int | None = None
    for purchase in sorted(purchases, key=lambda p: p.ts):
        if purchase.conversion_id in credited:
            continue
        credited.add(purchase.conversion_id)
        after_merge = merged_at is not None and purchase.ts >= merged_at
        candidates = [t for t in own.values() if used_own is None or t.ts > used_own]
        if after_merge:
            candidates += [t for t in joined.values() if used_joined is None or t.ts > used_joined]
        window = sorted(
            (t for t in candidates if purchase.ts - LOOKBACK <= t.ts <= purchase.ts),
            key=lambda t: (t.ts, t.event_id),
        )
        out[purchase.conversion_id] = RefCredit(
            customer or None, purchase.revenue, purchase.ts, tuple(window[-MAX_TOUCHES:])
        )
        used_own = purchase.ts
        if after_merge:
            used_joined = purchase.ts
    return max((p.ts for p in purchases), default=None)


def reference_credits(t: Traffic) -> dict[str, RefCredit]:
    """conversion id → who it is credited to and the touches on its path."""
    out: dict[str, RefCredit] = {}
    merged = {device for devices in t.devices.values() for device in devices}
    handed: dict[str, list[RefTouch]] = defaultdict(list)
    inherited: dict[str, set[str]] = defaultdict(set)
    for account, devices in t.devices.items():
        for device in devices:
            done: set[str] = set()
            last = walk(device, t.touches[device], t.purchases[device], done, out)
            handed[account] += [x for x in t.touches[device] if last is None or x.ts > last]
            inherited[account] |= done
    for customer in {*t.touches, *t.purchases} - merged:
        walk(
            customer,
            t.touches[customer],
            t.purchases[customer],
            inherited[customer],
            out,
            handed[customer],
            t.merged_at.get(customer),
        )
    return out


def heuristic_credits(credit: RefCredit) -> dict[str, dict[str, float]]:
    revenue, path = credit.revenue, credit.path
    if not path:
        return {model: {"direct": revenue} for model in HEURISTIC}
    channels = [x.channel for x in path]
    n = len(channels)
    decay = [0.5 ** ((credit.ts - x.ts) / HALF_LIFE) for x in path]
    if n <= 2:
        positions = [1.0 / n] * n
    else:
        positions = [FIRST] + [(1 - FIRST - LAST) / (n - 2)] * (n - 2) + [LAST]

    def spread(weights: list[float]) -> dict[str, float]:
        table: dict[str, float] = defaultdict(float)
        for channel, weight in zip(channels, weights, strict=True):
            table[channel] += revenue * weight / sum(weights)
        return dict(table)

    return {
        "first_touch": {channels[0]: revenue},
        "last_touch": {channels[-1]: revenue},
        "linear": spread([1.0] * n),
        "time_decay": spread(decay),
        "position_based": spread(positions),
    }


def summed(credited: list[tuple[float, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """model → channel → [revenue, conversions]: a conversion counts once per model, split
    like its revenue (evenly over its channels when it was free)."""
    totals: dict[str, Any] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for revenue, per_model in credited:
        for model, table in per_model.items():
            for channel, amount in table.items():
                cell = totals[model][channel]
                cell[0] += amount
                cell[1] += amount / revenue if revenue > 0 else 1 / len(table)
    return totals


# --- running the flow --------------------------------------------------------------------------


@dataclass
class Run:
    credits: dict[str, dict[str, Any]]  # conversion id → data of attribution.credits
    keys: dict[str, bytes | None]  # conversion id → message key
    ids: Counter[str]  # CloudEvent ids
    deadletters: list[dict[str, Any]]
    totals: TotalsTable


def run_flow(io: MemoryIO, config: Config, workers: int) -> Run:
    store = MemoryAttributionStore()
    run(build(config, until_idle=True, io=io, open_store=lambda: store), workers)
    produced = io.collect()
    messages = produced[config.topic("attribution.credits")]
    published: dict[str, dict[str, Any]] = {}
    keys: dict[str, bytes | None] = {}
    ids: Counter[str] = Counter()
    for message, value in zip(messages, io.values("attribution.credits"), strict=True):
        data = value["data"]
        assert data["conversion_id"] not in published, data["conversion_id"]  # credited once
        published[data["conversion_id"]] = data
        keys[data["conversion_id"]] = message.key
        ids[value["id"]] += 1
    return Run(published, keys, ids, io.values("deadletter"), store.read_totals(MODELS))


@pytest.fixture(scope="module")
def config() -> Config:
    return Config()


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(seed=15, accounts=400)


@pytest.fixture(scope="module")
def runs(config: Config, traffic: Traffic) -> dict[int, Run]:
    return {workers: run_flow(traffic.memory_io(config), config, workers) for workers in (1, 2)}


@pytest.mark.parametrize("workers", [1, 2])
def test_credits_follow_an_independent_reference(
    runs: dict[int, Run], traffic: Traffic, workers: int
) -> None:
    got = runs[workers]
    expected = reference_credits(traffic)
    assert set(got.credits) == set(expected)
    assert max(got.ids.values()) == 1
    device_touches = {
        x.event_id
        for devices in traffic.devices.values()
        for d in devices
        for x in traffic.touches[d]
    }
    touched = [c for c in expected.values() if c.path]
    handed = [
        c
        for c in touched
        if c.customer_id in traffic.devices and {x.event_id for x in c.path} & device_touches
    ]
    device_orders_picked_up = [
        p
        for devices in traffic.devices.values()
        for d in devices
        for p in traffic.purchases[d]
        if p.conversion_id.startswith("order:")
    ]
    # The traffic exercises what it is meant to: paths, touches handed over by a merged
    # device, store pickups of orders placed on one, free orders, walk-ins.
    assert len(touched) > 200 and len(handed) > 20 and len(device_orders_picked_up) > 20
    assert sum(c.revenue == 0 for c in expected.values()) > 5
    assert sum(c.customer_id is None for c in expected.values()) == len(traffic.purchases[""])
    for conversion_id, ref in expected.items():
        data = got.credits[conversion_id]
        assert data["customer_id"] == ref.customer_id
        assert got.keys[conversion_id] == (ref.customer_id.encode() if ref.customer_id else None)
        assert data["revenue"] == ref.revenue
        assert ms(data["event_time"]) == ref.ts
        assert [(x["channel"], x["campaign"], ms(x["ts"])) for x in data["touches"]] == [
            (x.channel, x.campaign, x.ts) for x in ref.path
        ], conversion_id
        for model, table in heuristic_credits(ref).items():
            assert data["credits"][model] == pytest.approx(table, abs=1e-9), (conversion_id, model)
        markov = data["credits"]["markov"]
        assert set(markov) <= ({x.channel for x in ref.path} or {"direct"})
        assert sum(markov.values()) == pytest.approx(ref.revenue, abs=1e-9)


@pytest.mark.parametrize("workers", [1, 2])
def test_store_totals_are_the_sums_of_the_credits(
    runs: dict[int, Run], traffic: Traffic, workers: int
) -> None:
    got = runs[workers]
    expected = reference_credits(traffic)
    heuristic = summed([(c.revenue, heuristic_credits(c)) for c in expected.values()])
    markov = summed(
        [(d["revenue"], {"markov": d["credits"]["markov"]}) for d in got.credits.values()]
    )
    for model in MODELS:
        table = (markov if model == "markov" else heuristic)[model]
        assert set(got.totals[model]) == set(table), model
        for channel, (revenue, conversions) in table.items():
            assert got.totals[model][channel] == pytest.approx((revenue, conversions), abs=1e-6)
        assert sum(c for _, c in got.totals[model].values()) == pytest.approx(len(expected))
    revenue = sum(c.revenue for c in expected.values())
    assert sum(r for r, _ in got.totals["markov"].values()) == pytest.approx(revenue, abs=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_foreign_records_are_dead_lettered_with_their_reasons(
    runs: dict[int, Run], traffic: Traffic, workers: int
) -> None:
    refused = Counter((d["topic"], d["reason"]) for d in runs[workers].deadletters)
    assert refused == Counter(traffic.refused)
    assert {d["flow"] for d in runs[workers].deadletters} == {"attribution"}


def test_one_and_two_workers_credit_the_same(runs: dict[int, Run]) -> None:
    """Every path reaches the same owner whatever worker reads or routes it; heuristic
    credits depend on the path alone. The Markov chain is one key fed by every path worker,
    which on 2 workers gives it the replay's outcomes in another order: it credits them in
    event-time order at the end, so its credits are the same too (before, they only summed
    to each revenue)."""
    one, two = runs[1], runs[2]
    assert one.ids == two.ids
    assert one.credits == two.credits
    for model in MODELS:
        assert set(one.totals[model]) == set(two.totals[model])
        for channel, cell in one.totals[model].items():
            assert two.totals[model][channel] == pytest.approx(cell, abs=1e-6)


# --- a scripted customer -----------------------------------------------------------------------


def test_touches_before_a_merge_are_credited_once_within_the_lookback(config: Config) -> None:
    """The integration test's script, in-process: campaign touches on a new phone before
    logging in; the login merges the phone into the account; the order afterwards is
    credited to those touches and its store pickup is no second conversion; a touch older
    than the lookback is not credited; a walk-in sale is ``direct``."""
    t = Traffic()
    t.touch("phone", T0 - 2 * DAY, "wechat", "wechat-nov")
    t.touch("phone", T0 - DAY, "baidu", "baidu-nov")
    t.merge("ann", ["phone"], T0)
    t.order("ann", T0 + 1_800_000, "o-1", 100.0)
    t.sale("ann", T0 + DAY, "ST-SH-01", "r6", 100.0, order_id="o-1")
    t.touch("bob", T0 - 40 * DAY, "email", "email-nov")
    t.order("bob", T0, "o-2", 100.0)
    t.sale(None, T0, "ST-SH-01", "r9", 42.5)
    for workers in (1, 2):
        got = run_flow(t.memory_io(config), config, workers)
        assert set(got.credits) == {"order:o-1", "order:o-2", "receipt:ST-SH-01:r9"}
        ann = got.credits["order:o-1"]
        assert [x["channel"] for x in ann["touches"]] == ["wechat", "baidu"]
        assert ann["credits"]["first_touch"] == {"wechat": 100.0}
        assert ann["credits"]["last_touch"] == {"baidu": 100.0}
        assert ann["credits"]["linear"] == {"wechat": 50.0, "baidu": 50.0}
        assert got.credits["order:o-2"]["touches"] == []
        for model in MODELS:
            assert got.credits["order:o-2"]["credits"][model] == {"direct": 100.0}
            assert got.credits["receipt:ST-SH-01:r9"]["credits"][model] == {"direct": 42.5}
        assert got.totals["linear"]["wechat"] == (50.0, 0.5)
        assert got.totals["first_touch"]["direct"] == (142.5, 2.0)
        assert got.deadletters == []


def test_snapshots_written_before_the_domain_move_still_load() -> None:
    """Recovery snapshots name the classes where they were: the router's state in
    ``flows.attribution``, a replay's pending purchases as ``connectors.attribution_io``'s
    ``Conversion``. Unpickling finds both."""

    finder = pickle.Unpickler(BytesIO(b""))
    assert finder.find_class("flows.attribution", "RouterState") is RouterState
    assert finder.find_class("connectors.attribution_io", "Conversion") is Purchase
