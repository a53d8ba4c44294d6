"""The embedded runtime: Tansu + redis-server come up, answer, behave like Kafka, and go away."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaError

from base.config import Config
from base.topics import ALL_TOPICS, CLICKSTREAM, STOCK_CHANGES
from connectors.kafka_clients import make_admin, make_producer
from omnistream import embedded
from omnistream.embedded import EmbeddedStack, EmbeddedStackError, free_port, port_accepts
from tests.kafka_helpers import read_json, read_topic

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _dead(pid: int) -> bool:
    """Gone, or a zombie (dead, waiting for a reaper that may never come in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def _wait_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = [pid for pid in pids if not _dead(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if not _dead(pid)]
    return alive


def _port_free(port: int) -> bool:
    if port_accepts(port):
        return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _partition_counts(config: Config) -> dict[str, int]:
    metadata = make_admin(config).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port < 65536
    assert _port_free(port)


def test_stack_lifecycle(tmp_path: Path) -> None:
    """Start, topics with the partition count, round trip, Redis, then stop frees everything."""
    stack = EmbeddedStack(
        workdir=tmp_path, partitions=3, topics=(CLICKSTREAM, STOCK_CHANGES), topic_prefix="emb."
    )
    with stack:
        config = stack.config()
        assert config.kafka.bootstrap == stack.kafka_bootstrap == f"127.0.0.1:{stack.kafka_port}"
        assert config.redis.url == stack.redis_url
        assert config.kafka.topic_prefix == "emb."
        assert config.kafka.partitions == 3

        counts = _partition_counts(config)
        assert counts["emb.clickstream"] == 3
        assert counts["emb.stock.changes"] == 3

        producer = make_producer(config)
        for i in range(30):
            producer.produce(config.topic(CLICKSTREAM), key=f"a{i}", value=json.dumps({"i": i}))
        assert producer.flush(10) == 0
        values = read_json(config, CLICKSTREAM)
        assert sorted(v["i"] for v in values) == list(range(30))
        assert read_topic(config, STOCK_CHANGES) == []

        with redis.Redis.from_url(stack.redis_url) as client:
            assert client.ping()
            client.set("k", "v")
            assert client.get("k") == b"v"

        pids = stack.pids
        ports = [stack.kafka_port, stack.redis_port]
        assert set(pids) == {"tansu", "redis-server"}
        assert (tmp_path / "tansu.log").read_text().strip()
        assert (tmp_path / "redis.log").read_text().strip()

    assert not stack.running
    assert _wait_dead(list(pids.values()), timeout_s=0.5) == []
    assert all(_port_free(port) for port in ports)
    assert tmp_path.exists()  # a workdir given by the caller is kept (logs for post-mortems)
    stack.stop()  # idempotent


def test_temp_workdir_removed_and_stop_on_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt), EmbeddedStack(topics=()) as stack:
        workdir = stack.workdir
        pids = list(stack.pids.values())
        assert workdir.is_dir()
        raise KeyboardInterrupt
    assert _wait_dead(pids, timeout_s=0.5) == []
    assert not workdir.exists()


def test_session_fixtures(omni_config: Config, stack: EmbeddedStack) -> None:
    assert omni_config.kafka.bootstrap == stack.kafka_bootstrap
    assert omni_config.kafka.topic_prefix.startswith("t")
    assert omni_config.redis.key_prefix.startswith("omni")
    counts = _partition_counts(omni_config)
    for name in ALL_TOPICS:
        assert counts[omni_config.topic(name)] == stack.partitions


def test_partition_eof_for_every_partition(omni_config: Config) -> None:
    """Bytewax's KafkaSource(tail=False) stops on _PARTITION_EOF: empty partitions must send it."""
    producer = make_producer(omni_config)
    producer.produce(omni_config.topic(CLICKSTREAM), key="only-one", value=b"{}")
    assert producer.flush(10) == 0
    messages = read_topic(omni_config, CLICKSTREAM, timeout_s=10)  # TimeoutError if no EOF
    assert len(messages) == 1
    assert messages[0].error() is None or messages[0].error().code() != KafkaError._PARTITION_EOF


def test_keyed_messages_land_in_a_stable_partition(omni_config: Config) -> None:
    topic = omni_config.topic(STOCK_CHANGES)
    keys = [f"SKU{i}:L{i % 3}" for i in range(40)]
    for _ in range(2):  # two producer instances: the client partitioner must agree with itself
        producer = make_producer(omni_config)
        for key in keys:
            producer.produce(topic, key=key, value=b"{}")
        assert producer.flush(10) == 0
    by_key: dict[bytes, set[int]] = {}
    for message in read_topic(omni_config, STOCK_CHANGES):
        by_key.setdefault(message.key(), set()).add(message.partition())
    assert len(by_key) == len(keys)
    assert all(len(partitions) == 1 for partitions in by_key.values())
    assert len({p for ps in by_key.values() for p in ps}) > 1  # keys actually spread


def test_start_failure_reports_log_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(embedded, "tansu_binary", lambda: fake)
    stack = EmbeddedStack(workdir=tmp_path / "work", topics=(), start_timeout_s=10)
    with pytest.raises(EmbeddedStackError, match=r"(?s)tansu exited with code 3.*boom"):
        stack.start()
    assert not stack.running
    log_text = (tmp_path / "work" / "tansu.log").read_text()
    assert log_text.count("--- attempt") == 3  # retried on fresh ports before giving up
    assert "redis" in (tmp_path / "work" / "redis.log").read_text().lower()  # it had started
    assert _live_processes_mentioning(str(tmp_path / "work")) == []  # and was stopped again


def _live_processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and not _dead(int(entry.name)):
            found.append(int(entry.name))
    return found


CHILD = """
import json, sys, time
from pathlib import Path
from omnistream.embedded import EmbeddedStack
stack = EmbeddedStack(workdir=Path(sys.argv[1]), topics=())
stack.start()
print(json.dumps({"pids": stack.pids, "ports": [stack.kafka_port, stack.redis_port]}), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_services_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (tmp_path / "child.err").open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "work")],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=env,
        )
        try:
            ready, _, _ = select.select([child.stdout], [], [], 60)
            assert ready, f"child did not start: {(tmp_path / 'child.err').read_text()}"
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, f"child exited: {(tmp_path / 'child.err').read_text()}"
            info = json.loads(line)
            pids = list(info["pids"].values())
            for name, pid in info["pids"].items():
                assert name.split("-")[0] in Path(f"/proc/{pid}/cmdline").read_text()
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
    assert _wait_dead(pids) == [], "services outlived their SIGKILLed parent"
    # A multi-threaded process shows as a zombie once its main thread is gone, a moment before
    # its last thread closes the sockets: give the ports that moment.
    deadline = time.monotonic() + 10
    while not all(_port_free(port) for port in info["ports"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_port_free(port) for port in info["ports"])
