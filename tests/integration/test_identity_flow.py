"""identity_stitch end to end on the real broker and Redis: linking, conflicts, junk, pickups,
erasure, two workers, and no raw PII anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import make_producer
from connectors.reference_files import load_reference
from omnistream.processes import start_flow
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

TS = 1_793_500_000_000
RAW_PHONES = ["138-0013-8000", "+86 13800138000", "13912345678", "8613800138000"]
RAW_EMAILS = ["Ann@Example.COM", "ann@example.com", "bob.secret@shop.example"]


def click(n: int, event_type: str, anon: str, **fields: object) -> tuple[str, dict]:
    return "clickstream", {
        "event_id": f"c{n}",
        "event_type": event_type,
        "ts": TS + n * 1000,
        "anonymous_id": anon,
        "channel": "app",
        **fields,
    }


def sale(n: int, **fields: object) -> tuple[str, dict]:
    return "pos.sales", {
        "event_id": f"p{n}",
        "event_type": "sale",
        "ts": TS + n * 1000,
        "store_id": "ST-SH-01",
        "receipt_id": f"r{n}",
        "lines": [{"sku": "SKU-10001", "qty": 1, "unit_price": 9.9}],
        "total": 9.9,
        **fields,
    }


def order(n: int, anon: str, user: str, order_id: str) -> tuple[str, dict]:
    return click(
        n,
        "order_placed",
        anon,
        user_id=user,
        order_id=order_id,
        lines=[{"sku": "SKU-10001", "qty": 1, "unit_price": 9.9}],
        total=9.9,
        fulfillment={"type": "store_pickup", "location_id": "ST-SH-01"},
    )


SCENARIO = [
    click(1, "login", "dev-1", user_id="u-ann", phone="138-0013-8000", email=" Ann@Example.COM "),
    click(2, "login", "dev-1", user_id="u-bob"),  # shared device: two users → conflict
    sale(3, member_code="m-ann", phone="+86 13800138000"),  # same phone → joins Ann
    order(4, "dev-9", "u-cat", "o-100"),
    sale(5, member_code="m-cat", order_id="o-100"),  # store pickup joins the member to Cat
    order(6, "dev-7", "u-dan", "o-200"),
    order(7, "dev-8", "u-eve", "o-300"),
    sale(8, member_code="m-card", order_id="o-200"),  # one card with two accounts …
    sale(9, member_code="m-card", order_id="o-300"),  # … → conflict
    click(10, "login", "undefined", user_id="u-fay"),  # junk anon links no one
    click(11, "login", "null", user_id="u-gus"),
    *[click(20 + i, "login", "kiosk-1", user_id=f"u-k{i}") for i in range(6)],  # shared kiosk
    sale(30, member_code="m-zed", phone="13912345678", email="bob.secret@shop.example"),
    sale(31),  # walk-in: no identifier at all
]
BAD = [
    ("clickstream", b'{"event_id":"bad1","phone":"13912345678","email":"bob.secret@shop.example"')
]


def produce_scenario(
    config: Config, events: list[tuple[str, dict]], raw: list[tuple[str, bytes]] = BAD
) -> None:
    producer = make_producer(config)
    for topic, event in events:
        producer.produce(config.topic(topic), key=b"k", value=orjson.dumps(event))
    for topic, payload in raw:
        producer.produce(config.topic(topic), key=b"k", value=payload)
    assert producer.flush(30) == 0


def run_flow(config: Config, tmp_path: Path, name: str = "flow") -> Path:
    config_path = tmp_path / f"{name}.yaml"
    dump_config(config, config_path)
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = start_flow("identity_stitch", config_path, until_idle=True, log=log)
        code = process.wait(timeout=300)
    assert code == 0, log_path.read_text(errors="replace")[-3000:]
    return config_path


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnistream.cli", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def owner(client: redis.Redis, config: Config, ident: str) -> str | None:
    value = client.get(f"{config.redis.key_prefix}id:{ident}")
    return value.decode() if value else None


@pytest.fixture
def id_config(omni_config: Config, tmp_path: Path) -> Config:
    return omni_config.with_overrides(
        pii={"key": "test-secret"},
        recovery={"dir": str(tmp_path / "recovery"), "snapshot_seconds": 0.5},
    )


def test_scenario_links_refuses_and_erases(id_config: Config, tmp_path: Path) -> None:
    produce_scenario(id_config, SCENARIO)
    config_path = run_flow(id_config, tmp_path)
    client = redis.Redis.from_url(id_config.redis.url)
    try:
        ann = owner(client, id_config, "user:u-ann")
        assert ann is not None
        assert owner(client, id_config, "anon:dev-1") == ann  # first user keeps the device
        assert owner(client, id_config, "member:m-ann") == ann  # linked through the phone
        bob = owner(client, id_config, "user:u-bob")
        assert bob not in (None, ann)
        cat = owner(client, id_config, "user:u-cat")
        assert owner(client, id_config, "member:m-cat") == cat  # store pickup
        assert owner(client, id_config, "order:o-100") == cat
        card = owner(client, id_config, "member:m-card")
        assert card == owner(client, id_config, "user:u-dan")
        assert card != owner(client, id_config, "user:u-eve")
        assert owner(client, id_config, "anon:undefined") is None
        assert owner(client, id_config, "anon:null") is None
        kiosk_users = {owner(client, id_config, f"user:u-k{i}") for i in range(6)}
        assert len(kiosk_users) == 6  # the shared kiosk fused no one
    finally:
        client.close()

    changes = [json.loads(m.value()) for m in read_topic(id_config, "identity.changes")]
    conflicts = [c["data"] for c in changes if c["data"]["kind"] == "conflict"]
    assert {c["reason"] for c in conflicts} == {"two_users"}
    assert len(conflicts) >= 3  # shared device, shared card, kiosk (until it is blocked)
    assert all(c["type"] == f"omnistream.identity.{c['data']['kind']}" for c in changes)
    resolved = [json.loads(m.value()) for m in read_topic(id_config, "events.resolved")]
    # Merge notices name a merge, not an input event; how many merges there are depends on
    # the order the partitions are read in (a device seen before its login is a customer
    # of its own, merged at the login; seen after, it joins the login's customer).
    resolved = [r for r in resolved if r.get("source_topic") != "identity"]
    assert len(resolved) == len(SCENARIO)
    by_id = {r["event_id"]: r for r in resolved}
    assert by_id["c2"]["customer_id"] == bob  # the event still resolves, to u-bob's customer
    assert by_id["p31"]["customer_id"] is None

    # whois prints the customer and its identifiers; a raw phone is hashed first.
    reply = cli(config_path, "whois", "phone", "13800138000")
    assert reply.returncode == 0, reply.stderr
    assert ann in reply.stdout and "m-ann" in reply.stdout and "u-ann" in reply.stdout

    # forget erases the customer; a later event from its device starts a new one.
    reply = cli(config_path, "forget", "user", "u-ann")
    assert reply.returncode == 0, reply.stderr
    assert cli(config_path, "whois", "member", "m-ann").returncode == 1
    erased = [json.loads(m.value())["data"] for m in read_topic(id_config, "identity.changes")]
    assert any(e["kind"] == "erased" and e["customer_id"] == ann for e in erased)
    produce_scenario(id_config, [click(40, "page_view", "dev-1")], raw=[])
    run_flow(id_config, tmp_path, "resume")  # resumes from its recovery snapshot
    client = redis.Redis.from_url(id_config.redis.url)
    try:
        again = owner(client, id_config, "anon:dev-1")
        assert again is not None and again != ann
    finally:
        client.close()


def test_no_raw_pii_in_redis_topics_or_logs(id_config: Config, tmp_path: Path) -> None:
    produce_scenario(id_config, SCENARIO)
    run_flow(id_config, tmp_path)
    haystack: list[bytes] = []
    client = redis.Redis.from_url(id_config.redis.url)
    try:
        for key in client.scan_iter(match=f"{id_config.redis.key_prefix}*", count=1000):
            haystack.append(key)
            kind = client.type(key)
            if kind == b"string":
                haystack.append(client.get(key) or b"")
            elif kind == b"hash":
                haystack.extend(b"%s=%s" % kv for kv in client.hgetall(key).items())
    finally:
        client.close()
    for topic in ALL_TOPICS:
        if topic in {"clickstream", "pos.sales"}:
            continue  # the inputs hold what connectors sent
        haystack.extend((m.value() or b"") for m in read_topic(id_config, topic))
    haystack.append((tmp_path / "flow.log").read_bytes())
    text = b"\n".join(haystack).decode("utf-8", errors="replace").lower()
    assert len(text) > 1000
    for secret in [*RAW_PHONES, *RAW_EMAILS, "13800138000", "13912345678"]:
        assert secret.lower() not in text, secret


def partition(config: Config) -> set[frozenset[str]]:
    client = redis.Redis.from_url(config.redis.url)
    try:
        customers = set()
        for key in client.scan_iter(match=f"{config.redis.key_prefix}cust:*", count=1000):
            customers.add(frozenset(orjson.loads(client.hget(key, "ids") or b"[]")))
        return customers
    finally:
        client.close()


def test_two_workers_end_with_the_same_partition_as_one(
    omni_config: Config, tmp_path: Path
) -> None:
    events = list(TrafficModel(load_reference(omni_config), seed=21, customers=300).events(6000))
    base = omni_config.with_overrides(pii={"key": "test-secret"})
    produce(base, events, progress=False)
    one = base.with_overrides(redis={"key_prefix": base.redis.key_prefix + "w1:"})
    two = base.with_overrides(
        redis={"key_prefix": base.redis.key_prefix + "w2:"},
        flow={"workers": 2},
        kafka={"batch_size": 50},
    )
    run_flow(one, tmp_path, "one")
    run_flow(two, tmp_path, "two")
    first, second = partition(one), partition(two)
    assert len(first) > 100
    assert sum(1 for ids in first if len(ids) > 1) > 50  # customers that really linked
    assert first == second


@pytest.mark.parametrize("flow", ["stock_pool", "identity_stitch", "rule_triggers", "attribution"])
def test_flows_refuse_to_start_without_the_pii_key(
    omni_config: Config, tmp_path: Path, flow: str
) -> None:
    config_path = tmp_path / "nokey.yaml"
    dump_config(omni_config.with_overrides(pii={"key": ""}), config_path)
    env = {k: v for k, v in os.environ.items() if k != "OMNI_PII_KEY"}
    reply = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnistream.cli",
            "run",
            flow,
            "--until-idle",
            "--config",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert reply.returncode == 2
    assert "pii.key" in reply.stderr and "OMNI_PII_KEY" in reply.stderr
