"""Redis (with persistence) stopped for 10 s in the middle of a stock_pool run and started
again: the flow backs off, retries, does not crash, skips nothing, and ends with the same
stock as an uninterrupted run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.reference_files import load_reference
from omnistream.embedded import die_with_parent, free_port, redis_server_binary
from omnistream.processes import scrape, start_flow, total
from tests.integration.test_recovery import stock_hashes

pytestmark = pytest.mark.integration


def start_redis(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
                if client.ping():
                    return process
        except redis.RedisError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def test_flow_survives_a_redis_outage(omni_config: Config, tmp_path: Path) -> None:
    events = list(TrafficModel(load_reference(omni_config), seed=23).events(40_000))
    port = free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    outage = omni_config.with_overrides(
        kafka={"topic_prefix": omni_config.kafka.topic_prefix + "outage."},
        redis={"url": f"redis://127.0.0.1:{port}/0"},
        metrics={"port": free_port()},
    )
    ensure_topics(outage, list(ALL_TOPICS))
    produce(omni_config, events, progress=False)
    produce(outage, events, progress=False)

    steady_path = tmp_path / "steady.yaml"
    dump_config(omni_config, steady_path)
    assert start_flow("stock_pool", steady_path, until_idle=True).wait(timeout=600) == 0

    server = start_redis(port, data_dir)
    outage_path = tmp_path / "outage.yaml"
    dump_config(outage, outage_path)
    log_path = tmp_path / "outage.log"
    with log_path.open("wb") as log:
        flow = start_flow("stock_pool", outage_path, until_idle=True, log=log)
        try:
            # Stop Redis once the flow is well into the stream.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                consumed = total(scrape(outage.metrics.port), "omnistream_events_consumed_total")
                if consumed > len(events) * 0.2:
                    break
                time.sleep(0.1)
            server.terminate()
            server.wait(timeout=30)
            time.sleep(10)
            assert flow.poll() is None, "the flow must wait for Redis, not exit"
            errors = total(scrape(outage.metrics.port), "omnistream_redis_errors_total")
            server = start_redis(port, data_dir)
            code = flow.wait(timeout=600)
        finally:
            if flow.poll() is None:
                flow.kill()
            server.terminate()
            server.wait(timeout=30)
    assert code == 0, log_path.read_text(errors="replace")[-3000:]
    assert errors > 0  # the outage was seen and counted
    assert "retrying in" in log_path.read_text(errors="replace")  # and logged

    server = start_redis(port, data_dir)
    try:
        assert stock_hashes(outage) == stock_hashes(omni_config)
    finally:
        server.terminate()
        server.wait(timeout=30)
