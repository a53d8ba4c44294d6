"""stock_pool killed with SIGKILL mid-run and restarted from its recovery snapshots ends with
the same Redis stock and the same set of output event ids as an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.topics import ALL_TOPICS
from omnistream.config import Config, dump_config
from omnistream.processes import start_flow
from omnistream.reference import load_reference
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


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
    return {json.loads(m.value())["id"] for m in read_topic(config, "stock.changes", 60)}


def run(
    config: Config, path: Path, kill_after_s: float | None = None, name: str = "stock_pool"
) -> int:
    dump_config(config, path)
    with path.with_suffix(".log").open("ab") as log:
        process = start_flow(name, path, until_idle=True, log=log)
        try:
            return process.wait(timeout=kill_after_s or 600)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            return process.wait(timeout=30)


def test_sigkill_and_resume_equals_an_uninterrupted_run(
    omni_config: Config, tmp_path: Path
) -> None:
    events = list(TrafficModel(load_reference(omni_config), seed=17, bad_ratio=0.01).events(50_000))
    steady = omni_config
    crashed = omni_config.with_overrides(
        kafka={"topic_prefix": omni_config.kafka.topic_prefix + "crash."},
        redis={"key_prefix": omni_config.redis.key_prefix + "crash:"},
        recovery={
            "dir": str(tmp_path / "recovery"),
            "snapshot_seconds": 0.5,
            "backup_seconds": 0.0001,
        },
    )
    ensure_topics(crashed, list(ALL_TOPICS))
    produce(steady, events, progress=False)
    produce(crashed, events, progress=False)

    started = time.monotonic()
    assert run(steady, tmp_path / "steady.yaml") == 0
    steady_s = time.monotonic() - started

    started = time.monotonic()
    kill_at = random.Random().uniform(0.35, 0.75) * steady_s  # a random point of the run
    code = run(crashed, tmp_path / "crashed.yaml", kill_after_s=kill_at)
    killed = code == -signal.SIGKILL
    assert run(crashed, tmp_path / "crashed.yaml") == 0
    print(f"\nkilled after {kill_at:.1f} s: {killed}; total {time.monotonic() - started:.1f} s")
    assert killed, "the run finished before the kill; shorten kill_at or lengthen the stream"

    assert stock_hashes(crashed) == stock_hashes(steady)
    assert output_ids(crashed) == output_ids(steady)
