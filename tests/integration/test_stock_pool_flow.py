"""stock_pool end to end: generated traffic → real broker → flow process → Redis and topics.

The expected stock is a plain fold over the generated events (``tests/stock_fold.py``),
written without the project's domain code (CONTRACT §2 read literally), and compared with
every ``omni:stock:*`` hash and with the last ``stock.changes`` event of every sku × location;
its brute-force sourcing and pickup checks with ``orders.sourced``, ``store.tasks`` and the
``omni:tasks:*`` hashes the store console reads.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.processes import start_flow
from tests.kafka_helpers import read_topic
from tests.stock_fold import (
    expected_fulfilment,
    expected_stock,
    stock_pool_decodes,
    stored_figures,
)

pytestmark = pytest.mark.integration


def redis_figures(row: dict[bytes, bytes]) -> dict[str, object]:
    return stored_figures({k.decode(): v.decode() for k, v in row.items()})


def run_until_idle(config: Config, tmp_path: Path, timeout_s: float = 600) -> float:
    config_path = tmp_path / "omnistream.yaml"
    dump_config(config, config_path)
    started = time.monotonic()
    with (tmp_path / "flow.log").open("wb") as log:
        process = start_flow("stock_pool", config_path, until_idle=True, log=log)
        try:
            code = process.wait(timeout=timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.monotonic() - started
    assert code == 0, (tmp_path / "flow.log").read_text(errors="replace")[-3000:]
    return elapsed


def test_flow_matches_independent_fold_on_10k_events(omni_config: Config, tmp_path: Path) -> None:
    reference = load_reference(omni_config)
    events = list(TrafficModel(reference, seed=11, bad_ratio=0.03).events(12_000))
    stats = produce(omni_config, events, progress=False)
    assert sum(stats.produced.values()) == len(events)

    elapsed = run_until_idle(omni_config, tmp_path)
    print(
        f"\nstock_pool: {len(events)} events in {elapsed:.1f} s "
        f"(process start included) = {len(events) / elapsed:.0f} events/s"
    )

    expected = expected_stock(events)
    client = redis.Redis.from_url(omni_config.redis.url)
    try:
        prefix = omni_config.redis.key_prefix
        pattern = f"{prefix}stock:*"
        keys = sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
        assert sorted(f"{prefix}stock:{key}" for key in expected) == keys
        pipe = client.pipeline(transaction=False)
        for key in expected:
            pipe.hgetall(f"{prefix}stock:{key}")
        actual = {
            key: redis_figures(row) for key, row in zip(expected, pipe.execute(), strict=True)
        }
    finally:
        client.close()
    mismatches = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not mismatches, list(mismatches.items())[:5]
    assert sum(1 for f in expected.values() if f["reserved"]) > 10  # the scenario reserves
    assert sum(1 for f in expected.values() if f["sold_24h"]) > 100  # and sells

    # stock.changes: the last event per sku × location carries the same final values.
    last: dict[str, dict] = {}
    for message in read_topic(omni_config, "stock.changes", timeout_s=60):
        envelope = json.loads(message.value())
        assert envelope["specversion"] == "1.0"
        assert envelope["type"] == "omnistream.stock.changed"
        last[message.key().decode()] = envelope["data"]
    assert set(last) == set(expected)
    for key, data in last.items():
        figures = {name: data[name] for name in expected[key]}
        assert figures == expected[key], key

    # Every malformed event is in deadletter with its reason code; duplicates are not errors.
    wanted = collections.Counter(
        e.bad_reason for e in events if e.bad_reason and stock_pool_decodes(e.topic, e.value)
    )
    letters = [json.loads(m.value()) for m in read_topic(omni_config, "deadletter", timeout_s=60)]
    assert collections.Counter(letter["reason"] for letter in letters) == wanted
    print("dead letters by reason:", dict(sorted(wanted.items())))
    assert all(
        {"topic", "partition", "offset", "reason", "error", "raw"} <= set(letter)
        for letter in letters
    )

    # Fulfilment: each delivery order without a location is decided once, where the
    # independent fold's brute-force choice puts it; each pickup order is one task whose
    # kind and alternative store the fold expects, closed by its till sale.
    fold = expected_fulfilment(events, reference)
    decided: dict[str, tuple[str, str | None]] = {}
    for message in read_topic(omni_config, "orders.sourced", timeout_s=60):
        envelope = json.loads(message.value())
        assert envelope["type"] == "omnistream.order.sourced"
        data = envelope["data"]
        assert message.key().decode() == data["order_id"] not in decided
        decided[data["order_id"]] = (data["status"], data["location_id"])
    assert decided == fold.sourced
    assert sum(1 for status, _ in decided.values() if status == "sourced") > 50
    latest: dict[str, dict] = {}
    for message in read_topic(omni_config, "store.tasks", timeout_s=60):
        data = json.loads(message.value())["data"]
        assert message.key().decode() == data["store_id"]
        if data["status"] == "open":
            assert (data["kind"], data["alternative_location_id"]) == fold.tasks[data["order_id"]]
        latest[data["task_id"]] = data
    assert {t["order_id"] for t in latest.values()} == set(fold.tasks)
    assert {t["order_id"] for t in latest.values() if t["status"] == "done"} == fold.collected
    client = redis.Redis.from_url(omni_config.redis.url)
    try:
        stored_tasks = {}
        for key in client.scan_iter(match=f"{prefix}tasks:*", count=1000):
            for task_id, record in client.hgetall(key).items():
                task = json.loads(record)
                assert key.decode() == f"{prefix}tasks:{task['store_id']}"
                stored_tasks[task_id.decode()] = task
    finally:
        client.close()
    # Redis holds each task's latest state (nothing is old enough to be removed yet)
    assert {tid: t["status"] for tid, t in stored_tasks.items()} == {
        tid: t["status"] for tid, t in latest.items()
    }
    assert all(t["pickup_code"] == latest[tid]["pickup_code"] for tid, t in stored_tasks.items())

    # `omnistream stock <sku>` prints what Redis holds, per location and in total.
    busiest = max(expected, key=lambda key: expected[key]["sold_24h"])  # type: ignore[arg-type]
    sku, location_id = busiest.split(":")
    reply = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnistream.cli",
            "stock",
            sku,
            "--config",
            str(tmp_path / "omnistream.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    row = next(line for line in reply.stdout.splitlines() if line.startswith(location_id))
    cells = row.split()
    assert cells[3:9] == [
        str(expected[busiest][name])
        for name in (
            "on_hand",
            "reserved",
            "available",
            "safety_stock",
            "available_to_sell",
            "in_transit",
        )
    ]
    network_on_hand = sum(
        f["on_hand"]
        for key, f in expected.items()  # type: ignore[misc]
        if key.startswith(f"{sku}:")
    )
    total_row = next(line for line in reply.stdout.splitlines() if line.startswith("[total]"))
    assert total_row.split()[3] == str(network_on_hand)
