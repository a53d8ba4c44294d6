"""Customers end to end on the real broker and Redis: identity_stitch, stock_pool,
rule_triggers and attribution as live processes.

- **Rule state follows merges.** An anonymous device browses (a coupon under its own id)
  and leaves a cart, then logs in as an older member: the cart's coupon goes out once,
  under the member, and the day's cap counts the device's coupon too (the member's lapse
  reminder, due after, is capped). A chain A → B → C hands A's cart on to C.
- **Guards.** A customer who withdrew marketing consent gets no cart coupon (`no_consent`);
  a cart of a sku nobody can ship gets none either (`no_stock`).
- **Store visit.** A member checks in at a store after browsing: a `customer_visit` task on
  `store.tasks` and in the store's task hash, naming what was viewed.
- **Profiles** of the survivors combine both ids.
- **Erasure.** After `omnistream forget`, the erased id is nowhere in Redis and on no output
  topic after the erasure except in the erasure records themselves; after the flows are
  restarted (they resume, and each start prunes what Bytewax kept for discarded keys) it is
  in no row of any flow's recovery snapshots, neither in a state nor as a key.
"""

from __future__ import annotations

import pickle
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from base.config import Config, dump_config
from connectors.kafka_clients import make_producer
from domain.attribution_paths import RouterState
from domain.identity import by_priority, new_customer_id, pii_identifier_value
from omnistream.embedded import free_port
from omnistream.processes import scrape, start_flow, stop_process
from tests.kafka_helpers import TopicWatcher, read_topic

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
#: 2026-11-02 10:00 in Shanghai (+08:00).
T0 = int(datetime(2026, 11, 2, 2, 0, tzinfo=UTC).timestamp() * 1000)
MILK, SOAP, RARE = "SKU-10009", "SKU-10012", "SKU-10010"
PHONE_C = "13800000042"
PII_KEY = "test-secret"

RULES = """
version: 1
defaults: {frequency_cap_per_day: 2, conversion_window: 1d}
rules:
  - id: browse
    kind: browse_nearby_stock
    cooldown: 1d
    params: {views: 3, within: 30m, min_available: 2}
    coupon: {type: percent_off, value: 10, expires_in: 48h}
  - id: cart
    kind: cart_abandonment
    cooldown: 1d
    params: {within: 10m}
    coupon: {type: amount_off, value: 15, expires_in: 24h}
    experiment: {salt: cf, control_share: 0, variants: {amount_15: 1}}
  - id: lapse
    kind: lapsed
    cooldown: 30d
    params: {inactive_days: 30}
    coupon: {type: percent_off, value: 20, expires_in: 7d}
  - id: visit
    kind: store_visit
    cooldown: 1h
"""

FLOWS = ("identity_stitch", "stock_pool", "rule_triggers", "attribution")
OUTPUT_TOPICS = (
    "events.resolved",
    "identity.changes",
    "triggers.coupon",
    "triggers.holdout",
    "triggers.replenishment",
    "attribution.credits",
    "stock.changes",
    "orders.sourced",
    "store.tasks",
    "deadletter",
)


class Day:
    """The scripted events, and each shopper's customer id as identity_stitch mints it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def click(self, device: str, event_type: str, ts: int, **fields: Any) -> str:
        event_id = self._id(device)
        event = {
            "event_id": event_id,
            "event_type": event_type,
            "ts": ts,
            "anonymous_id": device,
            "channel": "app",
            "region": "SH",
            **fields,
        }
        self.events.append(("clickstream", event))
        return event_id

    def sale(self, store: str, sku: str, ts: int, **fields: Any) -> str:
        event_id = self._id("p")
        line = {"sku": sku, "qty": 1, "unit_price": 10.0}
        event = {"event_id": event_id, "event_type": "sale", "ts": ts, "store_id": store}
        event |= {"receipt_id": f"r-{event_id}", "lines": [line], "total": 10.0, **fields}
        self.events.append(("pos.sales", event))
        return event_id

    def receipt(self, location: str, sku: str, qty: int, ts: int) -> None:
        event = {"event_id": self._id("m"), "event_type": "receipt", "ts": ts}
        event |= {"location_id": location, "sku": sku, "qty": qty}
        self.events.append(("wms.movements", event))


def minted(event_id: str, identifiers: list[str]) -> str:
    return new_customer_id(event_id, by_priority(identifiers)[0])


def scenario() -> tuple[Day, dict[str, str]]:
    d = Day()
    ids: dict[str, str] = {}
    d.receipt("ST-SH-01", MILK, 100, T0 - 2 * DAY)
    d.receipt("WH-SH-01", SOAP, 200, T0 - 2 * DAY)
    # M: a member since long ago, whose last purchase lapses at T0 + 15 min.
    first = d.click(
        "d-m",
        "order_placed",
        T0 - 30 * DAY + 15 * MIN,
        user_id="u-m",
        order_id="o-m",
        total=13.9,
        lines=[{"sku": SOAP, "qty": 1, "unit_price": 13.9}],
        fulfillment={"type": "delivery", "location_id": "WH-SH-01"},
    )
    ids["m"] = minted(first, ["anon:d-m", "user:u-m", "order:o-m"])
    # X: an anonymous device browses milk (a coupon under X), leaves a cart of soap,
    # then logs in as M: X merges into M (M is older).
    view = d.click("d-x", "product_view", T0, sku=MILK, price=9.9)
    ids["x"] = minted(view, ["anon:d-x"])
    d.click("d-x", "product_view", T0 + 1 * MIN, sku=MILK, price=9.9)
    d.click("d-x", "product_view", T0 + 2 * MIN, sku=MILK, price=9.9)
    d.click("d-x", "add_to_cart", T0 + 3 * MIN, sku=SOAP, qty=1, price=13.9)
    d.click("d-x", "login", T0 + 4 * MIN, user_id="u-m")
    # A chain: A (anonymous, a cart) into B (an account) into C (a loyalty card with a phone).
    c_first = d.sale("ST-SH-02", SOAP, T0 - 20 * DAY, member_code="m-c", phone=PHONE_C)
    phone = pii_identifier_value("phone", PHONE_C, PII_KEY, "86")
    ids["c"] = minted(c_first, ["member:m-c", f"phone:{phone}"])
    d.click("d-b", "page_view", T0 - 5 * DAY, user_id="u-b")
    d.click("d-a", "add_to_cart", T0 + 1 * MIN, sku=SOAP, qty=1, price=13.9)
    d.click("d-a", "login", T0 + 2 * MIN, user_id="u-b")
    d.click("d-b", "page_view", T0 + 3 * MIN, user_id="u-b", phone=PHONE_C)
    # W withdrew consent, then left a cart.
    d.click("d-w", "consent", T0, user_id="u-w", marketing=False)
    d.click("d-w", "add_to_cart", T0 + 1 * MIN, user_id="u-w", sku=SOAP, qty=1, price=13.9)
    # Z carts a sku nobody holds.
    d.click("d-z", "add_to_cart", T0 + 1 * MIN, user_id="u-z", sku=RARE, qty=1, price=80.9)
    # V browses, then checks in at a store.
    v_first = d.click("d-v", "product_view", T0 + 5 * MIN, user_id="u-v", sku=MILK, price=9.9)
    ids["v"] = minted(v_first, ["anon:d-v", "user:u-v"])
    d.click("d-v", "product_view", T0 + 6 * MIN, user_id="u-v", sku=SOAP, price=13.9)
    d.click("d-v", "store_checkin", T0 + 20 * MIN, user_id="u-v", store_id="ST-SH-01")
    # Later traffic moves every partition's clock past the deadlines.
    for n in range(40):
        d.click(f"d-late{n}", "page_view", T0 + 3 * HOUR)
    return d, ids


def stock_first(config: Config, events: list[tuple[str, dict[str, Any]]]) -> None:
    """The receipts, until stock_pool has published each: the pool holds the stock before
    any shopper looks for it (stock_pool releases by event time, behind its inputs)."""
    receipts = [e for e in events if e[0] == "wms.movements"]
    produce(config, receipts)
    changes = TopicWatcher(config, "stock.changes")
    try:
        for _, event in receipts:
            changes.wait_for(
                lambda v, cause=event["event_id"]: v["data"]["cause"] == cause, timeout_s=60
            )
    finally:
        changes.close()


def produce(config: Config, events: list[tuple[str, dict[str, Any]]]) -> None:
    producer = make_producer(config)
    for topic, event in sorted(events, key=lambda item: item[1]["ts"]):
        key = event.get("anonymous_id") or event.get("store_id") or event.get("location_id")
        producer.produce(config.topic(topic), key=str(key).encode(), value=orjson.dumps(event))
        # One at a time: identity resolves each event before the next (the merges happen
        # in the scripted order), stock_pool sees the receipts before the views.
        assert producer.flush(30) == 0
        time.sleep(0.02)


def data_of(config: Config, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value())["data"] for m in read_topic(config, topic, timeout_s=20)]


def suppressed(port: int) -> dict[tuple[str, str], float]:
    samples = scrape(port) or {}
    return {
        (labels["rule"], labels["reason"]): value
        for labels, value in samples.get("omnistream_triggers_suppressed_total", [])
        if value > 0
    }


def wait_until(check: Any, timeout_s: float = 120.0, what: str = "", show: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    seen = show() if show is not None else None
    raise AssertionError(f"timed out waiting for {what}: {seen}")


#: The key prefix every test gets on the session's Redis (``tests.conftest.omni_config``).
TEST_PREFIX = re.compile(rb"omni[0-9a-f]{10}:")


def redis_mentions(
    client: redis.Redis, needle: str, prefix: str, *, everywhere: bool = False
) -> list[str]:
    """Every key whose name or content holds ``needle``, under ``prefix`` (this test's);
    ``everywhere``: also under no test's prefix at all. The other tests' keys are left
    unread: the session's Redis holds tens of thousands of them by now, and reading each
    took this test from 20 s to 130 s (the polls look under ``prefix`` alone, which Redis
    matches itself)."""
    found = []
    raw, own = needle.encode(), prefix.encode()
    keys = client.scan_iter(match=None if everywhere else f"{prefix}*", count=1000)
    for key in keys:
        if not key.startswith(own) and TEST_PREFIX.match(key):
            continue
        if raw in key:
            found.append(key.decode())
            continue
        kind = client.type(key)
        if kind == b"string":
            parts = [client.get(key) or b""]
        elif kind == b"hash":
            parts = [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == b"set":
            parts = list(client.smembers(key))
        elif kind == b"zset":
            parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"list":
            parts = list(client.lrange(key, 0, -1))
        else:
            parts = []
        if any(raw in p for p in parts):
            found.append(key.decode())
    return found


def snapshot_mentions(recovery: Path, needle: str, *, keys: bool = True) -> list[str]:
    """Recovery snapshot rows that hold ``needle`` in their state, or (``keys``) are named
    by it. A key Bytewax discarded keeps a row with no state, named by the key, until a
    start of the flow prunes it (``state.recovery_prune``)."""
    found = []
    raw = needle.encode()
    for db in recovery.rglob("*.sqlite3"):
        with closing(sqlite3.connect(db)) as conn:
            for step_id, state_key, snap in conn.execute(
                "SELECT step_id, state_key, ser_change FROM snaps"
            ):
                if (keys and needle in state_key) or (snap is not None and raw in bytes(snap)):
                    found.append(f"{db.name}:{step_id}:{state_key}")
    return found


#: attribution's router and path steps, and the bare mark each keeps for an erased id
#: (``domain.attribution_paths``)
ROUTER_STEP = "attribution.router.stateful_flat_map.stateful.stateful_batch"
PATHS_STEP = "attribution.paths.stateful_batch"
ERASED_MARKS = {
    ROUTER_STEP: RouterState(erased=True, customer_id=""),
    PATHS_STEP: (None, [], True),
}


def newest_state(recovery: Path, step_id: str, customer_id: str) -> object:
    """The newest snapshot of ``customer_id`` in one of attribution's steps."""
    for db in recovery.rglob("*.sqlite3"):
        with closing(sqlite3.connect(db)) as conn:
            row = conn.execute(
                "SELECT ser_change FROM snaps WHERE step_id = ? AND state_key = ? "
                "ORDER BY snap_epoch DESC LIMIT 1",
                (step_id, customer_id),
            ).fetchone()
        if row is not None:
            return None if row[0] is None else pickle.loads(row[0])
    return None


def start_flows(tmp_path: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Every flow as its own process, on the configuration written for it: a second start
    resumes from its recovery directory."""
    processes = {}
    for name in FLOWS:
        with (tmp_path / f"{name}.log").open("ab") as log:
            processes[name] = start_flow(name, tmp_path / f"{name}.yaml", log=log)
    return processes


def topic_ends(config: Config) -> dict[str, int]:
    return {t: len(read_topic(config, t, timeout_s=20)) for t in OUTPUT_TOPICS}


@pytest.fixture
def customers_config(omni_config: Config, tmp_path: Path) -> Config:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return omni_config.with_overrides(pii={"key": PII_KEY}, rules={"file": str(rules)})


def test_rule_state_follows_merges_guards_visits_and_erasure(
    customers_config: Config, tmp_path: Path, redis_client: redis.Redis
) -> None:
    config = customers_config
    ports = {name: free_port() for name in FLOWS}
    for name in FLOWS:
        flow_config = config.with_overrides(
            metrics={"port": ports[name]},
            recovery={
                "dir": str(tmp_path / "recovery" / name),
                "snapshot_seconds": 1.0,
                "backup_seconds": 1.0,
            },
        )
        dump_config(flow_config, tmp_path / f"{name}.yaml")
    processes = start_flows(tmp_path)
    try:
        day, ids = scenario()
        stock_first(config, day.events)
        produce(config, [e for e in day.events if e[0] != "wms.movements"])
        rules_port = ports["rule_triggers"]

        def coupons() -> list[dict[str, Any]]:
            return data_of(config, "triggers.coupon")

        def carts() -> list[dict[str, Any]]:
            return [c for c in coupons() if c["rule_id"] == "cart"]

        wait_until(
            lambda: len(carts()) >= 2,
            what="two cart coupons",
            show=lambda: (
                [(c["rule_id"], c["customer_id"]) for c in coupons()],
                ids,
                suppressed(rules_port),
            ),
        )
        wait_until(
            lambda: (
                {("lapse", "cap"), ("cart", "no_consent"), ("cart", "no_stock")}
                <= set(suppressed(rules_port))
            ),
            what="the suppressions",
            show=lambda: (
                suppressed(rules_port),
                [(c["rule_id"], c["customer_id"]) for c in coupons()],
                ids,
            ),
        )
        time.sleep(3)  # an unexpected extra coupon would show by now
        sent = {(c["rule_id"], c["customer_id"]) for c in coupons()}
        # X's browse coupon went out under X, before the merge; the cart left on X's device
        # went out once, under M; A's cart reached C through B.
        assert sent == {("browse", ids["x"]), ("cart", ids["m"]), ("cart", ids["c"])}
        assert len(coupons()) == 3
        # M's lapse reminder came due after the cart: X's coupon counts in M's cap.
        assert suppressed(rules_port)[("lapse", "cap")] == 1

        # The visit: a task naming the views, on the topic and in the store's hash.
        def visits_of(customer_id: str) -> list[dict[str, Any]]:
            return [
                t
                for t in data_of(config, "store.tasks")
                if t["kind"] == "customer_visit" and t["customer_id"] == customer_id
            ]

        [visit] = wait_until(lambda: visits_of(ids["v"]), what="V's visit task")
        assert visit["store_id"] == "ST-SH-01"
        # C's card scanned at a till is a visit too (C had viewed nothing).
        [till_visit] = visits_of(ids["c"])
        assert till_visit["store_id"] == "ST-SH-02" and till_visit["recent_views"] == []
        assert [v["sku"] for v in visit["recent_views"]] == [SOAP, MILK]
        prefix = config.redis.key_prefix
        stored = wait_until(
            lambda: redis_client.hget(f"{prefix}tasks:ST-SH-01", visit["task_id"]),
            what="the visit in the store's task hash",
        )
        assert orjson.loads(stored)["recent_views"] == visit["recent_views"]

        # M's profile holds X's browsing and its own purchase; X has none of its own.
        profile = wait_until(
            lambda: redis_client.hgetall(f"{prefix}profile:{ids['m']}"), what="M's profile"
        )
        assert profile[b"purchases"] == b"1"
        assert orjson.loads(profile[b"top_categories"])  # X's milk views count for M
        assert not redis_client.exists(f"{prefix}profile:{ids['x']}")
        assert redis_client.hget(f"{prefix}profile:{ids['c']}", "purchases") == b"1"

        # Erasure of C (reached by B's account). C's cart coupon is in the experiment's
        # arm (what `experiments report` counts): the erasure must reach it too.
        wait_until(
            lambda: any(
                ":cart:amount_15" in k for k in redis_mentions(redis_client, ids["c"], prefix)
            ),
            what="C's coupon in the cart experiment's arm",
            show=lambda: redis_mentions(redis_client, ids["c"], prefix),
        )
        before = topic_ends(config)
        forget = subprocess.run(
            [sys.executable, "-m", "omnistream.cli", "forget", "user", "u-b"],
            env={"OMNI_CONFIG": str(tmp_path / "identity_stitch.yaml"), "PATH": "/usr/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert forget.returncode == 0, forget.stderr
        assert ids["c"] in forget.stdout
        # Traffic after the erasure: C's phone again (a new customer now), a till redeeming
        # nothing, and late events moving every clock.
        after = Day()
        after.click("d-c2", "page_view", T0 + 4 * HOUR, phone=PHONE_C)
        for n in range(20):
            after.click(f"d-later{n}", "page_view", T0 + 5 * HOUR)
        produce(config, after.events)
        cid = ids["c"]
        wait_until(
            lambda: not redis_mentions(redis_client, cid, prefix),
            what="Redis to forget C",
            show=lambda: redis_mentions(redis_client, cid, prefix),
        )
        time.sleep(4)  # several snapshot epochs (1 s) and their backups (1 s) pass
        assert redis_mentions(redis_client, cid, prefix, everywhere=True) == []
        for name in FLOWS:  # no state holds it already; the discarded keys' rows name it
            assert snapshot_mentions(tmp_path / "recovery" / name, cid, keys=False) == [], name
        for topic in OUTPUT_TOPICS:
            later = read_topic(config, topic, timeout_s=20)[before[topic] :]
            leaks = [
                m.value() for m in later if cid.encode() in m.value() and b"erased" not in m.value()
            ]
            assert leaks == [], topic
        # Restarted on the same recovery directories, the flows resume; each start prunes
        # the rows Bytewax kept for discarded keys, the erased id's among them.
        for process in processes.values():
            stop_process(process)
        processes = start_flows(tmp_path)
        wait_until(
            lambda: all(scrape(port) is not None for port in ports.values()),
            what="the flows to resume",
        )
        time.sleep(2)  # a couple of snapshot epochs of the resumed flows
        for process in processes.values():
            stop_process(process)
        for name in FLOWS:
            found = snapshot_mentions(tmp_path / "recovery" / name, cid)
            if name == "attribution":
                # Not pruned, by design of attribution: its router and its path keep a bare
                # mark under the erased id, so a touch or a hand-over read after the erasure
                # (a coupon sent before it, another id's router not told yet) does not start
                # a new path for the id. The marks hold nothing else.
                marks = [row for row in found if any(f":{s}:" in row for s in ERASED_MARKS)]
                assert len(marks) <= len(ERASED_MARKS), found
                for step_id, mark in ERASED_MARKS.items():
                    if any(f":{step_id}:" in row for row in marks):
                        state = newest_state(tmp_path / "recovery" / name, step_id, cid)
                        assert state == mark, (step_id, state)
                found = [row for row in found if row not in marks]
            assert found == [], name
        assert redis_mentions(redis_client, cid, prefix, everywhere=True) == []
    finally:
        for process in processes.values():
            stop_process(process)
