"""The example subscriber (``examples/subscriber.py``) against a live run of all four flows,
and the wire format it relies on.

One run per module (fixture ``live``): generated traffic, the clickstream first (see
``live``) → identity_stitch and stock_pool; the tills and warehouses → identity_stitch and
stock_pool again, with fresh flow state, so they read the clickstream once more (what a
restart without its recovery snapshot does: outputs are published again with the same ids —
the duplicates a subscriber drops) → rule_triggers → attribution → identity_stitch and
stock_pool a third time over everything; then ``forget`` of one customer. Then the example
runs as a subscriber would, as its own process, to the end of every partition, and writes
what it folded.

The references are independent of the example: the public Redis keys (``omni:id:*``,
``omni:stock:*``, CONTRACT §5) and the raw topics read with confluent-kafka.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat

from base.config import Config, dump_config
from base.topics import (
    ALL_TOPICS,
    CLOUDEVENT_TOPICS,
    DEADLETTER,
    EVENTS_RESOLVED,
    IDENTITY_CHANGES,
    ORDERS_SOURCED,
    STOCK_CHANGES,
    STORE_TASKS,
    TRIGGERS_REPLENISHMENT,
)
from base.units import DAY_MS
from connectors.generator import TrafficModel, produce
from connectors.generator.traffic import DEFAULT_START_MS
from connectors.kafka_clients import ensure_topics, make_producer
from connectors.reference_files import load_reference
from omnistream.embedded import EmbeddedStack
from omnistream.processes import start_flow
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "subscriber.py"
STRUCTURED = [("content-type", b"application/cloudevents+json")]
TYPES = {
    "identity.changes": "omnistream.identity.",
    "triggers.coupon": "omnistream.trigger.coupon",
    "triggers.holdout": "omnistream.trigger.holdout",
    "triggers.replenishment": "omnistream.trigger.replenishment",
    "triggers.insights": "omnistream.trigger.insight",
    "attribution.credits": "omnistream.attribution.credit",
    "stock.changes": "omnistream.stock.changed",
    "orders.sourced": "omnistream.order.sourced",
    "store.tasks": "omnistream.store.task",
}
#: Fields of an ``omni:stock:*`` hash that ``stock.changes`` data carries too.
STOCK_FIELDS = ("on_hand", "reserved", "available", "sold_1h", "sold_24h", "region", "cause")


@dataclass
class Live:
    config: Config
    logs: dict[str, str]  # flow run → its log
    erased_customer: str
    erased_identifiers: set[str]
    state: dict[str, Any]  # what the example folded (--state-out)


def run_flows(config_path: Path, logs_dir: Path, logs: dict[str, str], *names: str,
              run: str = "") -> None:  # fmt: skip
    """Run flows side by side with ``--until-idle``; each must exit 0."""
    started = []
    for name in names:
        log_path = logs_dir / f"{name}{run}.log"
        with log_path.open("wb") as log:
            process = start_flow(name, config_path, until_idle=True, log=log)
        started.append((name, log_path, process))
    for name, log_path, process in started:
        try:
            code = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        logs[f"{name}{run}"] = log_path.read_text(errors="replace")
        assert code == 0, logs[f"{name}{run}"][-3000:]


def owners(config: Config) -> dict[str, str]:
    """identifier → customer id, from the public ``id:<type>:<value>`` keys."""
    client = redis.Redis.from_url(config.redis.url)
    prefix = f"{config.redis.key_prefix}id:"
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        values = client.mget(keys) if keys else []
        return {k.decode()[len(prefix) :]: v.decode() for k, v in zip(keys, values, strict=True)}
    finally:
        client.close()


def stock_hashes(config: Config) -> dict[str, dict[str, str]]:
    """``sku:location_id`` → the public ``stock:<sku>:<location_id>`` hash."""
    client = redis.Redis.from_url(config.redis.url, decode_responses=True)
    prefix = f"{config.redis.key_prefix}stock:"
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return {k[len(prefix) :]: row for k, row in zip(keys, pipe.execute(), strict=True)}
    finally:
        client.close()


def task_hashes(config: Config) -> dict[str, dict[str, Any]]:
    """task id → the task's JSON in the public ``tasks:<store_id>`` hashes."""
    client = redis.Redis.from_url(config.redis.url, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{config.redis.key_prefix}tasks:*", count=1000))
        rows: list[dict[Any, Any]] = [client.hgetall(key) for key in keys]
        return {task_id: json.loads(value) for row in rows for task_id, value in row.items()}
    finally:
        client.close()


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnistream.cli", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def live(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Live:
    tmp = tmp_path_factory.mktemp("subscriber")
    tag = uuid.uuid4().hex[:10]
    config = stack.config().with_overrides(
        kafka={"topic_prefix": f"t{tag}."},
        redis={"key_prefix": f"omni{tag}:"},
        pii={"key": f"test-secret-{tag}"},
    )
    # The packaged rules with most of each experiment's draws in control, so that holdouts
    # (triggers.holdout) come out of a few thousand events too.
    rules = yaml.safe_load(Path(config.rules.file).read_text(encoding="utf-8"))
    for rule in rules["rules"]:
        if "experiment" in rule:
            rule["experiment"]["control_share"] = 0.8
        if rule["kind"] == "redemption_review":  # judge a day's coupons the next day
            rule["params"] |= {"window": "1d", "min_sent": 3}
    rules_path = tmp / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    config = config.with_overrides(rules={"file": str(rules_path)})
    ensure_topics(config, list(ALL_TOPICS))
    config_path = tmp / "omnistream.yaml"
    dump_config(config, config_path)
    model = TrafficModel(load_reference(config), seed=50, customers=800, bad_ratio=0.02)
    # Two days on, more of the same shoppers: their coupons make the first day's redemption
    # review due (nobody generated redeems a rule's code: every reviewed day is under 30 %).
    later = TrafficModel(
        load_reference(config), seed=51, customers=800, start_ms=DEFAULT_START_MS + 2 * DAY_MS
    )
    events = [*model.events(8000), *later.events(3000)]
    # The clickstream first, the tills and warehouses later, as input arrives over time: the
    # second runs (fresh flow state) recompute with older movements that were not there in
    # the first, and republish some ids with other figures (see the stock test).
    clicks = [e for e in events if e.topic == "clickstream"]
    produce(config, clicks, progress=False)
    logs: dict[str, str] = {}
    run_flows(config_path, tmp, logs, "identity_stitch", "stock_pool")
    produce(config, [e for e in events if e.topic != "clickstream"], progress=False)
    run_flows(config_path, tmp, logs, "identity_stitch", "stock_pool", run="-tills")
    run_flows(config_path, tmp, logs, "rule_triggers")
    run_flows(config_path, tmp, logs, "attribution")
    # All of it again with fresh flow state: every output again, with the same ids.
    run_flows(config_path, tmp, logs, "identity_stitch", "stock_pool", run="-again")

    # Erase the customer of the user with the most identifiers: `erased` on identity.changes.
    before = owners(config)
    size = Counter(before.values())
    user = max((i for i in before if i.startswith("user:")), key=lambda i: (size[before[i]], i))
    customer = before[user]
    reply = cli(config_path, "forget", "user", user.split(":", 1)[1])
    assert reply.returncode == 0, reply.stderr
    erased = {i for i, c in before.items() if c == customer}
    assert len(erased) >= 2

    state_path = tmp / "subscriber-state.json"
    reply = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", config.kafka.bootstrap,
         "--topic-prefix", config.kafka.topic_prefix, "--until-end",
         "--state-out", str(state_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert reply.returncode == 0, reply.stderr[-3000:]
    print("\n" + reply.stdout)
    return Live(config, logs, customer, erased, json.loads(state_path.read_text()))


def test_every_cloudevent_output_is_structured_mode_and_parses_with_from_kafka(
    live: Live,
) -> None:
    """The Kafka binding's structured mode: the ``content-type`` header names the CloudEvents
    JSON format, and the SDK's ``from_kafka`` reads back exactly the document published."""
    for topic in sorted(CLOUDEVENT_TOPICS):
        messages = read_topic(live.config, topic, timeout_s=60)
        assert messages, f"nothing on {topic}: the scenario must exercise every output"
        for message in messages:
            assert message.headers() == STRUCTURED, (topic, message.headers())
            value = message.value() or b""
            event = from_kafka(
                KafkaMessage(headers=dict(message.headers()), key=message.key(), value=value),
                JSONFormat(),
            )
            doc = json.loads(value)
            assert event.get_specversion() == "1.0"
            assert (event.get_id(), event.get_source(), event.get_type()) == (
                doc["id"], doc["source"], doc["type"],
            )  # fmt: skip
            assert event.get_type().startswith(TYPES[topic]), (topic, event.get_type())
            assert event.get_subject() == doc["subject"]
            assert event.get_datacontenttype() == "application/json"
            assert event.get_time() == datetime.fromisoformat(doc["time"])
            assert event.get_data() == doc["data"]
            key = message.key()  # None for a walk-in sale's credit (no customer)
            assert event.get_extension("partitionkey") == (None if key is None else key.decode())


def test_plain_json_outputs_carry_no_cloudevents_header(live: Live) -> None:
    for topic in (DEADLETTER, EVENTS_RESOLVED):
        messages = read_topic(live.config, topic, timeout_s=60)
        assert messages, topic
        assert all(not message.headers() for message in messages), topic


def test_the_example_drops_every_duplicate_and_counts_each_id_once(live: Live) -> None:
    counts = live.state["counts"]
    for topic in sorted(CLOUDEVENT_TOPICS):
        ids = [json.loads(m.value() or b"")["id"] for m in read_topic(live.config, topic, 60)]
        distinct = set(ids)
        assert counts[topic] == {
            "events": len(distinct),
            "duplicates": len(ids) - len(distinct),
            "rejected": 0,
        }, topic
    # The second runs published their outputs again: there were duplicates to drop.
    assert counts[STOCK_CHANGES]["duplicates"] >= counts[STOCK_CHANGES]["events"] * 0.9
    assert counts[IDENTITY_CHANGES]["duplicates"] > 0
    published = {
        (d := json.loads(m.value() or b"")["data"])["conversion_id"]: d["revenue"]
        for m in read_topic(live.config, "attribution.credits", 60)
    }
    assert published and live.state["credited_revenue"] == published


def test_the_example_identity_fold_equals_the_public_id_keys(live: Live) -> None:
    expected = owners(live.config)
    folded = live.state["identity"]
    assert len(expected) > 1000
    assert len(set(expected.values())) < len(expected)  # customers with several identifiers
    assert not live.erased_identifiers & set(expected)  # forget removed them from Redis …
    assert folded == expected  # … and the fold dropped them on `erased`


def test_every_reading_order_of_the_partitions_folds_to_the_public_id_keys(live: Live) -> None:
    """The live run's identity.changes, erasure included, folded by the example's fold
    partition by partition in every order: each ends with the ``omni:id:*`` keys. (The
    fold used to apply ``erased`` once: read before the changes of a customer merged into
    the erased one, on another partition, those brought its identifiers back.)"""
    expected = owners(live.config)
    partitions: dict[int, list[dict[str, Any]]] = {}
    for message in read_topic(live.config, IDENTITY_CHANGES, 60):
        partitions.setdefault(message.partition() or 0, []).append(
            json.loads(message.value() or b"")
        )
    assert any(c["data"]["kind"] == "erased" for p in partitions.values() for c in p)
    fold_class = example_fold()
    wrong = []
    for order in itertools.permutations(sorted(partitions)):
        fold = fold_class()
        for partition in order:
            for change in partitions[partition]:
                fold.apply(change["data"])
        if fold.mapping() != expected:
            wrong.append(order)
    assert not wrong, f"{len(wrong)} reading orders end elsewhere, e.g. {wrong[0]}"


def test_the_example_latest_task_per_id_equals_the_public_task_hashes(live: Live) -> None:
    """store.tasks: what the example keeps per ``task_id`` is what ``omni:tasks:*`` holds
    (less ``fired_at``, the time of sending, and ``updated_at_ms``, Redis' own); a task
    that is no longer there was done or cancelled (retention). The first run, before the
    warehouses' movements arrived, found no store covering its pickups; the later runs
    republish the same ids (task, ``open``) as other kinds: the example keeps those, not
    the first. (None of seed 43's pickups is collected within the 8,000 events.)"""
    expected = task_hashes(live.config)
    latest = live.state["tasks"]
    assert expected and any(t["status"] == "open" for t in latest.values())
    assert set(expected) <= set(latest)
    for task_id, row in expected.items():
        data = dict(latest[task_id])
        del data["fired_at"]
        assert data == {k: v for k, v in row.items() if k != "updated_at_ms"}, task_id
    # Gone from the hash: collected or cancelled pickups, and visits past their retention.
    assert all(
        latest[t]["status"] in ("done", "cancelled") or latest[t]["kind"] == "customer_visit"
        for t in set(latest) - set(expected)
    )
    # Each task's messages, as published: open first, its last one the example's.
    published: dict[str, list[dict[str, Any]]] = {}
    first_of_id: dict[str, dict[str, Any]] = {}
    for message in read_topic(live.config, STORE_TASKS, 60):
        document = json.loads(message.value() or b"")
        published.setdefault(document["data"]["task_id"], []).append(document["data"])
        first_of_id.setdefault(document["id"], document["data"])
    assert {t: m[-1] for t, m in published.items()} == latest
    assert any(
        {k: v for k, v in data.items() if k != "fired_at"}
        != {k: v for k, v in latest[data["task_id"]].items() if k != "fired_at"}
        for data in first_of_id.values()
        if data["status"] == latest[data["task_id"]]["status"]
    ), "the scenario must republish some task id with other content"


def test_the_example_latest_sourcing_per_order_is_the_last_published(live: Live) -> None:
    """orders.sourced: the last decision published per order (its partition's order),
    duplicate id or not. The run before the tills and warehouses arrived decided without
    their movements; the runs after republish those ids with other decisions, so a
    subscriber that skipped them as duplicates would keep the first ones."""
    last: dict[str, dict[str, Any]] = {}
    first: dict[str, dict[str, Any]] = {}
    for message in read_topic(live.config, ORDERS_SOURCED, 60):
        document = json.loads(message.value() or b"")
        last[document["data"]["order_id"]] = document["data"]
        first.setdefault(document["id"], document["data"])
    latest = live.state["sourced"]
    assert latest == last
    assert {d["status"] for d in latest.values()} == {"sourced", "unfulfillable"}
    changed = [
        doc_id for doc_id, data in first.items() if latest[data["order_id"]] != data
    ]  # the first decision of an id, other than the final one of its order
    assert changed, "the scenario must republish some decision with other content"


def test_replenishment_holds_the_rules_triggers_and_the_pools_transfers(live: Live) -> None:
    """One topic, two publishers: rule_triggers' triggers and stock_pool's transfers for
    pickup exceptions (naming their order); the example counts both once per id (above)."""
    by_source = Counter(
        (doc := json.loads(m.value() or b""))["source"]
        + ("+order" if doc["data"].get("order_id") else "")
        for m in read_topic(live.config, TRIGGERS_REPLENISHMENT, 60)
    )
    assert set(by_source) == {"omnistream/rule_triggers", "omnistream/stock_pool+order"}, by_source


def test_the_example_latest_stock_per_key_equals_the_public_stock_hashes(live: Live) -> None:
    """Down to the ``cause``: the subscriber ends on the position the flow wrote last. (The
    second stock_pool run, with the tills and warehouses arrived since the first, republishes
    ids of the first with other figures — 214 of 5,323 ids in one run: a subscriber skipping
    them as duplicates would end on the first run's figures.)"""
    expected = stock_hashes(live.config)
    latest = live.state["stock"]
    assert len(expected) > 100
    assert set(latest) == set(expected)
    for key, row in expected.items():
        data = latest[key]
        assert {f: str(data[f]) for f in STOCK_FIELDS} == {f: row[f] for f in STOCK_FIELDS}, key
        cover = data["days_of_cover"]
        assert (None if cover is None else float(cover)) == (
            float(row["days_of_cover"]) if "days_of_cover" in row else None
        ), key


def test_the_flows_start_without_confwarn(live: Live) -> None:
    """librdkafka prints ``CONFWARN`` for a property given to the wrong kind of client."""
    warned = {run: log.count("CONFWARN") for run, log in live.logs.items() if "CONFWARN" in log}
    assert not warned, warned


def example_fold() -> type[Any]:
    """``IdentityFold`` of the example (a script, not a package of this project)."""
    spec = importlib.util.spec_from_file_location("example_subscriber", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module.IdentityFold  # type: ignore[no-any-return]


def test_a_late_older_login_joining_a_till_customer_folds_to_the_id_keys(
    omni_config: Config, tmp_path: Path
) -> None:
    """A phone first seen at a till (customer C), then a login older than that sale joining
    the phone to a device's customer X: every order of reading the partitions of
    identity.changes must fold to the ``omni:id:*`` keys. (identity_stitch used to rename C
    to an id minted for the login, announced as "merged into" it, and publish the phone's
    move to X as "linked": folded in one order, the phone stayed under the minted id.)"""
    config = omni_config.with_overrides(
        pii={"key": "late-login-secret"},  # fixed: customer ids, and so partitions, follow it
        recovery={"dir": str(tmp_path / "recovery"), "snapshot_seconds": 0.5},
    )
    config_path = tmp_path / "omnistream.yaml"
    dump_config(config, config_path)
    t0 = 1_793_494_849_633
    line = {"sku": "SKU-10001", "qty": 1, "unit_price": 9.9}
    page_view = {"event_id": "e1", "event_type": "page_view", "ts": t0,
                 "anonymous_id": "dev-1", "channel": "app"}  # fmt: skip
    till_sale = {"event_id": "e3", "event_type": "sale", "ts": t0 + 191_000,
                 "store_id": "ST-SH-01", "receipt_id": "r1", "lines": [line], "total": 9.9,
                 "phone": "15056137502"}  # fmt: skip
    login = {"event_id": "e2", "event_type": "login", "ts": t0 + 6_000, "anonymous_id": "dev-1",
             "channel": "app", "user_id": "u-1", "phone": "15056137502"}  # fmt: skip
    producer = make_producer(config)
    for topic, event in (("clickstream", page_view), ("pos.sales", till_sale)):
        producer.produce(config.topic(topic), key=b"k", value=json.dumps(event).encode())
    assert producer.flush(30) == 0
    run_flows(config_path, tmp_path, {}, "identity_stitch")  # the sale before the login
    producer.produce(config.topic("clickstream"), key=b"k", value=json.dumps(login).encode())
    assert producer.flush(30) == 0
    del producer  # closed now, not after the session's broker has gone
    run_flows(config_path, tmp_path, {}, "identity_stitch", run="-resumed")

    expected = owners(config)
    assert len(set(expected.values())) == 1  # device, user and phone: one customer
    partitions: dict[int, list[dict[str, Any]]] = {}
    for message in read_topic(config, IDENTITY_CHANGES, 30):
        partitions.setdefault(message.partition(), []).append(json.loads(message.value() or b""))
    fold_class = example_fold()
    wrong = {}
    for order in itertools.permutations(sorted(partitions)):
        fold = fold_class()
        for partition in order:
            for change in partitions[partition]:
                fold.apply(change["data"])
        if fold.mapping() != expected:
            wrong[order] = fold.mapping()
    assert not wrong, (expected, wrong)
