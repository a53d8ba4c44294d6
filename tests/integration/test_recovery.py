"""stock_pool killed with SIGKILL and restarted from its recovery snapshots ends with the
same Redis stock, the same set of ``stock.changes`` ids and the same dead letters as an
uninterrupted run — killed at its first read (before any snapshot) or at a random point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from base.config import Config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.reference_files import load_reference
from tests.crash_helpers import (
    crash_and_resume,
    crash_points,
    deadletters,
    recovering,
    run_flow,
)
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

EVENTS = 50_000


def stock_hashes(config: Config) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(config.redis.url)
    try:
        keys = list(client.scan_iter(match=f"{config.redis.key_prefix}stock:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        prefix = config.redis.key_prefix.encode()
        # `cause` names the last event applied to the key; with several partitions the
        # interleaving (and so which event comes last) differs between any two runs, while
        # every figure does not.
        return {
            key[len(prefix) :]: {k: v for k, v in row.items() if k != b"cause"}
            for key, row in zip(keys, pipe.execute(), strict=True)
        }
    finally:
        client.close()


def output_ids(config: Config) -> set[str]:
    """Ids of everything stock_pool publishes: position changes, sourcing decisions and
    store tasks (a crash must neither lose nor invent one)."""
    return {
        json.loads(m.value() or b"{}")["id"]
        for topic in ("stock.changes", "orders.sourced", "store.tasks")
        for m in read_topic(config, topic, 60)
    }


def task_hashes(config: Config) -> dict[bytes, dict[bytes, bytes]]:
    """The store tasks the console reads (``tasks:<store>``)."""
    client = redis.Redis.from_url(config.redis.url)
    try:
        prefix = config.redis.key_prefix.encode()
        return {
            key[len(prefix) :]: client.hgetall(key)
            for key in client.scan_iter(match=f"{config.redis.key_prefix}tasks:*", count=1000)
        }
    finally:
        client.close()


def test_sigkill_and_resume_equals_an_uninterrupted_run(
    omni_config: Config, tmp_path: Path
) -> None:
    reference = load_reference(omni_config)
    events = list(TrafficModel(reference, seed=17, bad_ratio=0.01).events(EVENTS))
    steady = omni_config
    produce(steady, events, progress=False)
    first = run_flow("stock_pool", steady, tmp_path / "steady.yaml")
    assert first.code == 0
    expected_stock, expected_ids = stock_hashes(steady), output_ids(steady)
    expected_tasks = task_hashes(steady)
    assert expected_tasks  # the traffic has pickup orders
    in_transit = sum(int(row.get(b"in_transit", 0)) for row in expected_stock.values())
    expected_refused = deadletters(steady)
    print(
        f"\nsteady: {len(expected_stock)} positions, {len(expected_ids)} change ids, "
        f"{len(expected_refused)} dead letters in {first.seconds:.1f} s; "
        f"{in_transit} units in transit, {len(expected_tasks)} stores with tasks"
    )

    for tag, kill, snapshot_s in crash_points(EVENTS, 0.5):
        crashed = recovering(omni_config, tag, tmp_path / tag, snapshot_s)
        ensure_topics(crashed, list(ALL_TOPICS))
        produce(crashed, events, progress=False)
        killed, resumed = crash_and_resume(
            "stock_pool", crashed, tmp_path / f"{tag}.yaml", tag, kill
        )
        ids = output_ids(crashed)
        print(
            f"{tag}: killed {kill.label} ({killed.consumed:.0f} of {EVENTS} read, "
            f"{killed.seconds:.1f} s), resumed in {resumed.seconds:.1f} s; {len(ids)} change ids, "
            f"{len(ids - expected_ids)} new, {len(expected_ids - ids)} missing"
        )
        assert stock_hashes(crashed) == expected_stock  # in_transit included
        assert task_hashes(crashed) == expected_tasks
        assert ids == expected_ids
        assert deadletters(crashed) == expected_refused
